"""The super network's configuration and its on-disk checkpoint header (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ShaperError
from ..shape import DesignSpace, reject_unknown_fields

CHECKPOINT_FORMAT = "shaper-deploy/supernet"
CHECKPOINT_VERSION = 1
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
            raise CheckpointError(f"activation {self.hidden_act!r} is not supported; "
                                  f"allowed: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CheckpointError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["space"] = self.space.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuperConfig":
        reject_unknown_fields(cls, data, "super network config", CheckpointError,
                              require_all=True)
        data = dict(data)
        try:
            data["space"] = DesignSpace.from_dict(data["space"])
            return cls(**data)
        except ShaperError as exc:
            raise CheckpointError(f"invalid super network config: {exc}") from None
        except TypeError as exc:
            raise CheckpointError(f"invalid super network config: {exc}") from None


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from disk, or one clear CheckpointError."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} must hold a JSON object")
    return data


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of one of our super network checkpoints, config validated."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"super network {path} is not a folder; "
                              "make one with: shaperctl supernet init --from-bert DIR --out DIR")
    header = read_json(path / "config.json", "super network config")
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
    if "config" not in header:
        raise CheckpointError(f"super network {path}/config.json lacks its 'config' (the "
                              "architecture); it is damaged: make it again with shaperctl "
                              "supernet init")
    header["config"] = SuperConfig.from_dict(header["config"])
    return header
