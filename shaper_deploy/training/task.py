"""Task fine-tuning of a super network (``shaperctl train task``): every shape a classifier.

Labelled data (CSV, TSV or JSON lines with named columns; single texts or text pairs; class
labels kept by name, or a regression score) trains the whole super network in two phases,
DynaBERT's width-adaptive recipe (Hou et al., 2020):

1. ``full_steps`` steps fine-tune the full shape alone on the labels (cross-entropy, or mean
   squared error for regression), with a new task head (mean pooling + one dense layer). The
   result is the *teacher*, written to ``out/teacher`` (a task super network itself: the
   planner can take it for loose budgets).
2. ``steps`` sandwich steps train the largest, the smallest and ``random_shapes`` random
   shapes together, each distilling the frozen teacher's outputs (KL divergence of the
   softened class distributions at ``temperature``, or the teacher's score for regression;
   with ``layer_loss`` > 0 also every layer's output, DynaBERT's hidden-state loss), at the
   peak learning rate ``sandwich_lr`` (default 4 x ``lr``, at most 2e-4, never below ``lr``);
   the largest also learns the labels. The result, ``out/supernet``, is what export slices.

With ``order`` (``--order``; off by default) the features are first put in importance order on
the first 256 training texts (:mod:`..supernet.rewire`, an order per layer; DynaBERT rewires
before its width-adaptive phase too), so a slice keeps the features that matter on them; the
full shape computes what it did.
Measured on two datasets, it lifted the untrained slices but not the fine-tuned ones.

With ``shape`` (``--shape``) only phase 1 runs, at that shape; with ``teacher`` too, the shape
learns the labels and distils the given teacher's outputs: the paper's last step (a chosen
sub-network fine-tuned on the task) after a plan has picked the shape.

Shapes, batches and dropout-free forward passes derive from (seed, step) only, so a run that is
interrupted (Ctrl-C finishes the step and checkpoints it) resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..fidelity import task_metrics
from ..io import atomic_dir, atomic_write_bytes
from ..runtime import model_tokenizer, text_feeds
from ..shape import Shape
from ..supernet.checkpoint import load_supernet, write_supernet
from ..supernet.config import TaskHead
from ..supernet.model import SuperBert
from ..taskdata import TaskData, targets
from ..supernet.rewire import importance_order
from .sandwich import (_BatchOrder, _checkpoint, _distributed, _duration, _resume, _scaled_mse,
                       _StopRequest, _weights_digest, sandwich_shapes, seeded_init,
                       training_device)
from .config import TASK_RESUME_KEYS as RESUME_KEYS
from .config import TaskConfig

PROGRESS_SECONDS = 15.0
ORDER_TEXTS = 256  # training texts the importance order is measured on


@dataclass
class Encoded:
    inputs: dict[str, torch.Tensor]  # the family's graph inputs, (N, seq_len) each
    y: torch.Tensor  # class indices (long) or scores (float)


def encode(data: TaskData, model: SuperBert, head: TaskHead, seq_len: int,
           what: str = "training") -> Encoded:
    """Token ids of every text (pair), padded to ``seq_len``, and the targets. A label the
    head does not know (one only in validation) is one TrainingError line."""
    c = model.config
    if not 2 <= seq_len <= c.max_tokens:
        raise TrainingError(f"--seq-len must be 2..{c.max_tokens} (the model's positions), "
                            f"got {seq_len}")
    tok = model_tokenizer(c, model.tokenizer_files, seq_len, fixed=True)
    if tok is None:
        raise TrainingError("the super network has no tokenizer.json, which task training "
                            "needs to read text")
    feeds = text_feeds(c, tok, data.texts, data.pairs)
    y = torch.tensor(targets(data, head.labels, f"{what} data"),
                     dtype=torch.float32 if head.problem == "regression" else torch.long)
    return Encoded({k: torch.from_numpy(v) for k, v in feeds.items()}, y)


def with_task_head(model: SuperBert, head: TaskHead, seed: int) -> SuperBert:
    """``model`` with a new task head (small random weights), everything else kept."""
    grown = SuperBert(replace(model.config, task_head=head))
    grown.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        out = grown.classifier.out
        out.weight.copy_(seeded_init(out.weight.shape, seed))
        out.bias.zero_()
    grown.provenance = model.provenance
    return grown


def _batch(data: Encoded, idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in data.inputs.items()}


def _logits(model: SuperBert, batch: dict[str, torch.Tensor], shape: Shape | None
            ) -> torch.Tensor:
    return _outputs(model, batch, shape, False)[0]


def _outputs(model: SuperBert, batch: dict[str, torch.Tensor], shape: Shape | None,
             layers: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The task logits and, when ``layers``, every layer's output (after its output
    bottleneck, in the model's width D whatever the shape)."""
    out = model(**batch, shape=shape, layer_outputs=layers)
    logits = model.task_logits(out.last_hidden_state, batch["attention_mask"]).float()
    return logits, out.layer_outputs or ()


