"""How well a workload profile predicts: held-out shapes at held-out sizes, real exported
bundles, and accuracy vs profiling minutes.

1. Held-out metrics straight from the profile (a quarter of the shapes never fitted, at grid
   sizes and at check sizes between grid points).
2. Learning curve: the predictor refitted on the shapes of the first k groups (the order the
   profile measured them in), against the same held-out shapes; minutes = the profile's
   measured time x the share of shapes used.
3. Real bundles: shapes exported from the identity super network (exact identities dropped)
   and from one with bottlenecks perturbed by 1e-3 (no exact identity, as in a trained
   network), at every profiled precision, each timed at several input sizes with the
   profile's protocol: the floor (p10 of its runs) and the promised percentile against the
   prediction; also the floor against the prediction times ``drift`` (the reference graph's
   floor in the same window over the profile's): the machine's speed now taken out, what is
   left is the latency model's own error; and the percentile as ``verify`` judges it
   (``judged_ms``: the floor taken back to the profile's speed as far as its tail prices the
   slowdown, times the tail, or the percentile observed if larger) against the prediction.
   Every run's time is kept (``times``), so another tail model can be scored on them later
   (``benchmarks/tail_pooling.py``). With ``--also PROFILE`` (repeatable) the floors of another
   profile of this machine are scored on the same measurements (``also_error``, ``also_floor``).

    .venv/bin/python benchmarks/workload_profile.py profiles/x86_64-2core-avx512-minilm \\
        --supernet runs/minilm-super --out benchmarks/results/workload_profile_minilm.json
    .venv/bin/python benchmarks/workload_profile.py \\
        benchmarks/data/amd-zen4-minilm-direct-slow-s44 --supernet runs/minilm-super \\
        --also benchmarks/data/amd-zen4-minilm-direct-s43 \\
        --out benchmarks/results/workload_profile_amd_zen4_minilm_direct_slow_s44.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.predictor import DeviceProfile, fit_model
from shaper_deploy.profiling.folder import read_measurements

SHAPES = ["384,384,384,384,384,384", "264,264,264,264,264,264", "180,60,180,180,240,240",
          "240,120,240,240,384,384"]
WORKLOADS = [(1, 32), (1, 96), (1, 200), (2, 64), (8, 32)]


def learning_curve(profile: DeviceProfile) -> list[dict]:
    """Held-out error against profiling time: fitted on the first k training shapes in the
    order they were measured, always checked on the profile's own held-out shapes."""
    if profile.header.transfer:  # a few shapes on a prior: no direct refit to grow
        return []
    records = read_measurements(profile.path)
    full = fit_model(profile.header, records)
    held = set(full.metrics[full.precisions[0]]["held_out_keys"])
    order: list[str] = []
    for r in sorted(records, key=lambda r: r["group"]):
        if r["phase"] == "main" and r["shape_key"] not in order and r["shape_key"] not in held:
            order.append(r["shape_key"])
    seconds = (profile.header.summary or {}).get("last_run", {}).get("seconds")
    total = len(order) + len(held)
    rows = []
    for n in sorted({8, 12, 16, 20, len(order)}):
        if n > len(order):
            continue
        keep = set(order[:n]) | held
        model = fit_model(profile.header, [r for r in records if r["shape_key"] in keep],
                          held_keys=held, min_shapes=min(8, len(keep)))
        rows.append({"training_shapes": n, "held_out_shapes": len(held),
                     "minutes": seconds / 60 * (n + len(held)) / total if seconds else None,
                     **{p: {k: model.metrics[p]["held_out"][k]
                            for k in ("mape", "within_5pct", "r2", "n")}
                        for p in model.precisions}})
    return rows


