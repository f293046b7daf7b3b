"""Dynamic int8 quantization, shared by export and profiling (needs onnxruntime, never torch).

Profiles time int8 graphs made by exactly this function, so a profile's int8 latency is the
latency of what ``shaperctl export --int8`` writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

METHOD = {"method": "onnxruntime quantize_dynamic", "weight_type": "QInt8"}


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    """Dynamic int8 quantization of an (optimized) graph: int8 weights, float activations."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer advises pre-processing on the root logger; the fused graph needs none.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # The fused Attention's outputs carry no type; DefaultTensorType says float.
        quantize_dynamic(str(src), str(dst), per_channel=per_channel,
                         weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
