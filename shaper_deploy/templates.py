"""Families of shapes (the paper's templates) and sampling shapes across a parameter range.

A family is a width profile over depth (t = 0 first layer .. 1 last): the paper compares a
lower triangle (widening with depth), an upper triangle, a rectangle, a diamond, an inverted
diamond, a bottle and an inverted bottle at ~64M parameters. ``fit_family`` scales a profile to
a parameter count in any design space; ``sample_shapes`` draws shapes that cover the parameter
range evenly, which uniform random widths do not (their counts pile up in the middle).
"""

from __future__ import annotations

import functools
import math
import random
from typing import Callable, Sequence

from .heuristics import cigar_family, fine_chain
from .shape import DesignSpace, Shape

Profile = Callable[[float], float]  # relative width in [0, 1] at depth t in [0, 1]

FAMILIES: dict[str, Profile] = {
    "rectangle": lambda t: 0.5,
    "lower-triangle": lambda t: t,
    "upper-triangle": lambda t: 1.0 - t,
    "diamond": lambda t: 1.0 - abs(2.0 * t - 1.0),
    "inverted-diamond": lambda t: abs(2.0 * t - 1.0),
    "bottle": lambda t: 0.0 if t < 0.5 else 1.0,
    "inverted-bottle": lambda t: 1.0 if t < 0.5 else 0.0,
}

# Where the paper's ~64M templates sit in the default space's parameter range (33.2M..116.0M).
PAPER_TEMPLATE_POSITION = (64_212_768 - 33_190_656) / (115_989_504 - 33_190_656)


def _nearest_width(space: DesignSpace, value: float) -> int:
    return min(space.widths, key=lambda w: (abs(w - value), w))


def _depths(space: DesignSpace) -> list[float]:
    n = space.num_layers
    return [i / (n - 1) if n > 1 else 0.5 for i in range(n)]


def fit_family(profile: Profile, target_params: int, space: DesignSpace) -> Shape:
    """The shape following ``profile`` whose parameter count is closest to the target.

    Widths are ``scale * (0.25 + 0.75 * profile(t))``, rounded to the nearest allowed width;
    the scale is searched on a fine grid, so the narrowest part is about a quarter of the
    widest, as in the paper's templates (120 vs 768).
    """
    rel = [0.25 + 0.75 * profile(t) for t in _depths(space)]
    best, best_gap = None, math.inf
    lo, hi = space.widths[0] * 0.5, space.widths[-1] * 4.5
    for k in range(600):
        scale = lo + (hi - lo) * k / 599
        shape = Shape(tuple(_nearest_width(space, scale * r) for r in rel), space)
        gap = abs(shape.params() - target_params)
        if gap < best_gap:
            best, best_gap = shape, gap
    return best


def template_shapes(space: DesignSpace, target_params: int | None = None) -> dict[str, Shape]:
    """Every family at the target (default: where the paper's ~64M templates sit)."""
    if target_params is None:
        lo, hi = space.smallest.params(), space.largest.params()
        target_params = round(lo + PAPER_TEMPLATE_POSITION * (hi - lo))
    return {name: fit_family(p, target_params, space) for name, p in FAMILIES.items()}


@functools.lru_cache(maxsize=64)
def template_family(name: str, space: DesignSpace) -> tuple[Shape, ...]:
    """Every shape of the named family from the smallest to the largest, by increasing
    parameters, one layer one allowed width wider at each step (as the fine cigar family).

    Widths are ``scale * (0.25 + 0.75 * profile(t))`` rounded to the nearest allowed width
    (as :func:`fit_family`), so each layer only widens as the scale grows; the distinct shapes
    are found exactly from the scales where some layer changes width."""
    rel = [0.25 + 0.75 * FAMILIES[name](t) for t in _depths(space)]
    mids = [(a + b) / 2 for a, b in zip(space.widths, space.widths[1:])]
    scales = sorted({m / r * (1 + 1e-9) for m in mids for r in rel} | {0.0})
    coarse: dict[tuple[int, ...], Shape] = {}
    for scale in scales:
        s = Shape(tuple(_nearest_width(space, scale * r) for r in rel), space)
        coarse.setdefault(s.widths, s)
    coarse.setdefault(space.largest.widths, space.largest)  # every layer at its widest
    return fine_chain(sorted(coarse.values(), key=lambda s: s.params()), space)