def real_bundles(profile: DeviceProfile, supernet_path: Path, shapes: list[str],
                 workloads: list[tuple[int, int]], percentile: float,
                 also: dict[str, DeviceProfile] | None = None) -> list[dict]:
    """Bundles of the identity super network (exact identities dropped, as the demo exports
    them) and of one with perturbed bottlenecks (as a trained network's), int8 in the
    profile's format (``profile_int8_format``; before 2026-12-05 session 38, the ISA's
    default, which a profile choosing U8S8-reduce-range did not time), each timed with
    the profile's protocol: its floor against the predicted one, and the percentile a
    budget promises (predicted: floor x the profile's tail factor; against it as observed
    now). ``also``: other profiles of this machine whose floor predictions are scored on the
    same measurements (``also_error``)."""
    from shaper_deploy.export import ExportOptions, export_bundle
    from shaper_deploy.profiling.profile import profile_int8_format
    from shaper_deploy.shape import parse_shape
    from shaper_deploy.supernet import load_supernet

    import torch

    identity = load_supernet(supernet_path)
    perturbed = load_supernet(supernet_path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in perturbed.named_parameters():
            if "bottleneck" in name:
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    int8 = profile_int8_format(profile.header) if "int8" in profile.precisions else None
    rows = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        for network, supernet in (("identity", identity), ("perturbed", perturbed)):
            for text in shapes:
                shape = parse_shape(text, supernet.config.space)
                bundle = Path(work) / f"{network}_{text.replace(',', '_')}"
                # int8 in the format the profile timed, as a plan made with it quantizes
                manifest = export_bundle(supernet, shape, bundle, ExportOptions(
                    int8=True, int8_min_cosine=0.01, int8_format=int8))
                dropped = [list(manifest.dropped_identities)]
                for precision, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
                    if precision not in profile.precisions:
                        continue
                    for w in workloads:
                        m = profile.measure(bundle / file, precision, w, "cpu", percentile,
                                            keep_times=True)
                        floor = float(profile.predict([shape], precision, *w, None, dropped)[0])
                        pct = float(profile.predict([shape], precision, *w, percentile,
                                                    dropped)[0])
                        rows.append({"network": network, "shape": text, "precision": precision,
                                     "batch": w[0], "seq_len": w[1],
                                     "dropped": manifest.dropped_identities,
                                     "measured_ms": m["measured_ms"], "drift": m["drift"],
                                     "floor_ms": m["intrinsic_ms"], "predicted_floor_ms": floor,
                                     "error": floor / m["intrinsic_ms"] - 1,
                                     # the machine's speed now (the reference timed in the same
                                     # window) taken out: what is left is the shape model's
                                     "error_at_drift": floor * m["drift"] / m["intrinsic_ms"] - 1,
                                     "percentile": percentile,
                                     "estimated_pct_ms": m["estimated_ms"],
                                     "observed_pct_ms": m["observed_ms"],
                                     "predicted_pct_ms": pct,
                                     "pct_error": pct / m["observed_ms"] - 1,
                                     # as verify judges it (DeviceProfile.measure's judged_ms)
                                     "priced_drift": m["priced_drift"],
                                     "judged_pct_ms": m["judged_ms"],
                                     "judged_error": pct / m["judged_ms"] - 1,
                                     "runs": m["runs"],
                                     "over_share": float(np.mean(np.asarray(m["times"]) > pct)),
                                     # every run, so another tail model can be scored later
                                     "times": [round(t, 4) for t in m["times"]],
                                     "at_s": round(time.monotonic() - start, 1)})
                        r = rows[-1]
                        r["also_error"] = {name: float(other.predict(
                            [shape], precision, *w, None, dropped)[0]) / m["intrinsic_ms"] - 1
                            for name, other in (also or {}).items()}
                        print(f"{network:<9} {text:<24} {precision} {w[0]}x{w[1]:<4} floor "
                              f"{r['floor_ms']:7.2f} predicted {floor:7.2f} ({r['error']:+.1%}); "
                              f"p{percentile:g} observed {r['observed_pct_ms']:7.2f} predicted "
                              f"{pct:7.2f} ({r['pct_error']:+.1%}); drift {m['drift']:.2f}",
                              file=sys.stderr)
    return rows


def _errors(rows: list[dict], key: str) -> dict:
    errors = np.abs([r[key] for r in rows])
    return {"n": len(rows), "median_abs_error": float(np.median(errors)),
            "max_abs_error": float(errors.max()),
            "mean_signed_error": float(statistics.fmean(r[key] for r in rows)),
            "within_5pct": float((errors <= 0.05).mean()),
            "within_10pct": float((errors <= 0.10).mean())}


def promise_kept(rows: list[dict]) -> dict:
    """A percentile promise judged as a forecast of a distribution: the share of all timed
    runs over their predicted percentile (a p90 promise is kept if at most 10% are), and of
    the measurement windows whose own percentile was over it."""
    runs = sum(r["runs"] for r in rows)
    return {"percentile": rows[0]["percentile"], "windows": len(rows), "runs": runs,
            "runs_over": sum(r["over_share"] * r["runs"] for r in rows) / runs,
            "windows_over": float(np.mean([r["pct_error"] < 0 for r in rows])),
            "by_precision": {p: sum(r["over_share"] * r["runs"] for r in rows
                                    if r["precision"] == p)
                             / sum(r["runs"] for r in rows if r["precision"] == p)
                             for p in sorted({r["precision"] for r in rows})}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--supernet", type=Path, default=None,
                    help="Also measure real bundles exported from this super network.")
    ap.add_argument("--shapes", nargs="*", default=SHAPES)
    ap.add_argument("--percentile", type=float, default=90.0)
    ap.add_argument("--workloads", default=",".join(f"{b}x{s}" for b, s in WORKLOADS),
                    help="Input sizes the real bundles are timed at, BxS comma-separated.")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="Another profile of this machine whose floors are scored on the same "
                         "real bundles (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    workloads = [tuple(int(v) for v in w.split("x")) for w in args.workloads.split(",")]
    profile = DeviceProfile.load(args.profile)
    result = {"benchmark": "workload_profile", "profile": str(args.profile),
              "protocol": profile.header.protocol.to_dict(),
              "profiling_seconds": (profile.header.summary or {}).get("last_run", {}).get("seconds"),
              "noise_floor": {p: s.get("noise_floor") for p, s in
                              (profile.header.summary or {}).get("precisions", {}).items()},
              "held_out": {p: profile.model.metrics[p] for p in profile.precisions},
              "trust": profile.trust, "learning_curve": learning_curve(profile)}
    if args.supernet is not None:
        also = {str(p): DeviceProfile.load(p) for p in args.also}
        rows = real_bundles(profile, args.supernet, args.shapes, workloads, args.percentile,
                            also)
        result["real_bundles"] = {"rows": rows, "floor": _errors(rows, "error"),
                                  "floor_at_drift": _errors(rows, "error_at_drift"),
                                  "percentile_observed": _errors(rows, "pct_error"),
                                  "percentile_judged": _errors(rows, "judged_error"),
                                  "promise": promise_kept(rows),
                                  "by_network": {n: _errors([r for r in rows
                                                             if r["network"] == n], "error")
                                                 for n in ("identity", "perturbed")},
                                  "also_floor": {n: _errors([{"e": r["also_error"][n]}
                                                             for r in rows], "e")
                                                 for n in also}}
        scored = [(k, result["real_bundles"][k]) for k in
                  ("floor", "floor_at_drift", "percentile_observed", "percentile_judged")]
        for k, e in scored + [(f"floor of {n}", e) for n, e in
                              result["real_bundles"]["also_floor"].items()]:
            print(f"real bundles, {k}: median |error| {e['median_abs_error']:.2%}, "
                  f"{e['within_10pct']:.0%} within 10% over {e['n']}", file=sys.stderr)
        k = result["real_bundles"]["promise"]
        print(f"real bundles, the p{k['percentile']:g} promise: {k['runs_over']:.1%} of "
              f"{k['runs']} runs over it ({100 - k['percentile']:g}% allowed), "
              f"{k['windows_over']:.0%} of {k['windows']} windows", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
