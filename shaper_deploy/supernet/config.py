"""The super network's configuration and its on-disk checkpoint header (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from typing_extensions import NotRequired, TypedDict

from ..errors import CheckpointError, ShaperError
from ..io import read_regular
from ..schema import MAX_JSON_BYTES, Sha256, parse_json, validated
from ..shape import PAPER_WIDTHS, DesignSpace, reject_unknown_fields

CHECKPOINT_FORMAT = "shaper-deploy/supernet"
CHECKPOINT_VERSION = 2  # 2 records each tokenizer file's sha256; 1 only the weights' (still read)
ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclass(frozen=True)
class SuperConfig:
    """Everything needed to rebuild a super network: its design space plus BERT's details."""

    space: DesignSpace = field(default_factory=DesignSpace)  # widths and sizes (see DesignSpace)
    hidden_act: str = "gelu"  # FFN activation: gelu (erf), gelu_new (tanh approximation) or relu
    layer_norm_eps: float = 1e-12  # every LayerNorm's epsilon
    pad_token_id: int = 0  # the tokenizer's padding id (kept for the exported config.json)
    pooler: bool = False  # a BERT pooler (dense + tanh on [CLS]) sits on top
    dropout: float = 0.0  # hidden and attention dropout while training (the paper trains with 0)

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"activation {str(self.hidden_act)[:40]!r} is not supported; "
                                  f"allowed: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CheckpointError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.layer_norm_eps < 1.0:
            raise CheckpointError(f"layer_norm_eps must be in (0, 1), got {self.layer_norm_eps}")
        if not 0 <= self.pad_token_id < self.space.vocab_size:
            raise CheckpointError(f"pad_token_id {self.pad_token_id} is not a token id of the "
                                  f"vocabulary (0..{self.space.vocab_size - 1})")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["space"] = self.space.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "super network config"
                  ) -> "SuperConfig":
        reject_unknown_fields(cls, data, where, CheckpointError, require_all=True)
        reject_unknown_fields(DesignSpace, data["space"], f"{where} design space",
                              CheckpointError, require_all=True)
        return validated(cls, data, where, CheckpointError,
                         "make the super network again with shaperctl supernet init")


class HFConfig(TypedDict, total=False):
    """The fields of a Hugging Face BERT ``config.json`` that a super network is built from
    (others are ignored), each checked by type before use."""
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


