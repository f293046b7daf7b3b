"""What a latency profile was measured on, and whether another machine is the same kind."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

from ..errors import DeviceError, check_choice
from ..runtime import cpu_id, cpu_model_and_flags, usable_cores

# Fields that must agree for a profile to describe this machine.
DEVICE_KEYS = ("device", "provider", "machine", "cpu_model", "cpu_id", "logical_cores",
               "usable_cores", "isa", "onnxruntime", "gpu")
# Recorded since 2026-12-03: a fingerprint written before lacks it and is matched without it.
LATER_KEYS = ("cpu_id",)
# Recorded since 2026-12-05; a fingerprint written before is read as having had every core
# (every shipped profile was measured by a process free to use all of the VM's cores).
READ_AS = {"usable_cores": "logical_cores"}


def _gpu() -> dict[str, str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, driver = out[0].partition(",")
    return {"name": name.strip(), "driver": driver.strip()}


def device_fingerprint(device: str) -> dict[str, Any]:
    """The machine as far as latency is concerned (the workload settings live in the protocol)."""
    import onnxruntime as ort

    from ..runtime import DEVICES

    check_choice("device", device, DEVICES, DeviceError)
    model, isa = cpu_model_and_flags()
    gpu = _gpu() if device == "cuda" else None
    if device == "cuda" and gpu is None:
        raise DeviceError("device 'cuda' was requested but no NVIDIA GPU is visible "
                          "(nvidia-smi found none)")
    return {"device": device, "provider": DEVICES[device], "machine": platform.machine(),
            "cpu_model": model, "cpu_id": cpu_id(), "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(), "isa": isa,
            "onnxruntime": ort.__version__, "gpu": gpu, "os": platform.system()}


def cpu_name(fp: dict[str, Any]) -> str:
    """A fingerprint's CPU as people read it: the model name, and its id where recorded."""
    return fp["cpu_model"] + (f" ({fp['cpu_id']})" if fp.get("cpu_id") else "")


def field_value(fp: dict[str, Any], key: str) -> Any:
    """One device field of a fingerprint, a field it predates read as ``READ_AS`` says."""
    return fp.get(key, fp.get(READ_AS[key])) if key in READ_AS else fp.get(key)


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The device fields on which two fingerprints disagree (a ``LATER_KEYS`` field that one
    of them predates is not compared)."""
    return [k for k in DEVICE_KEYS
            if field_value(a, k) != field_value(b, k)
            and (k not in LATER_KEYS or (k in a and k in b))]


def unchecked_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The ``LATER_KEYS`` fields a match could not compare, one of the fingerprints predating
    them: a profile without ``cpu_id`` matches every CPU of its model name and ISA (an AMD EPYC
    Zen 2 and a Zen 3, both AVX2 only, are one 'AMD EPYC' to it)."""
    return [k for k in LATER_KEYS if (k in a) != (k in b)]


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``differing_fields`` as readable phrases."""
    return [_difference(k, field_value(a, k), field_value(b, k))
            for k in differing_fields(a, b)]


def _difference(key: str, a: Any, b: Any) -> str:
    """'cpu_model: 'AMD EPYC' vs 'Intel(R) Xeon(R) Processor''; for a list of flags, the
    second as what it adds to or drops from the first: 'isa: avx avx2 fma vs the same +
    amx_int8 amx_tile ...'."""
    if not (isinstance(a, list) and isinstance(b, list)):
        return f"{key}: {a!r} vs {b!r}"
    added, dropped = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    return (f"{key}: {' '.join(a) or 'none'} vs the same"
            + (f" + {' '.join(added)}" if added else "")
            + (f" - {' '.join(dropped)}" if dropped else ""))
