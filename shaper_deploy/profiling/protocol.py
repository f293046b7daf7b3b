"""How latency is measured: interleaved, paused, warmed up, normalised to a reference.

Measured on this 2-core class with ONNX Runtime CPU sessions:

* one model's median of 30 runs moved by up to +-15% between rounds a minute apart, so models
  are timed *interleaved*: a group of sessions is alive at once and every round visits each
  of them in a shuffled order, and the reported latency is the median of round medians;
* each session owns an intra-op thread pool whose threads keep spinning after a run. Switching
  straight to another session inflated small models by 60-120%, depending on which model ran
  before; a 20 ms pause plus 2 untimed runs before each turn removed that (real and random
  weights then agreed within 4%, as when run alone). Turning spinning off instead made every
  run ~50% slower, so sessions keep ONNX Runtime's default and the protocol pauses;
* a reference model is timed in every group; dividing by it cancels drift between groups.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Hashable

import numpy as np

from ..errors import ProfileError

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Protocol:
    threads: int = 2  # intra-op threads of every session (inter-op 1, sequential execution)
    batch: int = 1  # rows per inference
    seq_len: int = 128  # tokens per row, no padding
    precision: str = "fp32"  # fp32, or int8 (ONNX Runtime dynamic quantization, per-channel)
    rounds: int = 8  # interleaved rounds per group
    warmup: int = 2  # untimed runs before each model's turn in a round
    timed: int = 5  # timed runs per model per round
    pause_ms: float = 20.0  # idle time before each turn, so other sessions' threads park
    group_size: int = 8  # shapes whose sessions are alive and interleaved together
    noisy_cv: float = 0.05  # a shape whose round medians vary more is measured once more
    repeat_shapes: int = 10  # shapes measured again at the end: the protocol's noise floor

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "precision":
                if value not in PRECISIONS:
                    raise ProfileError(f"precision {value!r} is not supported; allowed: "
                                       f"{', '.join(PRECISIONS)}")
            elif f.name in ("pause_ms", "noisy_cv", "repeat_shapes"):
                if value < 0:
                    raise ProfileError(f"{f.name} must not be negative, got {value}")
            elif not isinstance(value, int) or value < 1:
                raise ProfileError(f"{f.name.replace('_', '-')} must be a positive integer, "
                                   f"got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Protocol":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def inputs_for(protocol: Protocol, vocab_size: int) -> dict[str, np.ndarray]:
    """Fixed int64 inputs of the protocol's batch and length (no padding)."""
    rng = np.random.default_rng(1234)
    shape = (protocol.batch, protocol.seq_len)
    return {"input_ids": rng.integers(1, vocab_size, size=shape, dtype=np.int64),
            "attention_mask": np.ones(shape, np.int64),
            "token_type_ids": np.zeros(shape, np.int64)}


def measure_interleaved(runners: dict[Hashable, Callable[[], Any]], protocol: Protocol,
                        seed: int = 0) -> dict[Hashable, dict[str, Any]]:
    """Time every runner with the protocol; per runner its round medians and summary."""
    rng = random.Random(seed)
    pause = protocol.pause_ms / 1000.0
    rounds: dict[Hashable, list[float]] = {k: [] for k in runners}
    every: dict[Hashable, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for _ in range(protocol.rounds):
        rng.shuffle(order)
        for key in order:
            run = runners[key]
            if pause:
                time.sleep(pause)
            for _ in range(protocol.warmup):
                run()
            times = []
            for _ in range(protocol.timed):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000.0)
            rounds[key].append(statistics.median(times))
            every[key].extend(times)
    return {k: summarize(rounds[k], every[k]) for k in runners}


def summarize(round_medians: list[float], times: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(round_medians)
    cv = statistics.pstdev(round_medians) / mean if len(round_medians) > 1 and mean else 0.0
    return {"median_ms": statistics.median(round_medians),
            "p90_ms": float(np.percentile(times, 90)), "cv": cv,
            "round_medians": [round(x, 5) for x in round_medians]}
