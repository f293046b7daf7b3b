"""Fidelity: how close a model's outputs are to the full model's, defined once (no torch).

* feature-extraction: the mean cosine, over calibration texts, between the candidate's and
  the full model's mean-pooled embeddings (padding excluded). 1.0 is the full model itself.
* fill-mask: the share of masked positions where the candidate's top-1 token equals the full
  model's.

The planner ranks candidates by it, ``shaperctl run --compare`` reports it, and the quality
predictor and ``shaperctl search`` predict it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ShaperError
from .io import read_lines

MAX_CALIBRATION_BYTES = 256 * 2**20  # one text per line; a larger file is refused unread

# Built-in calibration text: varied English sentences (news, science, everyday, questions).
# Real text matters: random token ids flatter int8 (cosine 0.9999 on random weights vs
# 0.96-0.99 on the real MiniLM) and hide how much a slice keeps.
CALIBRATION_TEXTS = (
    "The central bank raised interest rates by a quarter point on Thursday.",
    "Shares in the telecoms group fell sharply after the profit warning.",
    "The striker scored twice in the second half to secure the title.",
    "A new study suggests that regular exercise improves long-term memory.",
    "The film won three awards, including best director and best actress.",
    "Parliament will vote on the proposed changes to the tax system next week.",
    "Engineers deploy compact language models on phones, laptops and servers.",
    "Heavy rain caused flooding across the north of the country overnight.",
    "She said the negotiations had been difficult but ultimately productive.",
    "How many parameters does the smallest model need to answer questions well?",
    "The orchestra performed a new symphony to a sold-out concert hall.",
    "Researchers measured latency on two CPU cores with a batch of one.",
    "A cat is sleeping on the warm windowsill in the afternoon sun.",
    "The airline cancelled dozens of flights because of the strike by pilots.",
    "Doctors warned that the flu season could be worse than usual this winter.",
    "The company reported record sales of its new electric car in Europe.",
    "Fans queued overnight to buy tickets for the band's farewell tour.",
    "The museum reopened after a two-year renovation of its main gallery.",
    "Can you recommend a good restaurant near the railway station?",
    "The government promised to build more affordable homes in the capital.",
    "Scientists discovered a new species of frog in the tropical rainforest.",
    "The tennis champion withdrew from the tournament with a wrist injury.",
    "Oil prices climbed after the producers agreed to cut output again.",
    "The novel tells the story of two sisters separated during the war.",
    "Software updates fixed a security flaw that affected millions of users.",
    "The school introduced free breakfasts for every pupil this autumn.",
    "Unemployment fell to its lowest level in a decade, figures showed.",
    "The chef's new cookbook focuses on simple vegetarian dishes.",
    "Thousands of people marched through the city to demand climate action.",
    "The spacecraft sent back detailed images of the planet's icy moon.",
    "Please remember to switch off the lights when you leave the office.",
    "The coach praised his young team for their discipline and energy.",
)


def read_calibration(path: str | Path) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    return read_lines(path, MAX_CALIBRATION_BYTES, "calibration file", ShaperError)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, S, D) states and a (B, S) mask -> (B, D) mean over real tokens."""
    w = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * w).sum(1) / np.maximum(w.sum(1), 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12
    return num / den


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray) -> float:
    """Mean cosine of mean-pooled embeddings (feature-extraction fidelity)."""
    if reference.shape[-1] != candidate.shape[-1]:
        raise ShaperError(f"cannot compare embeddings of width {candidate.shape[-1]} with "
                          f"width {reference.shape[-1]}; compare bundles of one super network")
    return float(cosine_rows(mean_pool(reference, mask), mean_pool(candidate, mask)).mean())


def top1_agreement(reference: np.ndarray, candidate: np.ndarray,
                   positions: Sequence[tuple[int, int]]) -> float:
    """Share of (row, position) pairs where both logits' top-1 tokens agree (fill-mask)."""
    rows, cols = np.asarray([p[0] for p in positions]), np.asarray([p[1] for p in positions])
    return float((reference[rows, cols].argmax(-1) == candidate[rows, cols].argmax(-1)).mean())


def masked_positions(mask: np.ndarray, every: int = 5) -> list[tuple[int, int]]:
    """Every ``every``-th real token of each row, skipping the first and last (the family's
    CLS and SEP: [CLS] [SEP], <s> </s>)."""
    positions = []
    for r, row in enumerate(mask):
        real = np.flatnonzero(row)[1:-1]
        positions += [(r, int(c)) for c in real[::every]]
    return positions


def metric_word(metric: str) -> str:
    """A plan's ``fidelity_metric`` in a word (accuracy, Pearson, agreement, fidelity), for
    reasons and table headers."""
    return ("accuracy" if metric.startswith("accuracy") else "Pearson"
            if metric.startswith("Pearson") else "agreement" if "agreement" in metric
            else "fidelity")


def task_metrics(logits: np.ndarray, y: np.ndarray, regression: bool) -> dict[str, float]:
    """A task's metrics of outputs ``logits`` (N, labels) against true ``y``: accuracy and
    macro F1 over the labels present (classification), or Pearson and Spearman of the score
    (regression)."""
    from scipy.stats import pearsonr, spearmanr

    if regression:
        pred = np.asarray(logits)[:, 0]
        if np.std(pred) == 0 or np.std(y) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(pred, y)[0]), "spearman": float(spearmanr(pred, y)[0])}
    pred = np.asarray(logits).argmax(1)
    f1 = []
    for k in sorted(set(np.asarray(y).tolist()) | set(pred.tolist())):
        tp = float(((pred == k) & (y == k)).sum())
        denom = float((pred == k).sum() + (y == k).sum())
        f1.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1))}
