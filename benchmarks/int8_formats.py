"""Which dynamic int8 format a classifier should ship on this CPU: label agreement with fp32,
accuracy and latency per format, from one fp32 text-classification bundle and a labelled file.

Formats (onnxruntime.quantization.quantize_dynamic, per-channel weight scales, uint8
activations): U8S8 (int8 weights; what ``runtime.int8_formats`` gives VNNI and non-x86 CPUs),
U8U8 (uint8 weights with zero points; x86 without VNNI by default) and U8S8 with reduce_range
(7-bit weights; ONNX Runtime's other advice for non-VNNI x86, which a profile's probe keeps
there where it is 1.10x faster), and U8S8 with the
fused bottleneck matrices kept fp32 (not what export writes today). Agreement and accuracy:
every text of --data run alone (batch 1, no padding, cut to --seq-len tokens), as a server sees
it. Latency: the fp32 graph and every int8 graph timed interleaved in one run (the profiler's
protocol, randomized turn order) at each --workload; medians, p90 and ratios to fp32 from that
run. ``--exported B``: also the int8 model of bundle B, an export of the same fp32 model with
``--int8`` (e.g. one whose int8 fell back to fp32 in part to pass --int8-min-agreement).

    python benchmarks/int8_formats.py --bundle runs/classifier-long/plan-80 \\
        --data runs/classifier-long/data/test.csv --json benchmarks/results/int8_formats_intel.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shaper_deploy.profiling.fingerprint import device_fingerprint  # noqa: E402
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved  # noqa: E402
from shaper_deploy.quantize import quantize_int8  # noqa: E402
from shaper_deploy.runtime import int8_format, make_session  # noqa: E402
from shaper_deploy.serving import Bundle  # noqa: E402
from shaper_deploy.taskdata import read_task_data  # noqa: E402

FORMATS = {
    "U8S8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
    "U8U8": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False},
    "U8S8 reduce_range": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    # U8S8 with the fused bottleneck matrices (the input projection and the layer-to-layer
    # transitions) left fp32: in a trained network they are near identities, whose small
    # off-diagonal entries a per-column int8 scale set by the diagonal rounds away.
    "U8S8, bottlenecks fp32": {"weight_type": "QInt8", "per_channel": True,
                               "reduce_range": False, "exclude": ("/proj_in/", "/transitions.")},
}


def kept_fp32(src: Path, fmt: dict) -> tuple[str, ...]:
    """The MatMul nodes of ``src`` whose names contain one of the format's ``exclude`` parts."""
    if not fmt.get("exclude"):
        return ()
    import onnx

    return tuple(n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                 if n.op_type == "MatMul" and any(p in n.name for p in fmt["exclude"]))


