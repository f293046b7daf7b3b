"""The planner's judge: how candidates are compared. Fidelity to the full-shape fp32 model on
calibration text (:mod:`shaper_deploy.fidelity`), or the task's metric on the user's labelled
``--eval`` data; a shape is screened in PyTorch before it is exported, a bundle scored as
ONNX Runtime runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import PlannerError
from .fidelity import (CALIBRATION_TEXTS, embedding_fidelity, masked_positions, metric_word,
                       task_metrics, top1_agreement)
from .runtime import make_session, model_tokenizer, text_feeds
from .shape import Shape
from .taskdata import TaskData, targets


EVAL_CHUNK = 64  # --eval texts run at a time
# Labelled texts a shape family's candidate is screened on before export (the first ones of
# --eval): seconds per shape in PyTorch on 2 cores at 64 tokens; the families' test accuracies
# differed by 1-5 points at equal predicted latency (docs/benchmarks.md).
SCREEN_ROWS = 512


def reference_outputs(supernet, task: str, texts: Sequence[str], max_length: int = 128,
                      pairs: Sequence[str] | None = None):
    """The full-shape fp32 model's outputs on calibration text cut to ``max_length`` tokens:
    (outputs, feeds, positions, what was used). Without a tokenizer, random ids stand in."""
    config = supernet.config
    fam, longest = config.family, min(max_length, config.max_tokens)
    tok = model_tokenizer(config, supernet.tokenizer_files, longest)
    if tok is not None:
        feeds = text_feeds(config, tok, texts, pairs)
        used = f"{len(texts)} calibration texts" + (" (as pairs)" if pairs is not None else "")
        mask_id = fam.special_token_id(tok, "mask")
    else:
        feeds = config.dummy_inputs(8, min(32, longest), seed=11)
        used = "8 rows of random token ids (the super network has no tokenizer)"
        mask_id = None
    positions = masked_positions(feeds["attention_mask"]) if task == "fill-mask" else []
    if positions and mask_id is not None:
        feeds = {k: v.copy() for k, v in feeds.items()}
        for r, c in positions:
            feeds["input_ids"][r, c] = mask_id
    return torch_outputs(supernet, task, feeds), feeds, positions, used


def torch_outputs(supernet, task: str, feeds: dict[str, np.ndarray],
                  shape: Shape | None = None) -> np.ndarray:
    """The super network's task outputs at ``shape`` (default the full one) in PyTorch fp32:
    what the exported graph returns (hidden states, MLM logits or task logits)."""
    import torch

    with torch.no_grad():
        out = supernet(**{n: torch.from_numpy(v) for n, v in feeds.items()}, shape=shape)
        if task == "fill-mask":
            result = supernet.mlm_logits(out.last_hidden_state)
        elif task == "text-classification":
            result = supernet.task_logits(out.last_hidden_state,
                                          torch.from_numpy(feeds["attention_mask"]))
        else:
            result = out.last_hidden_state
    return result.float().numpy()


@dataclass
class Judge:
    """How the planner compares candidates: the inputs, what a bundle's outputs are held to
    (the full fp32 model's outputs, or the true labels of the user's ``--eval`` file) and the
    metric, named in the plan."""

    task: str
    feeds: list[dict[str, np.ndarray]]  # in chunks: an --eval file is run EVAL_CHUNK at a time
    reference: list[np.ndarray]
    positions: list[tuple[int, int]]
    used: str
    metric: str
    head: dict[str, Any] | None = None
    labelled: bool = False  # reference holds true labels (classes or scores)

    @property
    def short(self) -> str:
        """The metric in a word, for reasons and table headers."""
        return metric_word(self.metric)

    @property
    def rows(self) -> int:
        """How many inputs a bundle is scored on."""
        return sum(len(r) for r in self.reference) if self.labelled else \
            len(self.feeds[0]["input_ids"])

    def score(self, bundle: Path, model_file: str) -> float:
        """A bundle's model, run by ONNX Runtime on every input."""
        session = make_session(bundle / model_file, "cpu")
        name = session.get_outputs()[0].name
        return self._metric([session.run([name], f)[0] for f in self.feeds], self.reference)

    @property
    def screened_rows(self) -> int:
        """How many inputs :meth:`screen` runs a shape on by default."""
        return min(SCREEN_ROWS, self.rows) if self.labelled else self.rows

    def screen(self, supernet, shape: Shape, rows: int = SCREEN_ROWS) -> float:
        """A shape of ``supernet`` before it is exported: run in PyTorch fp32 on the first
        ``rows`` labelled inputs (rounded up to a chunk), or on every calibration text."""
        n = math.ceil(rows / EVAL_CHUNK) if self.labelled else len(self.feeds)
        return self._metric([torch_outputs(supernet, self.task, f, shape)
                             for f in self.feeds[:n]], self.reference[:n])

    def _metric(self, outs: list[np.ndarray], reference: list[np.ndarray]) -> float:
        if self.task == "fill-mask":
            return top1_agreement(reference[0], outs[0], self.positions)
        if self.task != "text-classification":
            return embedding_fidelity(reference[0], outs[0], self.feeds[0]["attention_mask"])
        got, ref = np.concatenate(outs), np.concatenate(reference)
        regression = self.head["problem"] == "regression"
        if self.labelled:
            metrics = task_metrics(got, ref, regression)
            return metrics["pearson" if regression else "accuracy"]
        if regression:
            return task_metrics(got, ref[:, 0], True)["pearson"]
        return float((got.argmax(1) == ref.argmax(1)).mean())


