"""Profile transfer: a new device's latency model from a few measurements and the profiles of
devices already measured, beside a direct profile of that device.

Five parts, each writing its JSON:

``offline``: for every pair of shipped profiles of one design space (source -> target), the
transfer a target would fit from ``n`` of the shapes its own measurements.jsonl holds (one
drawn per parameter bin, 10 draws), scored on **every other shape** the target measured, at
grid and check sizes; beside it the direct fit (``predictor.fit_model``) on the same shapes,
and the target's own full profile. Minutes = the target profile's measured time per shape x
the shapes a transfer measures (its two re-measured shapes included). A target measured in
several sweeps (minutes apart) is also fitted on its first 2, 3, ... sweeps ("looks"): what
more looks at fewer shapes buy on a host whose speed moves.

``--pair SOURCE TARGET`` (repeatable) takes other pairs than the shipped ones (``PAIRS``).

``fleet``: as ``offline``, with each MiniLM machine class as the target and the other classes'
profiles as sources, each alone and all together (``--from`` several): does a fleet help on a
device none of its members is? (``FLEET``) With ``--target T --sources A,B --sources DIR``: T
from each set in turn, a folder taken as ``--from DIR`` takes it on T (is a source worth
shipping in ``profiles/`` for devices like T?).

``sparse``: refits only (no timing): could a transfer measure a few input sizes and
interpolate the source-to-target scale to the rest? (``sparse_pair``)

``gate``: no timing: the trust gate on ``slow_floors`` judged on ``live`` results (their rows
record each precision's ``slow_floors`` since session 44).

``live``: on this machine, ``shaperctl profile --from SOURCE --minutes M`` for each M (the
learning curve), and a direct profile, all in one run; each scored on its own held-out
shapes and on the shapes of the others it never measured (the direct profile's 40 shapes
are the common yardstick); optionally real exported bundles timed at >= 4 input sizes. With
``--max-tokens N`` the transfers measure only the source's grid points of at most N tokens, and
each profile is scored on the others' measurements at those sizes only. ``--sweeps`` and
``--calm-looks`` take several values (each combination once per ``--repeat``, in turn, so a
period of the host falls on all alike). ``--also`` scores existing profiles beside them (the
shipped profile of this class, made on another day: does it still describe this host?).
``--pool both`` runs each transfer twice in turn: as ``shaperctl`` runs it (every session on
the process's one thread pool, ``Protocol.pool`` "process") and as a library caller's process
does (a pool per session, each turn waiting for idle threads: "session"). ``--sentinel both``
runs each transfer with and without one fixed workload timed in every group
(``Protocol.sentinel``), in turn.

    .venv/bin/python benchmarks/transfer.py offline --out benchmarks/results/transfer_offline.json
    .venv/bin/python benchmarks/transfer.py fleet --out benchmarks/results/transfer_fleet.json
    .venv/bin/python benchmarks/transfer.py fleet \\
        --target benchmarks/data/amd-zen5-masked-avx2-minilm-direct-s49 --sources profiles \\
        --sources profiles,benchmarks/data/amd-zen4-masked-avx2-minilm-direct-s51 \\
        --sources benchmarks/data/amd-zen4-masked-avx2-minilm-direct-s51 \\
        --sources profiles/intel-xeon-amx-2core-avx512-minilm \\
        --out benchmarks/results/transfer_fleet_avx2_source_to_zen5_masked_avx2_s56.json
    .venv/bin/python benchmarks/transfer.py sparse --out benchmarks/results/transfer_sparse.json
    .venv/bin/python benchmarks/transfer.py live --from profiles/amd-epyc-zen4-2core-avx512-minilm \\
        --supernet runs/minilm-super --bundles-from "transfer 2 min" --work runs/transfer \\
        --out benchmarks/results/transfer_live_intel_minilm.json
    .venv/bin/python benchmarks/transfer.py live --from profiles/amd-epyc-zen4-2core-avx512-bert-base \\
        --minutes 2 4 --direct profiles/x86_64-2core-avx512-bert-base --work runs/transfer-bert \\
        --out benchmarks/results/transfer_live_intel_bert_base.json
    .venv/bin/python benchmarks/transfer.py live --from profiles/x86_64-2core-avx512-minilm \\
        --minutes 2 --calm-looks 0 1 --repeat 3 \\
        --direct profiles/amd-epyc-zen5-2core-avx512-minilm-calm-looks --work runs/transfer-calm \\
        --out benchmarks/results/transfer_live_amd_zen5_minilm_calm_looks.json
    .venv/bin/python benchmarks/transfer.py live --from profiles/x86_64-2core-avx512-minilm \\
        --minutes 2 --max-tokens 256 --direct profiles/amd-epyc-zen2-2core-avx2-minilm \\
        --supernet runs/minilm-super --bundles-from "transfer 2 min" --work runs/transfer-256 \\
        --out benchmarks/results/transfer_live_amd_zen2_minilm_256.json
    .venv/bin/python benchmarks/transfer.py gate \
        benchmarks/results/transfer_live_amd_zen4_minilm_slow_floors*_s44.json \
        --out benchmarks/results/transfer_slow_floors_gate_s44.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np

from shaper_deploy.errors import ProfileError
from shaper_deploy.profiling.predictor import (MAX_SLOW_FLOORS, DeviceProfile, fit_model,
                                               regression_metrics, slow_floors_of)
from shaper_deploy.profiling.analysis import dropped_by_key, measured_latency
from shaper_deploy.profiling.folder import read_measurements, shape_from_key, workload_key
from shaper_deploy.profiling.profile import held_out_keys
from shaper_deploy.profiling.protocol import Protocol
from shaper_deploy.profiling.transfer import (_covers, expand_sources, fit_transfer,
                                              transfer_record)

ROOT = Path(__file__).resolve().parents[1]
# Pairs of profiles (paths from the repository root): the shipped ones, and the AMD Zen 2
# MiniLM profile these results were computed with, kept in benchmarks/data since a profile
# made with sweeps replaced it in profiles/.
ZEN2_MINILM = "benchmarks/data/amd-zen2-minilm-1sweep-x-4rounds"
INTEL_MINILM, ZEN4_MINILM = "profiles/x86_64-2core-avx512-minilm", \
    "profiles/amd-epyc-zen4-2core-avx512-minilm"
INTEL_BERT, ZEN4_BERT = "profiles/x86_64-2core-avx512-bert-base", \
    "profiles/amd-epyc-zen4-2core-avx512-bert-base"
ZEN5_MINILM = "profiles/amd-epyc-zen5-2core-avx512-minilm"
# The same class an hour calmer (session 21: 36 shapes x 3 sweeps, fp32 noise floor 2.8%).
ZEN5_MINILM_CALM = "benchmarks/data/amd-zen5-minilm-3sweeps-36shapes"
PAIRS = [(ZEN4_MINILM, INTEL_MINILM), (INTEL_MINILM, ZEN4_MINILM), (ZEN4_BERT, INTEL_BERT),
         (INTEL_BERT, ZEN4_BERT), (INTEL_MINILM, ZEN2_MINILM), (ZEN2_MINILM, INTEL_MINILM),
         (ZEN4_MINILM, ZEN2_MINILM), (INTEL_MINILM, ZEN5_MINILM), (ZEN5_MINILM, INTEL_MINILM),
         (ZEN4_MINILM, ZEN5_MINILM), (INTEL_MINILM, ZEN5_MINILM_CALM)]
ZEN2_MINILM_SWEEPS = "profiles/amd-epyc-zen2-2core-avx2-minilm"  # shipped since the sweeps
SPARSE_PAIRS = [(INTEL_MINILM, ZEN2_MINILM_SWEEPS), (ZEN4_MINILM, ZEN2_MINILM_SWEEPS),
                (INTEL_MINILM, ZEN4_MINILM), (ZEN4_MINILM, INTEL_MINILM),
                (INTEL_BERT, "profiles/amd-epyc-zen2-2core-avx2-bert-base")]
# A device the fleet has never seen: each MiniLM machine class as the target, the other
# classes as sources (each alone, then all together); the Zen 5 class's own profile of a
# day earlier is a row of its own (same class, another day).
FLEET = [(ZEN5_MINILM_CALM, [INTEL_MINILM, ZEN4_MINILM, ZEN2_MINILM_SWEEPS], [ZEN5_MINILM]),
         (ZEN2_MINILM_SWEEPS, [INTEL_MINILM, ZEN4_MINILM, ZEN5_MINILM], []),
         (ZEN4_MINILM, [INTEL_MINILM, ZEN2_MINILM_SWEEPS, ZEN5_MINILM], []),
         (INTEL_MINILM, [ZEN4_MINILM, ZEN2_MINILM_SWEEPS, ZEN5_MINILM], [])]
FLEET_PLAN = [(8, 1), (12, 1), (8, 2), (12, 2)]  # (shapes, looks), looks the target has
SIZES = (8, 12, 16)
DRAWS = 10


def score(model, target: DeviceProfile, records, keys: list[str]) -> dict:
    """``model``'s error on ``keys`` of the target's measurements, at every measured size
    inside the model's grid (grid and check sizes)."""
    main = measured_latency(records)
    gone = dropped_by_key(records)
    actual, predicted = [], []
    for (precision, b, s), by_shape in main.items():
        if precision not in model.precisions:
            continue
        ks = [k for k in keys if k in by_shape]
        try:
            model.coef_at(precision, b, s)
        except ProfileError:  # outside the model's grid
            continue
        if not ks:
            continue
        shapes = [shape_from_key(k, target.space) for k in ks]
        predicted.append(model.predict(shapes, precision, b, s,
                                       dropped=[gone.get(k, []) for k in ks]))
        actual.append(np.array([by_shape[k] for k in ks]))
    return regression_metrics(np.concatenate(actual), np.concatenate(predicted))


