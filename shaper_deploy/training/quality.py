"""How good is a shape? Measured on held-out text, and predicted by an XGBoost model.

Metrics:

* ``cosine``: mean cosine between the shape's and the full network's mean-pooled sentence
  embeddings (for encoders trained by distillation, such as all-MiniLM-L6-v2);
* ``perplexity``: exp of the mean masked-LM loss (the paper's), lower is better;
* ``task``: a task network's metric on labelled data (accuracy, or Pearson for a regression),
  in PyTorch fp32 on the first rows, as the planner screens shapes (``judge.Judge.screen``).

The quality predictor is XGBoost on (per-layer widths, parameters), saved as ``.ubj`` beside a
JSON file with the metric, design space and held-out R^2 and Spearman correlation.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from typing_extensions import NotRequired, TypedDict

from ..errors import TrainingError
from ..fidelity import embedding_fidelity
from ..io import atomic_write_bytes, read_regular
from ..schema import MAX_JSON_BYTES, Count, parse_json, validated
from ..shape import held_out_mask
from ..shape import DesignSpace, Shape
from ..supernet.model import SuperBert
from ..templates import sample_shapes
from .config import QUALITY_METRICS, check_choice
from .data import Corpus
from .sandwich import _duration, mask_tokens

METRICS = QUALITY_METRICS
MAX_BLOCKS = 64  # held-out blocks a shape's cosine or perplexity is measured on
HELD_OUT = 0.25  # share of the measured shapes the predictor is judged on, not fitted to
FORMAT = "shaper-deploy/quality-predictor"


class HeldOutQuality(TypedDict):
    n: Count
    r2: Optional[float]
    spearman: float


class QualityMeta(TypedDict):
    """``quality.json``, written by :func:`fit_quality` (the booster is ``quality.ubj``)."""
    format: str
    metric: Literal["cosine", "perplexity", "task"]
    measured_on: NotRequired[str]  # what the metric was measured on, in words
    higher_is_better: bool
    design_space: dict[str, Any]  # a DesignSpace, checked by its own schema
    features: str
    xgboost: dict[str, Any]
    trained_on: Count
    held_out: HeldOutQuality
    model_sha256: str  # quality.ubj's, checked before the booster is parsed


@torch.no_grad()
def measure_quality(supernet: SuperBert, shapes: Sequence[Shape], corpus: Corpus,
                    metric: str, max_blocks: int | None = None,
                    measured: Callable[[int], None] = lambda done: None) -> list[float]:
    """The metric of every shape on (up to ``max_blocks``) held-out blocks; ``measured``
    is told how many are done after each."""
    check_choice("quality metric", metric, METRICS)
    if metric == "task":
        raise TrainingError("the task metric is measured on labelled data: quality_dataset "
                            "with a judge (shaperctl train quality --metric task)")
    supernet.eval()
    ids = corpus.val[:max_blocks or MAX_BLOCKS]
    if metric == "cosine":  # the planner's fidelity (shaper_deploy.fidelity), unpadded blocks
        mask = np.ones(tuple(ids.shape), dtype=np.int64)
        full = supernet(ids).last_hidden_state.numpy()
        out = []
        for s in shapes:
            out.append(embedding_fidelity(full, supernet(ids, shape=s).last_hidden_state.numpy(),
                                          mask))
            measured(len(out))
        return out
    if supernet.mlm_head is None:
        raise TrainingError("perplexity needs an MLM head; train with --objective mlm first, "
                            "or use the cosine metric")
    g = torch.Generator().manual_seed(4321)
    inputs, labels = mask_tokens(ids, corpus, supernet.config.space.vocab_size, 0.15, g)
    out = []
    for s in shapes:
        logits = supernet.mlm_logits(supernet(inputs, shape=s).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]),
                                                 labels.view(-1), ignore_index=-100)
        out.append(math.exp(min(float(loss), 50)))
        measured(len(out))
    return out


def _features(shapes: Sequence[Shape]) -> np.ndarray:
    return np.array([[*s.widths, s.params()] for s in shapes], dtype=np.float64)


class QualityPredictor:
    def __init__(self, booster, meta: dict[str, Any]):
        self.booster, self.meta = booster, meta

    @property
    def space(self) -> DesignSpace:
        return DesignSpace.from_dict(self.meta["design_space"])

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.meta["metric"]]

    def predict(self, shapes: Sequence[Shape]) -> np.ndarray:
        import xgboost as xgb

        return self.booster.predict(xgb.DMatrix(_features(shapes)))

    def save(self, path: str | Path) -> None:
        """``quality.ubj`` (the booster) and ``quality.json`` (what it predicts, how well,
        and the booster's sha256) into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = bytes(self.booster.save_raw(raw_format="ubj"))
        self.meta["model_sha256"] = hashlib.sha256(model).hexdigest()
        atomic_write_bytes(path / "quality.ubj", model)
        atomic_write_bytes(path / "quality.json", (json.dumps(self.meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "QualityPredictor":
        import xgboost as xgb

        path = Path(path)
        if not (path / "quality.json").is_file() or not (path / "quality.ubj").is_file():
            raise TrainingError(f"{path} holds no quality predictor (quality.json, quality.ubj); "
                                "make one with: shaperctl train quality")
        where = path / "quality.json"
        meta = parse_json(read_regular(where, MAX_JSON_BYTES, "quality predictor",
                                       TrainingError), str(where), TrainingError)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TrainingError(f"{where} is not a quality predictor")
        hint = "make it again with: shaperctl train quality"
        meta = dict(validated(QualityMeta, meta, str(where), TrainingError, hint))
        validated(DesignSpace, meta["design_space"], f"{where} design_space", TrainingError, hint)
        model = read_regular(path / "quality.ubj", 1 << 30, "quality model", TrainingError)
        if hashlib.sha256(model).hexdigest() != meta["model_sha256"]:
            raise TrainingError(f"{path / 'quality.ubj'} does not match the sha256 recorded in "
                                f"{where}: the file was altered or corrupted; {hint}")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(model))
        except xgb.core.XGBoostError as exc:
            raise TrainingError(f"{path / 'quality.ubj'} is not a readable XGBoost model "
                                f"({str(exc).strip().splitlines()[0][:100]}); {hint}") from None
        return cls(booster, meta)


def fit_quality(shapes: Sequence[Shape], quality: Sequence[float], metric: str,
                held_out: float = HELD_OUT, measured_on: str | None = None
                ) -> QualityPredictor:
    """XGBoost on the shapes' widths and parameters; held-out R^2 and Spearman recorded."""
    import xgboost as xgb
    from scipy.stats import spearmanr

    y = np.asarray(quality, dtype=np.float64)
    if len(y) < 8:
        raise TrainingError(f"a quality predictor needs at least 8 measured shapes, got {len(y)}")
    test = held_out_mask([s.params() for s in shapes], held_out)
    x = _features(shapes)
    params = {"objective": "reg:squarederror", "eta": 0.05, "max_depth": 3, "subsample": 0.8,
              "seed": 0, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x[~test], label=y[~test]), num_boost_round=300)
    pred = booster.predict(xgb.DMatrix(x[test]))
    ss_tot = float(((y[test] - y[test].mean()) ** 2).sum())
    meta = {"format": FORMAT, "metric": metric, "higher_is_better": METRICS[metric],
            "design_space": shapes[0].space.to_dict(), "features": "widths + params",
            "xgboost": params, "trained_on": int((~test).sum()),
            "held_out": {"n": int(test.sum()),
                         "r2": (1 - float(((y[test] - pred) ** 2).sum()) / ss_tot
                                if ss_tot else None),
                         "spearman": float(spearmanr(y[test], pred).statistic)}}
    if measured_on:
        meta["measured_on"] = measured_on
    return QualityPredictor(booster, meta)


QUALITY_PLOT = "quality.png"


def draw_quality(folder: Path, shapes: Sequence[Shape], values: Sequence[float],
                 predictor: QualityPredictor, held_out: float = HELD_OUT) -> None:
    """``quality.png``: every measured shape's metric against its parameters, and the held-out
    shapes' predictions against their measurements, titled with the held-out R^2 and Spearman
    correlation (what judges the predictor) and what the metric was measured on."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, y = predictor.meta, np.asarray(values, dtype=np.float64)
    test = held_out_mask([s.params() for s in shapes], held_out)  # as fit_quality split them
    params = np.array([s.params() / 1e6 for s in shapes])
    pred = predictor.predict([s for s, t in zip(shapes, test) if t])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    try:
        left.scatter(params[~test], y[~test], s=12, label="fitted on")
        left.scatter(params[test], y[test], s=24, facecolors="none", edgecolors="tab:red",
                     label="held out")
        left.set(xlabel="parameters (M)", ylabel=meta["metric"], title="measured")
        left.legend(fontsize=8)
        right.scatter(y[test], pred, s=24, color="tab:red")
        lo, hi = float(min(y[test].min(), pred.min())), float(max(y[test].max(), pred.max()))
        right.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
        right.set(xlabel=f"measured {meta['metric']}", ylabel="predicted",
                  title="held-out shapes")
        h = meta["held_out"]
        r2 = "n/a" if h["r2"] is None else f"{h['r2']:.3f}"
        fig.suptitle(f"quality predictor: held-out R^2 {r2}, Spearman {h['spearman']:.3f} "
                     f"({h['n']} of {len(shapes)} shapes)\n"
                     + meta.get("measured_on", meta["metric"]), fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write_bytes(folder / QUALITY_PLOT, buf.getvalue())
    finally:
        plt.close(fig)


def quality_dataset(supernet: SuperBert, corpus: Corpus | None, metric: str, samples: int,
                    seed: int = 0, progress: Callable[[str], None] | None = None,
                    judge=None) -> tuple[list[Shape], list[float]]:
    """Measure ``samples`` shapes spread over the parameter range: on ``corpus`` (cosine,
    perplexity), or by ``judge`` (task: the planner's ``judge.Judge`` of labelled data)."""
    note = progress or (lambda message: None)
    shapes = sample_shapes(supernet.config.space, samples, seed)
    start = time.monotonic()

    def measured(done: int) -> None:  # a line every 8 shapes: the first within seconds
        if done % 8 == 0 or done == len(shapes):
            rate = done / max(time.monotonic() - start, 1e-9)
            note(f"[{done}/{len(shapes)}] shapes measured  {rate:.2f} shapes/s  "
                 f"ETA {_duration((len(shapes) - done) / rate)}")

    if metric != "task":
        return shapes, measure_quality(supernet, shapes, corpus, metric, measured=measured)
    values = []
    for shape in shapes:
        values.append(judge.screen(supernet, shape))
        measured(len(values))
    return shapes, values
