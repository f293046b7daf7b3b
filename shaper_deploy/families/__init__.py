"""Model families: each one's contract with Hugging Face, ONNX and the tokenizer, in one spec.

A family is what differs between post-LN encoders that SuperShaper's construction applies to
(a bottleneck around every layer, the identity at the full shape): the graph's input names,
whether token types exist, how positions are numbered, the special tokens, the Hugging Face
weight names and config fields, and the architectures a bundle's ``config.json`` names. Every
stage asks the spec of the network's ``model_type`` (``SuperConfig.model_type``) instead of
assuming BERT; this package is torch-free, so the serving half reads it too.

Adding a family is one module here (a :class:`Family` instance, overriding what differs) plus
its line in :data:`FAMILIES`. The role is that of optimum's per-model ``OnnxConfig``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from typing_extensions import TYPE_CHECKING, TypedDict

from ..errors import CheckpointError
from ..schema import validated

if TYPE_CHECKING:
    import numpy as np

ACTIVATIONS = ("gelu", "gelu_new", "relu")  # every FFN activation a deployed graph supports
# Every tokenizer file a super network and a bundle carry, whichever family (text files only;
# tokenizer.json is what tokenizes, the rest keep the folder loadable by transformers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")
TOKEN_TYPES = "token_type_ids"  # the graph input of token types, in families that feed them
PADDINGS = ("none", "right", "mixed")  # how dummy inputs pad (see Family.dummy_inputs)


@dataclass(frozen=True)
class Architecture:
    """What a family's Hugging Face config.json says, normalized (the fields a super network is
    built from; the others are not read)."""
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    hidden_act: str
    layer_norm_eps: float
    pad_token_id: int


class BertConfigFields(TypedDict, total=False):
    """The fields of a BERT/RoBERTa ``config.json`` read, each checked by type before use."""
    model_type: str
    position_embedding_type: str
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    hidden_act: str
    layer_norm_eps: float
    pad_token_id: Optional[int]
    mixing: str


@dataclass(frozen=True)
class Family:
    """One model family's contract. The defaults are BERT's."""

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this spec reads
    class_prefix: Mapping[str, str]  # model_type -> the transformers class name prefix
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", TOKEN_TYPES)
    prefix: str = "bert."  # the base model's prefix in task checkpoints
    # Hugging Face module names -> ours (outside the layers, then inside layer N).
    top_names: Mapping[str, str] = field(default_factory=lambda: {
        "embeddings.word_embeddings": "embeddings.word",
        "embeddings.position_embeddings": "embeddings.position",
        "embeddings.token_type_embeddings": "embeddings.token_type",
        "embeddings.LayerNorm": "embeddings.norm",
        "pooler.dense": "pooler.dense",
        "cls.predictions.transform.dense": "mlm_head.transform",
        "cls.predictions.transform.LayerNorm": "mlm_head.norm"})
    layer_key: str = r"encoder\.layer\.(\d+)\.(.+)"
    layer_names: Mapping[str, str] = field(default_factory=lambda: {
        "input_bottleneck": "input_bottleneck",
        "output_bottleneck": "output_bottleneck",
        "attention.self.query": "layer.query",
        "attention.self.key": "layer.key",
        "attention.self.value": "layer.value",
        "attention.output.dense": "layer.attn_out",
        "attention.output.LayerNorm": "layer.attn_norm",
        "intermediate.dense": "layer.ffn_in",
        "output.dense": "layer.ffn_out",
        "output.LayerNorm": "layer.ffn_norm"})
    mlm_bias: str = "cls.predictions.bias"  # the MLM output bias (ours: mlm_head.bias)
    decoder: str = "cls.predictions.decoder.weight"  # tied to the word embeddings
    # Tensors a checkpoint may hold that the network does not use.
    ignored: str = (r"embeddings\.position_ids|cls\.predictions\.decoder\.bias"
                    r"|cls\.seq_relationship\..+")
    special_tokens: Mapping[str, str] = field(default_factory=lambda: {
        "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "pad": "[PAD]"})
    token_type_table: bool = True  # a token type embedding table exists (fed or not)
    padding_positions: bool = False  # RoBERTa: positions count from pad_token_id + 1
    fixed_mlm_act: Optional[str] = None  # the MLM transform's activation when not hidden_act

    # --- inputs -----------------------------------------------------------------------------
    @property
    def token_types(self) -> bool:
        """Whether the graph takes token types (a family may hold a one-row table it never
        feeds, as RoBERTa does)."""
        return TOKEN_TYPES in self.inputs

    def position_offset(self, pad_token_id: int) -> int:
        """The first position id a token gets (RoBERTa: pad + 1; BERT: 0)."""
        return pad_token_id + 1 if self.padding_positions else 0

    def max_tokens(self, max_positions: int, pad_token_id: int) -> int:
        """The longest input in tokens the position table allows."""
        return max_positions - self.position_offset(pad_token_id)

    def mlm_act(self, hidden_act: str) -> str:
        return self.fixed_mlm_act or hidden_act

    def dummy_inputs(self, vocab_size: int, batch: int, seq_len: int, seed: int = 0,
                     padding: str = "right", pad_token_id: int = 0, type_vocab_size: int = 2
                     ) -> dict[str, "np.ndarray"]:
        """Random int64 inputs of this family's graph, padding ids ``pad_token_id``.

        ``padding``: "none"; "right" (every row after the first is shorter, as tokenizers
        pad); "mixed" (rows cycle through left padding, a hole in the middle, right padding),
        which a graph that assumes right padding gets wrong. Real tokens never take the
        padding id; token types (where fed) are 1 over the second half of each row (when
        the table has a second row).
        """
        import numpy as np

        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, vocab_size - 1, size=(batch, seq_len), dtype=np.int64)
        ids += ids >= pad_token_id  # every id but the padding one
        mask = np.ones_like(ids)
        for row in range(1, batch if padding != "none" else 1):
            cut = max(1, seq_len - 1 - (row * seq_len) // (batch + 1))
            kind = "right" if padding == "right" else ("left", "hole", "right")[(row - 1) % 3]
            if kind == "right":
                mask[row, cut:] = 0
            elif kind == "left":
                mask[row, : seq_len - cut] = 0
            else:
                mask[row, seq_len // 3: seq_len // 3 + max(1, seq_len // 4)] = 0
        feeds = {"input_ids": np.where(mask == 1, ids, pad_token_id), "attention_mask": mask}
        if self.token_types:
            types = np.zeros_like(ids)
            types[:, seq_len // 2:] = min(1, type_vocab_size - 1)
            feeds[TOKEN_TYPES] = types * mask
        return feeds

    def feeds(self, encodings) -> dict[str, "np.ndarray"]:
        """The graph's int64 inputs from a padded batch of ``tokenizers`` encodings."""
        import numpy as np

        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encodings],
                                            dtype=np.int64)}
        if self.token_types:
            feeds[TOKEN_TYPES] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds

    def special_token_id(self, tokenizer, role: str) -> Optional[int]:
        """The id of a special token (role: cls, sep, mask, pad) in a ``tokenizers``
        tokenizer, or None when it has none."""
        return tokenizer.token_to_id(self.special_tokens[role])

    # --- Hugging Face config.json -----------------------------------------------------------
    def read_config(self, cfg: dict[str, Any], path: Path) -> Architecture:
        """A Hugging Face config.json of this family, checked and normalized."""
        cfg = validated(BertConfigFields, cfg, f"{path}/config.json", CheckpointError,
                        "fix the Hugging Face config")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{path} uses {cfg['position_embedding_type']!r} position "
                                  "embeddings; only 'absolute' is supported")
        need = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "vocab_size", "max_position_embeddings", "type_vocab_size")
        _require(cfg, need, path)
        return Architecture(cfg["hidden_size"], cfg["num_attention_heads"],
                            cfg["num_hidden_layers"], cfg["intermediate_size"],
                            cfg["vocab_size"], cfg["max_position_embeddings"],
                            cfg["type_vocab_size"], cfg.get("hidden_act", "gelu"),
                            float(cfg.get("layer_norm_eps", 1e-12)),
                            int(cfg.get("pad_token_id") or 0))

    def config_fields(self, arch: Architecture) -> dict[str, Any]:
        """The architecture in this family's config.json field names."""
        return {"vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
                "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_heads,
                "intermediate_size": arch.intermediate_size, "hidden_act": arch.hidden_act,
                "max_position_embeddings": arch.max_positions,
                "type_vocab_size": arch.type_vocab_size, "layer_norm_eps": arch.layer_norm_eps,
                "pad_token_id": arch.pad_token_id, "position_embedding_type": "absolute"}

    def architecture_name(self, model_type: str, task: str) -> str:
        """The transformers class a bundle of ``task`` loads as (Optimum picks its ORTModel
        class by the task, transformers its model by this name)."""
        suffix = {"fill-mask": "ForMaskedLM",
                  "text-classification": "ForSequenceClassification"}.get(task, "Model")
        return self.class_prefix[model_type] + suffix

    def hf_config(self, model_type: str, arch: Architecture, task: str) -> dict[str, Any]:
        """A config.json that transformers' AutoConfig loads as this family's config."""
        return {"architectures": [self.architecture_name(model_type, task)],
                "model_type": model_type, **self.config_fields(arch)}

    # --- weights ----------------------------------------------------------------------------
    def our_name(self, key: str) -> Optional[str]:
        """Our name for a Hugging Face tensor name; "" for one we do not use, None for one
        this family does not have."""
        k = key[len(self.prefix):] if key.startswith(self.prefix) else key
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        if k == self.mlm_bias:
            return "mlm_head.bias"
        if k == self.decoder or re.fullmatch(self.ignored, k):
            return ""
        module, _, param = k.rpartition(".")
        m = re.fullmatch(self.layer_key, module)
        if m and m.group(2) in self.layer_names:
            return f"layers.{m.group(1)}.{self.layer_names[m.group(2)]}.{param}"
        if module in self.top_names:
            return f"{self.top_names[module]}.{param}"
        return None

    def is_decoder(self, key: str) -> bool:
        k = key[len(self.prefix):] if key.startswith(self.prefix) else key
        return k == self.decoder

    def task_architectures(self) -> str:
        """What a checkpoint of this family may be, for error messages."""
        prefix = next(iter(self.class_prefix.values()))
        return f"{prefix}Model or {prefix}ForMaskedLM"


def _require(cfg: Mapping[str, Any], need: tuple[str, ...], path: Path) -> None:
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise CheckpointError(f"{path}/config.json lacks integer field(s) {', '.join(missing)}")


def _families() -> dict[str, Family]:
    from .bert import BERT
    from .distilbert import DISTILBERT
    from .ernie import ERNIE
    from .roberta import ROBERTA

    return {f.name: f for f in (BERT, ROBERTA, DISTILBERT, ERNIE)}


FAMILIES: dict[str, Family] = _families()
MODEL_TYPES: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}


def family(model_type: str) -> Family:
    """The spec of a ``model_type`` (as config.json spells it), or one CheckpointError line."""
    try:
        return MODEL_TYPES[model_type]
    except (KeyError, TypeError):
        raise CheckpointError(f"model_type {str(model_type)[:40]!r} is not supported; allowed: "
                              f"{', '.join(MODEL_TYPES)}") from None
