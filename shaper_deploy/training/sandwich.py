"""Sandwich-rule super-training (SPEC section 5) on one CPU or many processes.

Every step trains the largest shape, the smallest and ``random_shapes`` random ones, summing
their gradients before one optimizer step. Two objectives:

* ``mlm``: masked language modelling (15%, 80/10/10), the paper's; an MLM head is created when
  the source BERT has none;
* ``distill``: every shape learns to reproduce the *source* network (the frozen
  ``--supernet`` at full width): its final hidden states and, with ``layer_loss`` > 0, every
  layer's output after its output bottleneck. Needs only unlabeled text, and suits sentence
  encoders such as all-MiniLM-L6-v2.

Before the first step the super network's features can be put in order of importance
(``order``, :mod:`..supernet.rewire`), so that slices keep the features that matter.

Devices: ``device`` "cpu" or "cuda". Under torchrun each process takes ``cuda:LOCAL_RANK``;
model, teacher and batches live there; the process group is NCCL on GPUs and gloo on CPUs
(from torchrun's environment) and the model is wrapped in DistributedDataParallel.
``precision`` "bf16" runs the forward passes under autocast. Shapes, batch order and masks
derive from (seed, step, rank) only, so every rank draws the same shapes and a resumed run
repeats the uninterrupted one exactly.
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
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..io import atomic_dir, atomic_write_bytes
from ..shape import Shape
from ..supernet.checkpoint import load_supernet, write_supernet
from ..supernet.model import SuperBert
from ..templates import random_shape
from .data import Corpus
from .config import RESUME_KEYS, TrainConfig, native_bf16
from ..supernet.rewire import importance_order

ORDER_BLOCKS = 256  # token blocks the importance order is measured on
PROGRESS_SECONDS = 15.0  # longest silence between progress lines


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
                target: Any, layer_loss: float = 0.0) -> torch.Tensor:
        out = self.model(ids, shape=shape, layer_outputs=layer_loss > 0)
        if labels is not None:
            logits = self.model.mlm_logits(out.last_hidden_state)
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                   ignore_index=-100)
        loss = _scaled_mse(out.last_hidden_state, target.last_hidden_state)
        if layer_loss > 0:
            per_layer = [_scaled_mse(h, t) for h, t in zip(out.layer_outputs,
                                                           target.layer_outputs)]
            loss = loss + layer_loss * sum(per_layer) / len(per_layer)
        return loss


def _scaled_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the target's variance (1 = predicting the mean)."""
    target = target.float()
    return F.mse_loss(output.float(), target) / target.var().clamp_min(1e-6)


