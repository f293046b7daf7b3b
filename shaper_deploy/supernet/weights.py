"""A checkpoint folder's weight file: ``model.safetensors`` or ``pytorch_model.bin``.

Pickled weights are read with ``torch.load(weights_only=True)``: tensors only, never objects.
Torch is imported only to load tensors, so the tensor names of a safetensors file (what the
checkpoint header needs) are read without it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch


def tensor_names(path: Path) -> list[str]:
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
        return list(read_weights(path)[0])
    raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a checkpoint folder, from safetensors or a weights-only pickle, and the
    file they came from."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        try:
            return load_file(st), st
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights file {st} is corrupted or unreadable: {exc}") from None
    if pt.is_file():
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # PyTorch's own message advises weights_only=False; never do that for a file
            # whose objects would run code on load.
            raise CheckpointError(f"weights file {pt} holds objects other than tensors and is "
                                  "refused (pickled weights are read as tensors only); convert "
                                  "it to safetensors where it was made") from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"weights file {pt} is corrupted or unreadable: "
                                  f"{first[:200]}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise CheckpointError(f"weights file {pt} is not a state dict of tensors")
        return state, pt
    if (path / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{path} holds a sharded checkpoint, which is not supported; "
                              "save it unsharded (model.safetensors)")
    raise CheckpointError(f"{path} holds no weights: expected model.safetensors or "
                          "pytorch_model.bin")
