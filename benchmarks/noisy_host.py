"""What a profile's latency model should be fitted on, on a noisy host: each estimator of a
measurement's latency refitted on the same measurements (no timing, seconds per profile).

A slow period of a shared host only ever adds time, and it is not uniform across graphs, so
the candidates are the low end of a measurement's runs and the median, each with and without
the division by the reference graph's slowdown that profiles used until this version
(reference's calm latency = 25th percentile of its per-group medians, a group more than 6%
off it divided by that factor). For each: held-out MAPE and within +-10% (the profile's own
held-out shapes, grid and check sizes) and the noise floor (shapes re-measured at the end),
also on the calm pairs only (both measured while the reference ran within 1.1x of its fastest).
Since session 27 also the lowest floor over the machine's drift smoothed over neighbouring
groups (``machine_drift``), the median of a point's floors each over its group's slowdown,
and the mean of its two lowest floors.
Then, for the estimator the library uses (the floor, ``analysis.record_floor``), how well the
tail model predicts held-out measurements' own p50/p90/p99, with the tail centred on the
fitted model's floor (the library's) against each measurement's own floor. For a profile of
several sweeps (``Protocol.sweeps``), each sweep refitted alone, then the first k pooled;
for one with calm looks (``Protocol.calm_looks``), the fit with them against without, and
with each number of looks in between (``first_looks``), and how long they waited for a calm
moment (``calm_wait``, since session 25).
Since session 31, whether the noise floor's pairs stray apart or shift together, and
whether the reference graph shifted with them (``pair_shift``); the median of the calm
looks' floors, each over its group's slowdown, as two more estimators; and per estimator
how many of the profiles the trust rule would mark reliable (``trust_by_estimator``).
With ``--checks`` (``workload_profile.py`` results), every estimator's fit is also scored on
real bundles measured later against the profile they name (time held out, not only shapes).

    .venv/bin/python benchmarks/noisy_host.py benchmarks/data/amd-zen2-minilm-1sweep-x-4rounds \\
        profiles/amd-epyc-zen4-2core-avx512-minilm profiles/x86_64-2core-avx512-minilm \\
        --out benchmarks/results/noisy_host.json
    .venv/bin/python benchmarks/noisy_host.py benchmarks/data/amd-zen5-minilm-3sweeps-36shapes \\
        profiles/amd-epyc-zen5-2core-avx512-minilm --checks \\
        benchmarks/results/workload_profile_amd_zen5_minilm_calm_s21_?.json \\
        benchmarks/results/workload_profile_amd_zen5_minilm_promise_s21?.json \\
        --out benchmarks/results/noisy_host_amd_zen5_later.json

Session 39's (``--estimators`` keeps the estimators whose name holds one of the words; the
23 profiles and checks are listed in docs/benchmarks.md, "the BERT-base space"):

    .venv/bin/python benchmarks/noisy_host.py PROFILES... --checks CHECKS... \
        --estimators "the library" beyond "lowest floor / its group" "median of floors / their" \
        --out benchmarks/results/noisy_host_beyond_band_s39.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from shaper_deploy.profiling import analysis as A
from shaper_deploy.profiling import folder as F
from shaper_deploy.profiling import predictor as PR
from shaper_deploy.profiling import profile as P


def _old_factor(records):
    """The previous version's per-record machine factor (reference slowdown, 6% deadband)."""
    by = {}
    for r in records:
        by.setdefault((r["precision"], r["batch"], r["seq_len"]), {})[
            (r["group"], r["retry"])] = r["reference_ms"]
    calm = {k: float(np.percentile(list(v.values()), 25)) for k, v in by.items()}

    def factor(r):
        f = r["reference_ms"] / calm[(r["precision"], r["batch"], r["seq_len"])]
        return 1.0 if abs(f - 1) <= 0.06 else f
    return factor


def _rounds(rs, f):
    return [m / f(r) for r in rs for m in r["round_medians"]]


def _calmest(rs, g):
    """The look (record) whose group's reference ran fastest; the lowest floor on ties."""
    return min(rs, key=lambda r: (g(r), A.record_floor(r)))


def _lowest(rs):
    return min(rs, key=A.record_floor)


