"""The super network's configuration and its on-disk checkpoint header (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from typing_extensions import NotRequired, TypedDict

from ..errors import CheckpointError, ShaperError
from ..families import ACTIVATIONS, MODEL_TYPES, Architecture, Family, family
from ..io import read_regular
from ..schema import MAX_JSON_BYTES, Sha256, parse_json, validated
from ..shape import PAPER_WIDTHS, DesignSpace, reject_unknown_fields
from .weights import tensor_names

ORDERS = ("none", "residual", "residual+heads")  # feature orders a slice can keep (rewire.py)

CHECKPOINT_FORMAT = "shaper-deploy/supernet"
# 3 records the model family (model_type); 2 each tokenizer file's sha256; 1 only the
# weights' (1 and 2 are BERT, still read)
CHECKPOINT_VERSION = 3


PROBLEMS = ("single_label_classification", "regression")  # transformers' problem_type names


@dataclass(frozen=True)
class TaskHead:
    """A super network fine-tuned on a task (``shaperctl train task``): every shape then ends
    in one classifier (the mean of the final states over real tokens, then D -> outputs)."""

    problem: str  # single_label_classification or regression
    labels: tuple[str, ...] = ()  # class names in output order; () for regression
    text_column: str = "text"  # the columns of the data it was trained on, which --eval
    pair_column: str = ""  # files are read with ("" : single texts)
    label_column: str = "label"

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.problem not in PROBLEMS:
            raise CheckpointError(f"task problem {self.problem!r} is not supported; allowed: "
                                  f"{', '.join(PROBLEMS)}")
        if self.problem == "regression" and self.labels:
            raise CheckpointError("a regression head has no label names")
        if self.problem != "regression" and (len(self.labels) < 2
                                             or len(set(self.labels)) != len(self.labels)):
            raise CheckpointError(f"a classifier needs at least 2 distinct labels, got "
                                  f"{list(self.labels)[:5]}")

    @property
    def num_outputs(self) -> int:
        return 1 if self.problem == "regression" else len(self.labels)


@dataclass(frozen=True)
class SuperConfig:
    """Everything needed to rebuild a super network: its design space plus its family's
    details."""

    space: DesignSpace = field(default_factory=DesignSpace)  # widths and sizes (see DesignSpace)
    model_type: str = "bert"  # the Hugging Face model_type; its family spec (families/)
    hidden_act: str = "gelu"  # FFN activation: gelu (erf), gelu_new (tanh approximation) or relu
    layer_norm_eps: float = 1e-12  # every LayerNorm's epsilon
    pad_token_id: int = 0  # the tokenizer's padding id (kept for the exported config.json)
    pooler: bool = False  # a pooler (dense + tanh on the first token) sits on top
    dropout: float = 0.0  # hidden and attention dropout while training (the paper trains with 0)
    task_head: Optional[TaskHead] = None  # a classifier / regressor on top (train task)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise CheckpointError(f"model_type {str(self.model_type)[:40]!r} is not supported; "
                                  f"allowed: {', '.join(MODEL_TYPES)}")
        if (self.space.type_vocab_size > 0) != self.family.token_type_table:
            raise CheckpointError(
                f"a {self.model_type} network has " + ("token type embeddings (type_vocab_size "
                "of at least 1)" if self.family.token_type_table else "no token type "
                "embeddings (type_vocab_size 0)") + f", got {self.space.type_vocab_size}")
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

    @property
    def family(self) -> Family:
        return family(self.model_type)

    @property
    def max_tokens(self) -> int:
        """The longest input in tokens (the position table less the family's offset)."""
        return self.family.max_tokens(self.space.max_positions, self.pad_token_id)

    def dummy_inputs(self, batch: int, seq_len: int, seed: int = 0, padding: str = "right"
                     ) -> dict[str, Any]:
        """Random int64 inputs of this network's graph (its family's names, its vocabulary,
        padding id and token types); see :meth:`Family.dummy_inputs`."""
        s = self.space
        return self.family.dummy_inputs(s.vocab_size, batch, seq_len, seed, padding,
                                        self.pad_token_id, s.type_vocab_size)

    def architecture(self) -> Architecture:
        s = self.space
        return Architecture(s.hidden_size, s.num_heads, s.num_layers, s.intermediate_size,
                            s.vocab_size, s.max_positions, s.type_vocab_size, self.hidden_act,
                            self.layer_norm_eps, self.pad_token_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["space"] = self.space.to_dict()
        out["task_head"] = None if self.task_head is None else {
            f.name: (list(v) if isinstance(v := getattr(self.task_head, f.name), tuple) else v)
            for f in fields(self.task_head)}
        return out

    @staticmethod
    def upgraded(data: Any) -> Any:
        """A stored config (checkpoint, bundle, profile) with the fields added since filled in
        as what it was written for: BERT (before families), no task head (before tasks)."""
        if isinstance(data, dict):
            data = {"model_type": "bert", "task_head": None, **data}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "super network config"
                  ) -> "SuperConfig":
        data = cls.upgraded(data)
        reject_unknown_fields(cls, data, where, CheckpointError, require_all=True)
        reject_unknown_fields(DesignSpace, data["space"], f"{where} design space",
                              CheckpointError, require_all=True)
        return validated(cls, data, where, CheckpointError,
                         "make the super network again with shaperctl supernet init")


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


def hf_family(cfg: dict[str, Any], path: Path) -> Family:
    """The family spec of a Hugging Face config.json, or one line naming what is allowed."""
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{path} is a {str(model_type)[:40]!r} model; supported "
                              f"model types: {', '.join(MODEL_TYPES)}")
    return family(model_type)


