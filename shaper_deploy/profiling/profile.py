"""Profile folders: measuring a device's latency over a design space and a workload grid.

A profile folder holds ``profile.json`` (a :class:`ProfileHeader`: device fingerprint,
protocol, graph, design space, sampling, status, summary, file checksums) and
``measurements.jsonl``: one line per (shape, precision, batch, seq_len), appended and flushed
as soon as a group of shapes is timed at one workload. Running the same command again
resumes exactly where it stopped; a folder made on another device, with another protocol,
graph or design space, is refused. Nothing here imports torch.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from ..errors import ProfileError, ShaperError
from ..io import atomic_write_bytes, read_manifest, sha256_file
from ..quantize import METHOD as INT8_METHOD, quantize_int8
from ..runtime import make_session
from ..shape import Shape, reject_unknown_fields
from ..supernet.config import SuperConfig
from ..templates import sample_shapes, template_shapes
from .fingerprint import device_fingerprint, fingerprint_differences
from .graph import GRAPH_ACTIVATIONS, OPSET, RandomWeightFile, build_deploy_graph
from .protocol import Protocol, Workload, describe_range, inputs_for, measure_interleaved

PROFILE_FORMAT = "shaper-deploy/profile"
PROFILE_VERSION = 2
HEADER = "profile.json"
MEASUREMENTS = "measurements.jsonl"
REFERENCE = "__reference__"
REMAKE = "shaperctl profile --device {device} --supernet SUPERNET --out NEW_FOLDER"


def shape_key(widths: Iterable[int]) -> str:
    return ",".join(str(w) for w in widths)


def shape_from_key(key: str, space) -> Shape:
    return Shape(tuple(int(v) for v in key.split(",")), space)


def workload_key(workload: Workload) -> str:
    return f"{workload[0]}x{workload[1]}"


def held_out_mask(params, held_out: float = 0.25):
    """A deterministic held-out mask spread evenly over the parameter range."""
    import numpy as np

    order = np.argsort(np.asarray(params), kind="stable")
    step = max(2, round(1 / held_out))
    mask = np.zeros(len(order), dtype=bool)
    mask[order[step // 2::step]] = True
    return mask


def held_out_keys(shapes: Iterable[Shape], held_out: float = 0.25) -> set[str]:
    """The shapes a profile holds out from fitting (and also measures at the check sizes):
    every 4th by parameter count, ties broken by key."""
    by_key = sorted(shapes, key=lambda s: shape_key(s.widths))
    mask = held_out_mask([s.params() for s in by_key], held_out)
    return {shape_key(s.widths) for s, t in zip(by_key, mask) if t}


def graph_record(config: SuperConfig) -> dict[str, Any]:
    """What graph a profile times: the planner refuses a profile whose graph differs from the
    one it would export."""
    import onnxruntime as ort

    return {"task": "feature-extraction", "optimized": True, "activation": config.hidden_act,
            "pooler": config.pooler, "opset": OPSET, "onnxruntime": ort.__version__,
            "int8": {**INT8_METHOD, "per_channel": True}}


@dataclass
class ProfileHeader:
    """``profile.json``: everything about a profile but its measurements and predictor."""

    fingerprint: dict[str, Any]  # the device (see fingerprint.py)
    protocol: Protocol  # workloads and timing
    config: SuperConfig  # the super network's architecture (its design space)
    graph: dict[str, Any]  # the graph timed: task, optimization, activation, opset, ORT
    sampling: dict[str, Any]  # how many shapes, seed, method
    templates: dict[str, list[int]]  # the paper's template shapes, always measured
    reference_shape: list[int]  # timed in every group and size: a record of drift
    source: dict[str, Any] = field(default_factory=dict)  # the super network profiled
    status: str = "measuring"  # measuring, then measured
    summary: dict[str, Any] | None = None  # counts, time, noise floor per precision
    files: dict[str, str] = field(default_factory=dict)  # sha256 of each finished file
    created: str = ""
    shaper_deploy_version: str = __version__

    @property
    def space(self):
        return self.config.space

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["protocol"], d["config"] = self.protocol.to_dict(), self.config.to_dict()
        return {"format": PROFILE_FORMAT, "format_version": PROFILE_VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> "ProfileHeader":
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        reject_unknown_fields(cls, data, "profile header", ProfileError)
        try:
            data["protocol"] = Protocol.from_dict(data["protocol"])
            data["config"] = SuperConfig.from_dict(data["config"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ProfileError(f"profile {where} has an invalid {HEADER} ({exc}); remake it "
                               f"with: {REMAKE.format(device='cpu')}") from None
        except ShaperError as exc:  # a config or protocol that fails its own checks
            raise ProfileError(f"profile {where} has an invalid {HEADER}: {exc}") from None


def read_header(path: str | Path) -> ProfileHeader:
    """The profile's header, its format and version checked (version 1 is refused)."""
    path = Path(path)
    data = read_manifest(path / HEADER, PROFILE_FORMAT, PROFILE_VERSION, "profile",
                         ProfileError, f"{path} is not a profile (no {HEADER}); make one with: "
                                       "shaperctl profile --device cpu --out DIR")
    if data["format_version"] < PROFILE_VERSION:
        device = (data.get("fingerprint") or {}).get("device", "cpu")
        raise ProfileError(
            f"profile {path} has format version {data['format_version']} (one fp32 setting at "
            "batch 1 x 128 tokens); this shaper-deploy plans with version 2 profiles covering "
            f"fp32, int8 and a range of input sizes: remake it with: {REMAKE.format(device=device)}")
    return ProfileHeader.from_dict(data, path)


