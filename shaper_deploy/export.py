"""Exporting a sub-network to a validated, optimized ONNX bundle.

The path: slice the shape out of the super network, fuse its bottlenecks, trace it with
torch's TorchScript exporter (``dynamo=False``), let ONNX Runtime's transformer optimizer fuse
attention, LayerNorm and GELU, then check the graph and compare ONNX Runtime against PyTorch on
input sizes the trace never saw. Measured with torch 2.13: that exporter plus
``optimize_model(model_type="bert", num_heads=0, hidden_size=0)`` fuses Attention in every
layer, head sizes 10..64 alike, while the dynamo exporter's graph gets no Attention fused.

A bundle is a folder, written atomically::

    model.onnx             fp32, fused and optimized
    model_quantized.onnx   with --int8: dynamic int8 weights (optimum's file name); the
                           matrices int8 loses the task on kept fp32 if all-int8 misses
                           its gate (quantize.fallback_ladder)
    config.json            the family's config (BertConfig, RobertaConfig, DistilBertConfig...)
                           for transformers / optimum (the shape under "shaper")
    tokenizer files        copied from the super network
    shaper.json            shape, parameters, versions, fusion counts, validation, checksums
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .bundle import HEAD_TASKS, TASKS, BundleManifest, task_outputs
from .errors import ExportError, ValidationError, check_choice
from .fidelity import CALIBRATION_TEXTS, cosine_rows
from .fusion import FusedBert, drop_identities, fuse_bottlenecks
from .io import atomic_dir, check_output_dir, sha256_file
from .quantize import int8_record, quantize_int8, quantize_with_fallback
from .runtime import cpu_model_and_flags, int8_format, make_session, model_tokenizer, text_feeds
from .shape import Shape, flops, param_breakdown
from .slicing import slice_subnet
from .supernet.checkpoint import load_supernet
from .supernet.model import SuperBert

MODEL_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
OPSETS = range(14, 21)
@dataclass(frozen=True)
class ExportOptions:
    # feature-extraction: last_hidden_state (+ pooler_output); fill-mask: logits (B, S, vocab);
    # text-classification: logits (B, labels), a task super network's (train task)
    task: str = "feature-extraction"
    opset: int = 17  # ONNX opset; 17 is the first with LayerNormalization
    # ONNX Runtime's transformer optimizer; Attention must fuse in every layer
    optimize: bool = True
    int8: bool = False  # also write a dynamically quantized int8 model
    # the int8 format (runtime.int8_formats; a profile's when a plan makes it), None: the
    # default of this CPU's ISA (runtime.int8_format)
    int8_format: dict | None = None
    int8_min_cosine: float = 0.95  # fail the export if int8's mean token cosine to fp32 is lower
    # text-classification: fail if int8 keeps fp32's label on fewer of the texts than this;
    # None: no agreement gate (the planner with --eval judges int8 by accuracy, as every
    # candidate; the agreement is recorded all the same)
    int8_min_agreement: float | None = 0.95
    # when int8 misses its gate, keep the nodes it loses the task on in fp32, rung by rung
    # (quantize.fallback_ladder), and write the fewest rungs that pass; the planner turns it
    # off (it plans the graphs its profile timed: all int8)
    int8_fallback: bool = True
    # the texts (and, for a pair classifier, second texts) int8 is judged on; () for the
    # built-in calibration sentences (the planner passes the user's --eval or --calibration)
    judge_texts: tuple[str, ...] = ()
    judge_pairs: tuple[str, ...] = ()
    atol: float = 1e-4  # fp32 ONNX Runtime vs PyTorch tolerance on every output

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS, ExportError)
        if self.opset not in OPSETS:
            raise ExportError(f"opset {self.opset} is not supported; allowed: "
                              f"{OPSETS.start}..{OPSETS.stop - 1}")
        if not self.atol > 0:
            raise ExportError(f"atol must be positive, got {self.atol}")
        if not 0 < self.int8_min_cosine <= 1:
            raise ExportError(f"int8 minimum cosine must be in (0, 1], got {self.int8_min_cosine}")
        if self.int8_min_agreement is not None and not 0 < self.int8_min_agreement <= 1:
            raise ExportError(f"int8 minimum label agreement must be in (0, 1], got "
                              f"{self.int8_min_agreement}")


def output_names(model: FusedBert | SuperBert, task: str) -> list[str]:
    return task_outputs(task, model.config.pooler)


class _Graph(nn.Module):
    """What is traced: the family's int64 (batch, sequence) inputs in, the task's outputs out."""

    def __init__(self, fused: FusedBert, task: str):
        super().__init__()
        self.fused, self.task = fused, task
        self.config = fused.config
        self.inputs: tuple[str, ...] = fused.config.family.inputs

    def forward(self, *args):
        named = dict(zip(self.inputs, args))
        if self.task == "fill-mask":
            return (self.fused.mlm_logits(**named),)
        if self.task == "text-classification":
            return (self.fused.task_logits(**named),)
        return tuple(t for t in self.fused(**named) if t is not None)

    def torch_args(self, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(feeds[n]) for n in self.inputs]


def _export_onnx(graph: _Graph, path: Path, names: list[str], opset: int) -> None:
    args = tuple(graph.torch_args(graph.config.dummy_inputs(batch=2, seq_len=16)))
    axes = {n: {0: "batch", 1: "sequence"} for n in (*graph.inputs, *names)}
    if "pooler_output" in axes:
        axes["pooler_output"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            torch.onnx.export(graph, args, str(path), input_names=list(graph.inputs),
                              output_names=names, dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _optimize(src: Path, dst: Path, num_layers: int) -> dict[str, int]:
    """ONNX Runtime's BERT fusions; post-condition: one fused Attention per layer.

    The attention mask stays a 2-D (batch, sequence) mask. The optimizer's default turns it
    into one count per row, which Attention reads as "padding starts here": measured, a
    left-padded row or a masked token inside a row then differed from PyTorch by 1.2e-3.
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    # opt_level 0: only the portable graph fusions are saved; each device's session applies
    # its own hardware-specific optimizations when it loads the model.
    model = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0,
                           opt_level=0, use_gpu=False, optimization_options=options)
    model.save_model_to_file(str(dst))
    counts = op_counts(dst)
    if counts.get("Attention", 0) != num_layers:
        raise ExportError(f"ONNX Runtime fused Attention in {counts.get('Attention', 0)} of "
                          f"{num_layers} layers, so the graph would run unfused attention; "
                          "pass --no-optimize to export it unoptimized")
    return counts


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected {path.name}: "
                          f"{str(exc).splitlines()[0]}") from None


