"""DistilBERT: no token types, other weight and config names, no pooler, LayerNorm epsilon
fixed at 1e-12, sinusoidal positions refused (learned ones only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from typing_extensions import TypedDict

from ..errors import CheckpointError
from ..schema import validated
from . import Architecture, Family, _require


class DistilBertConfigFields(TypedDict, total=False):
    model_type: str
    dim: int
    n_heads: int
    n_layers: int
    hidden_dim: int
    vocab_size: int
    max_position_embeddings: int
    activation: str
    pad_token_id: Optional[int]
    sinusoidal_pos_embds: bool


@dataclass(frozen=True)
class DistilBertFamily(Family):
    def read_config(self, cfg: dict[str, Any], path: Path) -> Architecture:
        cfg = validated(DistilBertConfigFields, cfg, f"{path}/config.json", CheckpointError,
                        "fix the Hugging Face config")
        if cfg.get("sinusoidal_pos_embds"):
            raise CheckpointError(f"{path} uses sinusoidal position embeddings; only learned "
                                  "ones (sinusoidal_pos_embds false) are supported")
        _require(cfg, ("dim", "n_heads", "n_layers", "hidden_dim", "vocab_size",
                       "max_position_embeddings"), path)
        return Architecture(cfg["dim"], cfg["n_heads"], cfg["n_layers"], cfg["hidden_dim"],
                            cfg["vocab_size"], cfg["max_position_embeddings"], 0,
                            cfg.get("activation", "gelu"), 1e-12,
                            int(cfg.get("pad_token_id") or 0))

    def config_fields(self, arch: Architecture) -> dict[str, Any]:
        return {"vocab_size": arch.vocab_size, "dim": arch.hidden_size,
                "n_layers": arch.num_layers, "n_heads": arch.num_heads,
                "hidden_dim": arch.intermediate_size, "activation": arch.hidden_act,
                "max_position_embeddings": arch.max_positions,
                "pad_token_id": arch.pad_token_id, "sinusoidal_pos_embds": False}


DISTILBERT = DistilBertFamily(
    name="distilbert", model_types=("distilbert",), class_prefix={"distilbert": "DistilBert"},
    inputs=("input_ids", "attention_mask"), prefix="distilbert.", token_type_table=False,
    top_names={"embeddings.word_embeddings": "embeddings.word",
               "embeddings.position_embeddings": "embeddings.position",
               "embeddings.LayerNorm": "embeddings.norm",
               "vocab_transform": "mlm_head.transform",
               "vocab_layer_norm": "mlm_head.norm"},
    layer_key=r"transformer\.layer\.(\d+)\.(.+)",
    layer_names={"input_bottleneck": "input_bottleneck",
                 "output_bottleneck": "output_bottleneck",
                 "attention.q_lin": "layer.query", "attention.k_lin": "layer.key",
                 "attention.v_lin": "layer.value", "attention.out_lin": "layer.attn_out",
                 "sa_layer_norm": "layer.attn_norm", "ffn.lin1": "layer.ffn_in",
                 "ffn.lin2": "layer.ffn_out", "output_layer_norm": "layer.ffn_norm"},
    mlm_bias="vocab_projector.bias", decoder="vocab_projector.weight",
    ignored=r"embeddings\.position_ids")
