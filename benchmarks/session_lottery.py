"""Does a new ONNX Runtime session of the same graph run at a speed of its own? A profile's
noise floor compares a shape's first measurement with a repeat at the end, and an int8
repeat opens a *new session* of the same quantized file (``profile.GraphSessions``). If
sessions differ by a few percent for their whole life, the noise floor measures that
lottery, not the host's slow periods, and a deployed model draws from it too.

Per precision and size: ``--sessions`` sessions of one shape's graph (int8: of one quantized
file; fp32: the graph built anew each time, as the profile does), plus the first session a
second time under another name (the control: one session timed as two), all interleaved in
random order each round with the profile's protocol, so the host's periods fall on all
alike. Each one's floor (``analysis.FLOOR_LEVEL``-th percentile of its runs); the spread of
the sessions' floors against the control's difference says which it is.

    .venv/bin/python benchmarks/session_lottery.py --profile benchmarks/data/intel-minilm-s26b \\
        --out benchmarks/results/session_lottery_intel_s26.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.analysis import FLOOR_LEVEL
from shaper_deploy.profiling.folder import read_header
from shaper_deploy.profiling.profile import GraphSessions, runner
from shaper_deploy.profiling.protocol import inputs_for, measure_interleaved
from shaper_deploy.runtime import int8_format
from shaper_deploy.shape import Shape

SIZES = ((1, 64), (4, 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", type=Path, required=True,
                    help="a profile of the design space: its config and protocol")
    ap.add_argument("--shape", default="240,240,240,240,240,240")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    header = read_header(args.profile)
    protocol = replace(header.protocol, rounds=args.rounds)
    fingerprint = device_fingerprint("cpu")
    shape = Shape(tuple(int(w) for w in args.shape.split(",")), header.space)
    result = {"benchmark": "session_lottery", "profile": str(args.profile),
              "cpu_model": fingerprint["cpu_model"], "cpu_id": fingerprint.get("cpu_id"),
              "isa": fingerprint["isa"], "shape": list(shape.widths),
              "sessions": args.sessions, "rounds": args.rounds, "rows": []}
    with tempfile.TemporaryDirectory(prefix="session-lottery-") as work:
        graphs = GraphSessions(Path(work), header.config, "cpu", protocol.threads,
                               int8_format(fingerprint["isa"]))
        for precision in protocol.precisions:
            sessions = [graphs.build(shape, precision) for _ in range(args.sessions)]
            for w in SIZES:
                feeds = inputs_for(w, header.config)
                runners = {i: runner(s, feeds) for i, s in enumerate(sessions)}
                runners["control"] = runners[0]  # the first session again, as if another
                timed = measure_interleaved(runners, protocol, keep_times=True)
                floors = {k: float(np.percentile(v["times"], FLOOR_LEVEL))
                          for k, v in timed.items()}
                own = [floors[i] for i in range(args.sessions)]
                mid = statistics.median(own)
                row = {"precision": precision, "batch": w[0], "seq_len": w[1],
                       "floors_ms": [round(f, 4) for f in own],
                       "spread": (max(own) - min(own)) / mid,
                       "median_abs_dev": statistics.median(abs(f / mid - 1) for f in own),
                       "control_diff": abs(floors["control"] / floors[0] - 1)}
                result["rows"].append(row)
                print(f"{precision} {w[0]}x{w[1]}: {args.sessions} sessions' floors "
                      f"{min(own):.3f}-{max(own):.3f} ms (spread {row['spread']:.1%}, median "
                      f"|dev| {row['median_abs_dev']:.1%}); one session timed as two: "
                      f"{row['control_diff']:.1%} apart", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
