"""Exceptions raised by the library.

The library never prints or exits: it raises one of these, and the CLI turns it into a single
line on stderr and a non-zero exit. Every message names what was wrong and what is allowed.
"""


from typing import Collection


class ShaperError(Exception):
    """Root of every error shaper-deploy raises on purpose."""


def check_choice(name: str, value: str, allowed: Collection[str],
                 error: type[ShaperError] = ShaperError) -> None:
    """One line naming the setting, its value and what is allowed (as ``error``), unless the
    value is allowed."""
    if value not in allowed:
        raise error(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


class ShapeError(ShaperError, ValueError):
    """A shape or design space is malformed or does not fit its design space."""


class CheckpointError(ShaperError):
    """A checkpoint is missing, unreadable, or does not match the architecture it claims."""


class OutputError(ShaperError):
    """The output location cannot be written, or already holds something."""


class DeviceError(ShaperError):
    """The requested execution device (ONNX Runtime provider) cannot run here."""


class ExportError(ShaperError):
    """A sub-network could not be exported, optimized or quantized as asked."""


class ValidationError(ExportError):
    """The exported model disagrees with PyTorch; ``mismatches`` lists every disagreement."""

    def __init__(self, mismatches: list[str], atol: float):
        self.mismatches = list(mismatches)
        super().__init__(f"ONNX Runtime disagrees with PyTorch beyond atol {atol:g} in "
                         f"{len(mismatches)} output(s): {'; '.join(mismatches)}")


class ProfileError(ShaperError):
    """A profile cannot be created, resumed, read or used as asked."""


class PlannerError(ShaperError):
    """No sub-network can be planned or verified for the budget as asked."""


class ServingError(ShaperError):
    """A bundle cannot be loaded or run as asked."""


class TrainingError(ShaperError):
    """Training cannot start or continue as asked (data, checkpoint, settings)."""


class DataError(ShaperError):
    """Labelled task data that cannot be used (format, columns, labels, encoding)."""