def score_by_precision(model, target, records, keys) -> dict:
    return {p: score(_only(model, p), target, records, keys) for p in model.precisions}


def _only(model, precision):
    return replace(model, coef={precision: model.coef[precision]})


def draw_shapes(keys: list[str], target: DeviceProfile, n: int, seed: int) -> list[str]:
    """Smallest and largest measured shape, and one drawn per parameter bin in between (what
    a transfer's sampling does)."""
    rng = np.random.default_rng(seed)
    by_params = sorted(keys, key=lambda k: shape_from_key(k, target.space).params())
    chosen = [by_params[0], by_params[-1]]
    inner = by_params[1:-1]
    for part in np.array_split(np.arange(len(inner)), n - 2):
        if len(part):
            chosen.append(inner[int(rng.choice(part))])
    return chosen


def offline_pair(sources: list[DeviceProfile], target: DeviceProfile,
                 plan: list[tuple[int, int]] | None = None) -> dict:
    """A transfer from ``sources`` (one, or a fleet used together) to ``target``, drawn from
    the target's measurements; ``plan``: the (shapes, looks) rows (default: every size in
    ``SIZES`` at every look the target has)."""
    records = read_measurements(target.path)
    tp = target.header.protocol
    grid_tokens = min([tp.max_tokens] + [s.header.protocol.max_tokens for s in sources])
    protocol = Protocol.from_dict({**tp.to_dict(), "max_tokens": grid_tokens})
    header = replace(target.header, protocol=protocol)
    header.transfer = transfer_record(sources, protocol, target.header.fingerprint)
    main = [r for r in records if r["phase"] == "main"]
    keys = sorted({r["shape_key"] for r in main
                   if all(any(q["shape_key"] == r["shape_key"] and q["precision"] == p
                              for q in main) for p in protocol.precisions)})
    seconds = (target.header.summary or {}).get("last_run", {}).get("seconds")
    # A live transfer looks at each shape once. From a target measured in several sweeps
    # (minutes apart) the transfer fits on its first ``looks`` sweeps, looks = 1 being what
    # a live transfer does; the shapes not drawn are scored on all sweeps (the lowest floor
    # of each: the target's best estimate). Minutes: the target's time per shape and sweep.
    per_look = seconds / (len(keys) + tp.repeat_shapes) / tp.sweeps if seconds else None
    try:
        full = fit_model(header, records)
    except ProfileError:  # a target too small for a full fit of its own (e.g. 8 shapes)
        full = None
    name = " + ".join(s.path.name for s in sources)
    rows = []
    plan = plan or [(n, k) for k in range(1, tp.sweeps + 1) for n in SIZES]
    for n, looks in [(n, k) for n, k in plan
                     if n <= len(keys) - 4 and k <= tp.sweeps]:  # >= 4 shapes to score on
        first = [r for r in records if r.get("sweep", 0) < looks]
        draws = {"transfer": [], "direct": [], "scaled_source": []}
        for seed in range(DRAWS):
            chosen = draw_shapes(keys, target, n, seed)
            rest = [k for k in keys if k not in chosen]
            mine = [r for r in first if r["shape_key"] in chosen]
            held = held_out_keys([shape_from_key(k, target.space) for k in chosen])
            t = fit_transfer(header, mine, held_keys=held)
            d = fit_model(header, mine, held_keys=held, min_shapes=8)
            draws["transfer"].append({"self": {p: t.metrics[p]["held_out"]["mape"]
                                               for p in t.precisions},
                                      **score_by_precision(t, target, records, rest)})
            draws["direct"].append(score_by_precision(d, target, records, rest))
            s_only = {p: t.metrics[p]["transfer"]["prior_held_out"]["mape"]
                      for p in t.precisions}
            draws["scaled_source"].append(s_only)
        row = {"shapes": n, "looks": looks,
               "minutes": per_look * (n + 2) * looks / 60 if per_look else None,
               "draws": DRAWS}
        for kind in ("transfer", "direct"):
            row[kind] = {p: {m: float(np.median([d[p][m] for d in draws[kind]]))
                             for m in ("mape", "within_5pct", "within_10pct", "n")}
                         for p in protocol.precisions}
        row["transfer_self_reported_mape"] = {
            p: float(np.median([d["self"][p] for d in draws["transfer"]]))
            for p in protocol.precisions}
        rows.append(row)
        scores = "; ".join(f"{p} transfer MAPE {row['transfer'][p]['mape']:.1%} "
                           f"({row['transfer'][p]['within_10pct']:.0%} in 10%), direct "
                           f"{row['direct'][p]['mape']:.1%}" for p in protocol.precisions)
        print(f"{name} -> {target.path.name}, {n} shapes x {looks} look(s): "
              f"{scores}", file=sys.stderr)
    return {"source": name, "target": target.path.name,
            "source_cpu": " + ".join(s.header.fingerprint["cpu_model"] for s in sources),
            "target_cpu": target.header.fingerprint["cpu_model"],
            "grid_max_tokens": grid_tokens, "target_shapes": len(keys),
            "target_minutes": seconds / 60 if seconds else None,
            "target_own_held_out": {p: target.model.metrics[p]["held_out"]["mape"]
                                    for p in target.precisions},
            "target_full_fit_on_rest": None if full is None else {
                p: full.metrics[p]["held_out"]["mape"] for p in full.precisions},
            "rows": rows}


