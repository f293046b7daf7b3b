"""Dynamic int8 quantization, shared by export and profiling (needs onnxruntime, never torch).

Profiles time int8 graphs made by exactly this function, so a profile's int8 latency is the
latency of what ``shaperctl export --int8`` writes, unless that export missed its accuracy gate
and fell back (:func:`quantize_with_fallback`): it then keeps some matrices fp32, records them,
and its latency is predicted between int8's and fp32's (planner.record_prediction).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

METHOD = "onnxruntime quantize_dynamic"


def int8_record(fmt: dict) -> dict:
    """What an int8 graph made with ``fmt`` (runtime.int8_format) is, as profiles and bundles
    record it: the planner compares the whole record."""
    return {"method": METHOD, **{k: fmt[k] for k in ("weight_type", "per_channel",
                                                      "reduce_range")}}


def quantize_int8(src: Path, dst: Path, fmt: dict, keep_fp32: tuple[str, ...] = ()) -> None:
    """Dynamic int8 quantization of an (optimized) graph in the format ``fmt`` (see
    :func:`shaper_deploy.runtime.int8_format`): 8-bit weights, float activations quantized
    on the fly. ``keep_fp32``: names of nodes left in fp32 (:func:`quantize_with_fallback`)."""
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


# Where dynamic int8 loses a task first, measured on a fine-tuned MiniLM sentiment classifier
# (docs/benchmarks.md, the AMD Zen 2 section): the fused bottleneck matrices (near
# identities after training, whose small off-diagonal entries a per-column scale set by the
# ~1 diagonal rounds away), then the FFN output projections from the first layer on (their
# input, the GELU output, has the widest range of any activation quantized per tensor), then
# the FFN input projections. Each rung keeps the previous rungs' nodes in fp32 too. The names
# are the deployed module's (fusion.FusedBert, supernet/modules.py), as the ONNX exporter
# scopes them: "/proj_in/MatMul", "/transitions.0/MatMul", "/layers.0/ffn_out/MatMul".
def fallback_ladder(node_names: list[str], num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """The rungs an int8 export may fall back through: (what is fp32, the node names), each a
    superset of the one before; rungs that add no node of this graph are left out (an
    identity super network's export has no bottleneck matrices)."""
    def matching(*parts: str) -> list[str]:
        return [n for n in node_names if n.endswith("/MatMul") and any(p in n for p in parts)]

    steps = [("bottleneck matrices", matching("/proj_in/", "/transitions."))]
    for kind, what in (("ffn_out", "FFN output"), ("ffn_in", "FFN input")):
        steps += [(f"{what} of layer {i}", matching(f"/layers.{i}/{kind}/"))
                  for i in range(num_layers)]
    rungs, kept, labels = [], [], []
    for label, nodes in steps:
        new = [n for n in nodes if n not in kept]
        if new:
            kept += new
            labels.append(label)
            rungs.append((_describe(labels), tuple(kept)))
    return rungs


def _describe(labels: list[str]) -> str:
    """'bottleneck matrices, FFN output of layers 0-2' from the rungs' labels, in order."""
    out: list[str] = []
    groups: dict[str, list[int]] = {}
    for label in labels:
        if " of layer " in label:
            what, i = label.rsplit(" of layer ", 1)
            if what not in groups:
                groups[what] = []
                out.append(what)
            groups[what].append(int(i))
        else:
            out.append(label)
    return ", ".join(
        f"{w} of layer{'s' if len(groups[w]) > 1 else ''} "
        f"{groups[w][0]}{'-' + str(groups[w][-1]) if len(groups[w]) > 1 else ''}"
        if w in groups else w for w in out)


def weight_share(model: Path, nodes: tuple[str, ...]) -> float:
    """The share of the graph's quantizable weights (MatMul and fused Attention weights) that
    ``nodes`` hold: a linear layer's multiply-adds per token are its weight count, so it is
    the share of int8's saving that keeping those nodes fp32 gives back."""
    import onnx

    graph = onnx.load(str(model), load_external_data=True).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) == 2}
    total = kept = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Attention") and len(node.input) > 1:
            n = sizes.get(node.input[1], 0)
            total += n
            kept += n if node.name in nodes else 0
    return kept / total if total else 0.0


def quantize_with_fallback(src: Path, dst: Path, fmt: dict, judge: Callable[[Path], dict],
                           passes: Callable[[dict], bool], num_layers: int,
                           note: Callable[[str], None] = lambda m: None
                           ) -> tuple[dict, dict | None]:
    """Quantize ``src`` to ``dst``; if ``judge(dst)`` does not ``pass``, keep nodes in fp32
    rung by rung (:func:`fallback_ladder`) and keep the fewest rungs that pass, found by
    bisection (more fp32 nodes are assumed never to judge worse). Returns the judgement of
    what is left at ``dst`` and the fallback record (None if all-int8 passed); if no rung
    passes, ``dst`` holds the all-int8 graph and the record says what was tried."""
    import onnx

    quantize_int8(src, dst, fmt)
    first = judge(dst)
    if passes(first):
        return first, None
    names = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
    rungs = fallback_ladder(names, num_layers)
    tried: dict[int, dict] = {}
    written = [-1]  # the rung whose graph dst holds (-1: all int8)

    def attempt(i: int) -> bool:
        label, nodes = rungs[i]
        quantize_int8(src, dst, fmt, nodes)
        written[0], tried[i] = i, judge(dst)
        note(f"int8 with {label} in fp32 ({len(nodes)} nodes): "
             f"{'passes' if passes(tried[i]) else 'fails'}")
        return passes(tried[i])

    record: dict = {"ladder": [label for label, _ in rungs]}
    if not rungs or not attempt(len(rungs) - 1):
        quantize_int8(src, dst, fmt)
        return first, {**record, "passed": False, "tried": _tried(rungs, tried)}
    lo, hi = -1, len(rungs) - 1  # rung hi passes; lo fails (-1: all int8)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    label, nodes = rungs[hi]
    if written[0] != hi:
        quantize_int8(src, dst, fmt, nodes)
    return tried[hi], {**record, "passed": True, "rung": label, "fp32_nodes": list(nodes),
                       "fp32_weight_share": weight_share(src, nodes),
                       "tried": _tried(rungs, tried)}


def _tried(rungs, tried: dict[int, dict]) -> list[dict]:
    return [{"rung": rungs[i][0], "fp32_nodes": len(rungs[i][1]), **tried[i]}
            for i in sorted(tried)]
