"""How latency is measured: over a grid of input sizes, interleaved, paused, warmed up.

Measured on this 2-core class with ONNX Runtime CPU sessions:

* one model's median of 30 runs moved by up to +-15% between rounds a minute apart, so models
  are timed *interleaved*: a group of sessions is alive at once and every round visits each
  of them in a shuffled order, and the reported latency is the median of round medians;
* each session owns an intra-op thread pool whose threads keep spinning after a run. Switching
  straight to another session inflated small models by 60-120%, depending on which model ran
  before; a 20 ms pause plus 2 untimed runs before each turn removed that on the Intel class
  (real and random weights then agreed within 4%, as when run alone). Turning spinning off
  instead made every run ~50% slower, so sessions keep ONNX Runtime's default and the
  protocol pauses. How long the threads spin depends on the CPU (a fixed count of pause
  instructions: about 3 ms on pre-Skylake Intel, 16 on Zen at 4 GHz, 47 on Skylake and later,
  onnxruntime PR #27916; 36-47 ms measured on an AMD EPYC Zen 5 VM), so after the pause the
  protocol waits until the process is idle (``park_threads``): on that VM a fixed 20 ms left
  the previous session's threads spinning on one of the 2 cores and doubled the p90 of the
  next (4.3 -> 8.0 ms; 4.2 with 100 ms). ``shaperctl profile``'s own process instead runs
  every session on one pool (``Protocol.pool`` "process"), so no other session's threads
  are there to wait for: the same floors in 56% of the time on the AMD EPYC Zen 4 class;
* short runs (batch 1, 16-64 tokens, 1-5 ms) are the noisiest on a shared 2-core machine, so
  a turn times as many runs as fit in ``turn_ms`` and, in a one-sweep profile, a measurement
  whose rounds disagree by more than ``noisy_cv`` is timed again at once;
* a shared host's speed moves in periods of minutes (an AMD EPYC Zen 2 VM: 1.7-3x), longer
  than a measurement's rounds, which are seconds apart: a profile of several ``sweeps``
  measures everything again after the rest, so each shape is seen in more than one period;
* a reference graph is timed in every group as a record of drift (dividing by it added more
  noise than it removed once turns were long enough; see docs/profiles.md).
"""

from __future__ import annotations

import math
import os
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from ..errors import ProfileError
from ..runtime import PRECISIONS, shared_pool
from ..shape import reject_unknown_fields

Workload = tuple[int, int]  # (batch, sequence length)
# Sizes the predictor is checked at and never fitted on (held-out input sizes), where the
# grid covers them: between grid lengths, and batches between grid batches.
CHECK_WORKLOADS: tuple[Workload, ...] = ((1, 24), (1, 48), (1, 96), (1, 200), (1, 384),
                                         (2, 64), (2, 200), (8, 32), (8, 128))
POOLS = ("session", "process")  # Protocol.pool


