"""Sandwich-rule super-training (SPEC section 5) on one CPU or many processes.

Every step trains the largest shape, the smallest and ``random_shapes`` random ones, summing
their gradients before one optimizer step. Two objectives:

* ``mlm``: masked language modelling (15%, 80/10/10), the paper's; an MLM head is created when
  the source BERT has none;
* ``distill``: every shape learns to reproduce the *source* network's final hidden states
  (the frozen ``--supernet`` at full width): needs only unlabeled text, and suits sentence
  encoders such as all-MiniLM-L6-v2.

Many processes: launch with ``torchrun`` (``torch.distributed.run``); the process group
(gloo on CPU, nccl on GPU) comes from its environment and the model is wrapped in PyTorch's
DistributedDataParallel. Shapes, batch order and masks derive from (seed, step, rank) only,
so every rank draws the same shapes and a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..io import atomic_dir
from ..shape import Shape
from ..supernet.checkpoint import load_supernet, write_supernet
from ..supernet.model import SuperBert
from ..templates import random_shape
from .data import Corpus

OBJECTIVES = ("mlm", "distill")
# A resumed run must use the settings it was started with; steps included, since the
# learning-rate schedule is laid out over them.
RESUME_KEYS = ("objective", "steps", "batch_size", "seq_len", "random_shapes", "lr",
               "warmup_steps",
               "weight_decay", "mlm_probability", "seed", "val_fraction")


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "distill"  # mlm (the paper's) or distill (match the source's hidden states)
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # blocks per process per step
    seq_len: int = 128  # tokens per block
    random_shapes: int = 2  # random shapes per step besides the largest and the smallest
    lr: float = 5e-5  # peak AdamW learning rate
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0
    weight_decay: float = 0.0
    mlm_probability: float = 0.15
    checkpoint_every: int = 100  # steps between checkpoints
    seed: int = 0
    val_fraction: float = 0.05  # share of blocks held out for validation

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TrainingError(f"unknown objective {self.objective!r}; allowed: "
                                f"{', '.join(OBJECTIVES)}")
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be positive, "
                                    f"got {getattr(self, name)}")
        if self.random_shapes < 0 or self.warmup_steps < 0 or not self.lr > 0:
            raise TrainingError("random-shapes and warmup-steps must not be negative and lr "
                                "must be positive")


def sandwich_shapes(model: SuperBert, step: int, n_random: int, seed: int) -> list[Shape]:
    """The step's shapes: largest, smallest, then random ones (the same on every rank)."""
    space = model.config.space
    rng = random.Random(f"{seed}:{step}")
    return [space.largest, space.smallest] + [random_shape(space, rng) for _ in range(n_random)]


class _Objective(nn.Module):
    """The loss of one shape, computed inside forward so DDP sees every parameter use."""

    def __init__(self, model: SuperBert, teacher: SuperBert | None):
        super().__init__()
        self.model = model
        self.teacher = [teacher]  # a list: kept out of the module tree (frozen, not trained)

    def forward(self, ids: torch.Tensor, shape: Shape, labels: torch.Tensor | None,
                target: torch.Tensor | None) -> torch.Tensor:
        hidden = self.model(ids, shape=shape).last_hidden_state
        if labels is not None:
            logits = self.model.mlm_logits(hidden)
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                   ignore_index=-100)
        return F.mse_loss(hidden, target) / target.var().clamp_min(1e-6)


