"""How well a workload profile predicts: held-out shapes at held-out sizes, real exported
bundles, and accuracy vs profiling minutes.

1. Held-out metrics straight from the profile (a quarter of the shapes never fitted, at grid
   sizes and at check sizes between grid points).
2. Learning curve: the predictor refitted on the shapes of the first k groups (the order the
   profile measured them in), against the same held-out shapes; minutes = the profile's
   measured time x the share of shapes used.
3. Real bundles: shapes exported from a super network (bottlenecks perturbed by 1e-3, so no
   projection is an exact identity, as in a trained network) at both precisions, each timed
   at several input sizes with the profile's protocol, against the profile's prediction.

    .venv/bin/python benchmarks/workload_profile.py profiles/x86_64-2core-avx512-minilm \\
        --supernet runs/minilm-super --out benchmarks/results/workload_profile_minilm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from shaper_deploy.predictor import DeviceProfile, fit_model
from shaper_deploy.profiling.profile import read_measurements

SHAPES = ["384,384,384,384,384,384", "264,264,264,264,264,264", "180,60,180,180,240,240",
          "120,120,120,120,120,120", "240,120,240,240,384,384"]
WORKLOADS = [(1, 32), (1, 96), (1, 200), (2, 64), (8, 32)]


def learning_curve(profile: DeviceProfile) -> list[dict]:
    """Held-out error against profiling time: fitted on the first k training shapes in the
    order they were measured, always checked on the profile's own held-out shapes."""
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
                          held_keys=held)
        rows.append({"training_shapes": n, "held_out_shapes": len(held),
                     "minutes": seconds / 60 * (n + len(held)) / total if seconds else None,
                     **{p: {k: model.metrics[p]["held_out"][k]
                            for k in ("mape", "within_5pct", "r2", "n")}
                        for p in model.precisions}})
    return rows


def real_bundles(profile: DeviceProfile, supernet_path: Path, shapes: list[str],
                 workloads: list[tuple[int, int]]) -> list[dict]:
    from shaper_deploy.export import ExportOptions, export_bundle
    from shaper_deploy.shape import parse_shape
    from shaper_deploy.supernet import SuperBert

    import torch

    supernet = SuperBert.load(supernet_path)
    # A trained super network has no exact identity bottlenecks; the identity network made
    # from a BERT has, and its bundles drop them (faster than a trained network's). Perturb
    # the bottlenecks slightly so the bundles are what a trained network exports.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in supernet.named_parameters():
            if "bottleneck" in name:
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for text in shapes:
            shape = parse_shape(text, supernet.config.space)
            bundle = Path(work) / text.replace(",", "_")
            export_bundle(supernet, shape, bundle, ExportOptions(int8=True, int8_min_cosine=0.01))
            for precision, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
                if precision not in profile.precisions:
                    continue
                for w in workloads:
                    m = profile.measure(bundle / file, precision, w, "cpu")
                    pred = float(profile.predict([shape], precision, *w)[0])
                    rows.append({"shape": text, "precision": precision, "batch": w[0],
                                 "seq_len": w[1], "measured_ms": m["measured_ms"],
                                 "drift": m["drift"], "predicted_ms": pred,
                                 "error": pred / m["measured_ms"] - 1})
                    r = rows[-1]
                    print(f"{text:<26} {precision} {w[0]}x{w[1]:<4} measured "
                          f"{r['measured_ms']:7.2f} predicted {pred:7.2f} ({r['error']:+.1%})",
                          file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--supernet", type=Path, default=None,
                    help="Also measure real bundles exported from this super network.")
    ap.add_argument("--shapes", nargs="*", default=SHAPES)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    profile = DeviceProfile.load(args.profile)
    result = {"benchmark": "workload_profile", "profile": str(args.profile),
              "protocol": profile.header.protocol.to_dict(),
              "profiling_seconds": (profile.header.summary or {}).get("last_run", {}).get("seconds"),
              "noise_floor": {p: s.get("noise_floor") for p, s in
                              (profile.header.summary or {}).get("precisions", {}).items()},
              "held_out": {p: profile.model.metrics[p] for p in profile.precisions},
              "trust": profile.trust, "learning_curve": learning_curve(profile)}
    if args.supernet is not None:
        rows = real_bundles(profile, args.supernet, args.shapes, WORKLOADS)
        errors = np.abs([r["error"] for r in rows])
        result["real_bundles"] = {
            "rows": rows, "n": len(rows), "median_abs_error": float(np.median(errors)),
            "max_abs_error": float(errors.max()),
            "mean_signed_error": float(statistics.fmean(r["error"] for r in rows)),
            "within_3pct": float((errors <= 0.03).mean()),
            "within_8pct": float((errors <= 0.08).mean())}
        print(f"real bundles: median |error| {result['real_bundles']['median_abs_error']:.2%}, "
              f"max {result['real_bundles']['max_abs_error']:.2%} over {len(rows)}",
              file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
