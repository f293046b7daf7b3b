"""Settings of a super-training run (no torch here: the CLI reads them for its defaults)."""

from __future__ import annotations

import math

from dataclasses import dataclass, replace
from typing import Collection

from .. import errors
from ..errors import TrainingError
from ..runtime import RUNTIMES
from ..supernet.config import ORDERS

OBJECTIVES = ("mlm", "distill")
# quality metric -> higher is better; task: a task network's accuracy (Pearson for a
# regression) on labelled data
QUALITY_METRICS = {"cosine": True, "perplexity": False, "task": True}
DEVICES = ("auto", *RUNTIMES)  # auto: cuda when a GPU is usable, else cpu
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the device computes it natively


def check_choice(name: str, value: str, allowed: Collection[str]) -> None:
    """:func:`..errors.check_choice` raising TrainingError."""
    errors.check_choice(name, value, allowed, TrainingError)


# A resumed run must use the settings it was started with; steps included, since the
# learning-rate schedule is laid out over them. Device and precision may change.
RESUME_KEYS = ("objective", "steps", "batch_size", "accumulate", "seq_len", "random_shapes",
               "lr", "warmup_steps", "layer_loss", "order", "weight_decay", "mlm_probability",
               "seed", "val_fraction")


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "distill"  # mlm (the paper's) or distill (match the source's hidden states)
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # blocks per process per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    seq_len: int = 128  # tokens per block
    random_shapes: int = 2  # random shapes per step besides the largest and the smallest
    lr: float = 5e-4  # peak AdamW learning rate (short CPU runs; see docs/training.md)
    warmup_steps: int = -1  # linear warm-up, then linear decay to 0; -1: 5% of the steps
    # distill: weight of every layer's output as a target beside the final hidden state
    # (measured no better than the final state alone on short runs: see docs/training.md)
    layer_loss: float = 0.0
    order: str = "residual+heads"  # importance order applied before the first step
    device: str = "auto"  # cpu or cuda (cuda:LOCAL_RANK under torchrun); resolved when made
    precision: str = "auto"  # fp32, or bf16 autocast; resolved when made
    weight_decay: float = 0.0
    mlm_probability: float = 0.15
    checkpoint_every: int = 100  # steps between checkpoints
    seed: int = 0
    val_fraction: float = 0.05  # share of blocks held out for validation

    def __post_init__(self) -> None:
        for name, allowed in (("objective", OBJECTIVES), ("order", ORDERS),
                              ("device", DEVICES), ("precision", PRECISIONS)):
            check_choice(name, getattr(self, name), allowed)
        for name in ("steps", "batch_size", "accumulate", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be positive, "
                                    f"got {getattr(self, name)}")
        if self.warmup_steps == -1:
            object.__setattr__(self, "warmup_steps", self.steps // 20)
        if not (math.isfinite(self.lr) and 0 < self.lr < 1):
            raise TrainingError(f"--lr must be a finite number in (0, 1), got {self.lr}")
        for name in ("layer_loss", "weight_decay", "mlm_probability", "val_fraction"):
            value = getattr(self, name, 0.0)
            if not math.isfinite(value):
                raise TrainingError(f"{name.replace('_', '-')} must be finite, got {value}")
        if self.random_shapes < 0 or self.warmup_steps < 0:
            raise TrainingError("random-shapes and warmup-steps must not be negative")
        if self.layer_loss < 0 or (self.layer_loss and self.objective != "distill"):
            raise TrainingError("layer-loss must not be negative, and is for the distill "
                                "objective only")

    def resolved(self) -> "TrainConfig":
        """The settings with ``auto`` device and precision decided for this machine."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if native_bf16(device) else "fp32"
        return replace(self, device=device, precision=precision)


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (elsewhere bf16 on the CPU is emulated and slower than fp32)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)()
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


# The default sandwich phase's peak is 4 x --lr capped here: at the default lr 5e-5, 2e-4 lifted
# the slices on reviews (+2.3 points on average in 400 steps, +2.1 in 60) and BBC topics (+1.9)
# on the AMD Zen 2 class (docs/benchmarks.md); the cap keeps a high base rate (a tiny model's
# 3e-4 in the tests) from a 4x that collapsed its slices.
SANDWICH_LR_CAP = 2e-4

TASK_RESUME_KEYS = ("full_steps", "steps", "batch_size", "seq_len", "lr", "sandwich_lr",
                    "random_shapes",
                    "temperature", "layer_loss", "seed", "shape", "teacher", "order")


@dataclass(frozen=True)
class TaskConfig:
    full_steps: int = 300  # phase 1: the full shape alone on the labels
    steps: int = 300  # phase 2: sandwich steps, every shape distilling the teacher
    batch_size: int = 32
    seq_len: int = 128  # tokens per text (pair): longer ones are cut
    lr: float = 5e-5
    # phase 2's peak learning rate; None: 4 x lr, at most SANDWICH_LR_CAP and never below lr,
    # resolved when the config is made (so train.json records the rate used)
    sandwich_lr: float | None = None
    random_shapes: int = 2
    temperature: float = 1.0  # of the distilled class distributions
    # weight of the teacher's layer outputs in what a shape distils (DynaBERT's hidden-state
    # loss); 0 = its logits only
    layer_loss: float = 0.0
    seed: int = 0
    checkpoint_every: int = 100
    device: str = "auto"
    precision: str = "auto"
    # fine-tune this one shape alone (phase 1 at this shape; no sandwich phase) ...
    shape: tuple[int, ...] | None = None
    # ... distilling this task network's full shape (train task's teacher/), labels too
    teacher: str | None = None
    # the features' order before the first step (rewire.py), measured on the training texts;
    # kept when the super network is in importance order already (train supernet --order).
    # Off by default: on the AMD Zen 2 class it lifted an untrained MiniLM's slices (fidelity
    # 0.34 -> 0.73 at 20.7M) but not the fine-tuned ones (reviews: slices -2.0..+3.2 points,
    # mean +0.2; BBC topics: -0.5..-3.4, mean -2.0; docs/benchmarks.md)
    order: str = "none"

    def __post_init__(self) -> None:
        check_choice("order", self.order, ORDERS)
        for name in ("batch_size", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be positive, "
                                    f"got {getattr(self, name)}")
        if self.full_steps < 0 or self.steps < 0 or self.random_shapes < 0:
            raise TrainingError("full-steps, steps and random-shapes must not be negative")
        if self.full_steps + self.steps < 1:
            raise TrainingError("nothing to train: give --full-steps or --steps above 0")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(w) for w in self.shape))
            if self.steps or not self.full_steps:
                raise TrainingError("--shape fine-tunes one shape alone: give --full-steps "
                                    "(its steps) and --steps 0 (no sandwich phase)")
            if self.sandwich_lr is not None:
                raise TrainingError("--sandwich-lr is the sandwich phase's; --shape has none "
                                    "(give its rate as --lr)")
        elif self.sandwich_lr is None and math.isfinite(self.lr):
            object.__setattr__(self, "sandwich_lr",
                               max(self.lr, min(4 * self.lr, SANDWICH_LR_CAP)))
        if self.teacher is not None and self.shape is None:
            raise TrainingError("--teacher goes with --shape (one shape distilling it); the "
                                "sandwich phase distils the full shape it fine-tuned itself")
        if not (math.isfinite(self.lr) and 0 < self.lr < 1):
            raise TrainingError(f"--lr must be a finite number in (0, 1), got {self.lr}")
        if self.sandwich_lr is not None and not (math.isfinite(self.sandwich_lr)
                                                 and 0 < self.sandwich_lr < 1):
            raise TrainingError(f"--sandwich-lr must be a finite number in (0, 1), got "
                                f"{self.sandwich_lr}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TrainingError(f"--temperature must be positive, got {self.temperature}")
        if not (math.isfinite(self.layer_loss) and self.layer_loss >= 0):
            raise TrainingError(f"--layer-loss must be a finite number >= 0, got "
                                f"{self.layer_loss}")

    def device_settings(self) -> "TrainConfig":
        """The device and precision, resolved and checked as super-training does."""
        return TrainConfig(device=self.device, precision=self.precision).resolved()