def validation_cases(max_positions: int) -> list[tuple[int, int, str]]:
    """(batch, seq_len, padding): none equals the traced (2, 16); three are padded, one with
    left padding and a hole."""
    return [(1, min(7, max_positions), "none"), (3, min(23, max_positions), "right"),
            (4, min(61, max_positions), "right"), (4, min(19, max_positions), "mixed")]


def _validate(path: Path, graph: _Graph, names: list[str], atol: float
              ) -> list[dict[str, Any]]:
    """ONNX Runtime against PyTorch on every case and output; all mismatches in one error.

    The reference is the same PyTorch module run in float64, so the check measures the
    exported model's own error. PyTorch's fp32 result is no truth: on an untrained slice of
    the MiniLM it was 9.0e-5 from float64 while ONNX Runtime was 2.1e-5. The fp32 difference
    is recorded too.
    """
    session = make_session(path, "cpu")
    graph64 = copy.deepcopy(graph).double()
    report, mismatches = [], []
    for i, (batch, seq, padding) in enumerate(validation_cases(graph.config.max_tokens)):
        feeds = graph.config.dummy_inputs(batch, seq, seed=100 + i, padding=padding)
        args = graph.torch_args(feeds)
        with torch.no_grad():
            exact, fp32 = graph64(*args), graph(*args)
        got = session.run(names, feeds)
        diffs, diffs32 = {}, {}
        for name, ref, ref32, out in zip(names, exact, fp32, got):
            ref = ref.numpy()
            if ref.shape != out.shape:
                mismatches.append(f"{name} at batch {batch} seq {seq}: shape {list(out.shape)}, "
                                  f"PyTorch {list(ref.shape)}")
                continue
            diffs[name] = float(np.abs(ref - out).max())
            diffs32[name] = float(np.abs(ref32.numpy() - out).max())
            if not diffs[name] <= atol:  # also catches NaN
                mismatches.append(f"{name} at batch {batch} seq {seq}: max |diff| "
                                  f"{diffs[name]:.2e}")
        report.append({"batch": batch, "seq_len": seq, "padding": padding,
                       "max_abs_diff": diffs, "max_abs_diff_vs_torch_fp32": diffs32})
    if mismatches:
        raise ValidationError(mismatches, atol)
    return report


