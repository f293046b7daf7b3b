"""How `verify`, `bench` and a plan's closed loop judge a bundle timed in a slow (or fast)
window, rescored on real bundles already measured (no timing; seconds).

Each window of ``workload_profile.py``'s real bundles (``real_bundles.rows``: the floor now,
the reference's drift, the prediction) is judged twice with the profile it was checked
against:

- **before session 23**: the floor now times the profile's tail factor; the drift recorded
  only;
- **now** (``DeviceProfile.measure``): the floor now taken back to the profile's speed by
  ``predictor.priced_drift`` (the drift up to the 90th percentile of the profile's own group
  slowdowns; a speed-up whole), then times the tail factor.

Both are scored against the profile's prediction for that bundle and percentile (what a plan
promised; from the profile as it is now, which for some checks was refitted since), alone
and as ``judged_ms`` (the larger of the estimate and the percentile observed in the window):
median |error|, share within +-10%, and the share judged more than 5% over the prediction (a
plan kept with 5% to spare that would be called OVER).

    .venv/bin/python benchmarks/verify_rule.py \\
        benchmarks/results/workload_profile_amd_zen5_minilm*.json \\
        benchmarks/results/workload_profile_amd_zen2_minilm_sweeps.json \\
        --out benchmarks/results/verify_rule.json

(Not ``workload_profile_amd_zen2_minilm.json``: its windows were timed against the Zen 2
profile shipped before the sweeps, remade since, so their drift is relative to a reference
floor no profile has now; nor Zen 4's, which kept no floors.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.predictor import DeviceProfile, priced_drift
from shaper_deploy.profiling.folder import shape_from_key


def score(estimate: np.ndarray, predicted: np.ndarray) -> dict:
    error = estimate / predicted - 1
    return {"median_abs_error": float(np.median(np.abs(error))),
            "median_error": float(np.median(error)),
            "within_10pct": float(np.mean(np.abs(error) <= 0.10)),
            "over_5pct": float(np.mean(error > 0.05))}


def rejudge(result: dict, profiles: dict[str, DeviceProfile]) -> dict | None:
    rows = [r for r in (result.get("real_bundles") or {}).get("rows", [])
            if "estimated_pct_ms" in r and "floor_ms" in r]
    if not rows:
        return None
    path = result["profile"]
    profile = profiles.setdefault(path, DeviceProfile.load(path))
    speed = profile.machine_speed()
    old, new, observed, predicted, drift, priced = [], [], [], [], [], []
    for r in rows:
        p = priced_drift(r["drift"], profile.priced_slowdown(r["precision"]))
        floor = r["floor_ms"] / p
        tail = lambda ms: float(profile.tail_factor(r["precision"], r["percentile"], ms))
        old.append(r["floor_ms"] * tail(r["floor_ms"]))
        new.append(floor * tail(floor))
        observed.append(r["observed_pct_ms"])
        shape = shape_from_key(r["shape"], profile.space)
        predicted.append(float(profile.predict([shape], r["precision"], r["batch"],
                                               r["seq_len"], r["percentile"],
                                               [r["dropped"]])[0]))
        drift.append(r["drift"])
        priced.append(p)
    old, new, observed, predicted = map(np.array, (old, new, observed, predicted))
    drift, priced = np.array(drift), np.array(priced)
    return {"profile": path, "windows": len(rows),
            "profile_speed_p90": speed and speed["p90"],
            "drift": {"median": float(np.median(drift)), "min": float(drift.min()),
                      "max": float(drift.max()),
                      "beyond_priced": int(np.sum(drift > priced * 1.005))},
            # the profile refitted since the check (a later tail model): rescored as it is now
            "refitted_since": not bool(np.allclose(
                predicted, [r["predicted_pct_ms"] for r in rows], rtol=1e-6)),
            "estimate": {"before": score(old, predicted), "now": score(new, predicted)},
            "judged": {"before": score(np.maximum(old, observed), predicted),
                       "now": score(np.maximum(new, observed), predicted)},
            "observed_alone": score(observed, predicted),
            "_arrays": (old, new, observed, predicted)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+",
                    help="workload_profile.py result files with real bundles")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    profiles: dict[str, DeviceProfile] = {}
    checks = {}
    for file in args.results:
        rejudged = rejudge(json.loads(file.read_text()), profiles)
        if rejudged is not None:
            checks[str(file)] = rejudged
            e, j = rejudged["estimate"], rejudged["judged"]
            print(f"{file.name}: {rejudged['windows']} windows, drift median "
                  f"{rejudged['drift']['median']:.2f}; estimate before "
                  f"{e['before']['median_abs_error']:.1%} ({e['before']['within_10pct']:.0%}), "
                  f"now {e['now']['median_abs_error']:.1%} ({e['now']['within_10pct']:.0%}); "
                  f"judged over +5% before {j['before']['over_5pct']:.0%}, "
                  f"now {j['now']['over_5pct']:.0%}")
    old, new, observed, predicted = (np.concatenate(a) for a in zip(
        *(c.pop("_arrays") for c in checks.values())))
    pooled = {"windows": len(predicted),
              "estimate": {"before": score(old, predicted), "now": score(new, predicted)},
              "judged": {"before": score(np.maximum(old, observed), predicted),
                         "now": score(np.maximum(new, observed), predicted)}}
    print(f"pooled, {len(predicted)} windows: estimate before "
          f"{pooled['estimate']['before']['median_abs_error']:.1%}, now "
          f"{pooled['estimate']['now']['median_abs_error']:.1%}; judged over +5% before "
          f"{pooled['judged']['before']['over_5pct']:.0%}, now "
          f"{pooled['judged']['now']['over_5pct']:.0%}")
    args.out.write_text(json.dumps({"benchmark": "verify_rule", "pooled": pooled,
                                    "checks": checks}, indent=1) + "\n")


if __name__ == "__main__":
    main()
