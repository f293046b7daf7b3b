"""How fast is an exported sub-network? Five ways to run one shape, measured side by side.

For all-768, the paper's lower triangle and all-120 of the default design space (random
weights: latency does not depend on their values), batch 1, sequence 128, 2 threads:

1. torch-super: PyTorch eager, the super network run at the shape (how SuperShaper timed it)
2. torch-fused: PyTorch eager, the sliced and fused sub-network
3. ort-fp32: our bundle's model.onnx (fused + ONNX Runtime transformer optimizations)
4. ort-int8: our bundle's model_quantized.onnx (dynamic int8)
5. ort-hf: a transformers BertModel of the same uniform width (all-768: BERT-base), exported
   with optimum and optimized with ONNX Runtime's transformer optimizer, the standard way

Variants are interleaved round by round with the profiling protocol (shuffled order, a pause
and warm-up runs before each turn), so that drift in the machine's speed hits all alike; each
reports the median of its round medians. The roofline divides the encoder's FLOPs by the
latency and compares with this machine's fp32 GEMM rate measured in ONNX Runtime and torch.

    .venv/bin/python benchmarks/export_speed.py --out benchmarks/results/export_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.shape import PAPER_SPACE, Shape, flops
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import SuperBert, SuperConfig

SHAPES = {
    "all-768": [768] * 12,
    "lower-triangle": [120, 120, 240, 240, 360, 360, 360, 480, 540, 540, 600, 768],
    "all-120": [120] * 12,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gemm_rate(threads: int, m: int = 128, k: int = 768, n: int = 3072, reps: int = 50) -> dict:
    """fp32 GEMM GFLOP/s in ONNX Runtime (MLAS) and torch, on BERT's FFN shape at seq 128."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = make_session(model.SerializeToString(), "cpu", threads=threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    out = {}
    for name, fn in (("onnxruntime", lambda: session.run(None, {"x": x})),
                     ("torch", lambda: torch.mm(xt, wt))):
        for _ in range(10):
            fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = 2 * m * k * n / statistics.median(times) / 1e9
    return {"shape_mkn": [m, k, n], "gflops": out}


def hf_bert_session(width: int, threads: int, work: Path):
    """A transformers BertModel of uniform ``width``, exported by optimum, ORT-optimized."""
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import main_export
    from transformers import BertConfig, BertModel

    s = PAPER_SPACE
    cfg = BertConfig(vocab_size=s.vocab_size, hidden_size=width, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=s.intermediate_size,
                     max_position_embeddings=s.max_positions)
    src, out = work / f"hf-{width}", work / f"hf-{width}-onnx"
    BertModel(cfg).eval().save_pretrained(src)
    main_export(str(src), output=str(out), task="feature-extraction", no_post_process=True)
    opt = optimize_model(str(out / "model.onnx"), model_type="bert", num_heads=12,
                         hidden_size=width, opt_level=0)
    opt.save_model_to_file(str(out / "model_opt.onnx"))
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return make_session(out / "model_opt.onnx", "cpu", threads=threads), stats