def offline(args) -> dict:
    pairs = []
    for s, t in args.pair or PAIRS:
        pairs.append(offline_pair([DeviceProfile.load(ROOT / s)], DeviceProfile.load(ROOT / t)))
    return {"benchmark": "transfer_offline", "sizes": list(SIZES), "draws": DRAWS,
            "pairs": pairs}


def fleet(args) -> dict:
    """Several sources used together against each alone, for a device none of them is
    (``FLEET``); with ``--target``, that profile from each ``--sources`` set in turn."""
    if args.target is not None:
        return fleet_sets(args.target, args.sources)
    rows = []
    loaded = {p: DeviceProfile.load(ROOT / p)
              for target, others, same in FLEET for p in [target, *others, *same]}
    for target, others, same_class in FLEET:
        sets = [[o] for o in others] + [others] + [[o] for o in same_class]
        for chosen in sets:
            pair = offline_pair([loaded[s] for s in chosen], loaded[target], FLEET_PLAN)
            pair["sources"] = chosen
            pair["same_class"] = chosen == same_class
            rows.append(pair)
    return {"benchmark": "transfer_fleet", "plan": [list(v) for v in FLEET_PLAN],
            "draws": DRAWS, "pairs": rows}


def fleet_sets(target_path: Path, sets: list[str]) -> dict:
    """``target_path`` as a new device, transferred from each set of ``sets`` (comma-separated
    profile folders; a folder of profiles stands for its profiles of the target's design
    space, cut to the ``MAX_SOURCES`` closest to the target's fingerprint, the target left
    out: what ``shaperctl profile --from profiles`` would take on that device)."""
    target = DeviceProfile.load(ROOT / target_path)
    rows = []
    for given in sets:
        names = expand_sources([ROOT / g for g in given.split(",")], target.device,
                               target.space, out=target.path,
                               here=target.header.fingerprint)
        chosen = [DeviceProfile.load(n) for n in names]
        pair = offline_pair(chosen, target, FLEET_PLAN)
        pair["sources"] = [str(Path(n).relative_to(ROOT)) for n in names]
        pair["given"] = given
        rows.append(pair)
    return {"benchmark": "transfer_fleet", "target": str(target_path),
            "plan": [list(v) for v in FLEET_PLAN], "draws": DRAWS, "pairs": rows}


