"""How many untimed runs a long run needs before it is timed: one or two (``Protocol.long_warmup``).

A measurement's first round warms each graph up before timing it. A turn of a short run
(under ``long_run_ms``, 10 ms) times many runs after two warm-ups; a long one times one to
three runs, so its warm-ups were most of its cost: a transfer (one round per sweep) ran a
BERT-base graph three times at a size to time it once. This times the same random-weight
graphs (the space's smallest, largest and one mixed shape, fp32 and int8 in the ISA's default
format) as a profile's own process does (one thread pool for the process), each graph held
by two sessions, one per arm (each arm's sessions meet every size new, as a profile group's
do): at every grid size, smallest first, the arms take their turn in random order, each one
call of ``measure_interleaved`` with one round, warming long runs up once or twice. Reported
per size and graph: the floor (p10 of the runs, what a profile fits) with one warm-up over
the floor with two, and the seconds each arm took.

    .venv/bin/python benchmarks/warmup.py --supernet runs/minilm-super --repeats 8 \\
        --out benchmarks/results/warmup_amd_zen4_minilm_s43.json
    .venv/bin/python benchmarks/warmup.py --repeats 3 \\
        --out benchmarks/results/warmup_amd_zen4_bert_base_s43.json   # BERT-base
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared_pool import build_graphs, load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", default=None,
                    help="A super network checkpoint (default: BERT-base, random weights)")
    ap.add_argument("--repeats", type=int, default=4,
                    help="Passes over the grid, each with new sessions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.profiling.profile import runner
    from shaper_deploy.profiling.protocol import Protocol, inputs_for, measure_interleaved
    from shaper_deploy.runtime import make_session, share_one_pool

    share_one_pool(args.threads)
    config = load_config(args.supernet)
    base = replace(Protocol(threads=args.threads), rounds=1, pool="process")
    grid = sorted((w for w in base.grid if w[1] <= config.max_tokens),
                  key=lambda w: (w[0] * w[1], w))
    arms = (1, 2)
    floors: dict[tuple, list[float]] = {}  # (arm, graph, size) -> a floor per pass
    seconds = {(a, w): 0.0 for a in arms for w in grid}
    longest = {}  # (graph, size) -> the largest floor seen: long or short by it
    rng, start = random.Random(0), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="warmup-") as tmp:
        files = build_graphs(args.supernet, Path(tmp))
        for r in range(args.repeats):
            sessions = {a: {k: make_session(p, "cpu", threads=args.threads)
                            for k, p in files.items()} for a in arms}
            for i, w in enumerate(grid):
                feeds = inputs_for(w, config)
                for a in rng.sample(arms, len(arms)):
                    runners = {key: runner(s, feeds) for key, s in sessions[a].items()}
                    t = time.perf_counter()
                    got = measure_interleaved(runners, replace(base, long_warmup=a),
                                              seed=r * 1000 + i)
                    seconds[(a, w)] += time.perf_counter() - t
                    for key, res in got.items():
                        floors.setdefault((a, key, w), []).append(res["run_ms"]["10"])
                        longest[(key, w)] = max(longest.get((key, w), 0.0), res["median_ms"])
            del sessions
            done = time.perf_counter() - start
            print(f"pass {r + 1}/{args.repeats}: {done:.0f} s, about "
                  f"{done / (r + 1) * (args.repeats - r - 1):.0f} s left", file=sys.stderr)
    rows = []
    for key in files:
        for w in grid:
            one, two = (np.array(floors[(a, key, w)]) for a in arms)
            ratios = one / two
            rows.append({"graph": key, "batch": w[0], "seq_len": w[1],
                         "long": bool(longest[(key, w)] > base.long_run_ms),
                         "one_ms": [round(float(x), 4) for x in one],
                         "two_ms": [round(float(x), 4) for x in two],
                         "one_over_two": round(float(np.median(ratios)), 4)})
    summary = {}
    for kind in ("long", "short"):
        ratios = [x / y for row in rows if row["long"] == (kind == "long")
                  for x, y in zip(row["one_ms"], row["two_ms"])]
        if ratios:
            summary[f"{kind} runs: floor one warm-up / two"] = {
                "pairs": len(ratios), "median": round(statistics.median(ratios), 4),
                "mean": round(statistics.fmean(ratios), 4),
                "p10": round(float(np.percentile(ratios, 10)), 4),
                "p90": round(float(np.percentile(ratios, 90)), 4)}
    for precision in ("fp32", "int8"):
        ratios = [x / y for row in rows if row["long"] and row["graph"].endswith(precision)
                  for x, y in zip(row["one_ms"], row["two_ms"])]
        if ratios:
            summary[f"long {precision}: median floor one / two"] = round(
                statistics.median(ratios), 4)
    summary["seconds"] = {f"{a} warm-up(s)": round(sum(seconds[(a, w)] for w in grid), 1)
                          for a in arms}
    summary["time one / two"] = round(summary["seconds"]["1 warm-up(s)"]
                                      / summary["seconds"]["2 warm-up(s)"], 4)
    for row in rows:
        print(f"{row['graph']:14s} {row['batch']}x{row['seq_len']:<4d} "
              f"{'long ' if row['long'] else 'short'} one/two {row['one_over_two']:.3f}",
              file=sys.stderr)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    Path(args.out).write_text(json.dumps({
        "benchmark": "warmup", "command": " ".join(sys.argv),
        "fingerprint": device_fingerprint("cpu"), "repeats": args.repeats,
        "threads": args.threads, "protocol": base.to_dict(), "summary": summary,
        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