def machine_drift(slowdowns: dict[tuple, float], around: int = 1):
    """Session 27: the machine's speed when a record was timed, smoothed: the median of the
    group slowdowns (``analysis.group_slowdowns``) over every size and precision of the groups
    within ``around`` groups of its own (groups are numbered in time order), so one group's
    reference noise does not enter the correction."""
    by: dict[int, list[float]] = {}
    for key, slowdown in slowdowns.items():
        by.setdefault(key[2], []).append(slowdown)
    order = sorted(by)
    smooth = {g: statistics.median([v for h in order[max(0, i - around):i + around + 1]
                                    for v in by[h]]) for i, g in enumerate(order)}
    return lambda r: smooth.get(r["group"], 1.0)


# Each: (a shape's looks at one size, the old factor, the group slowdown, the machine's
# smoothed drift) -> its latency.
ESTIMATORS = {
    "floor (p10 of runs; the library's)": lambda rs, f, g, d: A.record_floor(_lowest(rs)),
    "floor / reference slowdown": lambda rs, f, g, d: min(A.record_floor(r) / f(r) for r in rs),
    "lowest round median": lambda rs, f, g, d: min(_rounds(rs, lambda r: 1.0)),
    "median of round medians": lambda rs, f, g, d: statistics.median(_rounds(rs, lambda r: 1.0)),
    "median / reference slowdown (before)": lambda rs, f, g, d: statistics.median(_rounds(rs, f)),
    # session 22: the reference's group slowdown (analysis.group_slowdowns) to pick or correct
    "floor of the calmest look": lambda rs, f, g, d: A.record_floor(_calmest(rs, g)),
    "lowest floor / its group's slowdown":
        lambda rs, f, g, d: A.record_floor(_lowest(rs)) / g(_lowest(rs)),
    # session 27 (the Intel class's int8 noise floor: the host's drift under the calm band)
    "lowest floor / the machine's drift (+-1 group)":
        lambda rs, f, g, d: min(A.record_floor(r) / d(r) for r in rs),
    "median of floors / their group's slowdown":
        lambda rs, f, g, d: float(np.median([A.record_floor(r) / g(r) for r in rs])),
    "mean of the 2 lowest floors":
        lambda rs, f, g, d: float(np.mean(sorted(map(A.record_floor, rs))[:2])),
    # session 31 (the noise floor's pairs shift with the reference within the calm band):
    # the looks timed within a band of the fastest reference, each over its slowdown, their
    # median; the lowest floor where none was
    "median of calm floors / their slowdown (1.1x)": lambda rs, f, g, d: _calm(rs, g, 1.1),
    "median of calm floors / their slowdown (1.2x)": lambda rs, f, g, d: _calm(rs, g, 1.2),
    # session 39 (the AMD Zen 4 BERT-base profile's int8 at 1 x 16-32 tokens: every look of
    # some shapes 1.4-2x slow): the lowest floor with only its group's slowdown beyond a band
    # taken out, so the calm band's noise is left alone and a slow period's bulk is not
    **{f"lowest floor / slowdown beyond {b:g}x":
       (lambda b: lambda rs, f, g, d: _beyond(rs, g, b))(b) for b in (1.1, 1.2, 1.3, 1.5)},
}


def _beyond(rs, g, band: float) -> float:
    return min(A.record_floor(r) / max(1.0, g(r) / band) for r in rs)


def _calm(rs, g, band: float) -> float:
    calm = [A.record_floor(r) / g(r) for r in rs if g(r) <= band]
    return float(np.median(calm)) if calm else A.record_floor(_lowest(rs))


@contextlib.contextmanager
def estimated_with(estimator):
    """``measured_latency`` (which every fit and the noise floor read) with ``estimator``."""
    def measured_latency(records, phase="main"):
        slow = A.group_slowdowns(records)
        f, d = _old_factor(records), machine_drift(slow)

        def g(r):
            return slow.get(A.group_key(r), 1.0)
        pooled = {}
        for r in records:
            if r["phase"] == phase:
                pooled.setdefault((r["precision"], r["batch"], r["seq_len"]), {}).setdefault(
                    r["shape_key"], []).append(r)
        return {k: {s: estimator(v, f, g, d) for s, v in shapes.items()}
                for k, shapes in pooled.items()}
    saved = A.measured_latency, PR.measured_latency
    A.measured_latency = PR.measured_latency = measured_latency
    try:
        yield
    finally:
        A.measured_latency, PR.measured_latency = saved


