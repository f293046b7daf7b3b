"""Does latency depend on shape, or only on parameter count? The paper's claim on our runtime.

The paper's template shapes at ~64M parameters (lower/upper triangle, rectangle, diamond,
inverted diamond, bottle, inverted bottle, and random shapes of the same count), and the
cigar shape at that count, are timed in one interleaved group with the profiling protocol
(ONNX Runtime CPU, optimized fused graphs, batch 1, seq 128, 2 threads), together with
uniform shapes spanning the parameter range. Reported: the spread of the ~64M shapes'
latencies (max/min, CV) against the spread across parameter counts, and latency per
parameter.

    .venv/bin/python benchmarks/shape_sensitivity.py --out benchmarks/results/shape_sensitivity.json
    .venv/bin/python benchmarks/shape_sensitivity.py --supernet runs/minilm-super \\
        --out benchmarks/results/shape_sensitivity_minilm.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from shaper_deploy.heuristics import cigar_shape
from shaper_deploy.profiling.profile import GraphSessions, runner
from shaper_deploy.runtime import cpu_model_and_flags, int8_format
from shaper_deploy.profiling.protocol import Protocol, inputs_for, measure_interleaved
from shaper_deploy.shape import Shape
from shaper_deploy.supernet import SuperConfig, read_checkpoint_header
from shaper_deploy.templates import PAPER_TEMPLATE_POSITION, random_shape, template_shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shape_sensitivity.json"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--random", type=int, default=3, help="random shapes near the target")
    args = ap.parse_args()
    config = (read_checkpoint_header(args.supernet)["config"] if args.supernet
              else SuperConfig())
    space = config.space
    lo, hi = space.smallest.params(), space.largest.params()
    target = round(lo + PAPER_TEMPLATE_POSITION * (hi - lo))
    same_count = dict(template_shapes(space, target))
    same_count["cigar"] = cigar_shape(target, space)
    rng = random.Random(0)
    candidates = sorted((random_shape(space, rng) for _ in range(20000)),
                        key=lambda s: abs(s.params() - target))
    for i, s in enumerate(candidates[:args.random]):
        same_count[f"random-{i + 1}"] = s
    uniform = {f"all-{w}": Shape.uniform(w, space) for w in space.widths}
    protocol = Protocol(rounds=args.rounds)
    print(f"timing {len(same_count)} shapes near {target / 1e6:.1f}M and {len(uniform)} "
          "uniform shapes", file=sys.stderr)
    with tempfile.TemporaryDirectory() as work:
        sessions = GraphSessions(Path(work), config, "cpu", protocol.threads,
                                 int8_format(cpu_model_and_flags()[1]))
        feeds = inputs_for(protocol.reference, config)
        runners = {name: runner(sessions.build(s, "fp32"), feeds)
                   for name, s in {**same_count, **uniform}.items()}
        results = measure_interleaved(runners, protocol)
    rows = {name: {"shape": list(s.widths), "params": s.params(),
                   "median_ms": results[name]["median_ms"], "cv": results[name]["cv"]}
            for name, s in {**same_count, **uniform}.items()}
    near = [rows[n] for n in same_count]
    lat = [r["median_ms"] for r in near]
    per_param = [r["median_ms"] / r["params"] * 1e6 for r in near]
    uni = [rows[n] for n in uniform]
    report = {
        "benchmark": "shape_sensitivity", "design_space": space.to_dict(),
        "target_params": target, "protocol": protocol.to_dict(), "shapes": rows,
        "near_target": {"params_range": [min(r["params"] for r in near),
                                         max(r["params"] for r in near)],
                        "latency_max_over_min": max(lat) / min(lat),
                        "latency_cv": statistics.pstdev(lat) / statistics.fmean(lat),
                        "ms_per_mparam_max_over_min": max(per_param) / min(per_param),
                        "fastest": min(same_count, key=lambda n: rows[n]["median_ms"]),
                        "slowest": max(same_count, key=lambda n: rows[n]["median_ms"])},
        "across_params": {"params_max_over_min": uni[-1]["params"] / uni[0]["params"],
                          "latency_max_over_min": uni[-1]["median_ms"] / uni[0]["median_ms"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def table(report: dict) -> str:
    lines = ["| shape | widths | params | latency (ms) | ms per M params |", "|---|---|---|---|---|"]
    for name, r in report["shapes"].items():
        lines.append(f"| {name} | {','.join(map(str, r['shape']))} | {r['params'] / 1e6:.1f}M | "
                     f"{r['median_ms']:.2f} | {r['median_ms'] / r['params'] * 1e6:.3f} |")
    n, a = report["near_target"], report["across_params"]
    lines.append("")
    lines.append(f"near {report['target_params'] / 1e6:.1f}M: latency max/min "
                 f"{n['latency_max_over_min']:.3f}, CV {n['latency_cv']:.1%} "
                 f"(fastest {n['fastest']}, slowest {n['slowest']}); across the range: params "
                 f"x{a['params_max_over_min']:.2f}, latency x{a['latency_max_over_min']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