def measure(variants: dict, rounds: int, per_round: int) -> dict:
    """The profiling protocol: shuffled rounds, a 20 ms pause and 2 warm-up runs before each
    turn (ONNX Runtime's and torch's worker threads keep spinning after a run and would slow
    whichever variant runs next), median of round medians."""
    protocol = Protocol(rounds=rounds, warmup=2, timed=per_round, pause_ms=20.0)
    result = measure_interleaved(variants, protocol)
    return {name: {"median_ms": r["median_ms"], "p90_ms": r["p90_ms"], "cv": r["cv"],
                   "runs": rounds * per_round} for name, r in result.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/export_speed.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=6)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log("building the BERT-base-sized super network (random weights)")
    supernet = SuperBert(SuperConfig(PAPER_SPACE)).eval()
    feeds = SuperConfig(PAPER_SPACE).dummy_inputs(1, args.seq_len, padding="none")
    tensors = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                    "token_type_ids")]
    rate = gemm_rate(args.threads)
    log(f"fp32 GEMM rate: {rate['gflops']}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.shapes:
            shape = Shape(SHAPES[name])
            log(f"[{name}] exporting")
            manifest = export_bundle(supernet, shape, work / name,
                                     ExportOptions(int8=True, int8_min_cosine=0.5))
            fused = fuse_bottlenecks(slice_subnet(supernet, shape))
            fp32 = make_session(work / name / "model.onnx", "cpu", threads=args.threads)
            int8 = make_session(work / name / "model_quantized.onnx", "cpu",
                                threads=args.threads)
            variants = {
                "torch-super": lambda: supernet(*tensors, shape=shape),
                "torch-fused": lambda: fused(*tensors),
                "ort-fp32": lambda: fp32.run(None, feeds),
                "ort-int8": lambda: int8.run(None, feeds),
            }
            hf_fusion = None
            if len(set(shape.widths)) == 1:
                log(f"[{name}] exporting the transformers BertModel with optimum")
                hf, hf_fusion = hf_bert_session(shape.widths[0], args.threads, work)
                variants["ort-hf"] = lambda: hf.run(None, feeds)
            log(f"[{name}] timing {', '.join(variants)}")
            with torch.no_grad():
                timing = measure(variants, args.rounds, args.per_round)
            f = flops(shape, seq_len=args.seq_len)
            row = {"shape": name, "widths": shape.widths, "params_fused": shape.params(),
                   "flops": f, "latency": timing, "ort_fusion": manifest.fusion,
                   "hf_fusion": hf_fusion,
                   "speedup_ort_fp32_vs_torch_super":
                       timing["torch-super"]["median_ms"] / timing["ort-fp32"]["median_ms"],
                   "speedup_ort_int8_vs_ort_fp32":
                       timing["ort-fp32"]["median_ms"] / timing["ort-int8"]["median_ms"],
                   "achieved_gflops_ort_fp32": f / timing["ort-fp32"]["median_ms"] / 1e6,
                   "int8_accuracy_random_weights": manifest.quantization}
            if "ort-hf" in timing:
                row["ort_fp32_vs_hf"] = (timing["ort-fp32"]["median_ms"]
                                         / timing["ort-hf"]["median_ms"])
            results.append(row)
            log(f"[{name}] " + ", ".join(f"{k} {v['median_ms']:.1f} ms"
                                         for k, v in timing.items()))
    import onnxruntime

    report = {"benchmark": "export_speed", "batch": 1, "seq_len": args.seq_len,
              "threads": args.threads, "rounds": args.rounds, "per_round": args.per_round,
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpu_count": torch.get_num_threads()},
              "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
              "gemm": rate, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def table(report: dict) -> str:
    peak = report["gemm"]["gflops"]["onnxruntime"]
    lines = ["| shape | params | torch super | torch fused | ORT fp32 | ORT int8 | HF BERT ORT "
             "| fp32 vs super | fp32 vs HF | ORT fp32 GFLOP/s (of GEMM peak) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        t = {k: v["median_ms"] for k, v in r["latency"].items()}
        hf = f"{t['ort-hf']:.1f}" if "ort-hf" in t else "n/a"
        vs_hf = f"{r['ort_fp32_vs_hf']:.3f}x" if "ort_fp32_vs_hf" in r else "n/a"
        lines.append(
            f"| {r['shape']} | {r['params_fused'] / 1e6:.1f}M | {t['torch-super']:.1f} | "
            f"{t['torch-fused']:.1f} | {t['ort-fp32']:.1f} | {t['ort-int8']:.1f} | {hf} | "
            f"{r['speedup_ort_fp32_vs_torch_super']:.2f}x | {vs_hf} | "
            f"{r['achieved_gflops_ort_fp32']:.0f} ({r['achieved_gflops_ort_fp32'] / peak:.0%}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