def percentile_errors(header, records, centred_on_model: bool) -> dict:
    """Held-out measurements' own run percentiles against floor x tail factor."""
    saved = PR.model_floor
    if not centred_on_model:
        PR.model_floor = lambda model, records, p, space: A.record_floor
    try:
        model = PR.fit_model(header, records)
    finally:
        PR.model_floor = saved
    out = {}
    for p in model.precisions:
        held = set(model.metrics[p]["held_out_keys"])
        mine = [r for r in records if r["precision"] == p and r["phase"] == "main"
                and r["shape_key"] in held and "run_ms" in r]
        for level in (50, 90, 99):
            if not mine or str(level) not in mine[0]["run_ms"]:
                continue
            e = np.array([float(model.predict([F.shape_from_key(r["shape_key"], header.space)],
                                              p, r["batch"], r["seq_len"], level,
                                              [r.get("dropped") or []])[0])
                          / r["run_ms"][str(level)] - 1 for r in mine])
            out[f"{p} p{level}"] = {"median_abs_error": float(np.median(np.abs(e))),
                                    "median_error": float(np.median(e)),
                                    "under_predicted": float(np.mean(e < 0)), "n": len(e)}
    return out


def later(model, space, checks: list[dict], precision: str) -> dict | None:
    """The fit's floors against real bundles measured later (``workload_profile.py``'s
    rows: their floor then), per precision: time held out, not only shapes."""
    # (results made before floors were kept have no floor_ms: they score nothing here)
    rows = [r for r in checks if r["precision"] == precision and "floor_ms" in r]
    if not rows:
        return None
    e = np.array([float(model.predict([F.shape_from_key(r["shape"], space)], precision,
                                      r["batch"], r["seq_len"], dropped=[r["dropped"]])[0])
                  / r["floor_ms"] - 1 for r in rows])
    return {"n": len(e), "median_abs_error": float(np.median(np.abs(e))),
            "within_10pct": float(np.mean(np.abs(e) <= 0.10)), "mean_error": float(e.mean())}


def refit(header, records, label: str, checks: list[dict] = ()) -> dict:
    """Per precision: held-out MAPE, within +-10% and noise floor of a fit of ``records``,
    and its error on ``checks`` (later real bundles) if any."""
    model = PR.fit_model(header, records)
    out = {p: {"held_out_mape": model.metrics[p]["held_out"]["mape"],
               "within_10pct": model.metrics[p]["held_out"]["within_10pct"],
               "noise_floor": (A.noise_floor(records, p) or {}).get("median_abs_rel_diff"),
               "later_bundles": later(model, header.space, list(checks), p)}
           for p in model.precisions}
    print(f"{label} " + " | ".join(
        f"{p} MAPE {v['held_out_mape']:.1%} noise {v['noise_floor'] or 0:.1%}"
        + (f" later {v['later_bundles']['median_abs_error']:.1%} "
           f"({v['later_bundles']['within_10pct']:.0%})" if v["later_bundles"] else "")
        for p, v in out.items()), file=sys.stderr)
    return out


def calm_noise_floor(records, precision: str, within: float = 1.1) -> dict:
    """The noise floor on the measurements taken while the reference graph ran within
    ``within`` of its fastest group at the same size (``analysis.group_slowdowns``):
    whether a profile is unreliable only because its re-measurements met other periods."""
    slowdown = A.group_slowdowns(records)
    calm = [r for r in records if slowdown.get(A.group_key(r), float("inf")) <= within]
    on_all, on_calm = A.noise_floor(records, precision), A.noise_floor(calm, precision)
    return {"within": within, "pairs": (on_calm or {}).get("pairs", 0),
            "all_pairs": (on_all or {}).get("pairs", 0),
            "median_abs_rel_diff": (on_calm or {}).get("median_abs_rel_diff"),
            "all_median_abs_rel_diff": (on_all or {}).get("median_abs_rel_diff")}


