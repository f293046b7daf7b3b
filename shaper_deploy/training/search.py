"""Evolutionary search over shapes (the paper's section 6), under parameter and latency limits.

The quality and latency models are arguments (any callable from shapes to numbers: a
predictor, a lookup table or a live measurement). Only shapes meeting every constraint ever
enter the population, so the result always respects them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import TrainingError
from ..shape import DesignSpace, Shape
from ..templates import random_shape

Model = Callable[[Sequence[Shape]], np.ndarray]


@dataclass(frozen=True)
class SearchConfig:
    population: int = 100  # shapes kept per iteration
    parents: int = 10  # best shapes that breed
    mutations: int = 100  # children by mutation per iteration
    crossovers: int = 100  # children by crossover per iteration
    mutation_prob: float = 0.4  # chance that a gene (a layer's width) is redrawn
    iterations: int = 300
    seed: int = 0


@dataclass
class SearchCandidate:
    shape: Shape
    quality: float
    params: int
    latency_ms: float | None

    def to_dict(self) -> dict:
        return {"shape": list(self.shape.widths), "quality": self.quality, "params": self.params,
                "latency_ms": self.latency_ms}


@dataclass
class SearchResult:
    best: SearchCandidate
    pareto: list[SearchCandidate]  # best quality for its parameter count, by increasing count
    evaluated: int


def evolutionary_search(space: DesignSpace, quality: Model, higher_is_better: bool = True,
                        latency: Model | None = None, max_latency_ms: float | None = None,
                        max_params: int | None = None, config: SearchConfig = SearchConfig(),
                        progress: Callable[[str], None] | None = None) -> SearchResult:
    note = progress or (lambda message: None)
    if max_latency_ms is not None and latency is None:
        raise TrainingError("a latency limit needs a latency model (a profile)")
    rng = random.Random(config.seed)
    sign = 1.0 if higher_is_better else -1.0
    seen: dict[tuple[int, ...], SearchCandidate] = {}

    def feasible(shapes: list[Shape]) -> list[Shape]:
        shapes = [s for s in dict.fromkeys(shapes) if s.widths not in seen]
        if max_params is not None:
            shapes = [s for s in shapes if s.params() <= max_params]
        if not shapes:
            return []
        lat = latency(shapes) if latency is not None else [None] * len(shapes)
        keep = [(s, t) for s, t in zip(shapes, lat)
                if max_latency_ms is None or t <= max_latency_ms]
        if keep:
            q = quality([s for s, _ in keep])
            for (s, t), v in zip(keep, q):
                seen[s.widths] = SearchCandidate(s, float(v), s.params(),
                                           None if t is None else float(t))
        return [s for s, _ in keep]

    population: list[Shape] = []
    for _ in range(50):  # rejection sampling of the first population
        population += feasible([random_shape(space, rng) for _ in range(config.population)])
        if len(population) >= config.population:
            break
    smallest = space.smallest
    if not population:
        population = feasible([smallest])
    if not population:
        limits = [f"{max_params:,} parameters" if max_params is not None else "",
                  f"{max_latency_ms:g} ms" if max_latency_ms is not None else ""]
        raise TrainingError(f"no shape meets {' and '.join(x for x in limits if x)}; the "
                            f"smallest ({smallest}) has {smallest.params():,} parameters"
                            + (f" and a predicted {float(latency([smallest])[0]):.2f} ms"
                               if latency is not None else ""))
    population = population[:config.population]
    for it in range(config.iterations):
        ranked = sorted(population, key=lambda s: -sign * seen[s.widths].quality)
        parents = ranked[:config.parents]
        children = []
        for _ in range(config.mutations):
            p = rng.choice(parents).widths
            children.append(Shape(tuple(rng.choice(space.widths)
                                        if rng.random() < config.mutation_prob else w
                                        for w in p), space))
        for _ in range(config.crossovers):
            a, b = rng.choice(parents).widths, rng.choice(parents).widths
            children.append(Shape(tuple(rng.choice(pair) for pair in zip(a, b)), space))
        fresh = feasible(children)
        pool = list(dict.fromkeys(parents + fresh + ranked[config.parents:]))
        population = sorted(pool, key=lambda s: -sign * seen[s.widths].quality)[:config.population]
        if (it + 1) % max(1, config.iterations // 10) == 0:
            note(f"iteration {it + 1}/{config.iterations}: best quality "
                 f"{seen[population[0].widths].quality:.4f}, {len(seen)} shapes evaluated")
    everything = sorted(seen.values(), key=lambda c: (c.params, -sign * c.quality))
    pareto, best_so_far = [], -np.inf
    for c in everything:
        if sign * c.quality > best_so_far:
            pareto.append(c)
            best_so_far = sign * c.quality
    best = max(seen.values(), key=lambda c: sign * c.quality)
    return SearchResult(best, pareto, len(seen))
