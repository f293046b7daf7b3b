"""Artifacts checked by type before use: one function between a file's bytes and its dataclass.

Every artifact is a dataclass whose annotations are its schema (nested records are
``TypedDict``s beside it); :func:`validated` checks parsed JSON against it with pydantic in
strict JSON mode, so a string where a number belongs, a missing field, a number out of range
or JSON nested past pydantic's recursion limit becomes one :class:`ShaperError` line naming the
field, never a ``KeyError`` or ``TypeError`` later. pydantic is the validation library KServe's
server is built on, and it checks the standard-library dataclasses the readers already
construct, so each artifact keeps one reader and one writer. Torch-free.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, TypeVar

from annotated_types import Ge, Le
from pydantic import StringConstraints, TypeAdapter, ValidationError

from .errors import ShaperError

T = TypeVar("T")

# Bounds every reader shares: what no artifact of ours ever holds.
Count = Annotated[int, Ge(0), Le(10 ** 15)]  # bytes, parameters, FLOPs, steps
Positive = Annotated[int, Ge(1), Le(1 << 20)]  # sizes: widths, layers, tokens, batch
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MAX_JSON_BYTES = 256 << 20  # no manifest of ours is larger; a bigger one is refused unread


@functools.lru_cache(maxsize=None)
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def validated(kind: type[T] | Any, data: Any, where: str, error: type[ShaperError],
              hint: str) -> T:
    """``data`` (parsed JSON) as ``kind``, or one ``error`` line: where, which field, why."""
    try:
        raw = json.dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise error(f"{where} is malformed ({type(exc).__name__}); {hint}") from None
    return validated_json(kind, raw, where, error, hint)


def validated_json(kind: type[T] | Any, raw: str | bytes, where: str,
                   error: type[ShaperError], hint: str) -> T:
    """JSON text as ``kind`` (parsed by pydantic, depth-limited), or one ``error`` line."""
    try:
        return _adapter(kind).validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "top level"
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f", got {got!r:.60}"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise error(f"{where} is malformed: {field}: {first['msg']}{shown}{more}; "
                    f"{hint}") from None
    except ShaperError as exc:  # a record's own checks (__post_init__) refused it
        raise error(f"{where} is malformed: {exc}; {hint}") from None


def parse_json(raw: bytes, where: str, error: type[ShaperError]) -> Any:
    """Bytes of a JSON file as Python values, or one ``error`` line (never a RecursionError)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 JSON (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not readable JSON: {exc}") from None
    except RecursionError:
        raise error(f"{where} is not readable JSON: nested too deeply") from None