def pair_shift(records, precision: str) -> dict:
    """Session 31: whether the noise floor's pairs stray apart or move together. The signed
    median of (repeat / first measurement - 1) over the pairs' lowest floors (what the noise
    floor takes the absolute median of: a signed median near it is a shift of every pair the
    same way), and per sweep (calm looks included) the same over the pairs timed in that
    sweep beside the median of their groups' reference graphs' ratio: a shift the
    reference shares is the machine's speed moving between the two phases' minutes."""
    main, again = A.measured_latency(records, "main"), A.measured_latency(records, "repeat")
    signed = [again[k][s] / main[k][s] - 1 for k in again if k[0] == precision
              for s in again[k] if s in main.get(k, {})]
    first: dict[tuple, dict] = {}
    for r in records:
        if r["precision"] == precision and not r["retry"]:
            first.setdefault((r["phase"], r.get("sweep", 0), r["shape_key"], r["batch"],
                              r["seq_len"]), r)
    sweeps = {}
    for sweep in sorted({k[1] for k in first}):
        pairs = [(first[k], first[("main", *k[1:])]) for k in first
                 if k[0] == "repeat" and k[1] == sweep and ("main", *k[1:]) in first]
        if pairs:
            sweeps[str(sweep)] = {
                "pairs": len(pairs),
                "floor_shift": float(np.median([A.record_floor(a) / A.record_floor(b) - 1
                                                for a, b in pairs])),
                "reference_shift": float(np.median([a["reference_ms"] / b["reference_ms"] - 1
                                                    for a, b in pairs]))}
    return {"pairs": len(signed), "signed_median": float(np.median(signed)) if signed else None,
            "abs_median": float(np.median(np.abs(signed))) if signed else None,
            "by_sweep": sweeps}