@dataclass(frozen=True)
class Protocol:
    """How a device is measured: which workloads, and how each latency is timed.

    The grid is every (batch, seq_len) of ``batches`` x ``seq_lens`` with at most
    ``max_tokens`` tokens; the predictor interpolates between grid points and refuses sizes
    outside them. Powers of two in length (what serving stacks pad to) and a batch step of
    4: latency is close to affine in the batch and in the length, so linear interpolation
    between grid points stays within about 1% (docs/profiles.md has the numbers).
    """

    threads: int = 2  # intra-op threads of every session (inter-op 1, sequential execution)
    precisions: tuple[str, ...] = PRECISIONS  # fp32, and int8 (dynamic, per-channel: as exported)
    batches: tuple[int, ...] = (1, 4, 16)  # grid batch sizes
    seq_lens: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # grid lengths (<= max positions)
    max_tokens: int = 1024  # grid points with more batch x seq_len tokens are left out
    reference_batch: int = 1  # the workload a budget is for when the user names none
    reference_seq_len: int = 128
    rounds: int = 4  # interleaved rounds per group and workload (in each sweep)
    # Times the whole profile's work is measured, one sweep after another, so a shape's
    # sweeps are minutes apart and its floor (the lowest) comes from the calmest of them;
    # the at-once retry of a noisy measurement is for one sweep only. (Older profiles: 1.)
    sweeps: int = 1
    # After the sweeps, up to this many more looks at each shape and size whose lowest floor
    # so far came from a group whose reference graph (or the sentinel) ran over 1.1x its
    # fastest (a slow period can cover all of one item's sweeps); each look regroups what is
    # left. 0: none (transfers, and profiles made before 2026-12-04).
    calm_looks: int = 0
    # How many of the calm looks, the last ones, are retakes (``shaperctl profiles retake``,
    # since session 53): a look at a finished profile's floors that the slow-floors count
    # says were timed slow (by each size's own reference), waiting for a calm moment by that
    # yardstick whatever ``calm_wait`` says. 0: none (profiles never retaken).
    retakes: int = 0
    # A calm look waits, before each size it times, until the reference graph (and the
    # sentinel) runs within 1.1x its fastest (checked every second), for as long as the rest
    # of the profile still fits in the time asked for (--minutes); its measurements record
    # the wait and are left out of the machine's tail, which the sweeps sample. False:
    # profiles made before 2026-12-04 (session 25), and runs sized by --samples (no time
    # budget to wait in).
    calm_wait: bool = False
    warmup: int = 2  # untimed runs before each turn (one when a run takes > long_run_ms)
    long_run_ms: float = 10.0  # runs this long wake the threads in one warm-up run
    # Untimed runs before a graph's first turn at a size (a measurement's first round) when
    # the first of them takes over long_run_ms. Timed both ways on the AMD EPYC Zen 4 class
    # (benchmarks/warmup.py: 3 shapes x fp32 and int8, every grid size new to each arm's
    # sessions): the floors of long runs with one warm-up over those with two, median 1.005
    # for MiniLM (432 pairs) and 1.008 for BERT-base (234), in 75% and 68% of the time. A
    # profile sweeps with one round, so every long measurement ran three times to be timed
    # once. Profiles made before 2026-12-06 (session 43): ``warmup``, as for short runs.
    long_warmup: int = 1
    timed: int = 20  # timed runs per turn at most; fewer when a run is long (see turn_ms)
    turn_ms: float = 30.0  # a turn times ceil(turn_ms / one run) runs, at least one
    pause_ms: float = 20.0  # idle time before each turn, so other sessions' threads park
    # ... and then on until they have (the process idle), at most this long in all; 0: the
    # fixed pause alone, as profiles made before 2026-12-03 were measured
    park_ms: float = 500.0
    # "session": each session owns its intra-op pool, so a turn first waits for the last
    # session's threads (pause, park); "process": every session runs on the process's one
    # pool (runtime.share_one_pool, ``shaperctl profile``'s own process), whose threads the
    # next turn uses while they spin, so nothing is waited for (the same floors in 56% of
    # the time on the AMD EPYC Zen 4 class, benchmarks/shared_pool.py).
    pool: str = "session"
    # Every group also times, at every size it measures, the reference graph in the first
    # precision at the smallest grid size (the sentinel: one fixed workload, so its fastest
    # over the whole profile is the machine's calm speed), and a group's slowdown is the
    # larger of its reference's and the sentinel's (``analysis.group_slowdowns``). A shared
    # host's slow periods take every workload and precision at once (the AMD EPYC Zen 4 VM:
    # both precisions in the same state in 99% of turn pairs; small sizes slow the most,
    # x1.4-1.8), but a transfer has two groups per precision and size, and where all of them
    # fell in slow periods the reference saw nothing slow (int8 at 1.56-1.93x a direct
    # profile's of the same hour, passed by its own gate). False: profiles made before
    # 2026-12-06 (session 42).
    sentinel: bool = True
    group_size: int = 10  # shapes whose sessions are alive and interleaved together
    noisy_cv: float = 0.1  # a measurement whose round medians vary more is repeated at once
    repeat_shapes: int = 8  # shapes measured again at the end: the protocol's noise floor
    check_workloads: tuple[Workload, ...] = CHECK_WORKLOADS  # held-out sizes (held-out shapes)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "precisions":
                bad = [p for p in value if p not in PRECISIONS]
                if bad or not value or len(set(value)) != len(value):
                    raise ProfileError(f"precision {', '.join(map(repr, bad or value))} is "
                                       f"not supported; allowed: {', '.join(PRECISIONS)} "
                                       "(each at most once)")
            elif f.name in ("batches", "seq_lens"):
                if (not value or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                                     for v in value) or list(value) != sorted(set(value))):
                    raise ProfileError(f"{f.name.replace('_', '-')} must be increasing "
                                       f"positive integers, got {list(value)}")
            elif f.name == "check_workloads":
                if any(len(w) != 2 or min(w) < 1 for w in value):
                    raise ProfileError(f"check workloads must be (batch, seq_len) pairs, "
                                       f"got {value!r}")
            elif f.name in ("calm_looks", "retakes"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ProfileError(f"{f.name.replace('_', '-')} must be a non-negative "
                                       f"integer, got {value!r}")
            elif f.name == "pool":
                if value not in POOLS:
                    raise ProfileError(f"pool must be one of {', '.join(POOLS)}, got {value!r}")
            elif f.name in ("calm_wait", "sentinel"):
                if not isinstance(value, bool):
                    raise ProfileError(f"{f.name.replace('_', '-')} must be true or false, "
                                       f"got {value!r}")
            elif f.name in ("pause_ms", "park_ms", "repeat_shapes", "turn_ms", "long_run_ms",
                            "noisy_cv"):
                if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise ProfileError(f"{f.name} must be a finite non-negative number, "
                                       f"got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProfileError(f"{f.name.replace('_', '-')} must be a positive integer, "
                                   f"got {value!r}")
        if self.retakes > self.calm_looks:
            raise ProfileError(f"retakes ({self.retakes}) are calm looks and cannot outnumber "
                               f"them ({self.calm_looks})")
        if not self.grid:
            raise ProfileError(f"no grid point has at most {self.max_tokens} tokens; raise "
                               "--max-tokens or choose smaller --batch/--seq-len values")
        if self.reference not in self.grid:
            raise ProfileError(f"the reference workload batch {self.reference_batch} x "
                               f"{self.reference_seq_len} tokens must be a grid point")

    @property
    def grid(self) -> list[Workload]:
        return [(b, s) for b in self.batches for s in self.seq_lens if b * s <= self.max_tokens]

    @property
    def reference(self) -> Workload:
        return (self.reference_batch, self.reference_seq_len)

    @property
    def sentinel_workload(self) -> Workload:
        """Where the sentinel is timed (``sentinel``): the grid size of fewest tokens."""
        return min(self.grid, key=lambda w: (w[0] * w[1], w))

    @property
    def checks(self) -> list[Workload]:
        """The check workloads inside the grid's range and not on it."""
        grid = set(self.grid)
        return [tuple(w) for w in self.check_workloads
                if tuple(w) not in grid and grid_cell(self.grid, *w) is not None]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("precisions", "batches", "seq_lens"):
            d[key] = list(d[key])
        d["check_workloads"] = [list(w) for w in self.check_workloads]
        return d

    @staticmethod
    def upgraded(data: dict[str, Any]) -> dict[str, Any]:
        """A protocol record as an earlier version wrote it, with what its absent fields
        meant then: one written before ``park_ms`` existed was measured with the fixed pause
        alone (0), not with the parking today's default (500) would claim; one written before
        ``sentinel`` timed no sentinel. Every reader of a protocol record (``from_dict``,
        ``ProfileHeader.from_dict``) goes through here; one written before ``long_warmup``
        warmed long runs up as many times as short ones (``warmup``) in a first round."""
        return {"park_ms": 0.0, "sentinel": False, "long_warmup": data.get("warmup", 2),
                **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Protocol":
        reject_unknown_fields(cls, data, "protocol", ProfileError)
        data = cls.upgraded(data)
        for key in ("precisions", "batches", "seq_lens"):
            if key in data:
                data[key] = tuple(data[key])
        if "check_workloads" in data:
            data["check_workloads"] = tuple(tuple(w) for w in data["check_workloads"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProfileError(f"invalid protocol: {exc}") from None


def grid_cell(grid: Sequence[Workload], batch: int, seq_len: int
              ) -> tuple[Workload, Workload, Workload, Workload] | None:
    """The four grid points around (batch, seq_len) for bilinear interpolation, or None when
    the point lies outside the measured region (a corner is missing)."""
    batches = sorted({b for b, _ in grid})
    lens = sorted({s for _, s in grid})

    def bracket(values: list[int], x: int) -> tuple[int, int] | None:
        if x < values[0] or x > values[-1]:
            return None
        lo = max(v for v in values if v <= x)
        hi = min(v for v in values if v >= x)
        return lo, hi

    bb, ss = bracket(batches, batch), bracket(lens, seq_len)
    if bb is None or ss is None:
        return None
    corners = ((bb[0], ss[0]), (bb[0], ss[1]), (bb[1], ss[0]), (bb[1], ss[1]))
    points = set(grid)
    return corners if all(c in points for c in corners) else None


def describe_range(grid: Sequence[Workload]) -> str:
    """'batch 1: seq 16..512; batch 4: seq 16..256; batch 16: seq 16..64'."""
    rows: dict[int, list[int]] = {}
    for b, s in grid:
        rows.setdefault(b, []).append(s)
    return "; ".join(f"batch {b}: seq {min(v)}..{max(v)}" for b, v in sorted(rows.items()))


def inputs_for(workload: Workload, config) -> dict[str, np.ndarray]:
    """Fixed int64 inputs of a (batch, seq_len) workload for a network of ``config`` (a
    SuperConfig): its family's inputs, no padding."""
    batch, seq_len = workload
    return config.dummy_inputs(batch, seq_len, seed=1234, padding="none")


PARK_POLL_S = 0.001  # how often park_threads looks at the process's threads
PARK_SLICE_S = 0.01  # without /proc: CPU time over slices this long (the clock ticks in 1-10 ms)
PARK_IDLE = 0.25  # ... a slice that used less of one core than this is idle


def _running_threads() -> int | None:
    """This process's threads, other than the caller, that are running or runnable (Linux's
    /proc/self/task); None where that cannot be read."""
    me = threading.get_native_id()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    running = 0
    for tid in tids:
        if tid == str(me):
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        end = stat.rfind(b")")  # the state follows the command name, which may hold spaces
        running += stat[end + 2:end + 3] == b"R"
    return running


def process_pool() -> str:
    """The ``Protocol.pool`` sessions made in this process are measured with: "process" once
    it runs every session on one pool (runtime.share_one_pool), else "session"."""
    return "process" if shared_pool() is not None else "session"


def park_threads(pause_ms: float, park_ms: float) -> float:
    """Sleep ``pause_ms``, then on until this process is idle, at most ``park_ms`` in all;
    returns the milliseconds waited. Idle: no other thread running in two looks
    ``PARK_POLL_S`` apart (ONNX Runtime's intra-op threads spinning show as running), or,
    where /proc is not there, a ``PARK_SLICE_S`` slice that used under ``PARK_IDLE`` of a
    core (the process CPU clock is too coarse for shorter slices)."""
    start = time.perf_counter()
    if pause_ms:
        time.sleep(pause_ms / 1000.0)
    limit = start + park_ms / 1000.0
    quiet = 0
    while time.perf_counter() < limit:
        running = _running_threads()
        if running is None:
            cpu, wall = time.process_time(), time.perf_counter()
            time.sleep(PARK_SLICE_S)
            if time.process_time() - cpu < PARK_IDLE * (time.perf_counter() - wall):
                break
            continue
        quiet = quiet + 1 if running == 0 else 0
        if quiet == 2:
            break
        time.sleep(PARK_POLL_S)
    return (time.perf_counter() - start) * 1000.0


def measure_interleaved(runners: dict[Hashable, Callable[[], Any]], protocol: Protocol,
                        seed: int = 0, keep_times: bool = False
                        ) -> dict[Hashable, dict[str, Any]]:
    """Time every runner with the protocol; per runner its round medians and summary (and,
    with ``keep_times``, every timed run in ms under ``times``)."""
    rng = random.Random(seed)
    rounds: dict[Hashable, list[float]] = {k: [] for k in runners}
    every: dict[Hashable, list[float]] = {k: [] for k in runners}
    timed: dict[Hashable, int] = {}
    warmup: dict[Hashable, int] = {}
    order = list(runners)
    for _ in range(protocol.rounds):
        rng.shuffle(order)
        for key in order:
            run = runners[key]
            if protocol.pool == "session":  # another session's threads may still spin
                park_threads(protocol.pause_ms, protocol.park_ms)
            if key in warmup:
                for _ in range(warmup[key]):
                    run()
            else:  # its first turn: the last warm-up run decides the turns' run counts
                done = 0
                while True:
                    start = time.perf_counter()
                    run()
                    one, done = (time.perf_counter() - start) * 1000.0, done + 1
                    long = one > protocol.long_run_ms
                    if done >= (protocol.long_warmup if long else protocol.warmup):
                        break
                timed[key] = max(1, min(protocol.timed, math.ceil(protocol.turn_ms / one)))
                warmup[key] = 1 if long else protocol.warmup
            times = []
            for _ in range(timed.get(key, protocol.timed)):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000.0)
            rounds[key].append(statistics.median(times))
            every[key].extend(times)
    return {k: {**summarize(rounds[k], every[k]), **({"times": every[k]} if keep_times else {})}
            for k in runners}


# Percentiles of every timed run a measurement keeps: the tail model (predictor.py) mixes
# them over the whole profile, so a budget can promise a percentile of request latency.
RUN_LEVELS = (10, 25, 50, 75, 90, 95, 99)


def summarize(round_medians: list[float], times: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(round_medians)
    cv = statistics.pstdev(round_medians) / mean if len(round_medians) > 1 and mean else 0.0
    levels = np.percentile(times, RUN_LEVELS)
    return {"median_ms": statistics.median(round_medians),
            "p90_ms": float(np.percentile(times, 90)), "cv": cv,
            "round_medians": [round(x, 5) for x in round_medians],
            "runs": len(times),
            "run_ms": {str(k): round(float(v), 5) for k, v in zip(RUN_LEVELS, levels)}}
