"""Labelled text for tasks, read and checked (torch-free: training and the planner's --eval
both read it)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .io import read_lines, read_regular

MAX_TASK_BYTES = 1 << 30  # one labelled file
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


@dataclass(frozen=True)
class TaskData:
    """One labelled file, read and checked."""
    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | list[float]  # class names, or regression scores
    path: str = ""


def targets(data: TaskData, labels: tuple[str, ...], what: str) -> list[int] | list[float]:
    """The data's targets for a head with class ``labels`` (() for a regression): class
    indices, or the scores; a label the head does not know is one DataError line."""
    if not labels:
        return [float(v) for v in data.labels]
    index = {n: i for i, n in enumerate(labels)}
    unknown = sorted({str(v) for v in data.labels if v not in index})
    if unknown:
        raise DataError(f"{what} {data.path} has label(s) {', '.join(unknown[:3])} that the "
                        f"training data does not; allowed: {', '.join(labels)}")
    return [index[v] for v in data.labels]


def read_task_data(path: str | Path, text_column: str = "text", label_column: str = "label",
                   pair_column: str | None = None, regression: bool = False,
                   trained_on: str | None = None) -> TaskData:
    """A CSV/TSV (by extension, with a header row) or JSON-lines file of labelled texts; every
    problem is one DataError line naming the file, row and what is allowed. ``trained_on``:
    held-out data of a task network (its name), whose columns are the ones it was trained on
    (not options of the command) and which may hold one label only."""
    path = Path(path)
    rows, sep = _rows(path)
    wanted = [c for c in (text_column, pair_column, label_column) if c]
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        fix = (f"{trained_on} reads the columns it was trained on, {', '.join(wanted)}: name "
               "the file's so" if trained_on else
               "name them with --text-column, --pair-column, --label-column")
        raise DataError(f"{path} has no column {missing[0]!r}; its columns: "
                        f"{', '.join(map(str, rows[0]))[:200]} ({fix})")
    texts, pairs, labels = [], [] if pair_column else None, []
    for n, row in enumerate(rows, 2 if sep is not None else 1):
        values = [row.get(c) for c in wanted]
        if any(not isinstance(v, (str, int, float)) or not str(v).strip() for v in values):
            raise DataError(f"{path} row {n}: an empty value in {', '.join(wanted)}; every "
                                "row needs a text and a label")
        texts.append(str(row[text_column]))
        if pairs is not None:
            pairs.append(str(row[pair_column]))
        label = row[label_column]
        if regression:
            try:
                score = float(label)
            except ValueError:
                raise DataError(f"{path} row {n}: label {str(label)[:40]!r} is not a "
                                    "number (a regression needs numeric labels)") from None
            if not math.isfinite(score):
                raise DataError(f"{path} row {n}: label {label!r} is not finite")
            labels.append(score)
        else:
            labels.append(str(label).strip())
    if not regression and len(set(labels)) < 2 and not trained_on:
        raise DataError(f"{path} has one label only ({labels[0]!r}); a classifier needs "
                            "at least two")
    return TaskData(texts, pairs, labels, str(path))


def read_texts(path: str | Path, column: str) -> list[str]:
    """The texts of one column of a .csv/.tsv/.jsonl file (no labels needed), or every
    non-empty line of any other file: the requests ``shaperctl bench --texts`` sends."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        return read_lines(path, MAX_TASK_BYTES, "text file", DataError)
    rows, _ = _rows(path)
    if column not in rows[0]:
        raise DataError(f"{path} has no column {column!r}; its columns: "
                        f"{', '.join(map(str, rows[0]))[:200]}")
    texts = [str(r.get(column) or "") for r in rows]
    empty = next((n for n, x in enumerate(texts, 1) if not x.strip()), None)
    if empty is not None:
        raise DataError(f"{path} row {empty}: no text in column {column!r}")
    return texts


def _rows(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Every row of a .csv/.tsv (by extension, with a header row) or JSON-lines file, and its
    separator (None: JSON lines); one DataError line for what cannot be read."""
    sep = FORMATS.get(path.suffix.lower(), "missing")
    if sep == "missing":
        raise DataError(f"{path}: unknown data format {path.suffix or '(no extension)'!r}; "
                        f"allowed: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = read_regular(path, MAX_TASK_BYTES, "data file", DataError)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    rows: list[dict[str, Any]] = []
    if sep is None:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path} line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {n} is not a JSON object")
            rows.append(row)
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(text), delimiter=sep))
        except csv.Error as exc:
            raise DataError(f"{path} is not a readable {path.suffix[1:].upper()} file "
                            f"({exc})") from None
    if not rows:
        raise DataError(f"{path} holds no rows (a header row and at least one row of text "
                        "are needed)")
    return rows, sep