def still_slow(records, sweeps: int) -> dict:
    """How the calm looks went: the share of (precision, phase, shape, size) points whose
    lowest floor came from a group over ``CALM_BAND`` x the fastest reference, after the
    sweeps and after the looks; and the share of the looks' groups that ran calm, those timed
    after a check of the machine (``calm_wait``) apart from the rest."""
    slowdown = A.group_slowdowns(records)

    def share(rs):
        best = A.lowest_floors(rs, slowdown)
        return float(np.mean([s > P.CALM_BAND for _, s in best.values()])) if best else None

    looks = {A.group_key(r): "calm_wait" in r for r in records if r.get("sweep", 0) >= sweeps}

    def calm(checked):
        g = [slowdown[k] <= P.CALM_BAND for k, c in looks.items() if c == checked]
        return {"groups": len(g), "calm": float(np.mean(g)) if g else None}
    return {"after_sweeps": share([r for r in records if r.get("sweep", 0) < sweeps]),
            "after_looks": share(records),
            "look_groups_checked": calm(True), "look_groups_unchecked": calm(False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--checks", type=Path, nargs="*", default=[],
                    help="workload_profile.py results (real bundles measured later); each "
                         "scores the profile it names")
    ap.add_argument("--estimators", nargs="*", default=None, metavar="TEXT",
                    help="only the estimators whose name contains one of these (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    chosen = {name: est for name, est in ESTIMATORS.items()
              if args.estimators is None or any(t in name for t in args.estimators)}
    result = {"benchmark": "noisy_host", "profiles": []}
    checks: dict[str, list[dict]] = {}
    for file in args.checks:
        data = json.loads(file.read_text())
        checks.setdefault(str(Path(data["profile"]).resolve()), []).extend(
            data["real_bundles"]["rows"])
    for path in args.profiles:
        header, records = F.read_header(path), F.read_measurements(path)
        mine = checks.get(str(path.resolve()), [])
        row = {"profile": str(path), "cpu_model": header.fingerprint["cpu_model"],
               "isa": header.fingerprint["isa"], "later_bundles": len(mine), "estimators": {}}
        for name, est in chosen.items():
            with estimated_with(est):
                row["estimators"][name] = refit(header, records,
                                                f"{path.name:40s} {name:38s}", mine)
        study = [r for r in records if r.get("sweep", 0) < header.protocol.sweeps]
        if len(study) < len(records):  # calm looks: the fit without them, and with
            row["calm_looks"] = {
                "measurements": len(records) - len(study),
                "without": refit(header, study, f"{path.name:40s} {'sweeps only':38s}", mine),
                "with": refit(header, records, f"{path.name:40s} {'with calm looks':38s}",
                              mine)}
            looks = max(r.get("sweep", 0) for r in records) - header.protocol.sweeps + 1
            row["calm_looks"]["first_looks"] = {  # what each look added
                k: refit(header, [r for r in records
                                  if r.get("sweep", 0) < header.protocol.sweeps + k],
                         f"{path.name:40s} {f'with the first {k} calm look(s)':38s}", mine)
                for k in range(1, looks)}
        sweeps = sorted({r.get("sweep", 0) for r in study})
        if len(sweeps) > 1:  # each sweep alone (as a one-sweep profile) against all pooled
            row["sweeps"] = {}
            subsets = [*((f"sweep {k + 1} alone", {k}) for k in sweeps),
                       *((f"sweeps 1-{k + 1} pooled", set(sweeps[:k + 1]))
                         for k in range(1, len(sweeps) - 1)),
                       ("all sweeps pooled (the library's)", set(sweeps))]
            for name, keep in subsets:
                subset = [r for r in study if r.get("sweep", 0) in keep]
                row["sweeps"][name] = refit(header, subset, f"{path.name:40s} {name:38s}")
        # how the machine ran (the sweeps' groups) and, since session 25, how long the calm
        # looks waited for a calm moment before each size (Protocol.calm_wait)
        row["machine_speed"] = A.machine_speed(records)
        row["calm_wait"] = (header.summary or {}).get("calm_wait")
        row["still_slow"] = still_slow(records, header.protocol.sweeps)
        print(f"{path.name:40s} points still slow after the sweeps "
              f"{row['still_slow']['after_sweeps']:.1%}, after the looks "
              f"{row['still_slow']['after_looks']:.1%}", file=sys.stderr)
        row["calm_noise_floor"] = {p: calm_noise_floor(records, p) for p in
                                   sorted({r["precision"] for r in records})}
        print(f"{path.name:40s} noise floor on calm pairs: " + " | ".join(
            f"{p} {v['median_abs_rel_diff'] or 0:.1%} on {v['pairs']} of {v['all_pairs']}"
            for p, v in row["calm_noise_floor"].items()), file=sys.stderr)
        row["pair_shift"] = {p: pair_shift(records, p) for p in
                             sorted({r["precision"] for r in records})}
        print(f"{path.name:40s} noise floor's pairs, signed median: " + " | ".join(
            f"{p} {v['signed_median'] or 0:+.1%} (|.| {v['abs_median'] or 0:.1%}); by sweep "
            + ", ".join(f"{k} {x['floor_shift']:+.1%} ref {x['reference_shift']:+.1%}"
                        for k, x in v["by_sweep"].items())
            for p, v in row["pair_shift"].items()), file=sys.stderr)
        row["percentiles"] = {"tail centred on the model's floor (the library's)":
                              percentile_errors(header, records, True),
                              "tail centred on each measurement's own floor":
                              percentile_errors(header, records, False)}
        result["profiles"].append(row)
    # per estimator: the profiles it would mark reliable (every precision within the trust
    # rule's held-out MAPE and noise floor), and the mean held-out MAPE over them all
    result["trust_by_estimator"] = {
        name: {"reliable": sum(all(v["held_out_mape"] <= PR.MAX_MAPE
                                   and (v["noise_floor"] or 1.0) <= PR.MAX_NOISE
                                   for v in row["estimators"][name].values())
                               for row in result["profiles"]),
               "profiles": len(result["profiles"]),
               "mean_held_out_mape": float(np.mean([v["held_out_mape"]
                                                    for row in result["profiles"]
                                                    for v in row["estimators"][name].values()]))}
        for name in chosen}
    for name, t in result["trust_by_estimator"].items():
        print(f"{name:48s} reliable {t['reliable']} of {t['profiles']}, mean held-out MAPE "
              f"{t['mean_held_out_mape']:.2%}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
