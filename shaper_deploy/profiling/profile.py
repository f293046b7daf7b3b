"""Profile folders: measuring a device's latency over a design space, resumably.

A profile folder holds ``profile.json`` (device fingerprint, protocol, design space,
sampling, status, summary) and ``measurements.jsonl``: one line per measured shape, appended
and flushed as soon as the shape's group is timed. Running the same command again resumes;
a folder made on another device, with another protocol or design space, is refused.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import ProfileError
from ..io import atomic_write_bytes, read_manifest
from ..runtime import make_session
from ..shape import Shape, flops
from ..supernet.config import SuperConfig
from ..templates import sample_shapes, template_shapes
from .fingerprint import device_fingerprint, fingerprint_differences
from .graph import RandomWeightFile, build_deploy_graph
from .protocol import Protocol, inputs_for, measure_interleaved

PROFILE_FORMAT = "shaper-deploy/profile"
PROFILE_VERSION = 1
HEADER = "profile.json"
MEASUREMENTS = "measurements.jsonl"
REFERENCE = "__reference__"


def shape_key(widths) -> str:
    return ",".join(str(w) for w in widths)


def read_header(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return read_manifest(path / HEADER, PROFILE_FORMAT, PROFILE_VERSION, "profile",
                         ProfileError, f"{path} is not a profile (no {HEADER}); make one with: "
                                       "shaperctl profile --device cpu --out DIR")


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


def _write_header(path: Path, header: dict[str, Any]) -> None:
    atomic_write_bytes(path / HEADER, (json.dumps(header, indent=2) + "\n").encode())


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path / MEASUREMENTS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _plan(device: str, protocol: Protocol, config: SuperConfig, samples: int, seed: int,
          source: dict[str, Any]) -> dict[str, Any]:
    space = config.space
    templates = template_shapes(space)
    return {"format": PROFILE_FORMAT, "format_version": PROFILE_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "shaper_deploy_version": __version__, "fingerprint": device_fingerprint(device),
            "protocol": protocol.to_dict(), "config": config.to_dict(),
            "sampling": {"samples": samples, "seed": seed,
                         "method": "stratified by parameter count, plus smallest, largest "
                                   "and the paper's template families"},
            "templates": {k: list(v.widths) for k, v in templates.items()},
            "reference_shape": list(templates["rectangle"].widths),
            "source": source, "status": "measuring"}


def _check_resumable(existing: dict[str, Any], plan: dict[str, Any], path: Path) -> None:
    differences = fingerprint_differences(existing["fingerprint"], plan["fingerprint"])
    for key in ("protocol", "config", "sampling"):
        if existing.get(key) != plan[key]:
            old, new = existing.get(key) or {}, plan[key]
            differences += [f"{key} {k}: {old.get(k)!r} vs {new.get(k)!r}"
                            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differences:
        raise ProfileError(f"profile {path} was made on another device or with other settings "
                           f"and cannot be mixed with this run ({'; '.join(differences[:4])}); "
                           "choose a new --out folder")


class GraphSessions:
    """ONNX Runtime sessions of random-weight deployment graphs, built without tracing."""

    def __init__(self, work: Path, config: SuperConfig, protocol: Protocol, device: str):
        self.work, self.config, self.protocol, self.device = work, config, protocol, device
        self.random = RandomWeightFile.for_space(work, config)
        self.feeds = inputs_for(protocol, config.space.vocab_size)

    def build(self, shape: Shape) -> Callable[[], Any]:
        """A warmed-up runner of ``shape``'s graph on the protocol's inputs."""
        import onnx

        path = self.work / "graph.onnx"
        onnx.save(build_deploy_graph(self.config, shape, random=self.random), str(path))
        if self.protocol.precision == "int8":
            from ..export import quantize_int8

            quantized = self.work / "graph_int8.onnx"
            quantize_int8(path, quantized, per_channel=True)
            path = quantized
        session = make_session(path, self.device, threads=self.protocol.threads)
        feeds = self.feeds
        session.run(None, feeds)
        return lambda: session.run(None, feeds)


def run_profile(out: str | Path, device: str = "cpu", protocol: Protocol = Protocol(),
                config: SuperConfig = SuperConfig(), samples: int = 300, seed: int = 0,
                source: dict[str, Any] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure (or finish measuring) a profile in ``out``; its updated header."""
    note = progress or (lambda message: None)
    out = Path(out)
    if samples < 2:
        raise ProfileError(f"--samples must be at least 2, got {samples}")
    plan = _plan(device, protocol, config, samples, seed, source or {})
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
        _write_header(out, header)
    space = config.space
    planned = sample_shapes(space, samples, seed,
                            include={k: Shape(tuple(v), space)
                                     for k, v in header["templates"].items()})
    records = read_measurements(out, repair=True)
    done = {r["shape_key"] for r in records if r["phase"] == "main"}
    todo = [(s, "main") for s in planned if shape_key(s.widths) not in done]
    repeated = any(r["phase"] == "repeat" for r in records)
    if done:
        note(f"resuming {out}: {len(done)} of {len(planned)} shapes already measured")
    group = max((r["group"] for r in records), default=-1) + 1
    started, measured_now = time.perf_counter(), 0
    reference = Shape(tuple(header["reference_shape"]), space)
    with tempfile.TemporaryDirectory(prefix="shaper-profile-") as work:
        sessions = GraphSessions(Path(work), config, protocol, device)
        ref_runner = sessions.build(reference)
        retry: list[tuple[Shape, str]] = []

        def measure(batch: list[tuple[Shape, str]]) -> None:
            nonlocal group, measured_now
            runners = {REFERENCE: ref_runner}
            for shape, _ in batch:
                runners[shape_key(shape.widths)] = sessions.build(shape)
            results = measure_interleaved(runners, protocol, seed=group)
            ref_ms = results[REFERENCE]["median_ms"]
            for shape, phase in batch:
                r = results[shape_key(shape.widths)]
                _append(out, {"shape": list(shape.widths), "shape_key": shape_key(shape.widths),
                              "phase": phase, "group": group, "params": shape.params(),
                              "flops": flops(shape, protocol.seq_len, protocol.batch),
                              "reference_ms": ref_ms, **r})
                if phase == "main" and r["cv"] > protocol.noisy_cv:
                    retry.append((shape, "retry"))
            group += 1
            measured_now += len(batch)

        while todo or retry:
            # Noisy shapes go first into the next group, so they meet other neighbours.
            queue = retry + todo
            batch, rest = queue[:protocol.group_size], queue[protocol.group_size:]
            retries_left = max(0, len(retry) - protocol.group_size)
            retry, todo = rest[:retries_left], rest[retries_left:]
            measure(batch)
            elapsed = time.perf_counter() - started
            left = len(todo) + len(retry)
            rate = measured_now / elapsed * 60
            note(f"[{len(planned) - len(todo)}/{len(planned)}] {rate:.0f} shapes/min"
                 + (f", about {left / rate:.0f} min left" if left and rate else ""))
        if not repeated and protocol.repeat_shapes:
            note(f"measuring {min(protocol.repeat_shapes, len(planned))} shapes again "
                 "for the noise floor")
            again = [(s, "repeat") for s in planned[:protocol.repeat_shapes]]
            for i in range(0, len(again), protocol.group_size):
                measure(again[i:i + protocol.group_size])
    records = read_measurements(out)
    header["status"] = "measured"
    header["summary"] = _summary(records, time.perf_counter() - started, measured_now)
    _write_header(out, header)
    return header