def _judge_feeds(graph: _Graph, tokenizer_files: dict[str, bytes], options: ExportOptions
                 ) -> tuple[list[dict[str, np.ndarray]], str]:
    """Inputs for int8-vs-fp32: the options' texts, else the sample sentences, when a
    tokenizer is there (64 texts per run); a pair classifier pairs each with the next."""
    c = graph.config
    tok = model_tokenizer(c, tokenizer_files, c.max_tokens)
    if tok is not None:
        texts = list(options.judge_texts or CALIBRATION_TEXTS)
        pairs = list(options.judge_pairs) or None
        if pairs is None and c.task_head is not None and c.task_head.pair_column:
            pairs = texts[1:] + texts[:1]
        what = (f"{len(texts)} given texts" if options.judge_texts else
                f"{len(texts)} English sentences")
        return [text_feeds(c, tok, texts[i:i + 64], pairs and pairs[i:i + 64])
                for i in range(0, len(texts), 64)], what
    return ([graph.config.dummy_inputs(b, s, seed=200 + i, padding=p)
             for i, (b, s, p) in enumerate(validation_cases(c.max_tokens))],
            "random token ids (no tokenizer)")


def _int8_judge(fp32: Path, feeds_list: list[dict[str, np.ndarray]], first_output: str,
                task: str) -> Callable[[Path], dict[str, float]]:
    """A judge of int8 graphs against ``fp32`` on real tokens (fp32's outputs computed once):
    max |diff|, mean and min token cosine, sentence cosine; for a classifier the share of
    texts whose label int8 keeps, and the logits' max |diff|."""
    a_s = make_session(fp32, "cpu")
    refs = [a_s.run([first_output], f)[0] for f in feeds_list]

    def judge(int8: Path) -> dict[str, float]:
        b_s = make_session(int8, "cpu")
        outs = [b_s.run([first_output], f)[0] for f in feeds_list]
        if task == "text-classification":
            a, b = np.concatenate(refs), np.concatenate(outs)
            same = (a.argmax(1) == b.argmax(1)) if a.shape[1] > 1 else \
                np.abs(a - b)[:, 0] <= 0.05 * (np.abs(a).max() + 1e-6)
            return {"max_abs_diff": float(np.abs(a - b).max()),
                    "label_agreement": float(same.mean()), "texts": int(len(a))}
        diffs, tokens, sentences = [], [], []
        for feeds, a, b in zip(feeds_list, refs, outs):
            real = feeds["attention_mask"].astype(bool)
            diffs.append(float(np.abs(a - b)[real].max()))
            tokens.append(cosine_rows(a[real], b[real]))
            w = feeds["attention_mask"][..., None].astype(a.dtype)
            sentences.append(cosine_rows((a * w).sum(1), (b * w).sum(1)))  # mean pooling
        tok = np.concatenate(tokens)
        return {"max_abs_diff": max(diffs), "mean_token_cosine": float(tok.mean()),
                "min_token_cosine": float(tok.min()),
                "mean_sentence_cosine": float(np.concatenate(sentences).mean())}

    return judge


def hf_config(model: SuperBert, shape: Shape, task: str) -> dict[str, Any]:
    """The family's Hugging Face config dict (AutoConfig loads it as the family's own);
    per-layer widths are ours, under "shaper"."""
    c = model.config
    out = c.family.hf_config(c.model_type, c.architecture(), task)
    if task == "text-classification" and c.task_head is not None:
        head = c.task_head
        names = list(head.labels) or ["score"]
        out.update(problem_type=head.problem, num_labels=len(names),
                   id2label={str(i): n for i, n in enumerate(names)},
                   label2id={n: i for i, n in enumerate(names)})
    return {**out, "shaper": {"shape": list(shape.widths), "task": task}}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"shaper_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def export_checkpoint(supernet_path: str | Path, out: str | Path, shape_text: str | None = None,
                      params: int | None = None, options: ExportOptions = ExportOptions(),
                      force: bool = False, widths: Sequence[int] | None = None,
                      progress: Callable[[str], None] | None = None) -> BundleManifest:
    """:func:`export_bundle` of a super network on disk at a shape given as text or chosen by
    parameter count (the cigar heuristic); a bad shape or count fails before the model
    loads."""
    from .errors import CheckpointError
    from .heuristics import cigar_shape
    from .shape import parse_shape
    from .supernet import read_checkpoint_header

    if (shape_text is None) == (params is None):
        raise ExportError("give exactly one of a shape and a parameter count")
    try:
        space = read_checkpoint_header(supernet_path, widths)["config"].space
    except CheckpointError:
        space = None  # not our format (a SuperShaper repo checkpoint): loading says
    if space is not None:
        parse_shape(shape_text, space) if shape_text is not None else cigar_shape(params, space)
    (progress or (lambda message: None))(f"loading {supernet_path}")
    model = load_supernet(supernet_path, widths)
    shape = (parse_shape(shape_text, model.config.space) if shape_text is not None
             else cigar_shape(params, model.config.space))
    return export_bundle(model, shape, out, options, force=force, progress=progress)