ANCHORS = {"reference only": [(1, 128)],
           "3 sizes": [(1, 16), (1, 128), (16, 64)],
           "5 sizes": [(1, 16), (1, 32), (1, 128), (4, 128), (16, 64)]}


def sparse_pair(source: DeviceProfile, target: DeviceProfile) -> dict:
    """Could a transfer measure a few input sizes and interpolate the rest? Per precision, the
    source's prediction scaled to the target (``transfer.scale_fit``: y ~ a src + b) fitted at
    every grid size on all the target's shapes, against the same scale fitted at a few
    anchor sizes only and interpolated linearly in log tokens (a, and b relative to the
    size's median latency) to the others; MAPE over every grid size and shape (in-sample: it
    isolates what the interpolation costs), and the anchors' share of a shape's measuring
    time (the target's predicted latency of its smallest and largest shape per size)."""
    from shaper_deploy.profiling.predictor import features
    from shaper_deploy.profiling.transfer import scale_fit

    records = read_measurements(target.path)
    main, gone = measured_latency(records), dropped_by_key(records)
    grid = [w for w in target.model.grid if _covers(source.model, w)]
    out = {"source": source.path.name, "target": target.path.name, "precisions": {}}
    for p in [p for p in target.precisions if p in source.precisions]:
        keys = sorted(set.intersection(*(set(main[(p, *w)]) for w in grid)))
        x = features([shape_from_key(k, target.space) for k in keys],
                     [gone.get(k, []) for k in keys])
        y = {w: np.array([main[(p, *w)][k] for k in keys]) for w in grid}
        src = {w: x @ np.asarray(source.model.coef_at(p, *w)) for w in grid}
        mix = {w: scale_fit(x, y[w], [np.asarray(source.model.coef_at(p, *w))])[1]
               for w in grid}
        tokens = {w: np.log(w[0] * w[1]) for w in grid}
        ends = [target.space.smallest, target.space.largest]  # a typical shape's time
        turn = {w: float(np.mean(target.predict(ends, p, *w))) for w in grid}

        def mape(scale) -> float:
            return float(np.mean([np.mean(np.abs((scale(w)[0] * src[w] + scale(w)[1])
                                                 / y[w] - 1)) for w in grid]))

        def interpolated(anchors):
            at = sorted(anchors, key=lambda v: tokens[v])
            t = [tokens[v] for v in at]

            def scale(w):
                a = np.interp(tokens[w], t, [mix[v][0] for v in at])
                rel = np.interp(tokens[w], t, [mix[v][1] / np.median(y[v]) for v in at])
                return a, rel * np.median(a * src[w])
            return scale

        row = {"shapes": len(keys), "every_size": mape(lambda w: mix[w]),
               "scale_by_size": {workload_key(w): round(float(mix[w][0]), 3) for w in grid}}
        for name, anchors in ANCHORS.items():
            anchors = [v for v in anchors if v in tokens]  # those inside this grid
            row[name] = {"mape": mape(interpolated(anchors)),
                         "time_share": sum(turn[w] for w in anchors) / sum(turn.values()),
                         "anchors": [workload_key(v) for v in anchors]}
        out["precisions"][p] = row
        print(f"{source.path.name} -> {target.path.name} {p}: every size "
              f"{row['every_size']:.1%}; " + "; ".join(
                  f"{n} {row[n]['mape']:.1%} ({row[n]['time_share']:.0%} of the time)"
                  for n in ANCHORS), file=sys.stderr)
    return out


