"""What the slow-floors gate (``predictor.MAX_SLOW_FLOORS``) would say of finished profiles
if "calm" were measured from another baseline (no timing; seconds).

The gate counts a shape x size point as timed slow when the group that gave its lowest floor
ran over ``profile.CALM_BAND`` (1.1) x the calm speed, and the calm speed is the fastest group
this profile saw (``analysis.group_slowdowns``: the reference against its fastest at that
precision and size, or the sentinel against its fastest). A minimum moves with one lucky
stretch: a profile whose first minute ran 10% faster than the rest judges the rest slow.
This re-judges each profile's points with the calm speed taken instead as a low percentile of
its groups' slowdowns, so the fastest few groups no longer set it alone, and prints, per
precision and baseline, the share of points timed slow, beside the profile's trust and
held-out MAPE. Whether a profile's floors overstated latency is judged by what real bundles
measured later (``workload_profile.py``) and by other profiles of the same machine:
``--against`` scores each profile given there on every profile's measured floors (its
predictions over the floors, signed bias and MAPE, as ``transfer.py live``'s ``on_others``).

    .venv/bin/python benchmarks/calm_baseline.py benchmarks/data/intel-minilm-direct-s47 \\
        benchmarks/data/amd-zen4-minilm-direct-slow-s44 ... \\
        --against profiles/intel-xeon-amx-2core-avx512-minilm \\
        --out benchmarks/results/calm_baseline_s47.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.analysis import group_slowdowns, lowest_floors
from shaper_deploy.profiling.fingerprint import differing_fields
from shaper_deploy.profiling.folder import read_measurements
from shaper_deploy.profiling.predictor import MAX_SLOW_FLOORS, DeviceProfile
from shaper_deploy.profiling.profile import CALM_BAND
from transfer import score_by_precision

LEVELS = (0, 5, 10)  # percentiles of the groups' slowdowns taken as the calm speed (0: fastest)


def judge(folder: Path, against: list[DeviceProfile]) -> dict:
    """Per precision and baseline: the points whose lowest floor came from a group over
    ``CALM_BAND`` x that baseline, and the share; each of ``against`` of the same design space
    and machine fingerprint scored on this profile's floors."""
    records = read_measurements(folder)
    slowdown = group_slowdowns(records)
    values = np.array(list(slowdown.values()))
    best = lowest_floors([r for r in records if r["phase"] == "main"], slowdown)
    profile = DeviceProfile.load(folder)
    out = {"profile": str(folder), "trust": profile.trust["reliable"],
           "reasons": profile.trust["reasons"], "groups": len(values),
           "held_out_mape": {p: profile.model.metrics[p]["held_out"]["mape"]
                             for p in profile.precisions},
           "baselines": {}, "against": {}}
    keys = sorted({r["shape_key"] for r in records if r["phase"] == "main"})
    for other in against:
        if (other.path.resolve() != Path(folder).resolve() and other.space == profile.space
                and not differing_fields(other.header.fingerprint, profile.header.fingerprint)):
            out["against"][str(other.path)] = score_by_precision(other.model, profile,
                                                                 records, keys)
    for level in LEVELS:
        base = float(np.percentile(values, level)) if level else 1.0
        shares = {}
        for precision in profile.precisions:
            slow = [s / base for key, (_, s) in best.items() if key[0] == precision]
            shares[precision] = {"points": len(slow),
                                 "slow": int(np.sum(np.array(slow) > CALM_BAND)),
                                 "share": float(np.mean(np.array(slow) > CALM_BAND))}
        out["baselines"][f"p{level}" if level else "fastest"] = {"over_fastest": base,
                                                                 "precisions": shares}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="scored on the floors of each profile of its machine and space")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    against = [DeviceProfile.load(p) for p in args.against]
    rows = [judge(p, against) for p in args.profiles]
    for r in rows:
        cells = [f"{name} (x{b['over_fastest']:.3f}): " + " / ".join(
            f"{v['share']:.0%}" for v in b["precisions"].values())
            for name, b in r["baselines"].items()]
        print(f"{r['profile']}: {'reliable' if r['trust'] else 'UNRELIABLE'}; slow floors, "
              f"limit {MAX_SLOW_FLOORS:.0%}: " + "; ".join(cells))
        for name, scores in r["against"].items():
            print(f"  {name} on its floors: " + "; ".join(
                f"{q} MAPE {v['mape']:.2%}, bias {v['bias']:+.2%}" for q, v in scores.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "calm_baseline", "band": CALM_BAND,
                                    "limit": MAX_SLOW_FLOORS, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