def _label_loss(logits: torch.Tensor, y: torch.Tensor, head: TaskHead) -> torch.Tensor:
    if head.problem == "regression":
        return F.mse_loss(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


def _distill_loss(student: torch.Tensor, teacher: torch.Tensor, head: TaskHead,
                  temperature: float) -> torch.Tensor:
    if head.problem == "regression":
        return F.mse_loss(student, teacher)
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def _layer_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                ) -> torch.Tensor:
    """DynaBERT's hidden-state distillation: every layer's output against the teacher's,
    each as a mean squared error relative to the teacher's variance, averaged over layers."""
    return sum(_scaled_mse(h, t) for h, t in zip(student, teacher)) / len(student)


def lr_factor(config: TaskConfig, step: int) -> float:
    """The learning rate at ``step`` over ``config.lr``: a linear warmup over the first 5% of
    all steps, then a linear decay to 0 at the end; from the sandwich phase on it is scaled by
    ``sandwich_lr / lr`` (phase 2 at its own peak, on the same decay)."""
    total = config.full_steps + config.steps
    warm = max(1, total // 20)
    factor = min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))
    if config.sandwich_lr is not None and step >= config.full_steps:
        factor *= config.sandwich_lr / config.lr
    return factor


@torch.no_grad()
def evaluate(model: SuperBert, data: Encoded, head: TaskHead, shapes: dict[str, Shape | None],
             device: torch.device, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """The task's metric per named shape: accuracy (and macro F1) for a classifier, Pearson and
    Spearman for a regression, on ``data``."""
    model.eval()
    out = {}
    for name, shape in shapes.items():
        preds = []
        for start in range(0, len(data.y), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data.y)))
            preds.append(_logits(model, _batch(data, idx, device), shape).cpu())
        out[name] = task_metrics(torch.cat(preds).numpy(), data.y.numpy(),
                                 head.problem == "regression")
    return out


def _task_model(source: str | Path, train: TaskData, columns: tuple[str, str, str],
                seed: int) -> tuple[SuperBert, TaskHead]:
    """The super network at ``source`` with the head ``train``'s labels call for (a new one,
    ``seed``-initialised, or the one it has if it is that head) and the head."""
    base = load_supernet(source)
    regression = isinstance(train.labels[0], float)
    labels = () if regression else tuple(sorted(set(train.labels)))
    head = TaskHead("regression" if regression else "single_label_classification", labels,
                    columns[0], columns[1], columns[2])
    if base.config.task_head is None:
        return with_task_head(base, head, seed), head
    if base.config.task_head != head:
        raise TrainingError(f"super network {source} already has another task head "
                            f"({base.config.task_head.problem}, labels "
                            f"{list(base.config.task_head.labels)[:5]}); start from one "
                            "without a task head")
    return base, head