# The shape families a latency plan may draw from: the paper's cigar first (it wins ties),
# then its templates.
PLAN_FAMILIES: tuple[str, ...] = ("cigar", *FAMILIES)


def shape_family(name: str, space: DesignSpace) -> tuple[Shape, ...]:
    """A plan family's shapes from the smallest to the largest (see :data:`PLAN_FAMILIES`)."""
    return cigar_family(space) if name == "cigar" else template_family(name, space)


def random_shape(space: DesignSpace, rng: random.Random) -> Shape:
    """Each layer's width drawn uniformly and independently (the paper's sampling)."""
    return Shape(tuple(rng.choice(space.widths) for _ in range(space.num_layers)), space)


def _leveled_shape(space: DesignSpace, rng: random.Random) -> Shape:
    """A random shape around a random overall level, so every parameter count is reachable."""
    n = len(space.widths)
    level = rng.random() * (n - 1)
    spread = rng.choice((0.5, 1.0, 2.0, 3.0))
    idx = [min(n - 1, max(0, round(level + rng.gauss(0.0, spread))))
           for _ in range(space.num_layers)]
    return Shape(tuple(space.widths[i] for i in idx), space)


def sample_shapes(space: DesignSpace, n: int, seed: int = 0,
                  include: dict[str, Shape] | None = None) -> list[Shape]:
    """``n`` distinct shapes stratified by parameter count (deterministic for a seed).

    Always the smallest and the largest shape and ``include`` (e.g. the templates); the rest
    fill equal-width parameter bins, one shape per bin, drawn from a large candidate pool
    that mixes uniform random shapes with shapes around random width levels.
    """
    rng = random.Random(seed)
    chosen: dict[tuple[int, ...], Shape] = {}
    for shape in (space.smallest, space.largest, *(include or {}).values()):
        chosen.setdefault(shape.widths, shape)
    if n <= len(chosen):
        return list(chosen.values())[:max(n, 2)]
    pool = {}
    for i in range(max(2000, 40 * n)):
        s = random_shape(space, rng) if i % 3 == 0 else _leveled_shape(space, rng)
        if s.widths not in chosen:
            pool[s.widths] = s
    lo, hi = space.smallest.params(), space.largest.params()
    free = n - len(chosen)
    bins: dict[int, list[Shape]] = {}
    for s in pool.values():
        b = min(free - 1, int((s.params() - lo) / (hi - lo + 1) * free))
        bins.setdefault(b, []).append(s)
    picked = [rng.choice(sorted(bins[b], key=lambda s: s.widths)) for b in sorted(bins)]
    rest = sorted((s for s in pool.values() if s not in picked), key=lambda s: s.widths)
    rng.shuffle(rest)
    for s in picked + rest:
        if len(chosen) >= n:
            break
        chosen.setdefault(s.widths, s)
    return list(chosen.values())


def families_said(rows: Sequence[dict]) -> str:
    """A precision's screened families (the planner's ``choose_family`` table) in one line,
    best first; where the budget lets every family reach one shape (the full one), that shape
    once."""
    if len(rows) > 1 and len({tuple(r["shape"]) for r in rows}) == 1:
        r = rows[0]
        return (f"every family: {','.join(map(str, r['shape']))} {r['score']:.4f} "
                f"({r['params'] / 1e6:.1f}M)")
    return ", ".join(f"{r['family']} {r['score']:.4f} ({r['params'] / 1e6:.1f}M)"
                     for r in sorted(rows, key=lambda r: -r["score"]))
