"""How the latency model prices the bottleneck matrices a graph computes: by area alone (the
library's since predictor format 4) against format 3's terms (a size term for transitions,
one for projections, and a cost per matrix), each refitted on the same measurements.

A profile times its largest shape only without its identity matrices (0 of them) and nearly
every other shape with all 7, so format 3's cost per matrix could take up whatever set the
largest shape apart; it then predicts a shape exported from an identity super network (the
demo's, and ``supernet init``'s: equal neighbouring widths fuse to identities, which export
drops) by what it assumed those matrices cost. Three ways to judge the two:

1. ``refits``: each direct profile's held-out MAPE and within +-10% (its own held-out shapes,
   grid and check sizes), no timing.
2. ``checks``: real bundles measured later against the profile they name
   (``workload_profile.py`` results), re-scored: the floor's error in the windows where the
   machine ran within 1.1x of the profile's speed, and per (network, shape, precision) its
   median error less the check's median (the shape's error apart from the day's speed).
3. ``--live``: uniform shapes at every width and four mixed ones, each as an identity
   super network exports it (``--supernet``: its exact identities dropped), with every
   matrix and (uniform ones) with none, timed now in fp32 with the profile's protocol
   (random weights: the same graph as the export's, op for op) at three sizes, against the
   profile's predictions both ways; errors less their median (the machine's speed now apart).

    .venv/bin/python benchmarks/bottleneck_features.py profiles/*/ benchmarks/data/*/ \\
        --checks benchmarks/results/workload_profile_*.json \\
        --out benchmarks/results/bottleneck_features.json
    .venv/bin/python benchmarks/bottleneck_features.py \\
        profiles/amd-epyc-zen4-2core-avx512-minilm-calm-looks --live \\
        --supernet runs/minilm-super --out benchmarks/results/bottleneck_features_live_amd_zen4.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from shaper_deploy.profiling import predictor as PR
from shaper_deploy.profiling.folder import read_header, read_measurements
from shaper_deploy.shape import parse_shape

NOW, BEFORE = "area (format 4)", "sizes and a cost per matrix (format 3)"
BEFORE_SMOOTH = ("layers", "layer_width", "layer_width_sq", "transitions", "projections",
                 "projection_ops", "width_changes", "constant")


def before_features(shapes, dropped=None) -> np.ndarray:
    """Format 3's rows: transitions' and projections' sizes apart, and their count."""
    rows = []
    for i, s in enumerate(shapes):
        w, D = s.widths, s.space.hidden_size
        gone = set(dropped[i]) if dropped is not None else set()
        trans = [a * b for t, (a, b) in enumerate(zip(w[:-1], w[1:]))
                 if f"transitions.{t}" not in gone]
        proj = [d for name, d in (("proj_in", w[0]), ("proj_out", w[-1])) if name not in gone]
        rows.append([len(w), sum(w) / D, sum(d * d for d in w) / D / D, sum(trans) / D / D,
                     sum(proj) / D, len(trans) + len(proj),
                     sum(a != b for a, b in zip(w[:-1], w[1:])), 1.0,
                     *(w.count(x) for x in s.space.widths)])
    return np.asarray(rows, dtype=np.float64)


@contextlib.contextmanager
def model_terms(name: str):
    """The predictor module with ``name``'s features (fit and predict read them by name)."""
    if name == NOW:
        yield
        return
    saved = PR.features, PR.SMOOTH
    PR.features, PR.SMOOTH = before_features, BEFORE_SMOOTH
    try:
        yield
    finally:
        PR.features, PR.SMOOTH = saved


def fitted(path: Path) -> dict[str, PR.LatencyModel] | None:
    header = read_header(path)
    if header.transfer:  # its sources' coefficients are frozen in one format
        return None
    records = read_measurements(path)
    out = {}
    for name in (NOW, BEFORE):
        with model_terms(name):
            out[name] = PR.fit_model(header, records)
    return out


def predict(models, name, shape, precision, batch, seq_len, dropped) -> float:
    with model_terms(name):
        return float(models[name].predict([shape], precision, batch, seq_len, None,
                                          [dropped])[0])


def summary(errors: list[float]) -> dict[str, float]:
    a = np.abs(np.asarray(errors))
    return {"n": int(len(a)), "median_abs": float(np.median(a)),
            "within_10pct": float((a <= 0.10).mean()), "within_5pct": float((a <= 0.05).mean())}


def refits(models: dict[Path, dict]) -> list[dict]:
    rows = []
    for path, m in models.items():
        row = {"profile": str(path)}
        for name in (NOW, BEFORE):
            row[name] = {p: {k: m[name].metrics[p]["held_out"][k] for k in ("mape", "within_10pct")}
                         for p in m[name].precisions}
        rows.append(row)
        print(f"{str(path):60s} " + "  ".join(
            f"{p} {row[BEFORE][p]['mape']:.2%} -> {row[NOW][p]['mape']:.2%}" for p in row[NOW]),
            file=sys.stderr)
    return rows


