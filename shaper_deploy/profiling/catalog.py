"""Which profile to use here: the profiles in a folder, each loaded and verified, and per
device and design space the one that describes this machine (``profiles list`` marks it;
``export --latency``, ``search --latency``, ``predict``, ``bench`` and ``verify`` take it
when no ``--profile`` is given)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ShaperError
from ..shape import DesignSpace
from .fingerprint import device_fingerprint
from .folder import HEADER
from .predictor import DeviceProfile


def profiles_in(root: str | Path) -> list[tuple[Path, "DeviceProfile | ShaperError"]]:
    """Every profile folder directly under ``root`` (``root/*/profile.json``), in name order:
    each loaded and verified, or the error that refused it (unfinished, damaged)."""
    found: list[tuple[Path, DeviceProfile | ShaperError]] = []
    for file in sorted(Path(root).glob(f"*/{HEADER}")):
        try:
            found.append((file.parent, DeviceProfile.load(file.parent)))
        except ShaperError as exc:
            found.append((file.parent, exc))
    return found


PROFILES_ROOT = Path("profiles")  # where profiles are looked for by default (profiles list)


def chosen_here(profiles: Sequence["DeviceProfile"], device: str = "cpu"
                ) -> dict[str, "DeviceProfile"]:
    """Per design space (``DesignSpace.to_dict()`` as text), the profile to use on this
    machine: of the reliable ``device`` profiles measured on it (no fingerprint differences),
    the one whose fingerprint names the CPU model (``cpu_id``, which older profiles predate,
    tells apart CPU models that share a name and ISA), then the newest (measured with the
    protocol of the day)."""
    def here(p: DeviceProfile) -> bool:
        try:
            return not p.foreign_fields()
        except ShaperError:  # e.g. a cuda profile on a machine without a GPU
            return False

    usable = [p for p in profiles if p.device == device and p.trust["reliable"] and here(p)]
    chosen: dict[str, DeviceProfile] = {}
    for p in sorted(usable, key=lambda p: (p.header.fingerprint.get("cpu_id") is not None,
                                           p.header.created), reverse=True):
        chosen.setdefault(str(p.space.to_dict()), p)
    return chosen


def profiles_for_here(device: str = "cpu", root: str | Path = PROFILES_ROOT
                      ) -> dict[str, "DeviceProfile"]:
    """``chosen_here`` over the readable profiles under ``root``: per design space, the one
    ``profiles list`` marks for this machine. A device this machine lacks fails first, in its
    own words."""
    device_fingerprint(device)
    readable = [p for _, p in profiles_in(root) if isinstance(p, DeviceProfile)]
    return chosen_here(readable, device)


def profile_for_here(space: DesignSpace, device: str = "cpu",
                     root: str | Path = PROFILES_ROOT) -> "DeviceProfile | None":
    """The profile ``profiles list`` marks for this machine and ``space`` under ``root``, or
    None (none there matches it, is reliable, or can be read)."""
    return profiles_for_here(device, root).get(str(space.to_dict()))