class CheckpointHeader(TypedDict):
    """Our super network's ``config.json``."""
    format: str
    format_version: int
    shaper_deploy_version: str
    config: dict[str, Any]  # a SuperConfig, read by SuperConfig.from_dict
    source: dict[str, Any]
    weights_sha256: Sha256
    tokenizer_sha256: NotRequired[dict[str, Sha256]]  # version 2: every tokenizer file


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from disk (a regular file, size-limited), or one clear CheckpointError."""
    data = parse_json(read_regular(path, MAX_JSON_BYTES, what, CheckpointError), f"{what} {path}",
                      CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} must hold a JSON object")
    return data


def config_from_hf(cfg: dict[str, Any], path: Path, *, mlm_head: bool, pooler: bool,
                   widths: Sequence[int] | None, supershaper: bool = False) -> SuperConfig:
    """A SuperConfig from a Hugging Face BERT config.json (ours or SuperShaper's).

    Widths default to the paper's fractions of D for a plain BERT. A SuperShaper checkpoint
    does not record its widths (their code hard-codes the paper's for BERT-base): they are
    the paper's at D = 768 and must be declared for any other D, never guessed.
    """
    cfg = validated(HFConfig, cfg, f"{path}/config.json", CheckpointError,
                    "fix the Hugging Face config")
    if cfg.get("model_type") != "bert":
        raise CheckpointError(f"{path} is a {cfg.get('model_type')!r} model; only BERT "
                              "(model_type 'bert') can become a super network")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path} uses {cfg['position_embedding_type']!r} position "
                              "embeddings; only 'absolute' is supported")
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
            "vocab_size", "max_position_embeddings", "type_vocab_size")
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise CheckpointError(f"{path}/config.json lacks integer field(s) {', '.join(missing)}")
    if supershaper and widths is None:
        if cfg["hidden_size"] != PAPER_WIDTHS[-1]:
            raise CheckpointError(
                f"SuperShaper checkpoint {path} has D = {cfg['hidden_size']}; its config does "
                "not record the allowed widths (the authors' code hard-codes the paper's for "
                "D = 768): declare them with --widths, e.g. --widths "
                f"{','.join(str(w * cfg['hidden_size'] // 768) for w in (120, 360, 768))}")
        widths = PAPER_WIDTHS
    try:
        space = DesignSpace.for_model(
            cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"],
            widths=widths, intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"], max_positions=cfg["max_position_embeddings"],
            type_vocab_size=cfg["type_vocab_size"], mlm_head=mlm_head)
        return SuperConfig(space=space, hidden_act=cfg.get("hidden_act", "gelu"),
                           layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                           pad_token_id=int(cfg.get("pad_token_id") or 0), pooler=pooler)
    except ShaperError as exc:
        raise CheckpointError(f"cannot build a super network from {path}/config.json: {exc}"
                              ) from None


def _tensor_names(path: Path) -> list[str]:
    """The tensor names of a checkpoint's weights, read without loading them (safetensors'
    JSON header; a pickle needs torch, tensors only)."""
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        try:
            with open(st, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n < 100_000_000:
                    raise ValueError(f"header length {n}")
                names = json.loads(f.read(n))
            if not isinstance(names, dict):
                raise ValueError("its header is not a JSON object of tensors")
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CheckpointError(f"weights file {st} is corrupted or unreadable: {exc}") from None
        return [k for k in names if k != "__metadata__"]
    if pt.is_file():
        from .checkpoint import _read_weights

        return list(_read_weights(path)[0])
    raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")


def is_supershaper(cfg: dict[str, Any], path: Path) -> bool:
    """Whether a config.json is a SuperShaper repository checkpoint's (one we can read)."""
    if "mixing" not in cfg:
        return False
    if cfg["mixing"] != "bert-bottleneck":
        raise CheckpointError(f"{path} is a SuperShaper checkpoint with mixing "
                              f"{cfg['mixing']!r}; only 'bert-bottleneck' is supported")
    return True


def _supershaper_header(path: Path, cfg: dict[str, Any],
                        widths: Sequence[int] | None) -> dict[str, Any]:
    names = _tensor_names(path)
    config = config_from_hf(cfg, path, supershaper=True, widths=widths,
                            mlm_head=any(".predictions.transform." in k for k in names),
                            pooler=any(k.endswith("pooler.dense.weight") for k in names))
    return {"format": "supershaper", "config": config, "source": {"kind": "supershaper",
                                                                  "path": str(path)}}


def read_checkpoint_header(path: str | Path, widths: Sequence[int] | None = None
                           ) -> dict[str, Any]:
    """The parsed ``config.json`` of a super network, config validated: ours, or a SuperShaper
    repository checkpoint's (``widths`` declares its widths; only for those)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"super network {path} is not a folder; "
                              "make one with: shaperctl supernet init --from-bert DIR --out DIR")
    header = read_json(path / "config.json", "super network config")
    if is_supershaper(header, path):
        return _supershaper_header(path, header, widths)
    if widths is not None:
        raise CheckpointError(f"--widths is for SuperShaper checkpoints; super network {path} "
                              "records its own widths")
    fmt = header.get("format")
    if fmt != CHECKPOINT_FORMAT:
        hint = ("it looks like a plain Hugging Face BERT; turn it into a super network with: "
                f"shaperctl supernet init --from-bert {path} --out DIR"
                if header.get("model_type") == "bert" and "mixing" not in header else
                "expected a folder written by 'shaperctl supernet init'")
        raise CheckpointError(f"{path} is not a shaper-deploy super network ({hint})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"super network {path} has format version {version!r}; this "
                              f"shaper-deploy reads versions up to {CHECKPOINT_VERSION}")
    header = dict(validated(CheckpointHeader, header, f"super network {path}/config.json",
                            CheckpointError, "it is damaged: make it again with shaperctl "
                                             "supernet init"))
    if version >= 2 and "tokenizer_sha256" not in header:
        raise CheckpointError(f"super network {path}/config.json lacks tokenizer_sha256; it is "
                              "damaged: make it again with shaperctl supernet init")
    header["config"] = SuperConfig.from_dict(header["config"], f"super network {path}/config.json")
    return header
