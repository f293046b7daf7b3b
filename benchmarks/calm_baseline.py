"""What the slow-floors gate (``predictor.MAX_SLOW_FLOORS``) would say of finished profiles
if "calm" were measured from another baseline (no timing; seconds).

The gate counts a shape x size point as timed slow when the group that gave its lowest floor
ran over ``profile.CALM_BAND`` (1.1) x the calm speed. Until session 48 the calm speed was the
fastest group the profile saw (``analysis.group_slowdowns``: the reference against its fastest
at that precision and size, or the sentinel against its fastest); a minimum moves with one
lucky group. Since, it is the fastest speed held over 5 groups in a row
(``analysis.calm_speed``, ``run5`` here). This re-judges each profile's points against each
candidate (``baselines``: the fastest group, low percentiles of the groups' slowdowns, the
fastest held over 3, 5 or 9 groups in a row) and prints, per precision and baseline, the share
of points timed slow, beside the trust the profile was saved with and its held-out MAPE. Since
session 50 the gate counts each group by its own size's reference against that reference's
time in the groups the sentinel found calm (``analysis.own_slowdowns``): the ``own`` column,
beside ``run5``, the count of sessions 48-49.
Whether a profile's floors overstated latency is judged by what real bundles
measured later (``workload_profile.py``) and by other profiles of the same machine:
``--against`` scores each profile given there on every profile's measured floors (its
predictions over the floors, signed bias and MAPE, as ``transfer.py live``'s ``on_others``);
``--checks`` reads ``workload_profile.py`` results and prints, beside each profile they name,
what its real bundles measured later (floors and the promised percentile as ``verify`` judges
it: median |error| and within +-10%). ``looks``: what the first calm look selected by the larger
of the reference's and the sentinel's slowdown (as the profiler does) against the own-reference
count, and how far the looks moved each part's floors.

    .venv/bin/python benchmarks/calm_baseline.py benchmarks/data/intel-minilm-direct-s47 \\
        benchmarks/data/amd-zen4-minilm-direct-slow-s44 ... \\
        --against profiles/intel-xeon-amx-2core-avx512-minilm \\
        --checks benchmarks/results/workload_profile_*.json \\
        --out benchmarks/results/calm_baseline_s48.json

Session 50 re-judged every kept profile with a sentinel (the folders under benchmarks/data/
whose measurements carry ``sentinel_ms``) ``--checks benchmarks/results/workload_profile_*.json
--out benchmarks/results/calm_baseline_s50.json``; session 51 again, with the calm looks'
selections (``looks``), ``--out benchmarks/results/calm_baseline_s51.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.analysis import (calm_speed, fastest_reference, fastest_sentinel,
                                              group_key, group_slowdowns, lowest_floors,
                                              own_slowdowns, slow_floors)
from shaper_deploy.profiling.fingerprint import differing_fields
from shaper_deploy.profiling.folder import read_measurements
from shaper_deploy.profiling.predictor import MAX_SLOW_FLOORS, DeviceProfile
from shaper_deploy.profiling.profile import CALM_BAND
from transfer import score_by_precision

LEVELS = (0, 5, 10)  # percentiles of the groups' slowdowns taken as the calm speed (0: fastest)
RUNS = (3, 5, 9)  # sustained: the fastest median of this many groups in a row, as measured


def baselines(records: list[dict], slowdown: dict[tuple, float]) -> dict[str, float]:
    """Each candidate calm speed, over the fastest group: low percentiles of the groups'
    slowdowns (``pN``), and the fastest speed the machine held over ``k`` groups in a row in
    the order measured (``runK``: ``analysis.calm_speed`` with that run; ``run5`` is the
    gate's), which a lone fast group cannot set but a calm period of a few seconds can."""
    values = np.array(list(slowdown.values()))
    out = {(f"p{level}" if level else "fastest"):
           (float(np.percentile(values, level)) if level else 1.0) for level in LEVELS}
    out.update({f"run{k}": float(calm_speed(records, slowdown, k)) for k in RUNS})
    return out


def by_tokens(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per size in tokens (batch x length): the median group's reference over its fastest at
    that precision and size, and the same groups' sentinel over the sentinel's fastest (empty
    without a sentinel): how much more a slow host slows the smallest workload."""
    fastest, sentinel = fastest_reference(records), fastest_sentinel(records)
    pairs: dict[int, list[tuple[float, float]]] = {}
    for r in {group_key(r): r for r in records if r["reference_ms"] > 0}.values():
        if r.get("sentinel_ms", 0.0) > 0:
            pairs.setdefault(r["batch"] * r["seq_len"], []).append(
                (r["reference_ms"] / fastest[(r["precision"], r["batch"], r["seq_len"])],
                 r["sentinel_ms"] / sentinel))
    return {str(tokens): {"groups": len(v), "reference": float(np.median([a for a, _ in v])),
                          "sentinel": float(np.median([b for _, b in v]))}
            for tokens, v in sorted(pairs.items())}


def looks(records: list[dict], sweeps: int) -> dict[str, dict]:
    """What the first calm look selected from the sweeps' records (``profile.calm_look_items``:
    points whose lowest floor came from a group over ``CALM_BAND`` x the fastest by
    ``group_slowdowns``, the reference or the sentinel) against what the own-reference count
    of the gate (``analysis.own_slowdowns``) would select, and per precision how far every look
    moved the lowest floors of the points both select (``both``) and of those only the first
    selects (``first_only``): the median change and the share lowered by over 3%. Empty for a
    profile without looks."""
    if not any(r.get("sweep", 0) >= sweeps for r in records):
        return {}
    first = [r for r in records if r.get("sweep", 0) < sweeps]
    by_larger = lowest_floors(first, group_slowdowns(first))
    by_own = lowest_floors(first, own_slowdowns(first)[0])
    final = lowest_floors(records, group_slowdowns(records))
    out = {}
    for precision in sorted({key[0] for key in by_larger}):
        keys = [k for k in by_larger if k[0] == precision and by_larger[k][1] > CALM_BAND]
        sets = {"both": [k for k in keys if by_own[k][1] > CALM_BAND],
                "first_only": [k for k in keys if by_own[k][1] <= CALM_BAND]}
        row = {"points": sum(k[0] == precision for k in by_larger), "selected": len(keys)}
        for name, chosen in sets.items():
            moved = np.array([final[k][0] / by_larger[k][0] - 1 for k in chosen])
            row[name] = {"points": len(chosen),
                         "median_change": float(np.median(moved)) if len(moved) else None,
                         "lowered_3pct": float(np.mean(moved < -0.03)) if len(moved) else None}
        out[precision] = row
    return out


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
    for name, base in baselines(records, slowdown).items():
        shares = {}
        for precision in profile.precisions:
            slow = [s / base for key, (_, s) in best.items() if key[0] == precision]
            shares[precision] = {"points": len(slow),
                                 "slow": int(np.sum(np.array(slow) > CALM_BAND)),
                                 "share": float(np.mean(np.array(slow) > CALM_BAND))}
        out["baselines"][name] = {"over_fastest": base, "precisions": shares}
    # the gate since session 50: each size's own reference over its time when the sentinel
    # found the machine calm (analysis.own_slowdowns)
    out["sentinel_vs_reference"] = by_tokens(records)
    own = {precision: slow_floors(records, precision) for precision in profile.precisions}
    out["own"] = {precision: {**v, "share": v["slow"] / v["points"] if v["points"] else None}
                  for precision, v in own.items()}
    out["looks"] = looks(records, profile.header.protocol.sweeps)
    return out


def _key(folder: str) -> str:
    """A profile folder as results name it: from ``benchmarks/data/`` on where it is kept there
    (a benchmark may have run from another clone), else resolved."""
    text = str(Path(folder).resolve())
    return text[text.index("benchmarks/data/"):] if "benchmarks/data/" in text else text


def later_bundles(results: list[Path]) -> dict[str, list[dict]]:
    """Per profile folder (``_key``): what each ``workload_profile.py`` result measured of
    real bundles against it, as "median |error| (within +-10%)"."""
    out: dict[str, list[dict]] = {}
    for path in results:
        data = json.loads(path.read_text())
        bundles = data.get("real_bundles")
        if not bundles or not bundles.get("percentile_judged"):
            continue
        cell = (lambda s: f"{s['median_abs_error']:.2%} ({s['within_10pct']:.0%})")
        out.setdefault(_key(data["profile"]), []).append({
            "result": path.name, "percentile": bundles["promise"]["percentile"],
            "floor": cell(bundles["floor"]), "judged": cell(bundles["percentile_judged"]),
            "floor_signed": bundles["floor"]["mean_signed_error"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="scored on the floors of each profile of its machine and space")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checks", type=Path, nargs="*", default=[],
                        help="workload_profile.py results: later bundles of these profiles")
    args = parser.parse_args()
    against = [DeviceProfile.load(p) for p in args.against]
    rows = [judge(p, against) for p in args.profiles]
    checks = later_bundles(args.checks)
    for r in rows:
        r["later_bundles"] = checks.get(_key(r["profile"]), [])
    for r in rows:
        cells = [f"{name} (x{b['over_fastest']:.3f}): " + " / ".join(
            f"{v['share']:.0%}" for v in b["precisions"].values())
            for name, b in r["baselines"].items()]
        cells.append("own reference (the gate since session 50): " + " / ".join(
            f"{v['share']:.0%}" for v in r["own"].values()))
        print(f"{r['profile']}: {'reliable' if r['trust'] else 'UNRELIABLE'}; slow floors, "
              f"limit {MAX_SLOW_FLOORS:.0%}: " + "; ".join(cells))
        if r["sentinel_vs_reference"]:
            print("  median group over its fastest, reference / sentinel, by tokens: " + ", ".join(
                f"{t} x{v['reference']:.2f} / x{v['sentinel']:.2f}"
                for t, v in r["sentinel_vs_reference"].items()))
        for precision, v in r["looks"].items():
            cell = (lambda w: f"{w['points']} moved {w['median_change']:+.1%} (lowered over 3%: "
                    f"{w['lowered_3pct']:.0%})" if w["points"] else "none")
            print(f"  {precision}'s first calm look: {v['selected']} of {v['points']} points by "
                  f"the larger slowdown; by the own reference too: {cell(v['both'])}; by the "
                  f"larger alone: {cell(v['first_only'])}")
        for c in r["later_bundles"]:
            print(f"  later bundles ({c['result']}): floors {c['floor']}; p{c['percentile']:g} "
                  f"as verify judges it {c['judged']}")
        for name, scores in r["against"].items():
            print(f"  {name} on its floors: " + "; ".join(
                f"{q} MAPE {v['mape']:.2%}, bias {v['bias']:+.2%}" for q, v in scores.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "calm_baseline", "band": CALM_BAND,
                                    "limit": MAX_SLOW_FLOORS, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
