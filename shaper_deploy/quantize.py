"""Dynamic int8 quantization, shared by export and profiling (needs onnxruntime, never torch).

Profiles time int8 graphs made by exactly this function, so a profile's int8 latency is the
latency of what ``shaperctl export --int8`` writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

METHOD = "onnxruntime quantize_dynamic"


def int8_record(fmt: dict) -> dict:
    """What an int8 graph made with ``fmt`` (runtime.int8_format) is, as profiles and bundles
    record it: the planner compares the whole record."""
    return {"method": METHOD, **{k: fmt[k] for k in ("weight_type", "per_channel",
                                                      "reduce_range")}}


def quantize_int8(src: Path, dst: Path, fmt: dict, keep_fp32: tuple[str, ...] = ()) -> None:
    """Dynamic int8 quantization of an (optimized) graph in the format ``fmt`` (see
    :func:`shaper_deploy.runtime.int8_format`): 8-bit weights, float activations quantized
    on the fly. ``keep_fp32``: names of nodes left in fp32 (none in what export writes;
    benchmarks/int8_formats.py measures the alternative)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer advises pre-processing on the root logger; the fused graph needs none.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # The fused Attention's outputs carry no type; DefaultTensorType says float.
        quantize_dynamic(str(src), str(dst), per_channel=fmt["per_channel"],
                         reduce_range=fmt["reduce_range"], nodes_to_exclude=list(keep_fp32),
                         weight_type=getattr(QuantType, fmt["weight_type"]),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
