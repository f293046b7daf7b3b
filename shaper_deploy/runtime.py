"""ONNX Runtime sessions on a named device, checked (needs onnxruntime, never torch).

onnxruntime-gpu lists the CUDA provider even on a machine without a GPU and falls back to the
CPU when it cannot start it. A ``cuda`` request is therefore checked against the providers the
session really uses, and fails rather than silently running on the CPU.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DeviceError

DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def padded_tokenizer(tokenizer_json: str, max_length: int):
    """A ``tokenizers`` tokenizer from tokenizer.json text that cuts every text at
    ``max_length`` tokens and pads a batch to its longest text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.enable_truncation(max_length)
    tok.enable_padding()
    return tok


def feeds_from_encodings(encodings) -> dict:
    """A BERT graph's int64 inputs from a padded batch of ``tokenizers`` encodings."""
    import numpy as np

    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def make_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 sequential: bool = True):
    """An ``onnxruntime.InferenceSession`` whose first provider is the one ``device`` names.

    ``threads`` fixes intra-op threads (None: ONNX Runtime's default); ``sequential`` runs
    operators one after another, the reproducible setting for timing.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    provider = DEVICES[device]
    if provider not in ort.get_available_providers():
        raise DeviceError(f"device {device!r} needs {provider}, which this onnxruntime build "
                          f"lacks (it has {', '.join(ort.get_available_providers())})")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fallback warning is checked below instead
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if sequential:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [provider] if device == "cpu" else [provider, DEVICES["cpu"]]
    source = model if isinstance(model, bytes) else str(model)
    if device != "cpu":
        # A provider that fails to start logs several lines from C++; our error says it once.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DeviceError(f"ONNX Runtime could not load the model on {device}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    finally:
        ort.set_default_logger_severity(2)
    if session.get_providers()[0] != provider:
        raise DeviceError(f"device {device!r} was requested but {provider} did not start "
                          "(no usable GPU, or CUDA/cuDNN libraries missing); refusing to run "
                          f"on {session.get_providers()[0]} instead")
    return session