def make_judge(supernet, task: str, calibration: Sequence[str] | None, seq_len: int,
               evaluation: TaskData | None = None, option: str = "--eval") -> Judge:
    """The planner's judge: fidelity to the full fp32 model on calibration text; for a task
    network with ``evaluation`` data, the task's metric on it (accuracy, or Pearson for a
    regression); without, agreement with the full model's labels (or Pearson with its
    scores) on the calibration texts."""
    head = supernet.config.task_head
    if evaluation is not None and task != "text-classification":
        raise PlannerError("--eval is for text-classification exports of a task super network "
                           "(shaperctl train task)")
    if task == "text-classification" and evaluation is not None:
        head_d = supernet.config.to_dict()["task_head"]
        if (evaluation.pairs is None) != (not head.pair_column):
            raise PlannerError(f"{option} file {evaluation.path} must have the columns the task "
                               f"network was trained on ({head.text_column}, "
                               f"{head.pair_column + ', ' if head.pair_column else ''}"
                               f"{head.label_column})")
        y = np.asarray(targets(evaluation, head.labels, f"{option} file"))
        feeds, refs = [], []
        for start in range(0, len(y), EVAL_CHUNK):
            end = start + EVAL_CHUNK
            _, f, _, _ = reference_outputs(
                supernet, task, evaluation.texts[start:end], seq_len,
                None if evaluation.pairs is None else evaluation.pairs[start:end])
            feeds.append(f)
            refs.append(y[start:end])
        metric = ("Pearson correlation with the labels" if head.problem == "regression" else
                  "accuracy")
        return Judge(task, feeds, refs, [], f"{len(y)} labelled texts of {evaluation.path}",
                     f"{metric} on {evaluation.path}", head_d, labelled=True)
    texts = list(calibration or CALIBRATION_TEXTS)
    pairs = None
    if task == "text-classification" and head is not None and head.pair_column:
        pairs = texts[1:] + texts[:1]  # each calibration text with the next one
    reference, feeds, positions, used = reference_outputs(supernet, task, texts, seq_len, pairs)
    metric = {"fill-mask": "masked-token top-1 agreement with the full fp32 model",
              "text-classification": (
                  "Pearson correlation with the full fp32 model's scores"
                  if head is not None and head.problem == "regression" else
                  "label agreement with the full fp32 model")}.get(
        task, "mean cosine of mean-pooled embeddings to the full fp32 model")
    return Judge(task, [feeds], [reference], positions, used, metric,
                 supernet.config.to_dict()["task_head"])
