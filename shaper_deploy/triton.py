"""Bundles as a Triton Inference Server (and KServe) model repository (no torch).

Each bundle becomes one model entry::

    REPO/NAME/config.pbtxt     Triton's ModelConfig: onnxruntime backend, int64 inputs of
                               variable length, outputs, max_batch_size, dynamic batching,
                               instance group, intra/inter-op threads
    REPO/NAME/1/model.onnx     the bundle's default model (the one its plan chose),
                               its sha256 checked against shaper.json while it is copied
    REPO/NAME/shaper.json      the bundle's manifest, and its tokenizer files beside it, so a
    REPO/NAME/tokenizer.json   client tokenizes exactly as the bundle does

``config.pbtxt`` is built as a ``ModelConfig`` message with the protobuf module that
``tritonclient`` ships and printed in protobuf text format, so it is what Triton parses.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import ServingError, check_choice
from .io import atomic_dir, check_not_input, check_output_dir
from .bundle import BundleManifest, output_shape
from .families import TOKENIZER_FILES
from .runtime import MAX_THREADS, precision_problem

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # what Triton accepts as a model name
KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}
LABELS_FILE = "labels.txt"  # a classifier's class names, one per line, in output order
# The repository runs on another machine, so its limits are the server's, not this one's:
# Triton's batch sizes are int32 and a batch past 4096 sequences is no latency setting; no
# server runs more sessions or threads per model than these.
MAX_BATCH, MAX_INSTANCES = 4096, 256


def model_names(bundles: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    """One model name per bundle (default: its folder's name), distinct, and what Triton and
    KServe accept: letters, digits, '_', '-' and '.'."""
    names = list(names) if names else [Path(b).resolve().name for b in bundles]
    if len(names) != len(bundles):
        raise ServingError(f"give one --name per bundle ({len(bundles)} bundles, "
                           f"{len(names)} names)")
    if len(set(names)) != len(names):
        raise ServingError(f"model names must differ; got {', '.join(names)}")
    for name in names:
        if not NAME.match(name):
            raise ServingError(f"{name!r} is not a model name; allowed: letters, digits, "
                               "'_', '-' and '.' (pass --name)")
    return names


def model_config_pb2():
    """Triton's ModelConfig protobuf module from tritonclient, loaded from its file (the
    ``tritonclient.grpc`` package itself wants grpcio, which this does not need)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        raise ServingError("writing a Triton repository needs the tritonclient package "
                           "(pip install --no-deps tritonclient)")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class TritonOptions:
    max_batch: int = 8  # Triton's max_batch_size (dynamic batching up to it)
    instances: int = 1  # model instances (sessions) in the instance group
    device: str = "cpu"  # instance kind: cpu -> KIND_CPU, cuda -> KIND_GPU
    # onnxruntime intra-op threads (None: the plan's profile's, else ORT's)
    threads: int | None = None
    queue_delay_us: int = 100  # how long dynamic batching may hold a request

    def __post_init__(self) -> None:
        check_choice("device", self.device, KINDS, ServingError)
        for name, most in (("max_batch", MAX_BATCH), ("instances", MAX_INSTANCES),
                           ("threads", MAX_THREADS)):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                raise ServingError(f"--{name.replace('_', '-')} must be 1..{most}, got {value}")


def build_config(name: str, manifest: BundleManifest, options: TritonOptions, threads: int | None):
    """The ModelConfig message for one bundle."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=options.max_batch)
    for input_name in manifest.inputs:
        config.input.add(name=input_name, data_type=pb.TYPE_INT64, dims=[-1])
    for output in manifest.outputs:  # without the batch dimension (max_batch_size > 0)
        entry = config.output.add(name=output, data_type=pb.TYPE_FP32,
                                  dims=output_shape(output, manifest.task, manifest.config)[1:])
        if class_labels(manifest):  # Triton's classification extension names the classes
            entry.label_filename = LABELS_FILE
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    config.instance_group.add(count=options.instances,
                              kind=getattr(pb.ModelInstanceGroup, KINDS[options.device]))
    if threads is not None:
        config.parameters["intra_op_thread_count"].string_value = str(threads)
        config.parameters["inter_op_thread_count"].string_value = "1"
    return config


def class_labels(manifest: BundleManifest) -> list[str]:
    """The class names of a text-classification bundle (none for other tasks, regression)."""
    head = manifest.config.get("task_head") if manifest.task == "text-classification" else None
    return list(head["labels"]) if head else []


def _verified_copy(src: Path, dst: Path, sha256: str) -> None:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            h.update(block)
            fout.write(block)
    if h.hexdigest() != sha256:
        raise ServingError(f"{src} does not match the sha256 recorded in shaper.json (altered "
                           "or damaged); export the bundle again")


def write_repository(bundles: Sequence[str | Path], out: str | Path,
                     names: Sequence[str] | None = None,
                     options: TritonOptions = TritonOptions(), force: bool = False
                     ) -> list[dict[str, Any]]:
    """Write one model entry per bundle into the repository ``out``; what was written."""
    from google.protobuf import text_format

    out = Path(out)
    bundles = [Path(b) for b in bundles]
    names = model_names(bundles, names)
    for bundle in bundles:
        check_not_input(out, {"BUNDLE": bundle})
    entries = []
    for bundle, name in zip(bundles, names):  # check everything before writing anything
        manifest = BundleManifest.read(bundle)
        model_file = manifest.default_model
        problem = precision_problem(options.device,
                                    manifest.files[model_file].get("precision") or "fp32")
        if problem:
            raise ServingError(f"bundle {bundle} cannot be served on {options.device}: "
                               f"{problem}; use another --device or an fp32 bundle")
        extras = [n for n in TOKENIZER_FILES if n in manifest.files]  # hashed while copied
        check_output_dir(out / name, force)
        threads = options.threads
        if threads is None and manifest.plan:
            threads = plan_threads(manifest.plan)
        entries.append((bundle, name, manifest, model_file, extras, threads))
    written = []
    # All entries are written to temporary folders and put in place together: a bundle that
    # fails half-way leaves none of them.
    with contextlib.ExitStack() as stack:
        for bundle, name, manifest, model_file, extras, threads in entries:
            config = build_config(name, manifest, options, threads)
            tmp = stack.enter_context(atomic_dir(out / name, force=force))
            (tmp / "1").mkdir()
            _verified_copy(bundle / model_file, tmp / "1" / "model.onnx",
                           manifest.files[model_file]["sha256"])
            (tmp / "config.pbtxt").write_text(text_format.MessageToString(config))
            shutil.copyfile(bundle / "shaper.json", tmp / "shaper.json")
            for extra in extras:
                _verified_copy(bundle / extra, tmp / extra, manifest.files[extra]["sha256"])
            if class_labels(manifest):
                (tmp / LABELS_FILE).write_text("".join(f"{n}\n" for n in class_labels(manifest)))
            written.append({"name": name, "bundle": str(bundle), "path": str(out / name),
                            "model": model_file, "max_batch_size": options.max_batch,
                            "instances": options.instances, "device": options.device,
                            "intra_op_threads": threads, "outputs": manifest.outputs,
                            "plan": manifest.promise})
    return written


def plan_threads(plan: dict[str, Any]) -> int | None:
    """The threads the plan's latency was measured with, when its profile is at hand."""
    from .errors import ShaperError
    from .profiling.folder import read_header

    try:
        return read_header(plan.get("profile", "")).protocol.threads
    except ShaperError:
        return None
