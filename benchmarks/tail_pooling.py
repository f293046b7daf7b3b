"""Whose slow periods a profile's percentile promise carries: one tail per precision, one tail
for the machine (both precisions' measurements mixed), and per precision the larger of the
two (what ``predictor.fit_model`` keeps), each judged on time the tail did not see (no timing,
seconds per profile).

A profile times each precision in groups of its own, so a tail per precision sees only the
minutes its groups fell in. The tails are built with ``predictor.tail_model`` (and
``larger_tail``), centred on the fitted model's floor, and judged by the share of runs over
the predicted percentile (a p90 promise is kept if at most 10% are):

1. Held-out time, per profile: its measurements in time order cut in three blocks; the tails
   are fitted on two and scored on the third's measurements, each measurement's share of runs
   over the prediction read from its run percentiles (p10..p99, interpolated in log latency;
   no run 5% under its p10, none 10% over its p99).
2. ``--checks``: later checks of real bundles (``benchmarks/workload_profile.py --supernet``,
   which keeps every run's time since 2026-12-03), re-scored exactly on their runs, with the
   median ratio of the predicted to the observed percentile per window (over 1:
   conservative); and their floors' errors, also against the prediction times the window's
   ``drift`` (the reference graph timed in the same window, over the profile's): the
   machine's speed that day taken out.

    .venv/bin/python benchmarks/tail_pooling.py profiles/*/ \\
        benchmarks/data/amd-zen5-minilm-3sweeps-36shapes \\
        --checks benchmarks/results/workload_profile_amd_zen5_minilm_promise_s21?.json \\
        benchmarks/results/workload_profile_amd_zen5_minilm_calm_s21_?.json \\
        --out benchmarks/results/tail_pooling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shaper_deploy.profiling.predictor import (DeviceProfile, larger_tail, model_floors,
                                               tail_factor, tail_model)
from shaper_deploy.profiling.folder import read_measurements

LEVELS = (50, 75, 90, 95)
BLOCKS = 3
OWN, MACHINE, LARGER = ("one per precision", "one for the machine",
                        "the larger of the two (the library's)")


def fitted(profile: DeviceProfile, records: list[dict[str, Any]], center: Callable
           ) -> dict[str, dict[str, Any]]:
    """The three tails of ``records``, each as precision -> tail (None: too few
    measurements), centred on ``center``."""
    machine = tail_model(records, profile.precisions, center)
    own = {p: tail_model(records, p, center) for p in profile.precisions}
    return {OWN: own, MACHINE: {p: machine for p in profile.precisions},
            LARGER: {p: larger_tail(machine, own[p], p) for p in profile.precisions}}


def share_over(record: dict[str, Any], ms: float) -> float:
    """The share of a measurement's runs over ``ms``, from its run percentiles."""
    levels = sorted((float(k), v) for k, v in record["run_ms"].items())
    q = [0.0, *(lv / 100 for lv, _ in levels), 1.0]
    x = [np.log(levels[0][1]) - 0.05, *(np.log(v) for _, v in levels), np.log(levels[-1][1]) + 0.1]
    return float(1 - np.interp(np.log(ms), x, q))


def held_out_time(profile: DeviceProfile) -> dict[str, Any]:
    records = read_measurements(profile.path)
    if not any("run_ms" in r for r in records):
        return {"skipped": "measurements without run percentiles (made before they were kept)"}
    sums: dict[str, dict[str, list[float]]] = {}
    center = model_floors(profile.model, records, profile.space)
    for block in np.array_split(np.arange(len(records)), BLOCKS):
        inside = set(block.tolist())
        tails = fitted(profile, [r for i, r in enumerate(records) if i not in inside], center)
        test = [r for i, r in enumerate(records) if i in inside and r["phase"] == "main"
                and "run_ms" in r and center(r) is not None]
        for name, by_precision in tails.items():
            for r in test:
                tail = by_precision[r["precision"]]
                if tail is None:  # too few measurements of this precision elsewhere
                    continue
                for level in LEVELS:
                    ms = center(r) * float(tail_factor(tail, level, center(r)))
                    s = sums.setdefault(name, {}).setdefault(f"{r['precision']} p{level}", [0, 0])
                    s[0] += share_over(r, ms)
                    s[1] += 1
    return {name: {k: {"runs_over": a / n, "measurements": n} for k, (a, n) in s.items()}
            for name, s in sums.items()}


def _floor_errors(errors: list[float]) -> dict[str, float]:
    e = np.abs(np.asarray(errors))
    return {"median_abs_error": float(np.median(e)), "within_10pct": float(np.mean(e <= 0.1)),
            "mean_signed_error": float(np.mean(errors))}


def rescore_check(path: Path) -> dict[str, Any]:
    d = json.loads(path.read_text())
    rows = d["real_bundles"]["rows"]
    if not all("times" in r for r in rows):
        raise SystemExit(f"{path}: a check without run times (made before 2026-12-03); "
                         "re-run benchmarks/workload_profile.py --supernet")
    profile = DeviceProfile.load(d["profile"])
    records = read_measurements(profile.path)
    tails = fitted(profile, records, model_floors(profile.model, records, profile.space))
    out = {"check": str(path), "profile": d["profile"],
           "drift_median": float(np.median([r["drift"] for r in rows])),
           "floor": _floor_errors([r["error"] for r in rows]),
           # the floor against the prediction times the reference's speed in the same window
           "floor_at_drift": _floor_errors([(1 + r["error"]) * r["drift"] - 1 for r in rows]),
           "tails": {}}
    for name, by_precision in tails.items():
        for p in sorted({r["precision"] for r in rows}):
            mine = [r for r in rows if r["precision"] == p]
            runs = sum(len(r["times"]) for r in mine)
            for level in LEVELS:
                over, ratios = 0, []
                for r in mine:
                    ms = r["predicted_floor_ms"] * float(tail_factor(
                        by_precision[p], level, r["predicted_floor_ms"]))
                    t = np.asarray(r["times"])
                    over += int((t > ms).sum())
                    ratios.append(ms / float(np.percentile(t, level)))
                out["tails"].setdefault(name, {})[f"{p} p{level}"] = {
                    "runs_over": over / runs, "runs": runs, "windows": len(mine),
                    "predicted_over_observed": float(np.median(ratios))}
    return out


def _line(label: str, scores: dict[str, dict[str, Any]]) -> str:
    return f"{label:60s} " + " | ".join(
        f"{name[:16]}: " + " ".join(f"{k.split()[0]} {v['runs_over']:.1%}"
                                    for k, v in s.items() if k.endswith("p90"))
        for name, s in scores.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="*", type=Path)
    ap.add_argument("--checks", nargs="*", type=Path, default=[])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "tail_pooling", "levels": list(LEVELS),
                              "held_out_time": {}, "checks": []}
    for path in args.profiles:
        profile = DeviceProfile.load(path)
        result["held_out_time"][str(path)] = scores = held_out_time(profile)
        if "skipped" not in scores:
            print(_line(f"{path.name} (held-out time, p90 runs over)", scores), file=sys.stderr)
    for path in args.checks:
        entry = rescore_check(path)
        result["checks"].append(entry)
        print(_line(f"{path.name} (drift {entry['drift_median']:.2f})", entry["tails"]),
              file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
