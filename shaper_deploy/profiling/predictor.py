"""Latency predictors fitted to a device profile, and the profile as one checked object.

The model is additive over the network, as the graph is: a layer of width d costs the same
wherever it sits, a transition costs in proportion to its matrix, and the embeddings and
output projection are a constant. At every measured (precision, batch, seq_len) grid point

    latency = sum_i (p + q d_i / D + r d_i^2 / D^2) + sum_w n_w * c_w
              + a * sum_i d_i d_{i+1} / D^2 + b * (d_1 + d_L) / D
              + e * (number of width changes) + c_0

is fitted by non-negative least squares on relative error (``n_w`` = layers of width ``w``);
the per-width corrections ``c_w`` are ridge-penalized, so a width few training shapes use
falls back on the smooth cost ``p + q d + r d^2``. Between grid points the prediction is
bilinear in batch and length (latency is close to affine in both); outside the grid it is
refused. On this machine's 300-shape MiniLM and BERT-base profiles at 128 tokens (fitted on
N random shapes, checked on 100 others, 30 draws): N = 9: MAPE 2.6% / 2.5%; N = 40: 1.7% /
1.7%, 97% within +-5%; N = 150: 1.5%, 99%. Per-width costs alone were as good from 40 shapes
but 9.1% / 7.5% MAPE from 9 (a width no training shape used cost nothing); the earlier
XGBoost model needed ~120 shapes for 1.7% and extrapolates flat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
from typing_extensions import NotRequired, TypedDict

from ..errors import ProfileError
from ..io import atomic_write_bytes, read_manifest
from ..promise import DEFAULT_PERCENTILE, PLAN_CONFIDENCE, TAIL_LEVELS, Budget
from ..schema import Count, validated
from .analysis import (dropped_by_key, machine_speed, measured_latency, noise_floor,
                       record_floor, reference_spread, slow_floors)
from .fingerprint import device_fingerprint, fingerprint_differences
from .folder import (HEADER, MEASUREMENTS, META_FILE, ProfileHeader, read_header,
                     read_measurements, shape_from_key, verify_file, workload_key, write_header)
from .plots import draw_plots
from .profile import MIN_SHAPES, held_out_keys, measure_model
from .protocol import Workload, describe_range, grid_cell
from ..shape import DesignSpace, Shape, reject_unknown_fields

PREDICTOR_FORMAT = "shaper-deploy/predictor"
PREDICTOR_VERSION = 4
MAX_MAPE = 0.05  # a profile whose held-out MAPE exceeds this is unreliable
MAX_NOISE = 0.03  # ... or whose noise floor (median re-measurement difference) exceeds this
# ... or more than this share of whose shape x size floors came from a group timed while the
# machine ran slow (``analysis.slow_floors``): such floors overstate latency, and held-out
# shapes timed in the same slow period cannot show it. Of 36 precisions of 2-minute MiniLM
# transfers from the Intel profile on the AMD EPYC Zen 4 VM in its slowest hours (session 44;
# 8 with the ISA masked to AVX2, timed after the limit was chosen), the 25 over 70% were
# 4.2-47% off a direct profile of the machine (23 over 5%), the 11 at 33-69% 2.7-6.0% (3 over
# 5%). Direct profiles: 11-60% in earlier hours; 90-93% in this session's slowest, whose
# floors were 5-9% over theirs (``benchmarks/transfer.py gate``). Counted against the fastest
# group until session 48, since against the fastest speed held over a few groups in a row
# (``analysis.calm_speed``), which the limit was then checked against.
MAX_SLOW_FLOORS = 0.7


RIDGE = 0.5  # penalty on the per-width corrections' relative effect (scale-free)
# The bottleneck matrices a graph computes (transitions between layers, the input and output
# projections) enter by area alone, one coefficient for all: they are plain dense matrices.
# Until predictor format 4 they had a size term each (transitions, projections) and a cost
# per matrix; the fit could not tell that cost apart from its shapes: a profile times the
# largest shape only without its identities (no matrix) and nearly every other shape with
# all of them, so the per-matrix cost took up whatever set the largest shape apart. On the
# shipped AMD Zen 4 MiniLM profile it came to 0.24 ms a matrix at 1 x 128 (a 180 x 180 one
# computes in ~0.05), and uniform shapes exported from an identity network (no transitions)
# were predicted 8-30% fast at widths 60-180, within 2% by area alone; held-out MAPE fell on
# 70 of the repository's 92 direct profile precisions, rose on 14 by at most 0.33 points
# (benchmarks/bottleneck_features.py, docs/benchmarks.md).
SMOOTH = ("layers", "layer_width", "layer_width_sq", "bottlenecks", "width_changes",
          "constant")


def feature_names(space: DesignSpace) -> list[str]:
    return [*SMOOTH, *(f"layers_{w}" for w in space.widths)]


def features(shapes: Sequence[Shape], dropped: Sequence[Sequence[str]] | None = None
             ) -> np.ndarray:
    """One row per shape: the smooth layer cost's terms, the area of the bottleneck
    matrices its graph computes over D^2 (a transition between widths a and b is a x b, a
    projection D x d; ``dropped[i]`` names those shape i leaves out, as an identity super
    network's export does), width changes, 1, then layers per width."""
    rows = []
    for i, s in enumerate(shapes):
        w, D = s.widths, s.space.hidden_size
        gone = set(dropped[i]) if dropped is not None else set()
        area = sum(a * b for t, (a, b) in enumerate(zip(w[:-1], w[1:]))
                   if f"transitions.{t}" not in gone)
        area += sum(D * d for name, d in (("proj_in", w[0]), ("proj_out", w[-1]))
                    if name not in gone)
        rows.append([len(w), sum(w) / D, sum(d * d for d in w) / D / D, area / D / D,
                     sum(a != b for a, b in zip(w[:-1], w[1:])), 1.0,
                     *(w.count(x) for x in s.space.widths)])
    return np.asarray(rows, dtype=np.float64)


def tail_model(records: list[dict[str, Any]], precisions: str | Sequence[str],
               center: Callable[[dict[str, Any]], float | None] = record_floor,
               bins: int = 8
               ) -> dict[str, Any] | None:
    """How request latency is spread above the floor, as a function of that floor.

    Every measurement keeps percentiles of its timed runs; divided by ``center`` (the
    fitted model's floor for that shape and size, ``fit_model``; by default the
    measurement's own floor; None leaves a record out) they give its spread at the moment
    it ran, the machine's slowdown then included: a slow period that covered a whole
    measurement lifted its floor above the model's, and shows here. Mixed over all
    measurements of similar latency, across the whole profile's time, they give the factor a
    percentile of request latency (the median too) stands above the predicted floor:
    ``percentile(P) = floor x factor(P, floor)``. This is where a shared host's slow
    periods enter a promise, in the share of the profile's time they took; a calm look's
    measurements that waited for a calm moment (``profile.wait_for_calm``) are no sample of
    that time and are left out. Measurements are
    put in ``bins`` bins of equal count by floor (short runs spread more); between bin
    centers the factor is interpolated in log latency.

    ``precisions``: whose measurements are mixed (``fit_model`` mixes all of a profile's,
    the machine's tail, and keeps per precision the larger of that and its own; why in its
    comment).
    """
    wanted = {precisions} if isinstance(precisions, str) else set(precisions)
    rows = []
    for r in records:
        if r["precision"] not in wanted or r["phase"] != "main" or "calm_wait" in r:
            continue
        floor = center(r)
        if floor is None:
            continue
        if "run_ms" in r:
            levels = sorted((float(k), v) for k, v in r["run_ms"].items())
        else:  # profiles before run percentiles: the median and p90 only
            levels = [(50.0, r["median_ms"]), (90.0, r["p90_ms"])]
        rows.append((floor, [lv for lv, _ in levels], [v / floor for _, v in levels]))
    if len(rows) < bins * 5:
        return None
    have = set.intersection(*(set(lv) for _, lv, _ in rows))
    levels = [lv for lv in TAIL_LEVELS if lv in have]
    rows.sort(key=lambda t: t[0])
    u = np.linspace(0.5, 99.5, 100)  # each record as 100 equally likely runs
    centers, factors = [], []
    for chunk in np.array_split(np.arange(len(rows)), bins):
        pseudo = np.concatenate([np.interp(u, rows[i][1], rows[i][2]) for i in chunk])
        centers.append(float(np.median([rows[i][0] for i in chunk])))
        factors.append([float(np.percentile(pseudo, lv)) for lv in levels])
    return {"levels": levels, "median_ms": centers, "factor": factors,
            "records": len(rows), "precisions": sorted(wanted)}


def larger_tail(machine: dict[str, Any], own: dict[str, Any] | None, precision: str
                ) -> dict[str, Any]:
    """The machine's tail (``tail_model`` of every precision) with each factor raised to
    ``own``'s (one precision's) where that is larger, at the machine's bins and levels."""
    if own is None:  # too few measurements of this precision for a tail of its own
        return machine
    return {**raised_tail(machine, own), "own": precision}


def raised_tail(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each factor raised to ``other``'s where that is larger, at ``base``'s
    bins and levels (every other field of ``base`` kept). ``other`` may stop at a lower
    level (a profile made before tails reached p99 stops at p90): above its highest level
    its factor there raises, a bound a higher percentile never falls below; below its
    lowest it raises nothing."""
    ms = np.array(base["median_ms"])
    low, high = other["levels"][0], other["levels"][-1]
    other_at = np.array([tail_factor(other, min(lv, high), ms) if lv >= low else 0.0 * ms
                         for lv in base["levels"]]).T  # bins x levels
    return {**base, "factor": np.maximum(np.array(base["factor"]), other_at).tolist()}


def tail_factor(tail: dict[str, Any] | None, percentile: float, ms: np.ndarray
                ) -> np.ndarray:
    """The factor a percentile of request latency stands above the floor ``ms``."""
    ms = np.asarray(ms, dtype=np.float64)
    if tail is None:
        raise ProfileError("this profile has too few measurements to model latency "
                           "percentiles (it predicts only the floor); measure more shapes")
    levels = tail["levels"]
    if not levels[0] <= percentile <= levels[-1]:
        raise ProfileError(f"percentile {percentile:g} is outside what this profile measured "
                           f"({levels[0]:g}..{levels[-1]:g}); remake it with this "
                           "shaper-deploy for percentiles up to 99")
    per_level = np.array(tail["factor"])  # bins x levels
    by_bin = np.array([np.interp(percentile, levels, row) for row in per_level])
    return np.interp(np.log(np.maximum(ms, 1e-6)), np.log(tail["median_ms"]), by_bin)


def percentile_upper_bound(times: Sequence[float], percentile: float,
                           confidence: float = PLAN_CONFIDENCE) -> float:
    """A one-sided upper confidence bound of the ``percentile`` of the distribution ``times``
    were drawn from: the smallest order statistic x(k) with P(Binomial(n, p) < k) >=
    ``confidence`` (distribution-free; no normality, which a latency's spikes break). Too few
    runs for that confidence: the largest run (then it says less than ``confidence``)."""
    from scipy.stats import binom

    x = np.sort(np.asarray(times, dtype=np.float64))
    n = len(x)
    k = int(binom.ppf(confidence, n, percentile / 100.0)) + 1  # 1-based rank
    return float(x[min(k, n) - 1])


def fit_point(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimizing the relative error of ``x @ c`` against ``y``,
    with the per-width corrections ridge-penalized; refitted once without the measurements
    it misses by more than 8% and 5 MADs (a disturbed measurement on a shared machine)."""
    from scipy.optimize import nnls

    k = x.shape[1] - len(SMOOTH)
    penalty = np.zeros((k, x.shape[1]))
    # In relative-error units: a correction c_w on every layer moves latency by L*c_w.
    layers = float(np.median(x[:, SMOOTH.index("layers")]))
    penalty[np.arange(k), len(SMOOTH) + np.arange(k)] = RIDGE * layers / float(np.median(y))

    def solve(keep: np.ndarray) -> np.ndarray:
        return nnls(np.vstack([x[keep] / y[keep, None], penalty]),
                    np.concatenate([np.ones(int(keep.sum())), np.zeros(k)]))[0]

    keep = np.ones(len(y), dtype=bool)
    coef = solve(keep)
    rel = x @ coef / y - 1
    mad = np.median(np.abs(rel - np.median(rel)))
    keep = np.abs(rel) <= max(0.08, 5 * 1.4826 * mad)
    return solve(keep) if keep.sum() >= max(len(SMOOTH), len(y) // 2) and not keep.all() else coef


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    rel = predicted / actual - 1
    ss_res = float(((actual - predicted) ** 2).sum())
    ss_tot = float(((actual - actual.mean()) ** 2).sum())
    return {"n": int(len(actual)), "r2": 1 - ss_res / ss_tot if ss_tot else float("nan"),
            "mape": float(np.abs(rel).mean()), "bias": float(rel.mean()),
            "within_5pct": float((np.abs(rel) <= 0.05).mean()),
            "within_10pct": float((np.abs(rel) <= 0.10).mean()),
            "abs_rel_p95": float(np.percentile(np.abs(rel), 95)),
            "abs_rel_max": float(np.abs(rel).max())}


class HeldOut(TypedDict):
    n: Count
    r2: float
    mape: float
    bias: float
    within_5pct: float
    within_10pct: float
    abs_rel_p95: float
    abs_rel_max: float


class TransferFit(TypedDict):
    """How a transferred profile fitted one precision (transfer.py)."""
    fit: Literal["direct", "prior"]  # chosen by leave-one-shape-out error
    ridge: float  # towards the prior (0: direct)
    loo_mape: dict[str, float]  # per candidate fit
    prior_held_out: HeldOut  # the scaled sources alone, on the held-out shapes
    by_workload: dict[str, dict[str, Any]]  # per grid point: sources used and their mix


class PrecisionMetrics(TypedDict):
    held_out: HeldOut  # what trust and margins are judged on
    grid_held_out: HeldOut
    trained_on: Count
    held_out_shapes: Count
    held_out_keys: list[str]
    mape_by_workload: dict[str, float]
    check_held_out: NotRequired[Optional[HeldOut]]
    transfer: NotRequired[TransferFit]  # a transferred profile's fit


class TailModel(TypedDict):
    levels: list[float]  # percentiles
    median_ms: list[float]  # latency bins
    factor: list[list[float]]  # bins x levels
    records: Count
    precisions: NotRequired[list[str]]  # whose measurements it mixes (older profiles: its own)
    own: NotRequired[str]  # raised to this precision's own tail where larger (larger_tail)
    # a transfer's: raised to these sources' tails where larger (measured on this machine)
    same_machine: NotRequired[list[str]]
    # ... and so prices the slowdowns theirs did: up to this (their ``machine_speed`` p90s)
    priced_slowdown: NotRequired[float]


@dataclass
class LatencyModel:
    """``predictor.json``: coefficients per precision and grid point, and how good they are."""

    space: DesignSpace
    grid: list[Workload]  # measured (batch, seq_len) points
    coef: dict[str, dict[str, list[float]]]  # precision -> "BxS" -> coefficients
    metrics: dict[str, PrecisionMetrics]  # precision -> held-out metrics (grid, check sizes)
    margin: dict[str, float]  # precision -> 1 + held-out p95 relative error
    features: list[str] = field(default_factory=list)
    tail: dict[str, TailModel] = field(default_factory=dict)  # precision -> tail_model()
    method: str = ("floor (p10 of a measurement's timed runs), additive per grid point: "
                   "per-layer cost smooth in width plus "
                   "ridge-penalized per-width corrections, the bottleneck matrices the graph "
                   "computes by area, width changes (NNLS on relative error, one trimmed "
                   "refit); "
                   "bilinear in batch and length between grid points, refused outside; "
                   "percentiles (the median too) = floor x the profile's mixed run spread "
                   "above the floor at that latency")

    @property
    def precisions(self) -> list[str]:
        return list(self.coef)

    def predict(self, shapes: Sequence[Shape], precision: str, batch: int, seq_len: int,
                percentile: float | None = None,
                dropped: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """Latency in ms at (batch, seq_len) under the profile's protocol: the floor (what
        the model is fitted on; ``percentile`` None), or that percentile of request latency
        (50: the median). ``dropped[i]`` names the projections shape i's graph leaves out
        (default: none)."""
        if precision not in self.coef:
            raise ProfileError(f"this profile has no {precision} measurements; it has "
                               f"{', '.join(self.coef)}")
        for s in shapes:
            if s.space != self.space:
                raise ProfileError("shape belongs to another design space than this profile's "
                                   f"({self.space.describe()})")
        out = features(shapes, dropped) @ self.coef_at(precision, batch, seq_len)
        if percentile is None:
            return out
        return out * tail_factor(self.tail.get(precision), percentile, out)

    def coef_at(self, precision: str, batch: int, seq_len: int) -> np.ndarray:
        """The floor's coefficients at (batch, seq_len): bilinear between grid points
        (the prediction is linear in them), refused outside the grid."""
        cell = grid_cell(self.grid, batch, seq_len)
        if cell is None:
            raise ProfileError(f"batch {batch} x {seq_len} tokens is outside the profiled "
                               f"range ({describe_range(self.grid)}); profile those sizes "
                               "with --batch/--seq-len/--max-tokens")
        (b0, s0), _, (b1, _), (_, s1) = cell
        tb = (batch - b0) / (b1 - b0) if b1 != b0 else 0.0
        ts = (seq_len - s0) / (s1 - s0) if s1 != s0 else 0.0
        out = np.zeros(len(self.coef[precision][workload_key((b0, s0))]))
        for (b, s), wgt in (((b0, s0), (1 - tb) * (1 - ts)), ((b0, s1), (1 - tb) * ts),
                            ((b1, s0), tb * (1 - ts)), ((b1, s1), tb * ts)):
            if wgt:
                out += wgt * np.asarray(self.coef[precision][workload_key((b, s))])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_VERSION,
                "method": self.method, "features": self.features,
                "design_space": self.space.to_dict(), "grid": [list(w) for w in self.grid],
                "coef": self.coef, "margin": self.margin, "metrics": self.metrics,
                "tail": self.tail}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = META_FILE) -> "LatencyModel":
        hint = "refit with: shaperctl profile ... --out PROFILE"
        d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        if isinstance(d, dict) and "design_space" in d:  # the file's name for the field
            d["space"] = d.pop("design_space")
        reject_unknown_fields(cls, d, where, ProfileError, require_all=True)
        model = validated(cls, d, where, ProfileError, hint)
        wanted = {workload_key(w) for w in model.grid}
        for p, by_point in model.coef.items():
            bad = next((k for k, c in by_point.items() if len(c) != len(model.features)), None)
            problem = (f"coef {p} lacks grid points" if set(by_point) != wanted else
                       f"coef {p} {bad} has not one number per feature" if bad else
                       f"{p} has no metrics or margin" if p not in model.metrics
                       or p not in model.margin else "")
            if problem:
                raise ProfileError(f"{where} is malformed: {problem}; {hint}")
        if not model.coef or any(p not in model.coef for p in (*model.margin, *model.tail)):
            raise ProfileError(f"{where} is malformed: its precisions disagree (coef "
                               f"{sorted(model.coef)}, margin {sorted(model.margin)}); {hint}")
        return model


PointFit = Callable[[str, Workload, np.ndarray, np.ndarray], np.ndarray]


def grid_data(header: ProfileHeader, precision: str,
              main: dict[tuple[str, int, int], dict[str, float]], gone: dict[str, list[str]],
              held_out: float = 0.25, held_keys: set[str] | None = None
              ) -> tuple[list[str], np.ndarray, dict[Workload, dict[str, float]], np.ndarray]:
    """One precision's shapes measured at every grid size, as every fit of a profile uses
    them (direct or transfer): their keys, features, floor per grid point and key, and
    the held-out mask (``held_keys``, else every 4th by parameters). ``main`` and ``gone``
    are ``measured_latency(records)`` and ``dropped_by_key(records)``."""
    points = {w: main.get((precision, *w), {}) for w in header.protocol.grid}
    keys = sorted(set.intersection(*(set(v) for v in points.values())))
    shapes = [shape_from_key(k, header.space) for k in keys]
    x = features(shapes, [gone.get(k, []) for k in keys])
    held = held_keys if held_keys is not None else held_out_keys(shapes, held_out)
    return keys, x, points, np.array([k in held for k in keys], dtype=bool)


def fit_model(header: ProfileHeader, records: list[dict[str, Any]],
              held_out: float = 0.25, held_keys: set[str] | None = None,
              point_fit: PointFit | None = None, min_shapes: int = MIN_SHAPES,
              method: str | None = None) -> LatencyModel:
    """Fit on 3 of 4 shapes, measure the error on the rest (at grid and at check sizes),
    then refit every grid point on all shapes for the saved model. ``held_keys`` fixes the
    held-out shapes instead (a learning curve compares fits on one held-out set).
    ``point_fit(precision, workload, x, y)`` replaces :func:`fit_point` (a transfer fits
    with another device's model as its prior, ``transfer.py``)."""
    fit = point_fit or (lambda precision, w, x, y: fit_point(x, y))
    space, protocol = header.space, header.protocol
    main = measured_latency(records, "main")  # held-out shapes also at the check sizes
    gone = dropped_by_key(records)
    coef: dict[str, dict[str, list[float]]] = {}
    metrics: dict[str, Any] = {}
    margin: dict[str, float] = {}
    for precision in protocol.precisions:
        keys, x, points, test = grid_data(header, precision, main, gone, held_out, held_keys)
        if len(keys) < min_shapes:
            raise ProfileError(f"the profile has {len(keys)} shapes measured at every {precision} "
                               f"input size; a predictor needs at least {min_shapes}: run the "
                               "same profile command again to finish it")
        split: dict[str, list[float]] = {}
        coef[precision] = {}
        actual_g, pred_g, by_workload = [], [], {}
        for w in protocol.grid:
            y = np.array([points[w][k] for k in keys])
            c = fit(precision, w, x[~test], y[~test])
            split[workload_key(w)] = c.tolist()
            coef[precision][workload_key(w)] = fit(precision, w, x, y).tolist()
            p = x[test] @ c
            actual_g.append(y[test])
            pred_g.append(p)
            by_workload[workload_key(w)] = float(np.abs(p / y[test] - 1).mean())
        trial = LatencyModel(space, list(protocol.grid), {precision: split}, {}, {})
        held = [k for k, t in zip(keys, test) if t]
        actual_c, pred_c = [], []
        for w in protocol.checks:
            measured = main.get((precision, *w), {})
            ks = [k for k in held if k in measured]
            if not ks:
                continue
            y = np.array([measured[k] for k in ks])
            p = trial.predict([shape_from_key(k, space) for k in ks], precision, *w,
                              dropped=[gone.get(k, []) for k in ks])
            actual_c.append(y)
            pred_c.append(p)
            by_workload[workload_key(w) + " (check)"] = float(np.abs(p / y - 1).mean())
        grid_a, grid_p = np.concatenate(actual_g), np.concatenate(pred_g)
        m = {"grid_held_out": regression_metrics(grid_a, grid_p),
             "trained_on": int((~test).sum()), "held_out_shapes": int(test.sum()),
             "held_out_keys": held,
             "mape_by_workload": by_workload}
        if actual_c:
            ca, cp = np.concatenate(actual_c), np.concatenate(pred_c)
            m["check_held_out"] = regression_metrics(ca, cp)
            m["held_out"] = regression_metrics(np.concatenate([grid_a, ca]),
                                               np.concatenate([grid_p, cp]))
        else:
            m["held_out"] = m["grid_held_out"]
        metrics[precision] = m
        margin[precision] = 1 + m["held_out"]["abs_rel_p95"]
    model = LatencyModel(space, list(protocol.grid), coef, metrics, margin,
                         feature_names(space))
    # A precision's tail is the larger of its own and the machine's (both precisions'
    # measurements mixed): a slow period is the host's, but a profile times each precision in
    # groups of its own, so a tail per precision sees only the minutes its groups fell in. The
    # AMD Zen 5 MiniLM profile's int8 groups met slower minutes (the reference at p90 1.69x
    # its fastest, fp32's 1.36x): its p90 factor at 3 ms read x1.73 for int8, x1.30 for fp32,
    # and checks of real bundles days later saw 20-22% of fp32's runs over the promised p90.
    # On held-out time (a third of each of seven AMD profiles), the larger of the two kept p90
    # in 9 of 14 (profile, precision) pairs, the machine's alone 6, each precision's own 2;
    # worst 16% of runs over, against 19% and 24% (benchmarks/tail_pooling.py). The machine's
    # alone left int8 worse on 5 of 7: int8's floors moved more between periods there.
    center = model_floors(model, records, space)
    machine = tail_model(records, protocol.precisions, center)
    if machine is not None:
        model.tail = {p: larger_tail(machine, tail_model(records, p, center), p)
                      for p in protocol.precisions}
    if method:
        model.method = method
    return model


def model_floor(model: LatencyModel, records: list[dict[str, Any]], precision: str,
                space: DesignSpace) -> Callable[[dict[str, Any]], float | None]:
    """The fitted model's floor for each of ``records`` (its shape, size and dropped
    projections), as ``tail_model``'s center; None outside the model's grid."""
    floors: dict[tuple[str, int, int], float] = {}
    by_size: dict[tuple[int, int], set[str]] = {}
    for r in records:
        if r["precision"] == precision:
            by_size.setdefault((r["batch"], r["seq_len"]), set()).add(r["shape_key"])
    gone = dropped_by_key(records)
    for (b, s), keys in by_size.items():
        if grid_cell(model.grid, b, s) is None:  # outside the fitted grid: not in the tail
            continue
        ks = sorted(keys)
        ms = model.predict([shape_from_key(k, space) for k in ks], precision, b, s,
                           dropped=[gone.get(k, []) for k in ks])
        floors.update({(k, b, s): float(v) for k, v in zip(ks, ms)})
    def center(r: dict[str, Any]) -> float | None:
        ms = floors.get((r["shape_key"], r["batch"], r["seq_len"]))
        # A fit to garbage may predict nothing for a shape: its own floor (trust flags it).
        return None if ms is None else ms if ms > 0 else record_floor(r)
    return center


def model_floors(model: LatencyModel, records: list[dict[str, Any]], space: DesignSpace
                 ) -> Callable[[dict[str, Any]], float | None]:
    """``model_floor`` for records of every precision the model has: the centre of a tail
    that mixes precisions (each record centred on its own precision's floor)."""
    floors = {p: model_floor(model, records, p, space) for p in model.precisions}
    return lambda r: floors[r["precision"]](r)


def noise_of(header: ProfileHeader, precision: str) -> float | None:
    """The profile's noise floor: the median relative difference between two measurements of
    one shape (None when no shape was measured twice)."""
    return ((header.summary or {}).get("precisions", {}).get(precision, {})
            .get("noise_floor") or {}).get("median_abs_rel_diff")


def slow_floors_of(header: ProfileHeader, precision: str) -> dict[str, Any] | None:
    """The summary's ``slow_floors`` of ``precision`` (None for profiles made before it)."""
    slow = ((header.summary or {}).get("precisions", {}).get(precision, {})
            .get("slow_floors"))
    return slow if slow and slow.get("points") else None


def retake_hint(path: str | Path, header: ProfileHeader, t: dict[str, Any]) -> str | None:
    """For a profile unreliable (``trust``: ``t``) in a precision that has floors timed while
    the machine ran slow: the retake that times them again (``profile.retake_profile``)."""
    n = sum((slow_floors_of(header, p) or {}).get("slow", 0) for p in t["failed"])
    return (f"retake its {n} floor(s) timed while the machine ran slow, each once it runs "
            f"calm: shaperctl profiles retake {path}" if n and not t["reliable"] else None)


def trust(header: ProfileHeader, model: LatencyModel) -> dict[str, Any]:
    """Whether the profile can be planned with, and why not: the reasons, the gates
    ``missed`` and the precisions that ``failed`` one."""
    reasons, missed, failed = [], set(), []
    for precision in model.precisions:
        before = len(reasons)
        mape = model.metrics[precision]["held_out"]["mape"]
        if mape > MAX_MAPE:
            reasons.append(f"{precision} held-out MAPE {mape:.1%} > {MAX_MAPE:.0%}")
            missed.add("max_mape")
        noise = noise_of(header, precision)
        if noise is None:
            reasons.append(f"{precision} has no noise floor (no shapes re-measured)")
        elif noise > MAX_NOISE:
            reasons.append(f"{precision} noise floor {noise:.1%} > {MAX_NOISE:.0%}")
            missed.add("max_noise_floor")
        slow = slow_floors_of(header, precision)
        if slow and slow["slow"] > MAX_SLOW_FLOORS * slow["points"]:
            reasons.append(f"{precision} {slow['slow']} of {slow['points']} floors timed while "
                           f"the machine ran slow (median x{slow['median_slowdown']:.2f}) > "
                           f"{MAX_SLOW_FLOORS:.0%}")
            missed.add("max_slow_floors")
        if len(reasons) > before:
            failed.append(precision)
    return {"reliable": not reasons, "reasons": reasons, "missed": sorted(missed),
            "failed": failed,
            "limits": {"max_mape": MAX_MAPE, "max_noise_floor": MAX_NOISE,
                       "max_slow_floors": MAX_SLOW_FLOORS}}


def fit_profile(profile: str | Path, progress=None,
                fit: Callable[..., LatencyModel] = fit_model) -> LatencyModel:
    """Fit, evaluate on held-out shapes and sizes, save the predictor and its plots. A
    transferred profile is fitted by ``transfer.refit`` (``fit`` = its fit)."""
    note = progress or (lambda message: None)
    profile = Path(profile)
    header = read_header(profile)
    if header.transfer and fit is fit_model:
        raise ProfileError(f"profile {profile} is a transfer: fit it with "
                           "shaper_deploy.profiling.transfer.refit")
    verify_file(profile, header, MEASUREMENTS)
    records = read_measurements(profile)
    note("fitting the latency model" + (" from the transfer's sources" if header.transfer
                                        else ""))
    model = fit(header, records)
    for precision, summary in (header.summary or {}).get("precisions", {}).items():
        # Analysis of the measurements, redone with the fit (the measurements are final).
        summary["noise_floor"] = noise_floor(records, precision)
        summary["reference_spread"] = reference_spread(records, precision)
        if "slow_floors" in summary:  # counted since session 42, against this calm speed
            summary["slow_floors"] = slow_floors(records, precision)  # since session 48
    data = (json.dumps(model.to_dict(), indent=2) + "\n").encode()
    atomic_write_bytes(profile / META_FILE, data)
    header.files[META_FILE] = _sha256(data)
    draw_plots(profile, header, model, records, trust(header, model),
               {p: noise_of(header, p) for p in model.precisions},
               {p: slow_floors_of(header, p) for p in model.precisions})
    write_header(profile, header)
    return model


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass
class DeviceProfile:
    """A profile folder, loaded and checked in one place: header, latency model, trust."""

    path: Path
    header: ProfileHeader
    model: LatencyModel
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> "DeviceProfile":
        path = Path(path)
        header = read_header(path)
        if header.status != "measured" or META_FILE not in header.files:
            raise ProfileError(f"profile {path} is not finished (no fitted predictor); finish "
                               + (f"its retake with shaperctl profiles retake {path}"
                                  if header.protocol.retakes and header.status != "measured"
                                  else "it by running the same shaperctl profile command "
                                  "again"))
        file = verify_file(path, header, META_FILE)
        data = read_manifest(file, PREDICTOR_FORMAT, PREDICTOR_VERSION, "predictor",
                             ProfileError, f"{file} is missing")
        if data["format_version"] < PREDICTOR_VERSION:
            raise ProfileError(f"{file} was fitted by an older shaper-deploy (predictor format "
                               f"{data['format_version']}; this one reads {PREDICTOR_VERSION}: "
                               "bottlenecks by area); refit it, keeping every "
                               "measurement, by running the same shaperctl profile command "
                               f"again with --out {path}")
        model = LatencyModel.from_dict(data, str(file))
        if model.space != header.space:
            raise ProfileError(f"{file} was fitted to another design space than {HEADER} says")
        return cls(path, header, model)

    @property
    def space(self) -> DesignSpace:
        return self.header.space

    @property
    def device(self) -> str:
        return self.header.fingerprint["device"]

    @property
    def precisions(self) -> list[str]:
        return self.model.precisions

    @property
    def reference_workload(self) -> Workload:
        return self.header.protocol.reference

    @property
    def trust(self) -> dict[str, Any]:
        return trust(self.header, self.model)

    def predict(self, shapes: Sequence[Shape], precision: str, batch: int, seq_len: int,
                percentile: float | None = None,
                dropped: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """The floor (``percentile`` None) or a percentile of request latency."""
        return self.model.predict(shapes, precision, batch, seq_len, percentile, dropped)

    def tail_factor(self, precision: str, percentile: float, ms) -> np.ndarray:
        return tail_factor(self.model.tail.get(precision), percentile, ms)

    def budget_ms(self, budget: Budget, workload: tuple[int, int], percentile: float,
                  full_dropped: Sequence[str] = ()) -> float:
        """``budget`` in milliseconds at ``percentile`` of request latency for the workload:
        as given, or (a relative budget) its share of the full fp32 model's latency here
        (``full_dropped``: the projections the full shape's export leaves out)."""
        if not budget.relative:
            return budget.value
        full = self.space.largest
        return budget.value * float(self.predict([full], "fp32", *workload, percentile,
                                                 [list(full_dropped)])[0])

    def margin(self, precision: str) -> float:
        return self.model.margin[precision]

    def int8_gain(self) -> dict[str, dict[str, float]]:
        """What int8 buys here per grid size: fp32 floor / int8 floor of the fitted model, for
        the design space's smallest and largest shapes (every shape measured, precisions'
        groups alternating; the probe's two rounds are the first guess). Empty without both."""
        if not {"fp32", "int8"} <= set(self.precisions):
            return {}
        shapes = {"smallest": self.space.smallest, "largest": self.space.largest}
        return {name: {workload_key(w): round(float(
            self.predict([shape], "fp32", *w)[0] / self.predict([shape], "int8", *w)[0]), 3)
            for w in self.model.grid} for name, shape in shapes.items()}

    def machine_speed(self) -> dict[str, Any] | None:
        """How fast the machine ran over the profile's time (``analysis.machine_speed``), from
        its measurements, their checksum verified first (None for a profile that records no
        checksum of them: made before checksums). Read once per loaded profile."""
        if "speed" not in self._cache:
            speed = None
            if MEASUREMENTS in self.header.files:
                verify_file(self.path, self.header, MEASUREMENTS)
                speed = machine_speed(read_measurements(self.path))
            self._cache["speed"] = speed
        return self._cache["speed"]

    def priced_slowdown(self, precision: str) -> float | None:
        """The machine's slowdown ``precision``'s tail prices: the 90th percentile of this
        profile's own group slowdowns (``machine_speed``), or of a same-machine source's a
        transfer's tail was raised to (``TailModel.priced_slowdown``) where larger; None for
        a profile that kept no record of its machine's speed."""
        speed = self.machine_speed()
        raised = (self.model.tail.get(precision) or {}).get("priced_slowdown")
        found = ([speed["p90"]] if speed is not None else []) + (
            [raised] if raised is not None else [])
        return max(found) if found else None

    def noise(self, precision: str) -> float:
        """How far one measurement may stray from another of the same model (0 if unknown)."""
        return noise_of(self.header, precision) or 0.0

    def reference_ms(self, precision: str, batch: int, seq_len: int) -> float:
        """The profile's reference graph's predicted floor at a workload: measurements
        report drift as the reference's floor now over this."""
        ref = Shape(tuple(self.header.reference_shape), self.space)
        return float(self.predict([ref], precision, batch, seq_len)[0])

    def measure(self, model_file: str | Path, precision: str, workload: Workload,
                device: str, percentile: float = DEFAULT_PERCENTILE,
                seconds: float | None = None, keep_times: bool = False,
                go_on: Callable[[dict[str, Any]], float | None] | None = None
                ) -> dict[str, Any]:
        """An ONNX file timed now with this profile's protocol at ``workload``, interleaved
        with the profile's reference graph: the numbers its prediction is comparable with.

        A slowdown is handled one way everywhere. ``drift`` is the reference graph's floor
        now over the profile's: how fast the machine is now. The part of it the profile's
        tail already prices (``priced_drift``, :func:`priced_drift`: a slowdown no larger
        than most of the profile's own groups saw, or any speed-up) is taken out of the
        model's floor now (``intrinsic_ms``, the low end of its runs, what the latency model
        predicts), and that times the profile's tail factor is its ``percentile`` as the
        profile's time saw the machine (``estimated_ms``); ``observed_ms`` is the percentile
        of the runs just timed, this minute's slowdown included. A budget is judged on the
        larger of the two (``judged_ms``): a fast minute never passes a model the profile's
        time says is over, a slow minute in a period the profile priced is not counted twice
        (its floor lifted, then the tail for the same slowdown), and a slowdown beyond the
        profile's (a host slower than the one profiled under the same fingerprint: seen
        11-19% apart) still lifts both. A plan, a promise about measurements to come, keeps a
        model on ``kept_on_ms``: the observed percentile's upper ``PLAN_CONFIDENCE`` bound
        (:func:`percentile_upper_bound`) in place of the point. ``keep_times`` adds every
        timed run (``times``, ms). ``go_on`` (``verify``'s longer windows,
        :func:`longer_window`) sees the result when the ``seconds`` are up and may name a
        longer total: timing goes on and the result is of all the runs, with each window's
        figures, judged on the runs up to its end, in ``windows`` (with ``go_on`` only).
        """
        seen: list[tuple[dict[str, Any], dict[str, Any]]] = []  # each window: runs, verdict

        def extend(m: dict[str, Any]) -> float | None:
            seen.append((m, self.judge(m, precision, percentile)))
            return go_on(seen[-1][1])

        m = measure_model(Path(model_file), self.header,
                          self.reference_ms(precision, *workload), precision, workload, device,
                          seconds, extend=extend if go_on is not None else None)
        # the result is the last window go_on saw, already judged (none without go_on)
        r = seen[-1][1] if seen and seen[-1][0] is m else self.judge(m, precision, percentile)
        windows = [{k: w[k] for k in WINDOW_FIELDS} for _, w in seen or [(m, r)]]
        return {**r, **({"windows": windows} if go_on is not None else {}),
                **({"times": m["times"]} if keep_times else {})}

    def judge(self, m: dict[str, Any], precision: str,
              percentile: float = DEFAULT_PERCENTILE) -> dict[str, Any]:
        """A ``measure_model`` result ``m`` judged as :meth:`measure` says (its figures
        without ``windows`` and ``times``)."""
        priced = priced_drift(m["drift"], self.priced_slowdown(precision))
        floor = m["intrinsic_ms"] / priced
        estimated = float(floor * self.tail_factor(precision, percentile, floor))
        observed = float(np.percentile(m["times"], percentile))
        upper = percentile_upper_bound(m["times"], percentile)
        return {"profile": str(self.path), "batch": m["batch"], "seq_len": m["seq_len"],
                "precision": precision, "percentile": percentile,
                "measured_ms": m["measured_ms"], "intrinsic_ms": m["intrinsic_ms"],
                "estimated_ms": estimated, "observed_ms": observed,
                "judged_ms": max(estimated, observed),
                "observed_upper_ms": upper, "confidence": PLAN_CONFIDENCE,
                "kept_on_ms": max(estimated, upper),
                "runs": len(m["times"]), "seconds": m["seconds"], "drift": m["drift"],
                "priced_drift": priced}

    def foreign_fields(self, here: dict[str, Any] | None = None) -> list[str]:
        """How the machine the profile was measured on differs from this one (empty: same);
        ``here``: this machine's fingerprint, when the caller has read it already."""
        return fingerprint_differences(self.header.fingerprint,
                                       here or device_fingerprint(self.device))

    def check_device(self, device: str, for_device: bool = False) -> list[str]:
        """Refuse another device kind, and a profile of another machine unless the plan is
        ``for_device`` (for the machine the profile describes: then nothing may be measured
        here). Returns the fields that differ."""
        if self.device != device:
            raise ProfileError(f"profile {self.path} was measured on {self.device}, but "
                               f"--device is {device}; pass --device {self.device} or a "
                               f"{device} profile")
        differences = self.foreign_fields()
        if differences and not for_device:
            raise ProfileError(
                f"profile {self.path} was measured on another machine ("
                f"{'; '.join(differences)}); plan for that machine with --for-device (nothing "
                "is measured here; verify there with shaperctl verify), or use this machine's "
                "profile (shaperctl profiles list) or make one: shaperctl profile --device "
                f"{device} --supernet SUPERNET --out DIR")
        return differences

    def check_trust(self, allow_unreliable: bool) -> None:
        """The one trust rule every command that plans or predicts with a profile applies."""
        t = self.trust
        if not t["reliable"] and not allow_unreliable:
            remedies = []
            if "max_mape" in t["missed"]:  # too few shapes for the model
                remedies.append("remake it with a larger --minutes (more shapes)")
            calmer = []  # what a calmer period mends
            if "max_noise_floor" in t["missed"]:  # the machine moved under it
                calmer.append("its shapes timed twice disagree, so the machine's speed moved "
                              "while it was made")
            if "max_slow_floors" in t["missed"]:  # one slow period under most of it
                # It describes the slow state: too slow for a host that returns to its calm
                # speed (noisy-neighbour transfers 22-35% over), right for one that stays
                # slow (session 49's AMD Zen 5 direct: bundles 30 min later 5% over its floors)
                calmer.append("most of its floors were timed while the machine ran slower "
                              "than its calm speed, so it overstates latency whenever the "
                              "machine runs calm")
            if calmer:
                remedies.append(" and ".join(calmer) + ": remake it in a calmer period "
                                "(profiles show: machine speed)")
            retake = retake_hint(self.path, self.header, t)
            if retake:  # cheaper than any remaking: the floors timed slow alone
                remedies.insert(0, retake)
            raise ProfileError(f"profile {self.path} is unreliable ({'; '.join(t['reasons'])}); "
                               + "; ".join(remedies or ["remake it"])
                               + "; or pass --allow-unreliable to use it anyway")


def priced_drift(drift: float, slowdown: float | None) -> float:
    """How much of the machine's slowdown now (``drift``: the reference's floor now over the
    profile's) the profile's tail already prices: all of it up to ``slowdown``
    (``DeviceProfile.priced_slowdown``: the 90th percentile of the slowdowns the groups behind
    its tail saw, its own or, for a transfer, a same-machine source's), no more; a speed-up
    is taken whole (a fast minute judged as the profile's time); 1 for a profile that kept no
    record of its machine's speed. On 1,280 windows of real bundles (16 checks after four AMD
    Zen 5 profiles and a Zen 2 one), the floor now x tail missed the profile's prediction by a
    median 2.2-13.2% per check (26-92% within +-10%), and taken back by this by 1.8-3.5%
    (86-100%): a slow window's floor carried the slowdown the tail adds again; on two checks
    made after the rule was chosen, 4.6% and 1.9% before, 4.1% and 1.5% now
    (``benchmarks/verify_rule.py``)."""
    if slowdown is None:
        return 1.0
    return min(float(drift), max(1.0, float(slowdown)))


def unpriced_slowdown(m: dict[str, Any]) -> float | None:
    """How far the machine's slowdown during a ``DeviceProfile.measure`` result ``m`` went
    beyond what the profile's tail prices (``drift / priced_drift``), or None within it."""
    priced = m.get("priced_drift", 1.0)
    return m["drift"] / priced if m["drift"] > priced * 1.005 else None


def judged_phrase(m: dict[str, Any], bound: bool = False) -> str:
    """How a ``DeviceProfile.measure`` result was judged, in words: ``judged_ms`` (verify,
    bench), or with ``bound`` the planner's ``kept_on_ms``."""
    now = (f"{m['observed_upper_ms']:.2f} ms, the {m['confidence']:.0%} upper bound of the "
           f"p{m['percentile']:g} observed now ({m['observed_ms']:.2f} ms)" if bound else
           f"{m['observed_ms']:.2f} ms observed now")
    priced = m.get("priced_drift", 1.0)
    floor = f"floor {m['intrinsic_ms']:.2f} ms" + (
        "" if priced == 1.0 else f" ({m['intrinsic_ms'] / priced:.2f} ms at the profiled speed)")
    unpriced = unpriced_slowdown(m)
    beyond = (f", {unpriced:.2f}x beyond the slowdowns the profile's tail prices"
              if unpriced is not None else "")
    return (f"the larger of {m['estimated_ms']:.2f} ms as the profile saw the machine and "
            f"{now}; {floor}, machine {m['drift']:.2f}x its profiled speed now{beyond}")


# The windows over_budget_advice suggests, each well over the last: a minute, then five
LONGER_SECONDS = (60, 300)
# What DeviceProfile.measure keeps of each window it was judged at (``windows``)
WINDOW_FIELDS = ("seconds", "runs", "observed_ms", "estimated_ms", "judged_ms", "drift")


def _next_window(seconds: float) -> int | None:
    """The next of ``LONGER_SECONDS`` well over ``seconds`` already timed (None: none is)."""
    return next((s for s in LONGER_SECONDS if s > seconds * 1.5), None)


def longer_window(m: dict[str, Any], budget_ms: float,
                  longest: float = LONGER_SECONDS[-1]) -> float | None:
    """How long to go on timing a ``DeviceProfile.measure`` result ``m`` (its total, in
    seconds) when it is over ``budget_ms`` only in the window just timed: the model within
    the budget at the profiled speed and the machine's slowdown one the profile's tail
    prices. The next of ``LONGER_SECONDS`` well over what was timed, at most ``longest``
    (``verify --longest``); None when the verdict stands (within; over at the profiled
    speed; a slowdown beyond the tail's; ``longest`` or five minutes timed).
    ``over_budget_advice`` words the same case.

    Why: on a host whose speed moves in periods of minutes, a short window samples one
    period. The AVX2-masked demo of session 54 verified its plan for 20 s at 20.83 ms
    against 18.87 (the machine 1.21x its profiled speed, 15.69 ms at it), then 60 s at
    19.49 ms, both OVER; 300 s gave 17.68 ms, within (docs/benchmarks.md)."""
    if (m["judged_ms"] <= budget_ms or m["estimated_ms"] > budget_ms
            or unpriced_slowdown(m) is not None or m["seconds"] >= longest * 0.99):
        return None
    total = _next_window(m["seconds"])
    return None if total is None else min(float(total), longest)


def over_budget_advice(m: dict[str, Any], budget_ms: float | None = None) -> str:
    """What to do about a planned model that a ``DeviceProfile.measure`` result ``m`` judged
    over its budget (``budget_ms``). A machine slower than its profile's tail prices (a slower
    hour: the Intel class ran at two levels about 15% apart for hours, docs/benchmarks.md
    session 28) needs a profile of the machine as it runs now; a model within the budget at
    the profiled speed and over only in the window just timed, a slowdown the tail prices, a
    longer measurement (session 49: ``bench`` timed the AVX2 demo's plan for 11 s at 17.50 ms
    against 16.69, 11.78 ms at the profiled speed, and was told the prediction had missed);
    a model over at the profiled speed, a new plan."""
    if unpriced_slowdown(m) is not None:
        priced = m.get("priced_drift", 1.0)
        return (f"the machine runs {m['drift']:.2f}x slower than when {m['profile']} was made, "
                f"beyond the x{priced:.2f} its tail prices: if it runs so from now on, profile "
                f"it as it is now (shaperctl profile --from {m['profile']} --out DIR, a few "
                "minutes) and plan again with export --latency ... --profile DIR; if the slow "
                "period passes, verify again then")
    if budget_ms is not None and m["estimated_ms"] <= budget_ms:
        longer = _next_window(m["seconds"])
        how = (f"measure longer (shaperctl verify BUNDLE --duration {longer}) to judge the "
               f"p{m['percentile']:g} over more of the machine's time" if longer is not None
               else "verify again in another hour, when the machine may run nearer its "
               "profiled speed")
        return (f"within the budget at the speed {m['profile']} priced "
                f"({m['estimated_ms']:.2f} ms), over only in the {m['seconds']:.0f} s just "
                f"timed ({m['observed_ms']:.2f} ms, the machine {m['drift']:.2f}x its profiled "
                f"speed, a slowdown its tail prices): {how}; if it stays over, plan again")
    return (f"over the budget at the speed {m['profile']} priced, so its prediction missed "
            "for this model: plan again (export --latency measures each candidate and steps "
            "down), or remake the profile with a larger --minutes")