def config_from_hf(cfg: dict[str, Any], path: Path, *, mlm_head: bool, pooler: bool,
                   widths: Sequence[int] | None, supershaper: bool = False) -> SuperConfig:
    """A SuperConfig from a Hugging Face config.json of any supported family (or a
    SuperShaper checkpoint's, which is BERT).

    Widths default to the paper's fractions of D for a plain model. A SuperShaper checkpoint
    does not record its widths (their code hard-codes the paper's for BERT-base): they are
    the paper's at D = 768 and must be declared for any other D, never guessed.
    """
    fam = hf_family(cfg, path)
    arch = fam.read_config(cfg, path)
    if supershaper and widths is None:
        if arch.hidden_size != PAPER_WIDTHS[-1]:
            raise CheckpointError(
                f"SuperShaper checkpoint {path} has D = {arch.hidden_size}; its config does "
                "not record the allowed widths (the authors' code hard-codes the paper's for "
                "D = 768): declare them with --widths, e.g. --widths "
                f"{','.join(str(w * arch.hidden_size // 768) for w in (120, 360, 768))}")
        widths = PAPER_WIDTHS
    try:
        space = DesignSpace.for_model(
            arch.hidden_size, arch.num_heads, arch.num_layers, widths=widths,
            intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size,
            max_positions=arch.max_positions, type_vocab_size=arch.type_vocab_size,
            mlm_head=mlm_head)
        return SuperConfig(space=space, model_type=cfg["model_type"], hidden_act=arch.hidden_act,
                           layer_norm_eps=arch.layer_norm_eps, pad_token_id=arch.pad_token_id,
                           pooler=pooler)
    except ShaperError as exc:
        raise CheckpointError(f"cannot build a super network from {path}/config.json: {exc}"
                              ) from None


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
    names = tensor_names(path)
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
                              "make one with: shaperctl supernet init --from-hf DIR --out DIR")
    header = read_json(path / "config.json", "super network config")
    if is_supershaper(header, path):
        return _supershaper_header(path, header, widths)
    if widths is not None:
        raise CheckpointError(f"--widths is for SuperShaper checkpoints; super network {path} "
                              "records its own widths")
    fmt = header.get("format")
    if fmt != CHECKPOINT_FORMAT:
        hint = (f"it looks like a plain Hugging Face {header['model_type']} model; turn it into "
                f"a super network with: shaperctl supernet init --from-hf {path} --out DIR"
                if header.get("model_type") in MODEL_TYPES and "mixing" not in header else
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