def mask_tokens(ids: torch.Tensor, corpus: Corpus, vocab: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of the chosen tokens 80% become [MASK], 10% random, 10% unchanged."""
    if corpus.mask_id is None:
        raise TrainingError("the tokenizer has no [MASK] token; the mlm objective needs one")
    labels = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in corpus.special_ids:
        special |= ids == s
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = corpus.mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(vocab, ids.shape, generator=generator)[swap]
    return inputs, labels


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _BatchOrder:
    """Step t, rank r -> the same blocks on every run: epochs of seeded permutations."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.perms = n, seed, {}

    def indices(self, step: int, rank: int, world: int, batch: int) -> torch.Tensor:
        out = []
        for k in range(batch):
            epoch, i = divmod((step * world + rank) * batch + k, self.n)
            if epoch not in self.perms:
                self.perms[epoch] = torch.randperm(
                    self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(int(self.perms[epoch][i]))
        return torch.tensor(out)


def train_supernet(source: str | Path, corpus: Corpus, config: TrainConfig, out: str | Path,
                   progress: Callable[[str], None] | None = None,
                   widths: Sequence[int] | None = None) -> dict[str, Any]:
    """Train the super network at ``source`` on ``corpus``; resumes from ``out/checkpoint``.
    ``widths``: a SuperShaper checkpoint's allowed widths (needed when D is not 768)."""
    note = progress or (lambda message: None)
    out = Path(out)
    rank, world = _distributed()
    talk = note if rank == 0 else (lambda message: None)
    base = load_supernet(source, widths)
    model = base
    teacher = None
    if config.objective == "distill":
        teacher = copy.deepcopy(base).eval().requires_grad_(False)
    elif model.mlm_head is None:
        talk("the source has no MLM head: creating one (the decoder is tied to the embeddings)")
        model = _with_mlm_head(base)
    start, history = 0, []
    checkpoint = out / "checkpoint"
    state = None
    if (checkpoint / "train.json").is_file():
        state = _resume(checkpoint, model, config)
        model = state["model"]
        start, history = state["step"], state["history"]
        talk(f"resuming {checkpoint} at step {start}")
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps

    def schedule(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (total - step) / max(1, total - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    objective = _Objective(model, teacher)
    wrapped: nn.Module = objective
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    order = _BatchOrder(len(corpus.train), config.seed)
    vocab = model.config.space.vocab_size
    started = time.perf_counter()
    for step in range(start, total):
        ids = corpus.train[order.indices(step, rank, world, config.batch_size)]
        labels = target = None
        if config.objective == "mlm":
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1009 + rank)
            ids, labels = mask_tokens(ids, corpus, vocab, config.mlm_probability, g)
        else:
            with torch.no_grad():
                target = teacher(ids).last_hidden_state
        optimizer.zero_grad(set_to_none=True)
        shapes = sandwich_shapes(model, step, config.random_shapes, config.seed)
        losses = []
        for k, shape in enumerate(shapes):
            last = k == len(shapes) - 1
            sync = contextlib.nullcontext() if last or world == 1 else wrapped.no_sync()
            with sync:
                loss = wrapped(ids, shape, labels, target)
                loss.backward()  # gradients of all shapes add up; DDP reduces on the last
            losses.append(float(loss.detach()))
        optimizer.step()
        scheduler.step()
        history.append({"step": step + 1, "loss": losses, "lr": scheduler.get_last_lr()[0]})
        done = step + 1
        if done % max(1, total // 20) == 0 or done == total:
            rate = (done - start) / (time.perf_counter() - started)
            talk(f"step {done}/{total}  loss {sum(losses) / len(losses):.4f} (largest "
                 f"{losses[0]:.4f}, smallest {losses[1]:.4f})  {rate:.2f} steps/s  "
                 f"ETA {(total - done) / rate:.0f} s")
        if done % config.checkpoint_every == 0 and done < total:
            _checkpoint(checkpoint, model, optimizer, scheduler, config, done, history, rank)
    digests = [_weights_digest(model)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    summary = {"steps": total, "objective": config.objective, "world_size": world,
               "ranks_identical": len(set(digests)) == 1, "weights_sha256": digests[0],
               "config": asdict(config), "final_loss": history[-1]["loss"] if history else None,
               "validation": _validate(model, teacher, corpus, config) if rank == 0 else None,
               "history": history}
    if rank == 0:
        _checkpoint(checkpoint, model, optimizer, scheduler, config, total, history, rank)
        with atomic_dir(out / "supernet", force=True) as tmp:
            write_supernet(model, tmp)
        (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
        talk(f"wrote {out / 'supernet'}")
    if world > 1:
        dist.barrier()
    return summary


def _with_mlm_head(model: SuperBert) -> SuperBert:
    s = model.config.space
    config = replace(model.config, space=replace(s, mlm_head=True))
    grown = SuperBert(config)
    state = model.state_dict()
    grown.load_state_dict(state, strict=False)
    head = grown.mlm_head
    with torch.no_grad():
        nn.init.normal_(head.transform.weight, std=0.02)
        head.transform.bias.zero_()
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        head.bias.zero_()
    grown.tokenizer_files, grown.source = model.tokenizer_files, model.source
    return grown


def _checkpoint(folder: Path, model: SuperBert, optimizer, scheduler, config: TrainConfig,
                step: int, history: list, rank: int) -> None:
    if rank != 0:
        return
    with atomic_dir(folder, force=True) as tmp:
        write_supernet(model, tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / "trainer_state.pt")
        (tmp / "train.json").write_text(json.dumps(
            {"step": step, "config": asdict(config), "history": history}) + "\n")


def _resume(folder: Path, model: SuperBert, config: TrainConfig) -> dict[str, Any]:
    try:
        saved = json.loads((folder / "train.json").read_text())
        before, step, history = saved["config"], int(saved["step"]), saved["history"]
        if not isinstance(before, dict) or not isinstance(history, list):
            raise TypeError("config must be an object and history a list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"checkpoint {folder}/train.json is damaged ({exc}); resume from "
                            "a new --out") from None
    changed = [f"{k}: {before.get(k)!r} then, {getattr(config, k)!r} now" for k in RESUME_KEYS
               if before.get(k) != getattr(config, k)]
    if changed:
        raise TrainingError(f"checkpoint {folder} was trained with other settings "
                            f"({'; '.join(changed)}); use the same settings to resume, "
                            "or a new --out")
    resumed = load_supernet(folder)
    if resumed.config != model.config:
        raise TrainingError(f"checkpoint {folder} is of another architecture than the super "
                            "network being trained; use a new --out")
    resumed.tokenizer_files, resumed.source = model.tokenizer_files, model.source
    try:  # tensors and plain containers only: a pickle holding objects is refused
        state = torch.load(folder / "trainer_state.pt", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint {folder}/trainer_state.pt is damaged or holds objects "
                            f"other than tensors ({type(exc).__name__}); it is never loaded "
                            "otherwise: resume from a new --out") from None
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {folder}/trainer_state.pt is not a training state; "
                            "resume from a new --out")
    return {"model": resumed, "step": step, "history": history, **state}


@torch.no_grad()
def _validate(model: SuperBert, teacher: SuperBert | None, corpus: Corpus,
              config: TrainConfig) -> dict[str, Any]:
    """Held-out loss of the largest and smallest shapes (and perplexity for MLM)."""
    model.eval()
    ids = corpus.val[:32]
    out = {}
    objective = _Objective(model, teacher)
    for name, shape in (("largest", model.config.space.largest),
                        ("smallest", model.config.space.smallest)):
        if config.objective == "mlm":
            g = torch.Generator().manual_seed(12345)
            inputs, labels = mask_tokens(ids, corpus, model.config.space.vocab_size,
                                         config.mlm_probability, g)
            loss = float(objective(inputs, shape, labels, None))
            out[name] = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
        else:
            target = teacher(ids).last_hidden_state
            out[name] = {"loss": float(objective(ids, shape, None, target))}
    model.train()
    return out

