"""How a noisy host's slow periods touch each precision: a profile's reference graph in fp32
and int8, turn by turn for a while at each size, in one process on one thread pool (as
``shaperctl profile`` times), no other work between turns (no timing assertions anywhere).

Each turn is 2 warm-up runs and 15 timed ones; its time is the second fastest of those (the
floor of a turn). A turn is *slow* when it is over 1.15x the fastest turn of its precision
and size. Reported per size and precision: the fastest turn, the share of slow turns, the
median slowdown of the slow ones, and per size the share of turns where the two precisions
(timed back to back) were in different states. On the AMD EPYC Zen 4 class the slowdown
came in two states, not a spread, and int8 slowed more than fp32 in the same period
(docs/benchmarks.md, session 41), which is what a transfer's trust report cannot see when
every int8 group of a size fell in the slow state.

    .venv/bin/python benchmarks/host_states.py --supernet runs/minilm-super --seconds 60 \\
        --out benchmarks/results/host_states_amd_zen4_s41.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SLOW = 1.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=60.0, help="per size")
    ap.add_argument("--sizes", default="1x32,1x128,4x64")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from shaper_deploy.profiling.profile import GraphSessions, runner
    from shaper_deploy.profiling.protocol import inputs_for
    from shaper_deploy.runtime import int8_format, share_one_pool
    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.supernet.checkpoint import load_supernet
    from shaper_deploy.templates import template_shapes

    share_one_pool(2)
    net = load_supernet(args.supernet)
    shape = template_shapes(net.config.space)["rectangle"]  # a profile's reference
    fingerprint = device_fingerprint("cpu")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    turns = []
    with tempfile.TemporaryDirectory() as work:
        sessions = GraphSessions(Path(work), net.config, "cpu", 2, int8_format(fingerprint["isa"]))
        for size in sizes:
            feeds = inputs_for(size, net.config)
            runs = {p: runner(sessions.build(shape, p), feeds) for p in ("fp32", "int8")}
            start = time.time()
            while time.time() - start < args.seconds:
                for precision, run in runs.items():
                    for _ in range(2):
                        run()
                    times = []
                    for _ in range(15):
                        t = time.perf_counter()
                        run()
                        times.append((time.perf_counter() - t) * 1000.0)
                    turns.append({"size": f"{size[0]}x{size[1]}", "precision": precision,
                                  "at_s": round(time.time() - start, 2),
                                  "floor_ms": sorted(times)[1]})
            print(f"batch {size[0]} x {size[1]}: {args.seconds:.0f} s timed", file=sys.stderr)
    summary = {}
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        state = {}
        for precision in ("fp32", "int8"):
            mine = [t["floor_ms"] for t in turns if t["size"] == key and t["precision"] == precision]
            fastest = min(mine)
            slow = [v / fastest for v in mine if v > SLOW * fastest]
            state[precision] = [v > SLOW * fastest for v in mine]
            summary.setdefault(key, {})[precision] = {
                "turns": len(mine), "fastest_ms": fastest, "slow_share": len(slow) / len(mine),
                "slow_median_factor": statistics.median(slow) if slow else None,
                "fast_median_factor": statistics.median(
                    [v / fastest for v in mine if v <= SLOW * fastest])}
        pairs = list(zip(state["fp32"], state["int8"]))
        summary[key]["states_differ"] = sum(a != b for a, b in pairs) / len(pairs)
        s = summary[key]
        print(f"{key}: " + "; ".join(
            f"{p} fastest {s[p]['fastest_ms']:.2f} ms, slow in "
            f"{round(s[p]['slow_share'] * s[p]['turns'])} of {s[p]['turns']} turns"
            + (f" at x{s[p]['slow_median_factor']:.2f}" if s[p]['slow_median_factor'] else "")
            for p in ("fp32", "int8"))
              + f"; states differ in {s['states_differ']:.0%}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "host_states", "machine": fingerprint,
                                    "shape": list(shape.widths), "slow_over": SLOW,
                                    "seconds_per_size": args.seconds, "summary": summary,
                                    "turns": turns}, indent=1) + "\n")


if __name__ == "__main__":
    main()