def sparse(args) -> dict:
    return {"benchmark": "transfer_sparse", "anchors": {k: [list(w) for w in v]
                                                        for k, v in ANCHORS.items()},
            "pairs": [sparse_pair(DeviceProfile.load(ROOT / s), DeviceProfile.load(ROOT / t))
                      for s, t in SPARSE_PAIRS]}


def _shaperctl(*args: str, pool: str = "process") -> dict:
    """``shaperctl ARGS --json``: the program itself (pool "process"), or its click group
    called from a plain Python process (pool "session", as a library caller measures)."""
    exe = ([str(Path(sys.executable).with_name("shaperctl"))] if pool == "process" else
           [sys.executable, "-c", "from shaper_deploy.cli.main import main; main()"])
    t = time.perf_counter()
    out = subprocess.run([*exe, *args, "--json"], check=True, capture_output=False,
                         stdout=subprocess.PIPE, text=True).stdout
    data = json.loads(out)
    data["_wall_seconds"] = time.perf_counter() - t
    return data


def live(args) -> dict:

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    profiles = {}
    cap = [] if args.max_tokens is None else ["--max-tokens", str(args.max_tokens)]
    sources = [arg for p in args.sources for arg in ("--from", str(p))]
    last_transfer = None  # with no --minutes, only the direct profile is made and scored
    # each repeat runs every combination in turn, so a period of the host falls on all alike
    for repeat in range(1, args.repeat + 1):
        for minutes, sweeps, calm, pool, sentinel in product(
                args.minutes, args.sweeps or [None], args.calm_looks or [None],
                ["process", "session"] if args.pool == "both" else [args.pool],
                ["on", "off"] if args.sentinel == "both" else [args.sentinel]):
            # None: the product's default
            looks = [] if sweeps is None else ["--sweeps", str(sweeps)]
            looks += [] if calm is None else ["--calm-looks", str(calm)]
            looks += ["--sentinel" if sentinel == "on" else "--no-sentinel"]
            name = (f"transfer {minutes:g} min" + (f", {sweeps} sweep(s)" if sweeps else "")
                    + (f", {calm} calm look(s)" if calm is not None else "")
                    + (f", pool {pool}" if args.pool == "both" else "")
                    + (f", sentinel {sentinel}" if args.sentinel == "both" else "")
                    + (f", #{repeat}" if args.repeat > 1 else ""))
            out = work / name.replace(" ", "-").replace(",", "").replace("#", "")
            _shaperctl("profile", "--device", "cpu", *sources, "--minutes", f"{minutes:g}",
                       *looks, *cap, "--out", str(out), pool=pool)
            profiles[name] = out
            last_transfer = name
    if args.direct is None:
        direct = work / "direct"
        cmd = ["profile", "--device", "cpu", "--out", str(direct)]
        if args.supernet:
            cmd += ["--supernet", str(args.supernet)]
        _shaperctl(*cmd)
    else:  # an existing direct profile of this machine class as the yardstick
        direct = args.direct
    profiles["direct"] = direct
    for extra in args.also:  # e.g. the shipped profile of this class, made on another day
        profiles[f"also {extra.name}"] = extra
    loaded = {k: DeviceProfile.load(v) for k, v in profiles.items()}
    measured = {k: read_measurements(v) for k, v in profiles.items()}
    rows = []
    for name, p in loaded.items():
        mine = {r["shape_key"] for r in measured[name]}
        row = {"profile": name, "path": str(p.path),
               "minutes": (p.header.summary or {}).get("last_run", {}).get("seconds", 0) / 60,
               "shapes": p.header.sampling["samples"], "rounds": p.header.protocol.rounds,
               "sweeps": p.header.protocol.sweeps, "pool": p.header.protocol.pool,
               "sentinel": p.header.protocol.sentinel,
               "machine_speed": p.machine_speed(),
               "calm_looks": (p.header.summary or {}).get("calm_looks"),
               "calm_wait": (p.header.summary or {}).get("calm_wait"),
               "slow_floors": {q: slow_floors_of(p.header, q) for q in p.precisions},
               "precisions": p.precisions, "trust": p.trust,
               "own_held_out": {q: p.model.metrics[q]["held_out"] for q in p.precisions},
               "prior_held_out": {q: p.model.metrics[q].get("transfer", {}).get("prior_held_out")
                                  for q in p.precisions},
               "on_others": {}}
        for other, recs in measured.items():
            if other == name:
                continue
            keys = sorted({r["shape_key"] for r in recs if r["phase"] == "main"} - mine)
            if keys:
                row["on_others"][other] = score_by_precision(p.model, loaded[other], recs, keys)
        rows.append(row)
        print(f"{name}: {row['minutes']:.1f} min, " + "; ".join(
            f"{q} own held-out MAPE {row['own_held_out'][q]['mape']:.1%}" for q in p.precisions)
            + "; on direct's shapes: " + "; ".join(
                f"{q} {v['mape']:.1%}" for q, v in row["on_others"].get("direct", {}).items()),
            file=sys.stderr)
    from workload_profile import learning_curve

    result = {"benchmark": "transfer_live", "sources": [str(s) for s in args.sources],
              "max_tokens": args.max_tokens,
              "machine": loaded["direct"].header.fingerprint, "rows": rows,
              "direct_learning_curve": learning_curve(loaded["direct"])}
    if args.supernet and (args.bundles_from or last_transfer):
        from workload_profile import SHAPES, WORKLOADS, _errors, promise_kept, real_bundles

        best = loaded[args.bundles_from or last_transfer]
        sizes = [w for w in WORKLOADS if _covers(best.model, w)]  # --max-tokens narrows
        bundle_rows = real_bundles(best, args.supernet, SHAPES, sizes, 90.0)
        result["real_bundles"] = {"profile": str(best.path), "rows": bundle_rows,
                                  "floor": _errors(bundle_rows, "error"),
                                  "percentile_observed": _errors(bundle_rows, "pct_error"),
                                  "promise": promise_kept(bundle_rows)}
    return result