def write_header(path: Path, header: ProfileHeader) -> None:
    atomic_write_bytes(path / HEADER, (json.dumps(header.to_dict(), indent=2) + "\n").encode())


def verify_file(profile: Path, header: ProfileHeader, name: str) -> Path:
    """The path of one of the profile's finished files, its checksum verified first."""
    file = profile / name
    expected = header.files.get(name)
    if expected is None:
        raise ProfileError(f"profile {profile} records no checksum for {name}; finish or remake "
                           f"it with: shaperctl profile ... --out {profile}")
    try:
        actual = sha256_file(file)
    except OSError as exc:
        raise ProfileError(f"cannot read {file}: {exc.strerror or exc}") from None
    if actual != expected:
        raise ProfileError(f"{file} does not match the checksum recorded in {HEADER} (altered "
                           f"or damaged); remake the profile with: shaperctl profile ... --out "
                           "NEW_FOLDER")
    return file


def read_measurements(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete measurement line; a line torn by a crash is dropped (and cut with
    ``repair``, so appending continues cleanly)."""
    file = Path(path) / MEASUREMENTS
    if not file.is_file():
        return []
    data = file.read_bytes()
    records, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            records.append(json.loads(line))
            good += len(line)
        except ValueError:
            break
    if repair and good < len(data):
        with open(file, "r+b") as f:
            f.truncate(good)
    return records


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path / MEASUREMENTS, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def new_header(device: str, protocol: Protocol, config: SuperConfig, samples: int, seed: int,
               source: dict[str, Any]) -> ProfileHeader:
    templates = template_shapes(config.space)
    return ProfileHeader(
        fingerprint=device_fingerprint(device), protocol=protocol, config=config,
        graph=graph_record(config),
        sampling={"samples": samples, "seed": seed,
                  "method": "stratified by parameter count, plus smallest, largest and the "
                            "paper's template families; every 4th by parameters held out"},
        templates={k: list(v.widths) for k, v in templates.items()},
        reference_shape=list(templates["rectangle"].widths), source=source,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _check_resumable(existing: ProfileHeader, plan: ProfileHeader, path: Path) -> None:
    differences = fingerprint_differences(existing.fingerprint, plan.fingerprint)
    for key in ("protocol", "config", "sampling", "graph"):
        old, new = existing.to_dict()[key], plan.to_dict()[key]
        differences += [f"{key} {k}: {old.get(k)!r} vs {new.get(k)!r}"
                        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differences:
        raise ProfileError(f"profile {path} was made on another device or with other settings "
                           f"and cannot be mixed with this run ({'; '.join(differences[:4])}); "
                           "choose a new --out folder")


class GraphSessions:
    """ONNX Runtime sessions of random-weight deployment graphs, built without tracing."""

    def __init__(self, work: Path, config: SuperConfig, device: str, threads: int):
        if config.hidden_act not in GRAPH_ACTIVATIONS:
            raise ProfileError(f"cannot profile activation {config.hidden_act!r}; supported: "
                               f"{', '.join(GRAPH_ACTIVATIONS)}")
        self.work, self.config, self.device, self.threads = work, config, device, threads
        self.random = RandomWeightFile(work)

    def build(self, shape: Shape, precision: str):
        """An ONNX Runtime session of ``shape``'s graph at ``precision``."""
        import onnx

        path = self.work / "graph.onnx"
        onnx.save(build_deploy_graph(self.config, shape, random=self.random), str(path))
        if precision == "int8":
            quantized = self.work / "graph_int8.onnx"
            quantize_int8(path, quantized, per_channel=True)
            path = quantized
        return make_session(path, self.device, threads=self.threads)


def runner(session, feeds):
    names = [o.name for o in session.get_outputs()][:1]
    session.run(names, feeds)
    return lambda: session.run(names, feeds)


def run_profile(out: str | Path, device: str = "cpu", protocol: Protocol = Protocol(),
                config: SuperConfig = SuperConfig(), samples: int = 32, seed: int = 0,
                source: dict[str, Any] | None = None,
                progress: Callable[[str], None] | None = None) -> ProfileHeader:
    """Measure (or finish measuring) a profile in ``out``; its updated header."""
    note = progress or (lambda message: None)
    out = Path(out)
    if samples < 12:
        raise ProfileError(f"--samples must be at least 12 (a predictor is fitted on 3 of "
                           f"every 4 shapes and checked on the rest), got {samples}")
    space = config.space
    too_long = [s for s in protocol.seq_lens if s > space.max_positions]
    if too_long:
        raise ProfileError(f"--seq-len {too_long[0]} exceeds the model's {space.max_positions} "
                           "positions")
    if device == "cuda" and "int8" in protocol.precisions:
        raise ProfileError("int8 cannot be profiled on cuda: ONNX Runtime's dynamic int8 "
                           "quantization runs on the CPU provider only; pass --precision fp32")
    plan = new_header(device, protocol, config, samples, seed, source or {})
    if (out / HEADER).exists():
        header = read_header(out)
        _check_resumable(header, plan, out)
    else:
        if out.exists() and any(out.iterdir()):
            raise ProfileError(f"{out} exists and is not a profile; choose a new --out folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileError(f"cannot create profile folder {out}: {exc.strerror}") from None
        header = plan
        write_header(out, header)
    planned = planned_shapes(header)
    held_keys = held_out_keys(planned)
    held = [shape_key(s.widths) in held_keys for s in planned]
    checks = protocol.checks
    records = read_measurements(out, repair=True)
    have = {(r["shape_key"], r["precision"], r["batch"], r["seq_len"], r["phase"])
            for r in records}

    def missing(shape: Shape, precision: str, phase: str, workloads: list[Workload]):
        k = shape_key(shape.widths)
        return [w for w in workloads if (k, precision, *w, phase) not in have]

    # Each work item: (precision, phase, shape, workloads still to measure).
    work: list[tuple[str, str, Shape, list[Workload]]] = []
    for precision in protocol.precisions:
        for shape, is_held in zip(planned, held):
            todo = missing(shape, precision, "main", protocol.grid + (checks if is_held else []))
            if todo:
                work.append((precision, "main", shape, todo))
        for shape in planned[:protocol.repeat_shapes]:
            todo = missing(shape, precision, "repeat", protocol.grid)
            if todo:
                work.append((precision, "repeat", shape, todo))
    total = sum(b * s for *_, ws in work for b, s in ws)
    if records:
        note(f"resuming {out}: {len(records)} measurements kept")
    note(f"profiling {len(planned)} shapes x {len(protocol.precisions)} precision(s) x "
         f"{len(protocol.grid)} input sizes ({describe_range(protocol.grid)}) on {device}")
    started, done_tokens, group = time.perf_counter(), 0, max(
        (r["group"] for r in records), default=-1) + 1
    reference = Shape(tuple(header.reference_shape), space)
    with tempfile.TemporaryDirectory(prefix="shaper-profile-") as tmp:
        sessions = GraphSessions(Path(tmp), config, device, protocol.threads)
        for precision in protocol.precisions:
            items = [w for w in work if w[0] == precision]
            if not items:
                continue
            ref_session = sessions.build(reference, precision)
            for start in range(0, len(items), protocol.group_size):
                batch_items = items[start:start + protocol.group_size]
                built = {id(item): sessions.build(item[2], precision) for item in batch_items}
                workloads = sorted({w for *_, ws in batch_items for w in ws},
                                   key=lambda w: w[0] * w[1])
                for w in workloads:
                    feeds = inputs_for(w, space.vocab_size)
                    members = [item for item in batch_items if w in item[3]]
                    runners = {REFERENCE: runner(ref_session, feeds)}
                    for i, item in enumerate(members):
                        runners[i] = runner(built[id(item)], feeds)
                    results = measure_interleaved(runners, protocol, seed=group)
                    lines = _records(members, results, precision, w, group)
                    # A measurement whose rounds disagree (one session slowed down for a
                    # while on a shared machine) is timed again at once; its rounds pool.
                    noisy = [i for i in range(len(members))
                             if results[i]["cv"] > protocol.noisy_cv]
                    if noisy:
                        again = measure_interleaved(
                            {REFERENCE: runners[REFERENCE], **{i: runners[i] for i in noisy}},
                            protocol, seed=group + 100_000)
                        lines += _records([members[i] for i in noisy],
                                          {REFERENCE: again[REFERENCE],
                                           **{j: again[i] for j, i in enumerate(noisy)}},
                                          precision, w, group, retry=True)
                    _append(out, lines)
                    done_tokens += w[0] * w[1] * len(members)
                    elapsed = time.perf_counter() - started
                    left = elapsed / done_tokens * (total - done_tokens)
                    note(f"[{done_tokens / total:5.1%}] {precision} group {group} at batch "
                         f"{w[0]} x {w[1]} tokens; {elapsed / 60:.1f} min so far, about "
                         f"{left / 60:.1f} min left")
                del built
                group += 1
    records = read_measurements(out)
    header.status = "measured"
    header.summary = _summary(records, protocol, time.perf_counter() - started, bool(work))
    header.files[MEASUREMENTS] = sha256_file(out / MEASUREMENTS)
    write_header(out, header)
    return header


def _records(members, results, precision: str, w: Workload, group: int,
             retry: bool = False) -> list[dict[str, Any]]:
    ref_ms = results[REFERENCE]["median_ms"]
    return [{"shape": list(item[2].widths), "shape_key": shape_key(item[2].widths),
             "precision": precision, "batch": w[0], "seq_len": w[1], "phase": item[1],
             "retry": retry, "group": group, "params": item[2].params(),
             "reference_ms": ref_ms, **results[i]} for i, item in enumerate(members)]


def planned_shapes(header: ProfileHeader) -> list[Shape]:
    space = header.space
    return sample_shapes(space, header.sampling["samples"], header.sampling["seed"],
                         include={k: Shape(tuple(v), space) for k, v in header.templates.items()})


def _summary(records: list[dict[str, Any]], protocol: Protocol, seconds: float,
             measured_now: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"measurements": len(records), "precisions": {}}
    for precision in protocol.precisions:
        mine = [r for r in records if r["precision"] == precision and r["phase"] == "main"]
        if not mine:
            continue
        summary["precisions"][precision] = {
            "shapes": len({r["shape_key"] for r in mine}),
            "latency_ms_range": [min(r["median_ms"] for r in mine),
                                 max(r["median_ms"] for r in mine)],
            "noise_floor": noise_floor(records, precision),
            "reference_spread": reference_spread(records, precision)}
    if measured_now:
        summary["last_run"] = {"seconds": round(seconds, 1)}
    return summary


def measured_latency(records: list[dict[str, Any]], phase: str = "main"
                     ) -> dict[tuple[str, int, int], dict[str, float]]:
    """Per (precision, batch, seq_len), per shape key: the median of all its round medians
    (a measurement repeated at once because its rounds disagreed pools with the first).

    Latencies are not divided by the group's reference graph. With turns of up to 20 timed
    runs, the reference's own random error outweighed the drift it removed: on the shipped
    MiniLM profile, dividing by it raised the noise floor from 1.7% to 2.4% (fp32) and 2.8%
    to 3.1% (int8) and the held-out MAPE from 3.2% to 4.0% and 3.0% to 4.9%. The reference
    stays in every group as a record of drift (``reference_spread`` in the summary).
    """
    pooled: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    for r in records:
        if r["phase"] == phase:
            pooled.setdefault((r["precision"], r["batch"], r["seq_len"]), {}).setdefault(
                r["shape_key"], []).extend(r["round_medians"])
    return {k: {s: statistics.median(v) for s, v in shapes.items()}
            for k, shapes in pooled.items()}


def reference_spread(records: list[dict[str, Any]], precision: str) -> float | None:
    """How far the reference graph's latency moved between groups: the median over input
    sizes of (max - min) / median of its per-group medians."""
    by: dict[tuple[int, int], dict[int, float]] = {}
    for r in records:
        if r["precision"] == precision:
            by.setdefault((r["batch"], r["seq_len"]), {})[r["group"]] = r["reference_ms"]
    spreads = [(max(v.values()) - min(v.values())) / statistics.median(v.values())
               for v in by.values() if len(v) > 1]
    return statistics.median(spreads) if spreads else None


def noise_floor(records: list[dict[str, Any]], precision: str) -> dict[str, Any] | None:
    """How far re-measuring the same shapes at the end lands from the first measurement, over
    every workload of one precision."""
    main, again = measured_latency(records, "main"), measured_latency(records, "repeat")
    errors = [abs(again[k][s] / main[k][s] - 1) for k in again if k[0] == precision
              for s in again[k] if s in main.get(k, {})]
    if not errors:
        return None
    return {"pairs": len(errors), "median_abs_rel_diff": statistics.median(errors),
            "p90_abs_rel_diff": sorted(errors)[int(0.9 * (len(errors) - 1))],
            "within_3pct": sum(e <= 0.03 for e in errors) / len(errors)}


def measure_model(model: str | Path, header: ProfileHeader, profile_ref_ms: float,
                  precision: str, workload: Workload, device: str) -> dict[str, Any]:
    """A model file's latency at ``workload``, timed with the profile's protocol.

    ``measured_ms`` is the model's median now, what a budget is about. The profile's reference
    graph is timed interleaved with it: ``drift`` = (its latency now) / ``profile_ref_ms``
    (its latency in the profile at this size) says how much faster or slower the machine is
    than when it was profiled.
    """
    protocol = header.protocol
    feeds = inputs_for(workload, header.space.vocab_size)
    session = make_session(model, device, threads=protocol.threads)
    with tempfile.TemporaryDirectory(prefix="shaper-measure-") as work:
        sessions = GraphSessions(Path(work), header.config, device, protocol.threads)
        reference = sessions.build(Shape(tuple(header.reference_shape), header.space),
                                   precision)
        results = measure_interleaved({"model": runner(session, feeds),
                                       "reference": runner(reference, feeds)}, protocol,
                                      seed=7)
    ref_now = results["reference"]["median_ms"]
    return {"measured_ms": results["model"]["median_ms"], "cv": results["model"]["cv"],
            "reference_ms_now": ref_now, "reference_ms_profile": profile_ref_ms,
            "drift": ref_now / profile_ref_ms, "batch": workload[0], "seq_len": workload[1],
            "precision": precision}