def logits(session, feeds: list[dict]) -> np.ndarray:
    return np.concatenate([session.run(["logits"], f)[0] for f in feeds])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a text-classification bundle")
    ap.add_argument("--data", type=Path, required=True, help="labelled CSV/TSV/JSONL")
    ap.add_argument("--workload", nargs="+", default=["1x64", "1x128", "8x64"])
    ap.add_argument("--seq-len", type=int, default=None,
                    help="Tokens a text is cut to (default: the length the bundle was planned "
                         "for, else its maximum)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--exported", type=Path, nargs="*", default=[],
                    help="int8 bundles exported from the same fp32 model (its checksum must "
                         "match), measured beside the formats")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    started = time.time()
    bundle = Bundle.load(args.bundle)
    head = bundle.manifest.config["task_head"]
    data = read_task_data(args.data, head["text_column"], head["label_column"])
    y = np.array([head["labels"].index(label) for label in data.labels])
    plan = bundle.manifest.plan or {}
    length = args.seq_len or plan.get("seq_len") or bundle.manifest.max_length
    feeds = []
    for text in data.texts:  # one text per run, unpadded
        f = bundle.encode([text], length).feeds
        n = int(f["attention_mask"].sum())
        feeds.append({k: v[:, :n] for k, v in f.items()})
    fp32_path = args.bundle / "model.onnx"
    sessions = {"fp32": make_session(fp32_path, threads=2)}
    ref = logits(sessions["fp32"], feeds)
    rows = {"fp32": {"accuracy": float((ref.argmax(1) == y).mean())}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt in FORMATS.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            keep = kept_fp32(fp32_path, fmt)
            quantize_int8(fp32_path, path, fmt, keep)
            sessions[name] = make_session(path, threads=2)
            out = logits(sessions[name], feeds)
            rows[name] = {**{k: v for k, v in fmt.items() if k != "exclude"},
                          "fp32_nodes": list(keep),
                          "label_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                          "accuracy": float((out.argmax(1) == y).mean()),
                          "mean_abs_logit_diff": float(np.abs(out - ref).mean()),
                          "max_abs_logit_diff": float(np.abs(out - ref).max())}
            print(f"{name}: agreement {rows[name]['label_agreement']:.4f}, accuracy "
                  f"{rows[name]['accuracy']:.4f}", file=sys.stderr)
        fp32_sha = bundle.manifest.files["model.onnx"]["sha256"]
        for other in args.exported:
            manifest = Bundle.load(other).manifest
            q = manifest.quantization or {}
            if manifest.files["model.onnx"]["sha256"] != fp32_sha or not q:
                sys.exit(f"{other} is not an int8 export of {args.bundle}'s fp32 model")
            fallback = q.get("fallback") or {}
            name = (f"exported, {fallback['rung']} fp32" if fallback.get("passed")
                    else "exported, all int8")
            sessions[name] = make_session(other / "model_quantized.onnx", threads=2)
            out = logits(sessions[name], feeds)
            rows[name] = {k: q[k] for k in ("weight_type", "per_channel", "reduce_range")}
            rows[name].update(
                bundle=str(other), fp32_nodes=fallback.get("fp32_nodes", []),
                fp32_weight_share=fallback.get("fp32_weight_share", 0.0),
                export_gate={k: q.get(k) for k in ("judged_on", "min_agreement_required",
                                                   "label_agreement")},
                label_agreement=float((out.argmax(1) == ref.argmax(1)).mean()),
                accuracy=float((out.argmax(1) == y).mean()),
                mean_abs_logit_diff=float(np.abs(out - ref).mean()),
                max_abs_logit_diff=float(np.abs(out - ref).max()))
            print(f"{name}: agreement {rows[name]['label_agreement']:.4f}, accuracy "
                  f"{rows[name]['accuracy']:.4f}", file=sys.stderr)
        protocol = replace(Protocol(), rounds=args.rounds)
        timing = {}
        for i, text in enumerate(args.workload):
            batch, seq_len = (int(v) for v in text.split("x"))
            f = bundle.encode(["x " * seq_len] * batch, seq_len).feeds
            res = measure_interleaved({k: (lambda s=s: s.run(["logits"], f))
                                       for k, s in sessions.items()}, protocol, seed=i)
            base = res["fp32"]
            timing[text] = {k: {"median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
                                "cv": r["cv"], "fp32_over_this_median":
                                    base["median_ms"] / r["median_ms"],
                                "fp32_over_this_p90": base["p90_ms"] / r["p90_ms"]}
                            for k, r in res.items()}
            print(f"{text}: " + ", ".join(f"{k} {v['median_ms']:.2f} ms"
                                          for k, v in timing[text].items()), file=sys.stderr)
    machine = device_fingerprint("cpu")
    result = {"machine": machine, "date": time.strftime("%Y-%m-%d"),
              "format_this_cpu_gets": int8_format(machine.get("isa")),
              "masked_isa": os.environ.get("MASKED_ISA"),  # under benchmarks/masked_isa.py
              "bundle": str(args.bundle), "data": str(args.data), "texts": len(data.texts),
              "seq_len": length,
              "quality": rows, "latency": timing, "seconds": round(time.time() - started, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