def _quantize(model_path: Path, int8_path: Path, graph: _Graph, names: list[str],
              tokenizer_files: dict[str, bytes], num_layers: int, options: ExportOptions,
              note: Callable[[str], None]) -> dict[str, Any]:
    """Quantize ``model_path`` to int8 in the format chosen for the target ISA and judge it
    against fp32 (label agreement for a classifier, token cosine otherwise), keeping the
    matrices it loses the task on in fp32 when ``options.int8_fallback`` allows; the
    manifest's quantization record. An int8 model that misses its gate is an ExportError."""
    fmt = options.int8_format or int8_format(cpu_model_and_flags()[1])
    feeds, judged_on = _judge_feeds(graph, tokenizer_files, options)
    compare = _int8_judge(model_path, feeds, names[0], options.task)

    def judge(path: Path) -> dict[str, float]:
        _check(path)
        return compare(path)

    def passes(acc: dict[str, float]) -> bool:
        if "label_agreement" in acc:
            return (options.int8_min_agreement is None
                    or acc["label_agreement"] >= options.int8_min_agreement)
        return acc["mean_token_cosine"] >= options.int8_min_cosine

    if options.int8_fallback:
        accuracy, fallback = quantize_with_fallback(model_path, int8_path, fmt, judge, passes,
                                                    num_layers, note)
    else:
        quantize_int8(model_path, int8_path, fmt)
        accuracy, fallback = judge(int8_path), None
    quantization = {**int8_record(fmt), "format_reason": fmt["why"], "judged_on": judged_on,
                    "min_cosine_required": options.int8_min_cosine, **accuracy,
                    "fp32_nodes": (fallback or {}).get("fp32_nodes", []), "fallback": fallback}
    tried = ""
    if fallback:
        last = fallback["tried"][-1]
        tried = (f"; with {last['rung']} kept fp32 it was "
                 + (f"{last['label_agreement']:.1%}" if "label_agreement" in last
                    else f"{last['mean_token_cosine']:.6f}"))
    if "label_agreement" in accuracy:
        quantization["min_agreement_required"] = options.int8_min_agreement
        if not passes(accuracy):
            raise ExportError(
                f"int8 model changes the label of {1 - accuracy['label_agreement']:.1%} of the "
                f"{accuracy['texts']} texts ({judged_on}){tried}; required agreement with fp32 "
                f"{options.int8_min_agreement:.1%}; lower --int8-min-agreement to accept it, or "
                "export fp32 only")
    elif not passes(accuracy):
        raise ExportError(
            f"int8 model is too far from fp32: mean token cosine "
            f"{accuracy['mean_token_cosine']:.6f} < required {options.int8_min_cosine} (max "
            f"|diff| {accuracy['max_abs_diff']:.3g}){tried}; lower --int8-min-cosine to accept "
            "it, or export fp32 only")
    return quantization