def _summary(records: list[dict[str, Any]], seconds: float, measured_now: int
             ) -> dict[str, Any]:
    main = [r for r in records if r["phase"] == "main"]
    summary: dict[str, Any] = {
        "shapes": len(main), "measurements": len(records),
        "retried": sum(r["phase"] == "retry" for r in records),
        "latency_ms_range": [min(r["median_ms"] for r in main), max(r["median_ms"] for r in main)]
        if main else None,
        "noise_floor": noise_floor(records)}
    if measured_now:
        summary["last_run"] = {"seconds": round(seconds, 1), "measurements": measured_now,
                               "shapes_per_minute": round(measured_now / seconds * 60, 1)}
    return summary


def normalized_latency(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per shape key: its latency with drift removed (main and retry measurements pooled).

    Every record's round medians are scaled by (median reference latency over all groups) /
    (its group's reference latency), then the shape's value is their median.
    """
    ref = statistics.median(r["reference_ms"] for r in records)
    pooled: dict[str, list[float]] = {}
    for r in records:
        if r["phase"] in ("main", "retry"):
            scale = ref / r["reference_ms"]
            pooled.setdefault(r["shape_key"], []).extend(m * scale for m in r["round_medians"])
    return {k: statistics.median(v) for k, v in pooled.items()}


def noise_floor(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How far re-measuring the same shapes at the end lands from the first measurement."""
    repeats = [r for r in records if r["phase"] == "repeat"]
    if not repeats:
        return None
    ref = statistics.median(r["reference_ms"] for r in records)
    first = {r["shape_key"]: r for r in records if r["phase"] == "main"}
    raw, norm = [], []
    for r in repeats:
        f = first.get(r["shape_key"])
        if f is None:
            continue
        raw.append(abs(r["median_ms"] / f["median_ms"] - 1))
        a = r["median_ms"] * ref / r["reference_ms"]
        b = f["median_ms"] * ref / f["reference_ms"]
        norm.append(abs(a / b - 1))
    if not raw:
        return None

    def stats(errors: list[float]) -> dict[str, float]:
        return {"median_abs_rel_diff": statistics.median(errors),
                "max_abs_rel_diff": max(errors),
                "within_3pct": sum(e <= 0.03 for e in errors) / len(errors),
                "within_5pct": sum(e <= 0.05 for e in errors) / len(errors)}
    return {"shapes": len(raw), "raw": stats(raw), "normalized": stats(norm)}
