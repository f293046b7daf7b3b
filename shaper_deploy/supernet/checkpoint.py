"""Reading and writing super network checkpoints.

Three sources are read:

* ours: a folder with ``config.json`` (format header + :class:`SuperConfig`), ``model.safetensors``
  and the tokenizer files of the BERT it came from;
* a plain Hugging Face BERT folder (``BertModel`` or ``BertForMaskedLM`` weights, safetensors or
  ``pytorch_model.bin``), which becomes a super network with identity bottlenecks;
* the SuperShaper training repository's checkpoints (HF layout plus
  ``encoder.layer.{i}.input_bottleneck`` / ``output_bottleneck``, ``"mixing": "bert-bottleneck"``).

The weights themselves are read by ``weights.read_weights`` (pickles as tensors only). Every
tensor's name and shape is checked, and a mismatch names the key and both shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from .. import __version__
from ..errors import CheckpointError
from ..families import TOKENIZER_FILES, Family
from ..io import atomic_dir, read_regular, sha256_file
from .config import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, config_from_hf, hf_family,
                     is_supershaper, read_checkpoint_header, read_json)
from .model import BottleneckBert, Provenance, SuperBert
from .weights import read_weights

MAX_TOKENIZER_BYTES = 64 << 20  # XLM-R's tokenizer.json is 17 MB


def _read_tokenizer_files(path: Path, recorded: dict[str, str] | None = None
                          ) -> dict[str, bytes]:
    """The tokenizer files beside a checkpoint, each checked before use: against the sha256
    ``recorded`` in our checkpoints (a file present but not recorded, or recorded but gone, is
    damage), and in every case as UTF-8, tokenizer.json as a tokenizer that loads."""
    present = [n for n in TOKENIZER_FILES if (path / n).exists() or (path / n).is_symlink()]
    if recorded is not None and sorted(present) != sorted(recorded):
        raise CheckpointError(f"super network {path} holds tokenizer files "
                              f"{', '.join(present) or 'none'} but its config.json records "
                              f"{', '.join(recorded) or 'none'}; make it again with shaperctl "
                              "supernet init")
    files = {}
    for name in present:
        data = read_regular(path / name, MAX_TOKENIZER_BYTES, "tokenizer file", CheckpointError)
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded[name]:
            raise CheckpointError(f"{path / name} does not match the sha256 recorded in "
                                  "config.json (altered or damaged); make the super network "
                                  "again with shaperctl supernet init")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"tokenizer file {path / name} is not UTF-8 (byte "
                                  f"{exc.start}); give the model's own tokenizer files") from None
        if name == "tokenizer.json":
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_str(text)
            except Exception as exc:  # tokenizers raises its own untyped errors
                raise CheckpointError(f"{path / name} is not a tokenizer "
                                      f"({str(exc).splitlines()[0][:100]})") from None
        files[name] = data
    return files


def _from_hf_names(state: dict[str, torch.Tensor], path: Path, fam: Family
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Rename a Hugging Face state dict of family ``fam`` to ours; return it and any MLM
    decoder weight (which must be tied to the word embeddings)."""
    ours: dict[str, torch.Tensor] = {}
    decoder = None
    unexpected = []
    for key, tensor in state.items():
        name = fam.our_name(key)
        if name is None:
            unexpected.append(key)
        elif name:
            ours[name] = tensor
        elif fam.is_decoder(key):
            decoder = tensor
    if unexpected:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise CheckpointError(f"{path} holds tensors a {fam.name} encoder does not have: "
                              f"{', '.join(unexpected[:3])}{more}; expected "
                              f"{fam.task_architectures()} weights")
    return ours, decoder


def _identity_bottlenecks(model: BottleneckBert) -> None:
    """Every bottleneck the identity with zero bias: the full shape is then the source BERT."""
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.input_bottleneck, layer.output_bottleneck):
                lin.weight.copy_(torch.eye(*lin.weight.shape))
                lin.bias.zero_()


def _load_checked(model: BottleneckBert, state: dict[str, torch.Tensor], source: Path,
                  optional: re.Pattern | None = None) -> None:
    """Load ``state`` into ``model`` after checking every key and shape.

    Keys matching ``optional`` may be absent (the model keeps what it has).
    """
    expected = model.state_dict()
    problems = []
    for key, tensor in expected.items():
        if key not in state:
            if optional is None or not optional.fullmatch(key):
                problems.append(f"missing tensor '{key}' (shape {list(tensor.shape)})")
        elif tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(f"tensor '{key}' has shape {list(state[key].shape)} but the "
                            f"architecture needs {list(tensor.shape)}")
    problems += [f"unexpected tensor '{k}'" for k in state if k not in expected]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {source} does not match its architecture: "
                              f"{'; '.join(problems[:3])}{more}")
    model.load_state_dict(state, strict=False)