def _file_entry(path: Path, precision: str | None = None) -> dict[str, Any]:
    """A bundle file's manifest entry: its checksum and size (and a model's precision)."""
    return {**({"precision": precision} if precision else {}), "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def _manifest(supernet: SuperBert, shape: Shape, fused: FusedBert, options: ExportOptions,
              graph: _Graph, names: list[str], model_path: Path, *, fold: bool,
              dropped: list[str], fusion: dict[str, int] | None, validation: list[Any],
              quantization: dict[str, Any] | None, files: dict[str, Any],
              timings: dict[str, float]) -> BundleManifest:
    """The bundle's description (``shaper.json``) from what the export stages produced."""
    breakdown = param_breakdown(shape, fused=True)
    return BundleManifest(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        shape=list(shape.widths), config=supernet.config.to_dict(), task=options.task,
        inputs=list(graph.inputs), outputs=names,
        params={"fused": sum(breakdown.values()),
                "unfused": sum(param_breakdown(shape, fused=False).values()),
                "breakdown_fused": breakdown,
                "deployed_module": sum(p.numel() for p in fused.parameters()),
                "convention": "fused/unfused: the paper's (embeddings, layers, bottlenecks, "
                              "MLM transform); deployed_module: every tensor of the exported "
                              "network (adds pooler, MLM bias; fill-mask and "
                              "text-classification fold the last bottleneck into the head)"},
        flops_seq128=flops(shape, seq_len=128),
        opset=options.opset, optimized=options.optimize,
        fused_last_bottleneck_into_head=fold,
        dropped_identities=dropped,
        operators=op_counts(model_path), fusion=fusion,
        validation={"atol": options.atol, "reference": "PyTorch float64",
                    "cases": validation, "passed": True},
        quantization=quantization,
        default_model=INT8_FILE if options.int8 else MODEL_FILE,
        files=files,
        source={"supernet": supernet.source, **supernet.checkpoint},
        versions=_versions(), timings_s=timings,
    )


def export_bundle(supernet: SuperBert, shape: Shape, out: str | Path,
                  options: ExportOptions = ExportOptions(), force: bool = False,
                  progress: Callable[[str], None] | None = None) -> BundleManifest:
    """Export ``shape`` of ``supernet`` as a validated bundle in ``out``; its manifest."""
    note = progress or (lambda message: None)
    out = Path(out)
    check_output_dir(out, force)
    space = supernet.config.space
    if shape.space != space:
        raise ExportError(f"shape {shape} belongs to another design space than the super network")
    has = {"fill-mask": space.mlm_head,
           "text-classification": supernet.config.task_head is not None}
    if not has.get(options.task, True):
        allowed = ", ".join(t for t in TASKS if has.get(t, True))
        raise ExportError(f"task {options.task} needs {HEAD_TASKS[options.task]}, which this "
                          f"super network lacks; allowed tasks: {allowed}")
    timings: dict[str, float] = {}

    def stage(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 3)

    t = time.perf_counter()
    note(f"slicing and fusing shape {shape}")
    fold = options.task in HEAD_TASKS  # only logits leave the graph: fold d_L -> D into the head
    fused = fuse_bottlenecks(slice_subnet(supernet, shape), fold_last=fold)
    dropped = drop_identities(fused)
    graph = _Graph(fused, options.task).eval()
    names = output_names(fused, options.task)
    stage("slice_fuse", t)

    with atomic_dir(out, force=force) as tmp, tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "raw.onnx"
        model_path = tmp / MODEL_FILE
        t = time.perf_counter()
        note(f"exporting to ONNX (opset {options.opset})")
        _export_onnx(graph, raw, names, options.opset)
        stage("export", t)
        fusion = None
        t = time.perf_counter()
        if options.optimize:
            note("optimizing with ONNX Runtime's transformer optimizer")
            fusion = _optimize(raw, model_path, space.num_layers)
        else:
            raw.replace(model_path)
        stage("optimize", t)
        t = time.perf_counter()
        note("checking the graph and validating ONNX Runtime against PyTorch")
        _check(model_path)
        validation = _validate(model_path, graph, names, options.atol)
        stage("validate", t)
        files = {MODEL_FILE: _file_entry(model_path, "fp32")}
        quantization = None
        if options.int8:
            t = time.perf_counter()
            note("quantizing to int8 and measuring it against fp32")
            quantization = _quantize(model_path, tmp / INT8_FILE, graph, names,
                                     supernet.tokenizer_files, len(shape.widths), options, note)
            files[INT8_FILE] = _file_entry(tmp / INT8_FILE, "int8")
            stage("quantize", t)
        (tmp / "config.json").write_text(
            json.dumps(hf_config(supernet, shape, options.task), indent=2) + "\n")
        for name, data in supernet.tokenizer_files.items():
            (tmp / name).write_bytes(data)
        for name in ("config.json", *supernet.tokenizer_files):  # verified before parsing
            files[name] = _file_entry(tmp / name)
        manifest = _manifest(supernet, shape, fused, options, graph, names, model_path,
                             fold=fold, dropped=dropped, fusion=fusion, validation=validation,
                             quantization=quantization, files=files, timings=timings)
        manifest.write(tmp)
    note(f"wrote {out}")
    return manifest