def _backward(wrapped: nn.Module, teacher: SuperBert | None, batch: dict[str, torch.Tensor],
              y: torch.Tensor, step: int, config: TaskConfig, head: TaskHead,
              model: SuperBert, only: Shape | None, world: int) -> list[float]:
    """One step's forward and backward passes (gradients add up over its shapes, DDP reduces
    once): in the full phase the labels (and with ``--shape --teacher`` the teacher too) at
    the full shape or ``only``; in the sandwich phase the largest shape on the labels and
    the teacher, the smallest and ``random_shapes`` drawn shapes on the teacher (on the
    labels without one), the shapes super-training draws at that step (``sandwich_shapes``).
    Each pass's loss, in order."""
    # the teacher's logits and (with layer_loss) layer outputs, once per step
    layers = bool(config.layer_loss) and teacher is not None
    target, target_layers = None, ()
    if teacher is not None and (step >= config.full_steps or only is not None):
        with torch.no_grad():
            target, target_layers = _outputs(teacher, batch, None, layers)

    def distilled(logits: torch.Tensor, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
        loss = _distill_loss(logits, target, head, config.temperature)
        if layers:
            loss = loss + config.layer_loss * _layer_loss(hidden, target_layers)
        return loss

    if step < config.full_steps:
        logits, hidden = wrapped(batch, only, layers)
        loss = _label_loss(logits, y, head)
        if target is not None:  # --shape --teacher: the labels and the teacher
            loss = loss + distilled(logits, hidden)
        loss.backward()
        return [float(loss.detach())]
    losses = []
    shapes = sandwich_shapes(model, step, config.random_shapes, config.seed)
    for k, shape in enumerate(shapes):
        last = k == len(shapes) - 1
        sync = contextlib.nullcontext() if last or world == 1 else wrapped.no_sync()
        with sync:
            logits, hidden = wrapped(batch, shape, layers)
            loss = (distilled(logits, hidden) if target is not None
                    else _label_loss(logits, y, head))
            if k == 0 and target is not None:
                loss = loss + _label_loss(logits, y, head)
            loss.backward()  # the shapes' gradients add up; DDP reduces once
        losses.append(float(loss.detach()))
    return losses


def train_task(source: str | Path, train: TaskData, config: TaskConfig, out: str | Path,
               validation: TaskData | None = None, columns: tuple[str, str, str] = ("text",
               "", "label"), progress: Callable[[str], None] | None = None,
               stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune the super network at ``source`` on ``train`` (two phases, module docstring);
    resumes from ``out/checkpoint``. ``columns``: (text, pair, label) column names, recorded in
    the head so that ``export --eval`` reads files alike. ``stop_after``: checkpoint after that
    many steps of the whole schedule and return (time-limited jobs)."""
    out = Path(out)
    device = training_device(config.device_settings())
    rank, world = _distributed(device)
    note = (progress or (lambda message: None)) if rank == 0 else (lambda message: None)
    model, head = _task_model(source, train, columns, config.seed)
    data = encode(train, model, head, config.seq_len)
    val = encode(validation, model, head, config.seq_len, "validation") if validation else None
    total = config.full_steps + config.steps
    space = model.config.space
    only = Shape(config.shape, space) if config.shape is not None else None  # --shape
    checkpoint = out / "checkpoint"
    start, history, state = 0, [], None
    if (checkpoint / "train.json").is_file():
        state = _resume(checkpoint, model, config, RESUME_KEYS)
        model, start, history = state["model"], state["step"], state["history"]
        note(f"resuming {checkpoint} at step {start}")
    teacher = None
    if config.teacher is not None:  # --shape --teacher: one shape distilling a given teacher
        teacher = _given_teacher(Path(config.teacher), model, device)
    elif config.full_steps and start > config.full_steps:  # written at step full_steps + 1
        teacher = load_supernet(out / "teacher").eval().requires_grad_(False).to(device)
    if state is None and only is None and config.order != "none":
        if model.source.get("importance_order"):
            note(f"the super network's features are in importance order already "
                 f"({model.source['importance_order']}): kept")
        else:  # what a slice keeps: the features that matter on this task's texts
            model = importance_order(model, {k: v[:ORDER_TEXTS] for k, v in data.inputs.items()},
                                     config.order, progress=note)
    model.to(device).train()
    wrapped: nn.Module = _Forward(model)
    if world > 1:  # every shape's forward through DDP, gradients reduced once per step
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    order = _BatchOrder(len(data.y), config.seed)
    plan = (f"{config.full_steps} full shape, then {config.steps} sandwich steps of "
            f"{2 + config.random_shapes} shapes" if only is None else
            f"shape {only} alone")
    note(f"task {head.problem} ({len(head.labels) or 'a score'}"
         f"{' labels' if head.labels else ''}), "
         f"{len(data.y)} training texts: steps {start + 1}..{total} ({plan}) on {world} "
         f"process(es), {device.type}")
    started = last_note = time.perf_counter()
    phase_start, phase_t = start, started  # the rate is each phase's own
    # what a sandwich step costs in full-shape steps, for the ETA while the full phase runs
    # (corrected once the sandwich starts): the largest 1, the smallest 0.3, a random shape
    # 0.6, the teacher's forward pass 0.3 (measured, MiniLM at 32 x 64 on 2 cores)
    per_sandwich = 1.6 + 0.6 * config.random_shapes
    with _StopRequest(world == 1, note) as stop:
        for step in range(start, total):
            if step == config.full_steps and step > start:
                phase_start, phase_t = step, time.perf_counter()
            if step == config.full_steps and teacher is None and config.full_steps \
                    and only is None:
                teacher = _write_teacher(model, out / "teacher", device, rank)
                note(f"full shape fine-tuned; teacher written to {out / 'teacher'}")
            batch_idx = order.indices(step, rank, world, config.batch_size)
            batch = _batch(data, batch_idx, device)
            y = data.y[batch_idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            losses = _backward(wrapped, teacher, batch, y, step, config, head, model, only,
                               world)
            if not all(math.isfinite(v) for v in losses):
                raise TrainingError(f"step {step + 1}: the loss is not finite; the last "
                                    f"checkpoint stays; lower --lr (now {config.lr:g})")
            optimizer.step()
            scheduler.step()
            done = step + 1
            now = time.perf_counter()
            history.append({"step": done, "loss": losses})
            if done == start + 1 or done % max(1, total // 20) == 0 or done == total or \
                    now - last_note >= PROGRESS_SECONDS:
                last_note = now
                rate = (done - phase_start) / (now - phase_t)
                full_left = max(0, config.full_steps - done)
                # the rate is the full phase's until a sandwich step has been timed
                left = (full_left + (total - done - full_left) * per_sandwich) / rate \
                    if step < config.full_steps else (total - done) / rate
                note(f"step {done}/{total} ({'full' if step < config.full_steps else 'sandwich'})"
                     f"  loss {sum(losses) / len(losses):.4f}  {rate:.2f} steps/s  "
                     f"ETA {_duration(left)}")
            stopping = stop.requested or (stop_after is not None and stop_after <= done)
            if (stopping or done % config.checkpoint_every == 0) and done < total:
                _checkpoint(checkpoint, model, optimizer, scheduler, config, done, history, rank)
                if world > 1:
                    dist.barrier()  # rank 0's checkpoint is complete before anyone goes on
                if stopping:
                    note(f"checkpoint of step {done} written: run the same command to continue")
                    if stop.requested:
                        raise KeyboardInterrupt
                    return {"steps": total, "stopped_at": done, "history": history}
    if teacher is None and config.full_steps and only is None:
        teacher = _write_teacher(model, out / "teacher", device, rank)
    digests = [_weights_digest(model)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    if rank != 0:
        dist.barrier()  # rank 0 evaluates and writes
        return {"steps": total, "rank": rank}
    shapes = ({"largest": space.largest, "smallest": space.smallest} if only is None
              else {"shape": only})
    report = {}
    if val is not None:
        report = evaluate(model, val, head, shapes, device)
        if teacher is not None:
            report["teacher"] = evaluate(teacher, val, head, {"full": None}, device)["full"]
    model.cpu()
    with atomic_dir(out / "supernet", force=True) as tmp:
        write_supernet(model, tmp)
    summary = {"steps": total, "head": asdict(head), "config": asdict(config),
               "train_texts": len(data.y), "validation_texts": 0 if val is None else len(val.y),
               "validation": report, "seconds": round(time.perf_counter() - started, 3),
               "world_size": world, "ranks_identical": len(set(digests)) == 1,
               "weights_sha256": digests[0], "history": history}
    atomic_write_bytes(out / "train.json", (json.dumps(summary, indent=2) + "\n").encode())
    note(f"wrote {out / 'supernet'}")
    if world > 1:
        dist.barrier()
    return summary


def _given_teacher(path: Path, model: SuperBert, device: torch.device) -> SuperBert:
    """``--teacher``: a task network of the same task and design space, frozen."""
    teacher = load_supernet(path)
    if teacher.config.task_head != model.config.task_head:
        theirs = teacher.config.task_head
        raise TrainingError(
            f"--teacher {path} is not a network of this task: its head is "
            f"{'none' if theirs is None else theirs.problem + ' ' + str(list(theirs.labels))}, "
            f"the data's {model.config.task_head.problem} {list(model.config.task_head.labels)} "
            "(give train task's teacher/ of the same data and columns)")
    if teacher.config.space != model.config.space:
        raise TrainingError(f"--teacher {path} has another design space than --supernet "
                            f"({teacher.config.space.num_layers} layers of up to "
                            f"{teacher.config.space.hidden_size} vs "
                            f"{model.config.space.num_layers} of up to "
                            f"{model.config.space.hidden_size}); give a teacher of this space")
    return teacher.eval().requires_grad_(False).to(device)


def _write_teacher(model: SuperBert, folder: Path, device: torch.device, rank: int
                   ) -> SuperBert:
    """A frozen copy of the full-shape fine-tuned model (every rank holds the same one);
    rank 0 writes it."""
    teacher = copy.deepcopy(model).cpu()
    if rank == 0:
        with atomic_dir(folder, force=True) as tmp:
            write_supernet(teacher, tmp)
    return teacher.eval().requires_grad_(False).to(device)


class _Forward(nn.Module):
    """One shape's task outputs, as a module call (what DistributedDataParallel wraps)."""

    def __init__(self, model: SuperBert):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], shape: Shape | None, layers: bool
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return _outputs(self.model, batch, shape, layers)
