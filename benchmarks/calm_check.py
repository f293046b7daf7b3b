"""Whether a retake's calm check says what its measurement will see (no timing assertions).

A retake (``profile.retake_profile``) waits, before each group x size measurement, until one
round of the profile's reference graph at that size runs within ``profile.CALM_BAND`` (1.1)
of the size's calm time (``analysis.calm_bases``: the reference's median in the groups the
sentinel found calm). The check times the reference alone; the measurement, and every group
the calm time came from, times it in one round interleaved with the group's shapes and the
sentinel. Session 58's MiniLM retake (Intel Xeon family 6 model 207) had 32 checks pass, and
in 14 of their measurements (44%) the reference ran over 1.1x its calm time.

Here the two are timed back to back, over and over, in random order, at a few sizes and
both precisions: the reference alone (one round, as the check) and in a group (one round of
the reference, the sentinel and ``--members`` of the profile's shapes, as a measurement),
then one more group round: the measurement a check would let through. Reported per precision
and size and over all: each one's median over the calm time, their paired ratio (alone over
in a group, quartiles: whether timing the reference alone biases the check), and how many of
the measurements ran over 1.1x after any check, after a calm one, a slow one, and two calm
rounds in a row (alone and in the group).

    .venv/bin/python benchmarks/calm_check.py profiles/intel-xeon-model207-2core-avx512-minilm \\
        --minutes 6 --out benchmarks/results/calm_check_intel_model207_s59.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.analysis import calm_bases
from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.folder import read_header, read_measurements, shape_from_key
from shaper_deploy.profiling.profile import (CALM_BAND, REFERENCE, SENTINEL, GraphSessions,
                                             dropped_for, profile_int8_format, runner)
from shaper_deploy.profiling.protocol import inputs_for, measure_interleaved
from shaper_deploy.shape import Shape


def members_of(records: list[dict], header, n: int) -> list[Shape]:
    """``n`` of the profile's shapes, evenly spaced by parameter count."""
    params = {r["shape_key"]: r["params"] for r in records}
    keys = sorted(params, key=lambda k: (params[k], k))
    picks = np.linspace(0, len(keys) - 1, n).round().astype(int)
    return [shape_from_key(keys[i], header.space) for i in sorted(set(picks))]


def summary(pairs: list[dict]) -> dict:
    """Medians over the calm time, the paired ratio, and per check outcome (``after``) how
    many of the measurements right after it ran over ``CALM_BAND``."""
    paired = [p["alone"] / p["group"] for p in pairs]

    def after(select) -> dict:
        chosen = [p for p in pairs if select(p)]
        slow = sum(p["next_group"] > CALM_BAND for p in chosen)
        return {"n": len(chosen), "then_slow": slow,
                "then_slow_share": round(slow / len(chosen), 3) if chosen else None}
    return {"pairs": len(pairs),
            "alone_over_calm": round(statistics.median(p["alone"] for p in pairs), 4),
            "group_over_calm": round(statistics.median(p["group"] for p in pairs), 4),
            "alone_over_group": [round(float(q), 4)
                                 for q in np.percentile(paired, [25, 50, 75])],
            "after": {"any": after(lambda p: True),
                      "alone_calm": after(lambda p: p["alone"] <= CALM_BAND),
                      "alone_slow": after(lambda p: p["alone"] > CALM_BAND),
                      "group_calm": after(lambda p: p["group"] <= CALM_BAND),
                      "both_calm": after(lambda p: max(p["alone"], p["group"]) <= CALM_BAND)}}


def report(result: dict) -> None:
    """The summaries per precision and size and over all of them (``result['sizes']``, each
    with its ``pairs_detail``), printed on stderr."""
    for v in result["sizes"].values():
        v.update(summary(v["pairs_detail"]))
    result["all"] = summary([p for v in result["sizes"].values() for p in v["pairs_detail"]])
    for name, v in [*result["sizes"].items(), ("all", result["all"])]:
        a = v["after"]
        print(f"{name:<14} alone x{v['alone_over_calm']:.2f} group x{v['group_over_calm']:.2f} "
              f"alone/group {v['alone_over_group'][1]:.3f} (IQR {v['alone_over_group'][0]:.3f}"
              f"-{v['alone_over_group'][2]:.3f}); then slow: any {a['any']['then_slow_share']}, "
              + ", ".join(f"{k} {a[k]['then_slow_share']} of {a[k]['n']}"
                          for k in ("alone_calm", "alone_slow", "both_calm")), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path, help="a finished profile of this machine")
    ap.add_argument("--sizes", default="1x16,1x128,4x128,16x32")
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rescore", type=Path, default=None,
                    help="summarize again the pairs of an earlier result (nothing timed)")
    args = ap.parse_args()
    if args.rescore:
        result = json.loads(args.rescore.read_text())
        report(result)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return
    header = read_header(args.profile)
    records = read_measurements(args.profile)
    bases, _ = calm_bases(records)
    protocol = header.protocol
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    keys = [(p, w) for p in protocol.precisions for w in sizes if (p, *w) in bases]
    members = members_of(records, header, args.members)
    first = protocol.precisions[0]
    pairs: dict[tuple, list[dict]] = {k: [] for k in keys}
    fingerprint = device_fingerprint("cpu")
    with tempfile.TemporaryDirectory(prefix="calm-check-") as work:
        sessions = GraphSessions(Path(work), header.config, "cpu", protocol.threads,
                                 profile_int8_format(header))
        reference = Shape(tuple(header.reference_shape), header.space)
        refs = {p: sessions.build(reference, p) for p in protocol.precisions}
        built = {(p, i): sessions.build(s, p, dropped_for(s, header))
                 for p in protocol.precisions for i, s in enumerate(members)}
        sentinel = runner(refs[first], inputs_for(protocol.sentinel_workload, header.config))
        rng, seed = random.Random(0), 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.minutes * 60:
            rng.shuffle(keys)
            for precision, w in keys:
                feeds = inputs_for(w, header.config)
                ref = runner(refs[precision], feeds)
                group = {REFERENCE: ref, SENTINEL: sentinel,
                         **{i: runner(built[(precision, i)], feeds)
                            for i in range(len(members))}}
                base = bases[(precision, *w)]
                seed += 1
                first_alone = rng.random() < 0.5
                out = {}
                for kind in (("alone", "group") if first_alone else ("group", "alone")):
                    timed = measure_interleaved({REFERENCE: ref} if kind == "alone" else group,
                                                protocol, seed=seed)
                    out[kind] = timed[REFERENCE]["median_ms"] / base
                # what a measurement right after the check sees: one more group round
                after = measure_interleaved(group, protocol, seed=seed + 10**6)
                out["next_group"] = after[REFERENCE]["median_ms"] / base
                out["first"] = "alone" if first_alone else "group"
                out["t_s"] = round(time.perf_counter() - t0, 1)
                pairs[(precision, w)].append(out)
            print(f"{(time.perf_counter() - t0) / 60:.1f} of {args.minutes:g} min, "
                  f"{sum(map(len, pairs.values()))} pairs", file=sys.stderr)
    result = {"benchmark": "calm_check", "profile": str(args.profile),
              "cpu_model": fingerprint["cpu_model"], "cpu_id": fingerprint.get("cpu_id"),
              "isa": fingerprint["isa"], "minutes": args.minutes,
              "members": [s.widths for s in members], "calm_band": CALM_BAND, "sizes": {}}
    for (precision, w), ps in sorted(pairs.items()):
        result["sizes"][f"{precision} {w[0]}x{w[1]}"] = {"pairs_detail": ps}
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
