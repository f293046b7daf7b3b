"""How long a shared host's calm and slow periods last: a profile's reference graph timed one
turn at a time (the profile's protocol: pause, park, warm-up, timed runs), fp32 and int8 at a
small, middle and large size, over and over for ``--minutes``.

Each check is scored against the fastest check of its precision and size: within 1.1x is
calm (``profile.CALM_BAND``), as a calm look judges it. The result: per series the share of
calm checks and the median slowdown, the lengths of the calm and slow stretches in seconds,
and the series as one character per check (``.`` calm, ``s`` up to 1.5x, ``S`` slower:
``analysis.SPEED_BANDS``). It
says how long a calm look may have to wait for a calm moment (``profile.wait_for_calm``).

    .venv/bin/python benchmarks/calm_periods.py \\
        --profile benchmarks/data/amd-zen5-minilm-calm-looks-s24b --minutes 3 \\
        --out benchmarks/results/calm_periods_amd_zen5_s25.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.analysis import SPEED_BANDS
from shaper_deploy.profiling.folder import read_header
from shaper_deploy.profiling.profile import CALM_BAND, GraphSessions, runner
from shaper_deploy.profiling.protocol import inputs_for, measure_interleaved
from shaper_deploy.runtime import int8_format
from shaper_deploy.shape import Shape

SIZES = ((1, 16), (1, 128), (4, 256))


def stretches(calm: list[bool], seconds: list[float]) -> dict[str, list[float]]:
    """The lengths in seconds of the runs of calm and of slow checks (a run still open at the
    end is counted as far as it went)."""
    out: dict[str, list[float]] = {"calm": [], "slow": []}
    start = 0
    for i in range(1, len(calm) + 1):
        if i == len(calm) or calm[i] != calm[start]:
            end = seconds[i] if i < len(calm) else seconds[-1]
            out["calm" if calm[start] else "slow"].append(round(end - seconds[start], 1))
            start = i
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", type=Path, required=True,
                    help="a profile of the design space: its config, reference and protocol")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    header = read_header(args.profile)
    one = replace(header.protocol, rounds=1)
    fingerprint = device_fingerprint("cpu")
    with tempfile.TemporaryDirectory(prefix="calm-periods-") as work:
        sessions = GraphSessions(Path(work), header.config, "cpu", one.threads,
                                 int8_format(fingerprint["isa"]))
        reference = Shape(tuple(header.reference_shape), header.space)
        runners = {}
        for precision in one.precisions:
            session = sessions.build(reference, precision)
            for w in SIZES:
                runners[f"{precision} {w[0]}x{w[1]}"] = runner(session,
                                                               inputs_for(w, header.config))
        t0, seconds, series = time.perf_counter(), [], {k: [] for k in runners}
        while time.perf_counter() - t0 < args.minutes * 60:
            seconds.append(round(time.perf_counter() - t0, 2))
            for name, run in runners.items():
                series[name].append(measure_interleaved({0: run}, one)[0]["median_ms"])
            if len(seconds) % 25 == 0:
                print(f"{seconds[-1] / 60:.1f} of {args.minutes:g} min", file=sys.stderr)
            time.sleep(0.3)
    result = {"benchmark": "calm_periods", "profile": str(args.profile),
              "cpu_model": fingerprint["cpu_model"], "cpu_id": fingerprint.get("cpu_id"),
              "isa": fingerprint["isa"], "minutes": args.minutes, "checks": len(seconds),
              "seconds": seconds, "series": {}}
    for name, ms in series.items():
        fastest = min(ms)
        calm = [m <= CALM_BAND * fastest for m in ms]
        runs = stretches(calm, seconds)
        result["series"][name] = {
            "fastest_ms": round(fastest, 4), "calm_share": sum(calm) / len(calm),
            "median_slowdown": statistics.median(ms) / fastest, "stretches_s": runs,
            "longest_calm_s": max(runs["calm"], default=0.0),
            "longest_slow_s": max(runs["slow"], default=0.0),
            "trace": "".join("." if m <= CALM_BAND * fastest else "s"
                             if m <= SPEED_BANDS[-1] * fastest else "S" for m in ms),
            "ms": [round(m, 4) for m in ms]}
        print(f"{name:12s} calm {sum(calm) / len(calm):4.0%} of checks, median "
              f"x{statistics.median(ms) / fastest:.2f}, longest calm "
              f"{max(runs['calm'], default=0):.0f} s, longest slow "
              f"{max(runs['slow'], default=0):.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