def gate(args) -> dict:
    """The trust gate on ``slow_floors`` (``predictor.MAX_SLOW_FLOORS``) judged on ``live``
    results (no timing): per transfer and precision, the share of its floors timed while the
    machine ran slow, its error on the direct profile's shapes, the verdict before the gate
    and with it; the direct and ``--also`` profiles' shares beside them."""
    cases, yardsticks = [], {}
    for path in args.results:
        for row in json.loads(path.read_text())["rows"]:
            for q in row["precisions"]:
                slow = (row.get("slow_floors") or {}).get(q)
                if not slow or not slow["points"]:
                    continue
                share = slow["slow"] / slow["points"]
                if not row["profile"].startswith("transfer"):  # a direct profile, once
                    yardsticks.setdefault(row["path"], {"results": path.name, "trust": row[
                        "trust"], "minutes": row["minutes"], "share": {}})["share"][q] = share
                    continue
                on = row["on_others"]["direct"][q]
                cases.append({"results": path.name, "profile": row["profile"], "precision": q,
                              "share": share, "median_slowdown": slow["median_slowdown"],
                              "own_mape": row["own_held_out"][q]["mape"],
                              "direct_mape": on["mape"], "direct_bias": on["bias"],
                              "direct_within_10pct": on["within_10pct"],
                              # the other gates' verdict: rows made since the gate (its
                              # masked-AVX2 rows, at 80% then) have missed it too
                              "reliable_before": not set(row["trust"]["missed"])
                              - {"max_slow_floors"}})
    for c in cases:  # the profile's verdict with the gate: any precision over it fails it
        c["reliable_with_gate"] = c["reliable_before"] and all(
            o["share"] <= MAX_SLOW_FLOORS for o in cases
            if (o["results"], o["profile"]) == (c["results"], c["profile"]))

    def side(picked: list[dict]) -> dict:
        err = [c["direct_mape"] for c in picked]
        return {"precisions": len(picked),
                "direct_mape_range": [min(err), max(err)] if err else None,
                "over_5pct": sum(e > 0.05 for e in err), "over_10pct": sum(e > 0.10 for e in err)}

    over = [c for c in cases if c["share"] > MAX_SLOW_FLOORS]
    passed = [c for c in cases if c["reliable_before"]]
    return {"benchmark": "transfer_slow_floors_gate", "max_slow_floors": MAX_SLOW_FLOORS,
            "results": [p.name for p in args.results], "cases": cases,
            "over": side(over), "at_most": side([c for c in cases if c not in over]),
            "reliable": {"before": side(passed),
                         "with_gate": side([c for c in passed if c["reliable_with_gate"]])},
            "yardsticks": yardsticks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    off = sub.add_parser("offline")
    off.add_argument("--pair", nargs=2, action="append", metavar=("SOURCE", "TARGET"),
                     help="a (source, target) pair of profile folders, from the repository "
                          "root (repeatable; default: the shipped pairs, PAIRS)")
    off.add_argument("--out", type=Path, required=True)
    fl = sub.add_parser("fleet")
    fl.add_argument("--target", type=Path, default=None,
                    help="A profile folder as the new device (default: each MiniLM class, "
                         "FLEET)")
    fl.add_argument("--sources", action="append", default=[],
                    help="With --target: comma-separated profile folders transferred from "
                         "together (a folder of profiles as --from takes it); repeatable, "
                         "one row each")
    fl.add_argument("--out", type=Path, required=True)
    sp = sub.add_parser("sparse")
    sp.add_argument("--out", type=Path, required=True)
    on = sub.add_parser("live")
    on.add_argument("--from", dest="sources", type=Path, action="append", required=True)
    on.add_argument("--minutes", type=float, nargs="*", default=[0.5, 1, 2, 4])
    on.add_argument("--supernet", type=Path, default=None)
    on.add_argument("--sweeps", type=int, nargs="*", default=None,
                    help="profile --from --sweeps: each --minutes once per value given "
                         "(default: once, with the command's default)")
    on.add_argument("--calm-looks", type=int, nargs="*", default=None,
                    help="profile --from --calm-looks: each --minutes once per value given "
                         "(default: once, with the command's default)")
    on.add_argument("--repeat", type=int, default=1,
                    help="Run every (minutes, sweeps, calm looks) this many times, in turn.")
    on.add_argument("--bundles-from", default=None,
                    help="The profile (row name) real bundles are measured against, with "
                         "--supernet (default: the last transfer; none without one)")
    on.add_argument("--max-tokens", type=int, default=None,
                    help="profile --from --max-tokens: the transfers measure sizes up to this "
                         "many tokens, and are scored there")
    on.add_argument("--direct", type=Path, default=None,
                    help="Score against this existing direct profile instead of measuring one.")
    on.add_argument("--also", type=Path, action="append", default=[],
                    help="Existing profiles scored beside the others, and the others on their "
                         "shapes (e.g. a shipped profile of this machine class, made on "
                         "another day); a row named 'also FOLDER' each.")
    on.add_argument("--pool", choices=["process", "session", "both"], default="process",
                    help="How the transfers' sessions get their threads: shaperctl's one pool "
                         "(process), a pool each (session), or both in turn")
    on.add_argument("--sentinel", choices=["on", "off", "both"], default="on",
                    help="profile --sentinel / --no-sentinel, or both in turn")
    on.add_argument("--work", type=Path, required=True)
    on.add_argument("--out", type=Path, required=True)
    ga = sub.add_parser("gate")
    ga.add_argument("results", type=Path, nargs="+", help="live results (JSON) with slow_floors")
    ga.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"offline": offline, "fleet": fleet, "sparse": sparse,
              "live": live, "gate": gate}[args.part](args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
