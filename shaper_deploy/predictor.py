"""Latency predictors fitted to a device profile.

Latency on a device is close to linear in FLOPs and parameters (memory traffic), which trees
extrapolate badly; so the model is a least-squares baseline ``a*flops + b*params + c`` with an
XGBoost regressor learning the multiplicative correction from the shape (``log latency`` with
``log baseline`` as XGBoost's ``base_margin``). One function computes the features for fitting
and predicting. The model is saved as XGBoost's own ``predictor.ubj`` (never a pickle) beside
``predictor.json``: feature schema, baseline, device fingerprint, protocol, held-out metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ProfileError
from .io import atomic_write_bytes
from .profiling.profile import normalized_latency, read_header, read_measurements
from .shape import DesignSpace, Shape, flops

FEATURE_SCHEMA_VERSION = 1
MODEL_FILE = "predictor.ubj"
META_FILE = "predictor.json"
XGB_PARAMS = {"objective": "reg:squarederror", "eta": 0.05, "max_depth": 3,
              "subsample": 0.8, "min_child_weight": 2, "lambda": 1.0, "seed": 0,
              "nthread": 1}
ROUNDS = 400


def feature_names(space: DesignSpace) -> list[str]:
    return ([f"width_{i}" for i in range(space.num_layers)]
            + ["params", "flops", "mean_width", "min_width", "max_width", "sum_sq_width"])


def features(shapes: Sequence[Shape], seq_len: int, batch: int) -> np.ndarray:
    """One row per shape. Per-layer widths (narrow GEMMs run less efficiently, and where they
    sit matters little, which the trees can learn), parameters (weights streamed through the
    caches), FLOPs (the work), the width extremes and the sum of squared widths (attention
    and projection cost)."""
    rows = []
    for s in shapes:
        w = np.asarray(s.widths, dtype=np.float64)
        rows.append([*w, s.params(), flops(s, seq_len, batch), w.mean(), w.min(), w.max(),
                     float((w * w).sum())])
    return np.asarray(rows, dtype=np.float64)


def _baseline_design(x: np.ndarray, n_layers: int) -> np.ndarray:
    params, fl = x[:, n_layers], x[:, n_layers + 1]
    return np.column_stack([fl / 1e9, params / 1e6, np.ones(len(x))])


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau

    rel = predicted / actual - 1
    ss_res = float(((actual - predicted) ** 2).sum())
    ss_tot = float(((actual - actual.mean()) ** 2).sum())
    tau = kendalltau(actual, predicted).statistic if len(actual) > 1 else float("nan")
    return {"n": int(len(actual)), "r2": 1 - ss_res / ss_tot if ss_tot else float("nan"),
            "mape": float(np.abs(rel).mean()),
            "within_5pct": float((np.abs(rel) <= 0.05).mean()),
            "within_10pct": float((np.abs(rel) <= 0.10).mean()),
            "kendall_tau": float(tau),
            "abs_rel_p90": float(np.percentile(np.abs(rel), 90)),
            "abs_rel_p95": float(np.percentile(np.abs(rel), 95))}


@dataclass
class LatencyPredictor:
    booster: Any  # xgboost.Booster
    meta: dict[str, Any]

    @property
    def space(self) -> DesignSpace:
        return DesignSpace.from_dict(self.meta["design_space"])

    def predict(self, shapes: Sequence[Shape]) -> np.ndarray:
        """Median latency in ms under the profile's protocol."""
        import xgboost as xgb

        for s in shapes:
            if s.space != self.space:
                raise ProfileError("shape belongs to another design space than this profile's "
                                   f"({self.space.num_layers} layers, widths "
                                   f"{', '.join(map(str, self.space.widths))})")
        p = self.meta["protocol"]
        x = features(shapes, p["seq_len"], p["batch"])
        base = self._baseline(x)
        d = xgb.DMatrix(x, base_margin=np.log(base), feature_names=self.meta["features"])
        return np.exp(self.booster.predict(d))

    @property
    def margin(self) -> float:
        """1 + the held-out 95th percentile of relative error."""
        return 1 + self.meta["metrics"]["held_out"]["abs_rel_p95"]

    def upper_bound(self, shapes: Sequence[Shape]) -> np.ndarray:
        """Prediction plus the held-out 95th percentile of relative error: a safe estimate."""
        return self.predict(shapes) * self.margin

    def _baseline(self, x: np.ndarray) -> np.ndarray:
        coef = np.asarray(self.meta["baseline"]["coef"])
        return np.maximum(_baseline_design(x, self.space.num_layers) @ coef, 1e-3)

    @classmethod
    def load(cls, profile: str | Path) -> "LatencyPredictor":
        import xgboost as xgb

        profile = Path(profile)
        meta_file, model_file = profile / META_FILE, profile / MODEL_FILE
        if not meta_file.is_file() or not model_file.is_file():
            raise ProfileError(f"profile {profile} has no fitted predictor ({META_FILE}, "
                               f"{MODEL_FILE}); fit one with: shaperctl profile ... --out "
                               f"{profile} (re-running finishes and fits)")
        meta = json.loads(meta_file.read_text())
        if meta.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
            raise ProfileError(f"predictor in {profile} uses feature schema "
                               f"{meta.get('feature_schema_version')}; this shaper-deploy "
                               f"uses {FEATURE_SCHEMA_VERSION}: re-fit it")
        booster = xgb.Booster()
        booster.load_model(str(model_file))
        return cls(booster, meta)