def checks(files: list[Path], models: dict[Path, dict]) -> dict:
    """Real bundles' calm windows (drift <= 1.1), both ways."""
    errors = {NOW: [], BEFORE: []}
    centred = {NOW: [], BEFORE: []}
    by_cell: dict[str, dict[tuple, list[float]]] = {NOW: {}, BEFORE: {}}
    used = []
    for f in files:
        data = json.loads(f.read_text())
        rows = [r for r in (data.get("real_bundles") or {}).get("rows") or []
                if "network" in r and "floor_ms" in r and r.get("drift", 1.0) <= 1.1]
        m = models.get(Path(data.get("profile", "")))
        if not rows or m is None:
            continue
        used.append(str(f))
        space = m[NOW].space
        for name in (NOW, BEFORE):
            errs = [(r, predict(m, name, parse_shape(r["shape"], space), r["precision"],
                                r["batch"], r["seq_len"], r.get("dropped") or [])
                     / r["floor_ms"] - 1) for r in rows]
            mid = statistics.median(e for _, e in errs)
            errors[name] += [e for _, e in errs]
            centred[name] += [e - mid for _, e in errs]
            for r, e in errs:
                key = (r["network"], r["shape"], r["precision"])
                by_cell[name].setdefault(key, []).append(e - mid)
    out = {"files": used}
    for name in (NOW, BEFORE):
        out[name] = {"floor": summary(errors[name]), "apart_from_the_day": summary(centred[name]),
                     "by_cell": {" ".join(k): float(np.median(v))
                                 for k, v in sorted(by_cell[name].items())}}
        print(f"checks, {name}: floor {out[name]['floor']['median_abs']:.2%} "
              f"({out[name]['floor']['within_10pct']:.0%} within 10%), apart from the day "
              f"{out[name]['apart_from_the_day']['median_abs']:.2%} "
              f"({out[name]['apart_from_the_day']['within_10pct']:.0%})", file=sys.stderr)
    return out


def live(path: Path, models: dict, supernet: Path, rounds: int) -> dict:
    from shaper_deploy.fusion import bottleneck_orders, dropped_projections
    from shaper_deploy.profiling.predictor import DeviceProfile
    from shaper_deploy.profiling.profile import GraphSessions, runner
    from shaper_deploy.profiling.protocol import inputs_for, measure_interleaved
    from shaper_deploy.shape import identity_projections
    from shaper_deploy.supernet.checkpoint import load_supernet

    profile = DeviceProfile.load(path)
    net = load_supernet(supernet)
    if net.config.space != profile.space:
        raise SystemExit(f"{supernet} is not of {path}'s design space")
    orders, space = bottleneck_orders(net), profile.space
    texts = [",".join([str(w)] * space.num_layers) for w in space.widths]
    texts += [",".join(map(str, s.widths)) for s in (space.smallest, space.largest)
              if len(set(s.widths)) > 1]
    mixed = {"180,60,180,180,240,240", "240,120,240,240,384,384", "300,180,120,120,180,300",
             "60,120,180,240,300,300"}
    texts += [t for t in sorted(mixed) if len(t.split(",")) == space.num_layers
              and all(int(w) in space.widths for w in t.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        sessions = GraphSessions(Path(work), net.config, "cpu", profile.header.protocol.threads,
                                 {})
        for w in [(1, 32), (1, 128), (4, 64)]:
            feeds = inputs_for(w, net.config)
            variants = {}
            for t in texts:
                shape = parse_shape(t, space)
                variants[(t, "as exported")] = (shape, dropped_projections(orders, shape))
                variants[(t, "every matrix")] = (shape, [])
                if len(set(shape.widths)) == 1:
                    variants[(t, "none")] = (shape, identity_projections(shape))
            runners = {k: runner(sessions.build(s, "fp32", d), feeds)
                       for k, (s, d) in variants.items()}
            res = measure_interleaved(runners, replace(profile.header.protocol, rounds=rounds),
                                      seed=1, keep_times=True)
            for (t, v), (shape, dropped) in variants.items():
                floor = float(np.percentile(res[(t, v)]["times"], 10))
                rows.append({"shape": t, "variant": v, "batch": w[0], "seq_len": w[1],
                             "dropped": dropped, "floor_ms": floor,
                             **{name: predict(models, name, shape, "fp32", *w, dropped)
                                for name in (NOW, BEFORE)}})
            print(f"live: batch {w[0]} x {w[1]} timed", file=sys.stderr)
    out = {"rows": rows}
    for name in (NOW, BEFORE):
        errs = np.array([r[name] / r["floor_ms"] - 1 for r in rows])
        mid = float(np.median(errs))
        cells: dict[str, list[float]] = {}
        for r, e in zip(rows, errs):
            uniform = len(set(r["shape"].split(","))) == 1
            key = f"{r['shape'].split(',')[0] + ' x 6' if uniform else r['shape']}, {r['variant']}"
            cells.setdefault(key, []).append(float(e) - mid)
        out[name] = {"median_error": mid, "apart_from_now": summary(errs - mid),
                     "by_shape": {k: float(np.mean(v)) for k, v in cells.items()}}
        print(f"live, {name}: median {mid:+.1%}, apart from now "
              f"{out[name]['apart_from_now']['median_abs']:.2%} "
              f"({out[name]['apart_from_now']['within_10pct']:.0%} within 10%)", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--checks", type=Path, nargs="*", default=[])
    ap.add_argument("--live", action="store_true", help="time shapes now (one profile)")
    ap.add_argument("--supernet", type=Path, help="with --live: whose identities export drops")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    models = {}
    for path in args.profiles:
        path = Path(str(path).rstrip("/"))
        if (path / "predictor.json").exists():
            m = fitted(path)
            if m is not None:
                models[path] = m
    result = {"benchmark": "bottleneck_features", "refits": refits(models)}
    if args.checks:
        result["checks"] = checks(args.checks, models)
    if args.live:
        if len(models) != 1 or args.supernet is None:
            raise SystemExit("--live times one direct profile's space and needs --supernet")
        path = next(iter(models))
        result["live"] = {"profile": str(path), **live(path, models[path], args.supernet,
                                                       args.rounds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
