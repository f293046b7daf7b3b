"""Cigar-shaped sub-networks for a parameter count (the paper's heuristic, section 3.4).

The paper publishes no algorithm, only hand-crafted cigar shapes (61M, 70M, 91M) and the
procedure: take a reference cigar near 60-65M, scale every width linearly to the target
parameter count, round the early-middle layers (2-5 of 12) *down* and the others *up* to the
design space's widths. Here the reference is their 61M shape as fractions of D, read off at
each layer's relative depth so any layer count works. Every scale gives one rounded shape;
the distinct ones (the *family*) are found exactly from the scales where some layer changes
width, and the answer for a target is the family member with the most parameters not above
it. Rounding is monotone in the scale, so more parameters never narrow a layer.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

from .errors import ShapeError
from .shape import DesignSpace, Shape

# The paper's 61M cigar (BERT-base, D = 768): first layer moderate, layers 2-4 narrow,
# the middle moderate, the last layers widest.
REFERENCE_CIGAR = (360, 240, 240, 240, 360, 360, 360, 360, 480, 480, 540, 540)
REFERENCE_D = 768
# Layers 2-5 of 12 are rounded down: relative depths in (0, 4/11].
EARLY_MIDDLE = 4 / 11
_TOL = 1e-9


def _depth(i: int, n: int) -> float:
    return i / (n - 1) if n > 1 else 0.0


def reference_profile(num_layers: int) -> list[float]:
    """The reference cigar's widths as fractions of D, at each of ``num_layers`` depths."""
    n_ref = len(REFERENCE_CIGAR)
    return [REFERENCE_CIGAR[round(_depth(i, num_layers) * (n_ref - 1))] / REFERENCE_D
            for i in range(num_layers)]


def _round(value: float, widths: tuple[int, ...], down: bool) -> int:
    # A relative tolerance far above float error (1e-16) and far below the gap between two
    # distinct breakpoints (widths and fractions are ratios of integers <= D: >= ~1e-6), so
    # layers reaching their widths at the same scale (scale 1 is the reference itself)
    # switch together and no sliver of mixed shapes exists.
    if down:
        below = [w for w in widths if w <= value * (1 + _TOL)]
        return below[-1] if below else widths[0]
    above = [w for w in widths if w >= value * (1 - _TOL)]
    return above[0] if above else widths[-1]


def scaled_cigar(scale: float, space: DesignSpace) -> Shape:
    """The reference cigar with every width times ``scale``, rounded the paper's way."""
    D, n = space.hidden_size, space.num_layers
    widths = []
    for i, frac in enumerate(reference_profile(n)):
        early_middle = 0 < _depth(i, n) <= EARLY_MIDDLE + 1e-9
        widths.append(_round(scale * frac * D, space.widths, down=early_middle))
    return Shape(tuple(widths), space)


def cigar_shape(target_params: int, space: DesignSpace) -> Shape:
    """The cigar shape with the most parameters not above ``target_params`` (fine family)."""
    family = cigar_family(space)
    if target_params < family[0].params():
        raise ShapeError(f"no cigar shape has at most {target_params:,} parameters; the "
                         f"smallest ({family[0]}) has {family[0].params():,}")
    if target_params > 1.1 * family[-1].params():  # e.g. a BERT-base count on MiniLM's space
        raise ShapeError(f"{target_params:,} parameters is far above this design space's "
                         f"largest shape ({family[-1]}, {family[-1].params():,}); allowed: "
                         f"{family[0].params():,} .. {family[-1].params():,} (up to 10% more "
                         "gives the largest)")
    return max((s for s in family if s.params() <= target_params), key=lambda s: s.params())


@functools.lru_cache(maxsize=32)
def cigar_family(space: DesignSpace) -> tuple[Shape, ...]:
    """The fine cigar family, by increasing parameter count: the paper's scaled cigars
    (:func:`scaled_family`) with the shapes between two of them, each widening one layer by
    one allowed width, deepest layer first (the last layers are the widest in the pattern).

    Consecutive scaled cigars are up to ~15% apart in parameters (26 shapes over 33-116M in
    the BERT-base space); one layer's step is at most ~3% of the smallest network, so every
    target in the range gets a shape within 5% below it. Each member is elementwise at least
    as wide as the one before, so the answer is monotone in the target.
    """
    return fine_chain(scaled_family(space), space)


def fine_chain(coarse: Sequence[Shape], space: DesignSpace) -> tuple[Shape, ...]:
    """``coarse`` (each shape elementwise at least as wide as the one before) with the shapes
    between two of them: one layer one allowed width wider at each step, deepest layer first."""
    chain = [coarse[0]]
    for nxt in coarse[1:]:
        widths = list(chain[-1].widths)
        while tuple(widths) != nxt.widths:
            i = max(j for j, (a, b) in enumerate(zip(widths, nxt.widths)) if a < b)
            widths[i] = space.widths[space.widths.index(widths[i]) + 1]
            chain.append(Shape(tuple(widths), space))
    return tuple(chain)


@functools.lru_cache(maxsize=32)
def scaled_family(space: DesignSpace) -> tuple[Shape, ...]:
    """Every distinct scaled cigar shape (the paper's procedure), by increasing parameters.

    A layer's rounded width changes only where ``scale * fraction * D`` crosses an allowed
    width, so evaluating just below and above each such scale finds every shape.
    """
    D = space.hidden_size
    critical = {w / (f * D) for f in set(reference_profile(space.num_layers))
                for w in space.widths}
    seen: dict[tuple[int, ...], Shape] = {}
    for c in sorted(critical | {0.0}):
        for scale in (c * (1 - 100 * _TOL), c, c * (1 + 100 * _TOL)):
            s = scaled_cigar(scale, space)
            seen.setdefault(s.widths, s)
    return tuple(sorted(seen.values(), key=lambda s: s.params()))


_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*$")


MAX_COUNT = 1e13  # parameters: far above any model this toolkit can hold in memory


def parse_count(text: str) -> int:
    """'60M', '60m', '1.2B', '500K', '60000000' -> an integer parameter count."""
    m = _COUNT.match(str(text)) if len(str(text)) <= 32 else None
    if not m:
        raise ShapeError(f"cannot read parameter count {str(text)[:40]!r}: expected a number "
                         "with an optional K, M or B suffix, like 60M")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    number = float(m.group(1)) * scale
    if not 0 < number <= MAX_COUNT:
        raise ShapeError(f"parameter count must be in 1..{MAX_COUNT:.0e}, got {str(text)[:40]!r}")
    value = round(number)
    return value
