"""A profile folder, the artifact: ``profile.json`` (a :class:`ProfileHeader`: device
fingerprint, protocol, graph, design space, sampling, status, summary, file checksums) and
``measurements.jsonl``, one line per (shape, precision, batch, seq_len) timed; each with one
reader and one writer here, every file checked by type (and a finished one by its checksum)
before it is used. Making a profile is ``profile.py``; what its measurements say,
``analysis.py``. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

from typing_extensions import NotRequired, TypedDict

from .. import __version__
from ..errors import ProfileError
from ..io import atomic_write_bytes, read_manifest, sha256_file
from ..schema import Count, Positive, Sha256, validated, validated_json
from ..shape import Shape, reject_unknown_fields
from ..supernet.config import SuperConfig
from .protocol import Protocol, Workload

PROFILE_FORMAT = "shaper-deploy/profile"
PROFILE_VERSION = 2
HEADER = "profile.json"
MEASUREMENTS = "measurements.jsonl"
META_FILE = "predictor.json"  # the fitted latency model (predictor.LatencyModel)
REMAKE = "shaperctl profile --device {device} --supernet SUPERNET --out NEW_FOLDER"


def shape_key(widths: Iterable[int]) -> str:
    return ",".join(str(w) for w in widths)


def shape_from_key(key: str, space) -> Shape:
    return Shape(tuple(int(v) for v in key.split(",")), space)


def workload_key(workload: Workload) -> str:
    return f"{workload[0]}x{workload[1]}"


class Fingerprint(TypedDict):
    """The machine a profile describes (written by fingerprint.device_fingerprint)."""
    device: Literal["cpu", "cuda"]
    provider: str
    machine: str
    cpu_model: str
    cpu_id: NotRequired[Optional[str]]  # vendor, family, model (runtime.cpu_id); since 2026-12-03
    logical_cores: Optional[Positive]
    usable_cores: NotRequired[Positive]  # runtime.usable_cores; since 2026-12-05
    isa: list[str]
    onnxruntime: str
    gpu: Optional[dict[str, str]]
    os: NotRequired[str]


class NoiseFloor(TypedDict, total=False):
    median_abs_rel_diff: float  # what trust is judged on


class PrecisionSummary(TypedDict):
    shapes: Count
    latency_ms_range: list[float]
    noise_floor: Optional[NoiseFloor]
    reference_spread: Any
    # points whose lowest floor came from a slow group, after the looks (analysis.slow_floors)
    slow_floors: NotRequired[dict[str, Any]]


class Summary(TypedDict):
    measurements: Count
    precisions: dict[str, PrecisionSummary]
    last_run: NotRequired[dict[str, float]]
    calm_looks: NotRequired[Count]  # measurements made by calm looks (Protocol.calm_looks)
    calm_wait: NotRequired["CalmWaitSummary"]  # how the calm looks waited (Protocol.calm_wait)
    retakes: NotRequired[list["RetakeSummary"]]  # profiles retake's looks (Protocol.retakes)


class RetakeSummary(TypedDict):
    look: Count  # its sweep index in measurements.jsonl
    seconds: float  # the look's time, waits included
    waited_s: float
    measurements: Count


class CalmWait(TypedDict):
    """What a calm look saw before timing one size (``wait_for_calm``)."""
    # the reference's last check over its fastest group at this size (with a sentinel, the
    # larger of that and the sentinel's over its fastest)
    ratio: float
    waited_s: float
    checks: Positive


class CalmWaitSummary(TypedDict):
    sizes: Count  # the calm looks' group x size measurements
    checked: Count  # ... timed after checking the machine (the rest: the time had run short)
    calm: Count  # ... of which the machine was calm (ratio within CALM_BAND) when timed
    seconds: float  # waited in all


class Sampling(TypedDict):
    samples: Positive
    seed: int
    method: str


class TransferSource(TypedDict):
    """A profile a transfer started from, frozen into the new profile (transfer.py)."""
    profile: str  # where it was read from
    fingerprint: Fingerprint
    created: str
    predictor_sha256: Sha256
    held_out_mape: dict[str, float]  # the source's own trust, per precision
    coef: dict[str, dict[str, list[float]]]  # precision -> "BxS" -> coefficients
    # precision -> its tail (predictor.TailModel), frozen for a source measured on this very
    # machine (no fingerprint differences) with the threads parked (protocol.park_ms > 0):
    # the transfer's tail is raised to it where larger
    tail: NotRequired[dict[str, dict[str, Any]]]
    # with its tail: the 90th percentile of its groups' slowdowns (``machine_speed``), the
    # slowdowns that tail prices
    speed_p90: NotRequired[float]


class Transfer(TypedDict):
    method: str
    ridges: list[float]  # ridges towards the prior compared per precision (0: no prior)
    sources: list[TransferSource]
    differences: list[list[str]]  # per source: how its machine differs from this one
    # what a default direct profile (--minutes 12) would take here, at most (since session 46)
    direct_default_minutes: NotRequired[Optional[float]]
    # before session 46, read only: what 40 shapes x 4 rounds would take here
    direct_minutes: NotRequired[Optional[float]]


class Measurement(TypedDict):
    """One line of measurements.jsonl: a shape timed at one size, beside the reference."""
    shape: list[Positive]
    shape_key: str
    precision: Literal["fp32", "int8"]
    batch: Positive
    seq_len: Positive
    phase: Literal["main", "repeat"]
    retry: bool
    group: Count
    params: Count
    reference_ms: float
    # the first precision's reference at the smallest grid size, timed in the same rounds
    # (Protocol.sentinel)
    sentinel_ms: NotRequired[float]
    median_ms: float
    p90_ms: float
    cv: float
    round_medians: list[float]
    dropped: NotRequired[list[str]]  # since the identity variants (older profiles: none)
    run_ms: NotRequired[dict[str, float]]  # since the percentile promise
    runs: NotRequired[Count]
    times: NotRequired[list[float]]
    sweep: NotRequired[Count]  # which sweep of the protocol measured it (older profiles: 0)
    calm_wait: NotRequired[CalmWait]  # timed after waiting for a calm moment (a calm look)


@dataclass
class ProfileHeader:
    """``profile.json``: everything about a profile but its measurements and predictor."""

    fingerprint: Fingerprint  # the device (see fingerprint.py)
    protocol: Protocol  # workloads and timing
    config: SuperConfig  # the super network's architecture (its design space)
    graph: dict[str, Any]  # the graph timed: task, optimization, activation, opset, ORT
    sampling: Sampling  # how many shapes, seed, method
    templates: dict[str, list[Positive]]  # the paper's template shapes, always measured
    reference_shape: list[Positive]  # timed in every group and size: a record of drift
    source: dict[str, Any] = field(default_factory=dict)  # the super network profiled
    transfer: Optional[Transfer] = None  # set when fitted from other devices' profiles
    status: Literal["measuring", "measured"] = "measuring"
    probe: dict[str, Any] | None = None  # first seconds: what int8 buys, cost, chosen size
    summary: Summary | None = None  # counts, time, noise floor per precision
    files: dict[str, Sha256] = field(default_factory=dict)  # sha256 of each finished file
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
        where = f"profile {where}/{HEADER}"
        reject_unknown_fields(cls, data, where, ProfileError)
        if "config" in data:
            data["config"] = SuperConfig.upgraded(data["config"])
        if isinstance(data.get("protocol"), dict):
            data["protocol"] = Protocol.upgraded(data["protocol"])
        for name, kind, whole in (("protocol", Protocol, False), ("config", SuperConfig, True)):
            if isinstance(data.get(name), dict):  # nested records: no unknown fields either
                reject_unknown_fields(kind, data[name], f"{where} {name}", ProfileError, whole)
        return validated(cls, data, where, ProfileError,
                         f"remake it with: {REMAKE.format(device='cpu')}")


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
            "fp32, int8 and a range of input sizes: remake it with: "
            f"{REMAKE.format(device=device)}")
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


def read_measurements(path: str | Path, repair: bool = False,
                      note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every measurement line, each checked by type. Damaged lines at the end (what a crash
    or an append after one leaves) are dropped with a note, and cut with ``repair`` so
    appending continues cleanly; a damaged line before good ones is an error."""
    file = Path(path) / MEASUREMENTS
    if not file.is_file():
        return []
    data = file.read_bytes()
    records, good, bad = [], 0, None
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        try:
            if not line.endswith(b"\n"):
                raise ProfileError("torn line")
            record = validated_json(Measurement, line, f"line {number}", ProfileError, "")
        except ProfileError as exc:
            bad = bad or (number, str(exc).rstrip("; "))
            continue
        if bad is not None:
            raise ProfileError(f"{file} line {bad[0]} is damaged ({bad[1]}) but later lines "
                               "are not: the file was edited; remake the profile")
        records.append(dict(record))
        good += len(line)
    if bad is not None:
        (note or (lambda m: None))(f"dropped {len(data.splitlines()) - bad[0] + 1} damaged "
                                   f"line(s) at the end of {file} (an interrupted write); "
                                   "they are measured again")
        if repair:
            with open(file, "r+b") as f:
                f.truncate(good)
    return records


def append_measurements(path: Path, records: list[dict[str, Any]]) -> None:
    """Append measurement lines and flush them to disk: what a crash leaves is whole lines and
    at most one torn last line, which ``read_measurements`` drops."""
    with open(path / MEASUREMENTS, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