def mask_tokens(ids: torch.Tensor, corpus: Corpus, vocab: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of the chosen tokens 80% become the mask token, 10% random, 10%
    unchanged."""
    if corpus.mask_id is None:
        raise TrainingError("the tokenizer has no mask token; the mlm objective needs one")
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


def training_device(config: TrainConfig) -> torch.device:
    """This process's device: cuda:LOCAL_RANK (torchrun sets it; 0 alone) or the CPU;
    a device or precision this machine cannot run is one TrainingError."""
    config = config.resolved()
    if config.device == "cpu":
        if config.precision == "bf16" and not native_bf16("cpu"):
            raise TrainingError("--precision bf16: this CPU has neither AVX-512 BF16 nor AMX, "
                                "so bf16 would be emulated and slow; use --precision fp32")
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.cuda.is_available():
        raise TrainingError("--device cuda: no usable CUDA GPU here (torch.cuda.is_available() "
                            "is False); use --device cpu")
    if local >= torch.cuda.device_count():
        raise TrainingError(f"--device cuda: LOCAL_RANK {local} but only "
                            f"{torch.cuda.device_count()} GPU(s) visible; start at most that "
                            "many processes per node")
    if config.precision == "bf16" and not native_bf16("cuda"):
        raise TrainingError(f"--precision bf16: GPU {torch.cuda.get_device_name(local)} does "
                            "not support bfloat16; use --precision fp32")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _StopRequest:
    """Ctrl-C in a single process: finish the running step, checkpoint it, then stop.

    A second Ctrl-C stops at once (the last periodic checkpoint is kept). Under torchrun
    every rank must stop at the same step, so the default handling stays there.
    """

    def __init__(self, enabled: bool, note: Callable[[str], None]):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.note, self.requested, self.previous = note, False, None

    def __enter__(self) -> "_StopRequest":
        # a process started with Ctrl-C ignored (nohup, a background job) keeps ignoring it
        self.enabled = self.enabled and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.note("interrupt: finishing this step to checkpoint it (Ctrl-C again to stop now)")

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


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


def _backward(wrapped: nn.Module, teacher: SuperBert | None, corpus: Corpus,
              order: _BatchOrder, shapes: list[Shape], step: int, config: TrainConfig,
              rank: int, world: int, device: torch.device, autocast, vocab: int
              ) -> list[float]:
    """One step's forward and backward passes: every shape on each of ``accumulate``
    micro-batches (masked for the MLM objective, drawing from ``vocab`` tokens, with the
    teacher's outputs for distillation), the gradients adding up and DDP reducing once. Each
    shape's loss, the micro-batches' mean."""
    losses = [0.0] * len(shapes)
    for micro in range(config.accumulate):
        batch = order.indices(step * config.accumulate + micro, rank, world, config.batch_size)
        ids = corpus.train[batch]
        labels = target = None
        if config.objective == "mlm":
            g = torch.Generator().manual_seed(
                config.seed * 1_000_003 + (step * config.accumulate + micro) * 1009 + rank)
            ids, labels = mask_tokens(ids, corpus, vocab, config.mlm_probability, g)
            labels = labels.to(device)
        ids = ids.to(device)
        if teacher is not None:
            with torch.no_grad(), autocast:
                target = teacher(ids, layer_outputs=config.layer_loss > 0)
        for k, shape in enumerate(shapes):
            last = k == len(shapes) - 1 and micro == config.accumulate - 1
            sync = contextlib.nullcontext() if last or world == 1 else wrapped.no_sync()
            with sync:
                with autocast:
                    loss = wrapped(ids, shape, labels, target, config.layer_loss)
                # gradients of all shapes and micro-batches add up; DDP reduces once
                (loss / config.accumulate).backward()
            losses[k] += float(loss.detach()) / config.accumulate
    return losses


def train_supernet(source: str | Path, corpus: Corpus, config: TrainConfig, out: str | Path,
                   progress: Callable[[str], None] | None = None,
                   widths: Sequence[int] | None = None,
                   stop_after: int | None = None) -> dict[str, Any]:
    """Train the super network at ``source`` on ``corpus``; resumes from ``out/checkpoint``.
    ``widths``: a SuperShaper checkpoint's allowed widths (needed when D is not 768).
    ``stop_after``: checkpoint after that step of the schedule and return early (every rank
    alike), for time-limited jobs; the summary then has ``stopped_at`` and no validation."""
    note = progress or (lambda message: None)
    out = Path(out)
    config = config.resolved()
    device = training_device(config)
    rank, world = _distributed(device)
    talk = note if rank == 0 else (lambda message: None)
    base = load_supernet(source, widths)
    model = base
    teacher = None
    if config.objective == "distill":
        teacher = copy.deepcopy(base).eval().requires_grad_(False).to(device)
    elif model.mlm_head is None:
        talk("the source has no MLM head: creating one (the decoder is tied to the embeddings)")
        model = _with_mlm_head(base, config.seed)
    start, history = 0, []
    checkpoint = out / "checkpoint"
    state = None
    if (checkpoint / "train.json").is_file():  # every rank reads rank 0's checkpoint
        state = _resume(checkpoint, model, config)
        model = state["model"]
        start, history = state["step"], state["history"]
        talk(f"resuming {checkpoint} at step {start}")
    elif config.order != "none":
        model = importance_order(model, corpus.train[:ORDER_BLOCKS], config.order,
                                 progress=talk)
    model.to(device).train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps

    def schedule(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (total - step) / max(1, total - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the params' device
        scheduler.load_state_dict(state["scheduler"])
    objective = _Objective(model, teacher)
    wrapped: nn.Module = objective
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    order = _BatchOrder(len(corpus.train), config.seed)
    vocab = model.config.space.vocab_size
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if config.precision == "bf16" else contextlib.nullcontext())
    n_shapes = 2 + config.random_shapes
    talk(f"training steps {start + 1}..{total} on {world} process(es), {device.type}, "
         f"{config.precision}: each step {n_shapes} shapes x {config.accumulate} x "
         f"{config.batch_size} blocks of {config.seq_len} tokens per process")
    started = last_note = time.perf_counter()
    with _StopRequest(world == 1, talk) as stop:
        for step in range(start, total):
            step_started = time.perf_counter()
            shapes = sandwich_shapes(model, step, config.random_shapes, config.seed)
            optimizer.zero_grad(set_to_none=True)
            losses = _backward(wrapped, teacher, corpus, order, shapes, step, config, rank,
                               world, device, autocast, vocab)
            if not all(math.isfinite(x) for x in losses):  # never step into NaN weights
                shown = ", ".join(f"{x:.4g}" for x in losses)
                raise TrainingError(
                    f"step {step + 1}: the loss is not finite ({shown} for the largest, "
                    "smallest and random shapes); nothing of this step is kept (the last "
                    f"checkpoint stays); lower --lr (now {config.lr:g})")
            optimizer.step()
            scheduler.step()
            now = time.perf_counter()
            history.append({"step": step + 1, "loss": losses, "lr": scheduler.get_last_lr()[0],
                            "seconds": round(now - step_started, 4)})
            done = step + 1
            if (done == start + 1 or done % max(1, total // 20) == 0 or done == total
                    or now - last_note >= PROGRESS_SECONDS):
                last_note = now
                rate = (done - start) / (now - started)
                talk(f"step {done}/{total}  loss {sum(losses) / len(losses):.4f} (largest "
                     f"{losses[0]:.4f}, smallest {losses[1]:.4f})  {rate:.2f} steps/s  "
                     f"ETA {_duration((total - done) / rate)}")
            if stop.requested and done < total:
                _checkpoint(checkpoint, model, optimizer, scheduler, config, done, history, rank)
                talk(f"checkpoint of step {done} written")
                raise KeyboardInterrupt
            if stop_after is not None and stop_after <= done < total:
                _checkpoint(checkpoint, model, optimizer, scheduler, config, done, history, rank)
                talk(f"stopped after step {done} as asked; checkpoint written: run the same "
                     "command again to continue")
                if world > 1:
                    dist.barrier()  # rank 0's checkpoint is complete before anyone leaves
                return {"steps": total, "stopped_at": done, "objective": config.objective,
                        "world_size": world, "device": device.type,
                        "config": asdict(config), "validation": None, "history": history}
            if done % config.checkpoint_every == 0 and done < total:
                _checkpoint(checkpoint, model, optimizer, scheduler, config, done, history,
                            rank)
    seconds = time.perf_counter() - started
    digests = [_weights_digest(model)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    summary = {"steps": total, "objective": config.objective, "world_size": world,
               "device": device.type, "ranks_identical": len(set(digests)) == 1,
               "weights_sha256": digests[0], "config": asdict(config),
               "seconds": round(seconds, 3),  # the steps run by this call (not resumed ones)
               "final_loss": history[-1]["loss"] if history else None,
               "validation": (_validate(model, teacher, corpus, config, device)
                              if rank == 0 else None),
               "history": history}
    if rank == 0:
        _checkpoint(checkpoint, model, optimizer, scheduler, config, total, history, rank)
        with atomic_dir(out / "supernet", force=True) as tmp:
            write_supernet(model, tmp)
        atomic_write_bytes(out / "train.json", (json.dumps(summary, indent=2) + "\n").encode())
        talk(f"wrote {out / 'supernet'}")
    if world > 1:
        dist.barrier()
    return summary


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def seeded_init(shape: Sequence[int], seed: int) -> torch.Tensor:
    """A new head's small random weights (normal, std 0.02), drawn from ``seed`` alone: the
    same command twice trains the same network."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)) * 0.02


def _with_mlm_head(model: SuperBert, seed: int) -> SuperBert:
    """``model`` with a new MLM head (its transform drawn from ``seed``: the same run twice
    trains the same network), the decoder tied to the embeddings, everything else kept."""
    s = model.config.space
    config = replace(model.config, space=replace(s, mlm_head=True))
    grown = SuperBert(config)
    state = model.state_dict()
    grown.load_state_dict(state, strict=False)
    head = grown.mlm_head
    with torch.no_grad():
        head.transform.weight.copy_(seeded_init(head.transform.weight.shape, seed))
        head.transform.bias.zero_()
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        head.bias.zero_()
    grown.provenance = model.provenance
    return grown


def _checkpoint(folder: Path, model: SuperBert, optimizer, scheduler, config,
                step: int, history: list, rank: int = 0) -> None:
    """The run's state after ``step`` (a super network folder, the optimizer's and the
    schedule's state, tensors only, and train.json); ``config`` is the run's settings
    dataclass (super-training's or task training's)."""
    if rank != 0:
        return
    bad = [name for name, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if bad:  # a checkpoint of NaN weights would resume into nothing
        raise TrainingError(f"after step {step} {len(bad)} tensor(s) hold non-finite numbers "
                            f"({bad[0]}, ...); the previous checkpoint stays; lower --lr")
    with atomic_dir(folder, force=True) as tmp:
        write_supernet(model, tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / "trainer_state.pt")
        (tmp / "train.json").write_text(json.dumps(
            {"step": step, "config": asdict(config), "history": history}) + "\n")


def _resume(folder: Path, model: SuperBert, config, keys: Sequence[str] = RESUME_KEYS
            ) -> dict[str, Any]:
    """A checkpoint written by :func:`_checkpoint`, refused unless its settings ``keys`` and
    the network's architecture are this run's."""
    try:
        saved = json.loads((folder / "train.json").read_text())
        before, step, history = saved["config"], int(saved["step"]), saved["history"]
        if not isinstance(before, dict) or not isinstance(history, list):
            raise TypeError("config must be an object and history a list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"checkpoint {folder}/train.json is damaged ({exc}); resume from "
                            "a new --out") from None
    now = json.loads(json.dumps({k: getattr(config, k) for k in keys}))  # as JSON kept them
    changed = [f"{k}: {before.get(k)!r} then, {now[k]!r} now" for k in keys
               if before.get(k) != now[k]]
    if changed:
        raise TrainingError(f"checkpoint {folder} was trained with other settings "
                            f"({'; '.join(changed)}); use the same settings to resume, "
                            "or a new --out")
    resumed = load_supernet(folder)  # with its provenance (tokenizer, source, order)
    if resumed.config != model.config:
        raise TrainingError(f"checkpoint {folder} is of another architecture than the super "
                            "network being trained; use a new --out")
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
              config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Held-out loss of the largest and smallest shapes (and perplexity for MLM), in fp32."""
    model.eval()
    ids = corpus.val[:32].to(device)
    out = {}
    objective = _Objective(model, teacher)
    target = teacher(ids, layer_outputs=config.layer_loss > 0) if teacher is not None else None
    for name, shape in (("largest", model.config.space.largest),
                        ("smallest", model.config.space.smallest)):
        if config.objective == "mlm":
            g = torch.Generator().manual_seed(12345)
            inputs, labels = mask_tokens(ids.cpu(), corpus, model.config.space.vocab_size,
                                         config.mlm_probability, g)
            loss = float(objective(inputs.to(device), shape, labels.to(device), None))
            out[name] = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
        else:
            out[name] = {"loss": float(objective(ids, shape, None, target, config.layer_loss))}
    model.train()
    return out