def held_out_mask(params: Sequence[float], held_out: float) -> np.ndarray:
    """A deterministic held-out mask spread evenly over the parameter range."""
    order = np.argsort(np.asarray(params), kind="stable")
    step = max(2, round(1 / held_out))
    mask = np.zeros(len(order), dtype=bool)
    mask[order[step // 2::step]] = True
    return mask


def fit(shapes: Sequence[Shape], latency: np.ndarray, seq_len: int, batch: int,
        train_mask: np.ndarray) -> tuple[Any, np.ndarray]:
    """Fit baseline + booster on the masked rows; (booster, baseline coefficients)."""
    import xgboost as xgb

    space = shapes[0].space
    x = features(shapes, seq_len, batch)
    design = _baseline_design(x, space.num_layers)
    coef, *_ = np.linalg.lstsq(design[train_mask], latency[train_mask], rcond=None)
    base = np.maximum(design @ coef, 1e-3)
    d = xgb.DMatrix(x[train_mask], label=np.log(latency[train_mask]),
                    base_margin=np.log(base[train_mask]), feature_names=feature_names(space))
    booster = xgb.train(XGB_PARAMS, d, num_boost_round=ROUNDS)
    return booster, coef


def fit_profile(profile: str | Path, held_out: float = 0.25,
                progress=None) -> dict[str, Any]:
    """Fit, evaluate on held-out shapes, save the predictor and its plots into the profile."""
    note = progress or (lambda message: None)
    profile = Path(profile)
    header = read_header(profile)
    from .supernet.config import SuperConfig

    space = SuperConfig.from_dict(header["config"]).space
    records = read_measurements(profile)
    latency_by_key = normalized_latency(records)
    if len(latency_by_key) < 8:
        raise ProfileError(f"profile {profile} has {len(latency_by_key)} measured shapes; "
                           "a predictor needs at least 8")
    keys = sorted(latency_by_key)
    shapes = [Shape(tuple(int(w) for w in k.split(",")), space) for k in keys]
    y = np.array([latency_by_key[k] for k in keys])
    p = header["protocol"]
    params = np.array([s.params() for s in shapes], dtype=np.float64)
    test = held_out_mask(params, held_out)
    note(f"fitting on {int((~test).sum())} shapes, holding out {int(test.sum())}")
    booster, coef = fit(shapes, y, p["seq_len"], p["batch"], ~test)
    meta = {"format": "shaper-deploy/predictor", "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "features": feature_names(space), "target": "median latency, ms, drift-normalized",
            "baseline": {"formula": "a*GFLOPs + b*Mparams + c", "coef": coef.tolist()},
            "xgboost": {"params": XGB_PARAMS, "rounds": ROUNDS},
            "design_space": space.to_dict(), "fingerprint": header["fingerprint"],
            "protocol": p, "trained_on": int((~test).sum()),
            "held_out_shapes": [keys[i] for i in np.flatnonzero(test)]}
    model = LatencyPredictor(booster, {**meta, "metrics": {}})
    pred = model.predict(shapes)
    # For comparison, the paper's observation: a straight line in parameters alone.
    line = np.polyfit(params[~test], y[~test], 1)
    meta["metrics"] = {"held_out": regression_metrics(y[test], pred[test]),
                       "train": regression_metrics(y[~test], pred[~test]),
                       "params_only_line_held_out": regression_metrics(y[test], np.polyval(line, params[test])),
                       "noise_floor": header.get("summary", {}).get("noise_floor")}
    raw = bytes(booster.save_raw(raw_format="ubj"))
    atomic_write_bytes(profile / MODEL_FILE, raw)
    atomic_write_bytes(profile / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    _plots(profile, shapes, y, pred, test, header)
    return meta


def _plots(profile: Path, shapes: list[Shape], actual: np.ndarray, predicted: np.ndarray,
           test: np.ndarray, header: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp, p = header["fingerprint"], header["protocol"]
    title = (f"{fp['cpu_model']} ({fp['device']}, {p['threads']} threads), batch {p['batch']}, "
             f"seq {p['seq_len']}, {p['precision']}")
    fig, ax = plt.subplots(figsize=(6, 6))
    lo, hi = min(actual.min(), predicted.min()) * 0.95, max(actual.max(), predicted.max()) * 1.05
    grid = np.linspace(lo, hi, 50)
    ax.fill_between(grid, grid * 0.95, grid * 1.05, color="0.9", label="+-5%")
    ax.plot(grid, grid, color="0.5", lw=1)
    ax.scatter(actual[~test], predicted[~test], s=10, color="tab:blue", alpha=0.5, label="fitted")
    ax.scatter(actual[test], predicted[test], s=18, color="tab:red", label="held out")
    ax.set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)", xlim=(lo, hi),
           ylim=(lo, hi), title="Latency predictor")
    ax.legend(loc="upper left")
    fig.suptitle(title, fontsize=8)
    _save(fig, profile / "actual_vs_predicted.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    params = np.array([s.params() for s in shapes]) / 1e6
    ax.scatter(params, actual, s=10, color="tab:blue", alpha=0.6, label="sampled shapes")
    templates = {tuple(v): k for k, v in header.get("templates", {}).items()}
    for s, a, m in zip(shapes, actual, params):
        if s.widths in templates:
            ax.scatter([m], [a], s=40, marker="D", color="tab:orange")
            ax.annotate(templates[s.widths], (m, a), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="parameters (M, fused, paper convention)", ylabel="latency (ms)",
           title="Latency vs parameters (templates marked)")
    fig.suptitle(title, fontsize=8)
    _save(fig, profile / "latency_vs_params.png")
    plt.close("all")


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())