def supernet_from_hf(path: str | Path, widths: Sequence[int] | None = None) -> SuperBert:
    """A super network from a Hugging Face folder of a supported family, bottlenecks set to
    the identity.

    ``widths`` are the design space's per-layer widths; by default the paper's, scaled to the
    model's width. If the folder is a SuperShaper repository checkpoint its bottlenecks are
    loaded instead (and must all be there).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"Hugging Face model folder {path} does not exist")
    cfg = read_json(path / "config.json", "Hugging Face config")
    supershaper = is_supershaper(cfg, path)
    fam = hf_family(cfg, path)
    raw, weights_file = read_weights(path)
    state, decoder = _from_hf_names(raw, path, fam)
    config = config_from_hf(cfg, path, mlm_head="mlm_head.transform.weight" in state,
                            pooler="pooler.dense.weight" in state, widths=widths,
                            supershaper=supershaper)
    model = SuperBert(config)
    if decoder is not None and "embeddings.word.weight" in state and not torch.equal(
            decoder, state["embeddings.word.weight"]):
        raise CheckpointError(f"{path} has an MLM decoder not tied to the word embeddings; "
                              "only tied decoders (the families' default) are supported")
    has_bottlenecks = any("bottleneck" in k for k in state)
    if supershaper and not has_bottlenecks:
        raise CheckpointError(f"SuperShaper checkpoint {path} has no bottleneck tensors "
                              "(encoder.layer.N.input_bottleneck / output_bottleneck)")
    _identity_bottlenecks(model)
    _load_checked(model, state, weights_file,
                  optional=None if has_bottlenecks else re.compile(r".*_bottleneck\.(weight|bias)"))
    source = {"path": str(path.resolve()),
              "kind": "supershaper" if supershaper else cfg["model_type"],
              "weights_sha256": sha256_file(weights_file)}
    checkpoint = ({"checkpoint": source["path"],
                   "checkpoint_weights_sha256": source["weights_sha256"]} if supershaper else {})
    model.provenance = Provenance(_read_tokenizer_files(path), source, checkpoint)
    return model.eval()


def load_supernet(path: str | Path, widths: Sequence[int] | None = None) -> SuperBert:
    """One of our checkpoints, or a SuperShaper repository checkpoint (whose widths are the
    paper's at D = 768 and must be given otherwise)."""
    path = Path(path)
    if (path / "config.json").is_file() and is_supershaper(
            read_json(path / "config.json", "config"), path):
        return supernet_from_hf(path, widths)
    header = read_checkpoint_header(path, widths)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"super network {path} has no model.safetensors")
    actual_sha = sha256_file(weights)
    if actual_sha != header["weights_sha256"]:  # required by the header's schema
        raise CheckpointError(f"weights file {weights} is corrupted: its sha256 differs from "
                              "the one recorded in config.json")
    tokenizer = _read_tokenizer_files(path, header.get("tokenizer_sha256"))  # version 1: none
    state, _ = read_weights(path)
    model = SuperBert(header["config"])
    _load_checked(model, state, weights)
    model.provenance = Provenance(
        tokenizer, header["source"],
        {"checkpoint": str(path.resolve()), "checkpoint_weights_sha256": actual_sha})
    return model.eval()


def write_supernet(model: SuperBert, folder: Path) -> None:
    """Write ``model``'s checkpoint files into an existing (temporary) folder."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    header = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
              "shaper_deploy_version": __version__, "config": model.config.to_dict(),
              "source": model.source,
              "weights_sha256": sha256_file(folder / "model.safetensors"),
              "tokenizer_sha256": {name: hashlib.sha256(data).hexdigest()
                                   for name, data in model.tokenizer_files.items()}}
    (folder / "config.json").write_text(json.dumps(header, indent=2) + "\n")
    for name, data in model.tokenizer_files.items():
        (folder / name).write_bytes(data)


def save_supernet(model: SuperBert, path: str | Path, force: bool = False) -> Path:
    """Write ``model`` as a checkpoint folder, atomically."""
    path = Path(path)
    with atomic_dir(path, force=force) as tmp:
        write_supernet(model, tmp)
    return path
