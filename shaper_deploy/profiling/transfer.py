"""A new device's latency model from devices already profiled: a transfer.

A transfer measures a few shapes on this device with the ordinary protocol (every grid size,
the reference in every group, a quarter of the shapes held out, two shapes re-measured for
the noise floor) and fits each grid point's coefficients with the source profiles' as the
prior, in two steps:

1. **Scale.** This device's latency is taken as a non-negative mix of the sources'
   predictions plus an offset, ``y ~ sum_k a_k src_k(shape) + b`` (NNLS on relative error):
   one source gives "k times slower, plus a fixed cost"; several give a device between them.
   With several sources, each alone and all together are compared by leave-one-shape-out
   error and the best kept, so a source that does not help is not used.
2. **Correct.** The coefficients are refitted on this device's measurements with a ridge
   penalty pulling them towards the scaled prior ``sum_k a_k c_k + b`` (each coefficient's
   penalty in units of its effect on relative latency, the constant free). A device whose
   latency is exactly a scaled source is recovered exactly; where this device's structure
   differs (int8 on VNNI vs AVX2), the measurements pull the coefficients away from it as far
   as they can tell.

The result is an ordinary profile: the same files, the same held-out trust rule, plus a
``transfer`` record in ``profile.json`` with the sources (frozen: their coefficients are
copied in, so the profile refits without them) and, per precision, how far the scaled prior
alone missed on the held-out shapes (``prior_held_out``: whether the source's structure
holds here). Measured on the two shipped machine classes (Intel AVX-512/AMX and AMD EPYC
Zen 4, MiniLM and BERT-base spaces): docs/benchmarks.md, ``benchmarks/transfer.py``.

A fleet whose grids differ (one capped at 512 tokens, another at 1024) is measured on the
grid they share (``shared_grid``). Refused: a source of another device kind (cpu -> cuda) or
another design space (MiniLM -> BERT-base), neither measured to transfer; sources that share
no grid holding the first one's reference size.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ..errors import ProfileError, ShaperError
from ..runtime import int8_kernels
from .catalog import profiles_in
from .predictor import (SMOOTH, DeviceProfile, LatencyModel, features, fit_model, fit_point,
                        fit_profile, grid_data, raised_tail, retake_hint, trust)
from .fingerprint import differing_fields, fingerprint_differences, unchecked_fields
from .analysis import dropped_by_key, measured_latency
from .folder import HEADER, META_FILE, Fingerprint, ProfileHeader, Transfer, workload_key
from .profile import TRANSFER_MIN_SHAPES
from .protocol import Protocol, Workload
from ..shape import DesignSpace, Shape

CANDIDATES = (0.0, 1.0, 3.0, 10.0)  # ridges compared by leave-one-shape-out (0: no prior)
REPEAT_SHAPES = 2  # shapes re-measured at the end for the noise floor
DEFAULT_MINUTES = 2.0
# The most sources a transfer mixes: their weights are fitted at each grid point on as few as
# 6 shapes (TRANSFER_MIN_SHAPES less the 2 held out), and each source is one more weight.
MAX_SOURCES = 8
METHOD = ("transfer: per precision, the fit with the least leave-one-shape-out error: direct "
          "(as a profile without sources) or, per grid point, a non-negative mix of the "
          "source profiles' predictions plus an offset (the sources chosen by "
          "leave-one-shape-out error) with the coefficients refitted under a ridge towards "
          "that scaled prior (NNLS on relative error); bilinear in batch and length between "
          "grid points; fitted on floors (p10 of runs); percentiles (the median too) = floor x "
          "this profile's own mixed run spread above the floor")


def expand_sources(paths: Sequence[str | Path], device: str, space: DesignSpace | None,
                   out: str | Path | None = None,
                   note: Callable[[str], None] | None = None,
                   here: Fingerprint | None = None) -> list[str]:
    """``--from`` as given, a folder of profiles (``DIR/*/profile.json``, e.g. ``profiles``)
    standing for every finished profile in it of ``device``'s kind and of the design space
    (``space``, else the one the folder's profiles share), in name order; ``out`` (the
    profile being made) is never one. Offline, with each MiniLM machine class as the target
    and the other classes as sources, all of them together came within 0.4 points of MAPE of
    the best one alone at 8 and 12 shapes, whose lead over the worst reached 1.9, so a fleet
    spares guessing which machine is closest (docs/benchmarks.md). A profile folder is kept
    as given; ``load_sources`` checks every one.

    Where the profiles found in folders and those named one by one come to more than
    ``MAX_SOURCES``, the ones found in folders are cut to those closest to this machine
    (``here``, by ``closest_first``), and ``note`` names the ones left out: a user's own
    profile added to the shipped ``profiles`` folder made `--from profiles` 9 MiniLM
    profiles, which the limit refused (session 52)."""
    tell = note or (lambda message: None)
    skip = Path(out).resolve() if out is not None else None
    chosen: list[str] = []
    in_folders: list[DeviceProfile] = []
    for given in map(Path, paths):
        if (given / HEADER).exists() or not given.is_dir():
            chosen.append(str(given))
            continue
        found, skipped = [], []
        for folder, p in profiles_in(given):
            if folder.resolve() == skip:
                continue
            if isinstance(p, ShaperError):  # unfinished or damaged: named, not used
                skipped.append(f"{folder.name} ({str(p).split(';')[0]})")
            elif p.device != device:
                skipped.append(f"{folder.name} (a {p.device} profile)")
            elif space is not None and p.space != space:
                skipped.append(f"{folder.name} (another design space)")
            else:
                found.append(p)
        spaces = list(dict.fromkeys(p.space for p in found))
        if len(spaces) > 1:
            each = "; ".join(f"{_space_text(x)}: "
                             + ", ".join(p.path.name for p in found if p.space == x)
                             for x in spaces)
            raise ProfileError(f"--from {given} holds {device} profiles of {len(spaces)} "
                               f"design spaces ({each}): give --supernet to choose the one "
                               "to profile, or name the profiles")
        if not found:
            raise ProfileError(f"--from {given} holds no finished {device} profile"
                               + (" of this design space" if space is not None else "")
                               + (f" (skipped: {', '.join(skipped)})" if skipped else "")
                               + "; give profile folders, or a folder that holds some")
        tell(f"--from {given}: {len(found)} profile(s) as the prior: "
             + ", ".join(p.path.name for p in found)
             + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        chosen += [str(p.path) for p in found]
        in_folders += found
    room = MAX_SOURCES - (len(chosen) - len(in_folders))
    if len(chosen) <= MAX_SOURCES or here is None or room <= 0:
        return chosen  # load_sources refuses more than MAX_SOURCES named one by one
    ranked = closest_first(in_folders, here)
    out_of_room = {str(p.path) for p in ranked[room:]}

    def unlike(p: DeviceProfile) -> str:
        fields = differing_fields(p.header.fingerprint, here)
        return f"{', '.join(fields)} differ" if fields else "this machine's"

    tell(f"--from: a transfer mixes at most {MAX_SOURCES} of these {len(chosen)} profiles: "
         f"the {room} found in folders closest to this machine (fewest fingerprint fields "
         "differing, then reliable, then newest); left out: "
         + ", ".join(f"{p.path.name} ({unlike(p)})" for p in ranked[room:]))
    return [c for c in chosen if c not in out_of_room]


def closest_first(profiles: Sequence[DeviceProfile], here: Fingerprint
                  ) -> list[DeviceProfile]:
    """``profiles`` in order of closeness to this machine: fewest fingerprint fields that
    differ from ``here``, then fewest that could not be compared (a profile predating
    ``cpu_id``), then reliable before unreliable, then newest first."""
    newest = sorted(profiles, key=lambda p: p.header.created, reverse=True)
    return sorted(newest, key=lambda p: (len(differing_fields(p.header.fingerprint, here)),
                                         len(unchecked_fields(p.header.fingerprint, here)),
                                         not p.trust["reliable"]))


def load_sources(paths: Sequence[str], device: str, space: DesignSpace | None
                 ) -> list[DeviceProfile]:
    """The source profiles, each checked: finished, same device kind, one design space (the
    grid they share is decided, or refused, by ``target_protocol``). A source marked
    unreliable is accepted: it is only a prior, and the transfer is judged on its own
    held-out shapes."""
    if not paths:
        raise ProfileError("--from needs at least one profile")
    if len(paths) > MAX_SOURCES:
        raise ProfileError(f"--from takes at most {MAX_SOURCES} profiles, got {len(paths)}: "
                           f"name fewer (a folder given to --from keeps the {MAX_SOURCES} "
                           "closest to this machine)")
    sources = [DeviceProfile.load(p) for p in paths]
    first = sources[0]
    for s in sources:
        if s.device != device:
            raise ProfileError(
                f"cannot transfer {s.path} (a {s.device} profile) to --device {device}: a "
                "transfer across device kinds has not been shown to work; give a "
                f"{device} profile or profile {device} directly (without --from)")
        target = space if space is not None else first.space
        if s.space != target:
            raise ProfileError(
                f"cannot transfer {s.path}: its design space ({_space_text(s.space)}) is not "
                f"the one profiled here ({_space_text(target)}); a transfer across design "
                "spaces has not been shown to work: give a profile of this design space or "
                "profile it directly (without --from)")
    if len({str(s.path.resolve()) for s in sources}) != len(sources):
        raise ProfileError("--from names the same profile twice")
    return sources


def shared_grid(sources: Sequence[DeviceProfile]) -> tuple[Protocol, str]:
    """The first source's protocol narrowed to the grid points every source covers (its
    batches and lengths that remain, capped at the most tokens among them), and what was left
    out, as a sentence ("" when nothing was). Why: the shipped BERT-base profiles are capped
    at 512 or 1024 tokens, and a fleet given or found (``--from profiles``, name order) with
    a 1024 one first was refused although a transfer on the sizes they share works (session
    39's Zen 5 + x86_64 + Intel fleet: 2.8% / 4.4% on the Zen 4 class's direct profile).
    Refused, naming a source that lacks it, when the shared grid is not a full grid (batches x
    lengths under a cap) or does not hold the first source's reference size."""
    p = sources[0].header.protocol
    lacking = {w: next((s for s in sources if not _covers(s.model, w)), None) for w in p.grid}
    kept = [w for w in p.grid if lacking[w] is None]
    if len(kept) == len(p.grid):
        return p, ""

    def refuse(w: Workload, why: str) -> ProfileError:
        return ProfileError(f"cannot transfer from these profiles: {lacking[w].path} does not "
                            f"cover batch {w[0]} x {w[1]} tokens of {sources[0].path}'s grid, "
                            f"and the grid the --from profiles share {why}; give profiles "
                            "whose grids share the first one's reference size and a full "
                            "grid around it")

    gone = [w for w in p.grid if lacking[w] is not None]
    if p.reference not in kept:
        raise refuse(p.reference, "lacks the reference size")
    narrowed = replace(p, batches=tuple(sorted({b for b, _ in kept})),
                       seq_lens=tuple(sorted({s for _, s in kept})),
                       max_tokens=max(b * s for b, s in kept))
    if set(narrowed.grid) != set(kept):
        raise refuse(gone[0], "is not whole (every batch x length under a token cap)")
    return narrowed, (f"the --from profiles share {sources[0].path}'s grid up to "
                      f"{narrowed.max_tokens} tokens ({len(narrowed.grid)} of {len(p.grid)} "
                      f"sizes; {lacking[gone[0]].path} lacks batch {gone[0][0]} x {gone[0][1]}"
                      + (f" and {len(gone) - 1} more" if len(gone) > 1 else "")
                      + "): the transfer measures those, and the profile refuses larger sizes")


def _covers(model: LatencyModel, w: Workload) -> bool:
    try:
        model.coef_at(model.precisions[0], *w)
    except ProfileError:
        return False
    return True


def _space_text(space: DesignSpace) -> str:
    return (f"{space.num_layers} layers, hidden {space.hidden_size}, widths "
            f"{','.join(map(str, space.widths))}")


def target_protocol(sources: Sequence[DeviceProfile], threads: int,
                    precisions: Sequence[str] | None, rounds: int | None = None,
                    max_tokens: int | None = None,
                    note: Callable[[str], None] = lambda message: None) -> Protocol:
    """The grid the sources share (``shared_grid``: the first source's, unless another
    lacks some of it, which ``note`` is told), the first source's checks and reference,
    ``threads``, ``rounds`` (default the source's) and the precisions every source has (of
    those asked for); two re-measured shapes. ``max_tokens`` narrows the grid to the sizes a
    user serves (at most the shared grid's cap, at least the reference's tokens): only those
    are measured here, and the profile refuses larger ones, as any profile refuses sizes
    outside its grid."""
    have = [p for p in sources[0].precisions if all(p in s.precisions for s in sources)]
    chosen = [p for p in have if precisions is None or p in precisions]
    if not chosen:
        asked = ", ".join(precisions or [])
        raise ProfileError(f"the --from profiles have no precision in common with the one(s) "
                           f"asked for ({asked or 'any'}); they have "
                           f"{', '.join(have) or 'none in common'}")
    p, narrowed = shared_grid(sources)
    if narrowed:
        note(narrowed)
    reference = p.reference_batch * p.reference_seq_len
    if max_tokens is not None and not reference <= max_tokens <= p.max_tokens:
        whose = (f"{sources[0].path}" if not narrowed else "these --from profiles")
        raise ProfileError(f"--max-tokens {max_tokens} is outside what a transfer from {whose} "
                           f"can measure: allowed {reference}..{p.max_tokens} (from the "
                           f"source's reference size, batch {p.reference_batch} x "
                           f"{p.reference_seq_len} tokens, to the "
                           + ("token cap of the grid they share)" if narrowed
                              else "source's token cap)"))
    return Protocol(threads=threads, precisions=tuple(chosen), batches=p.batches,
                    seq_lens=p.seq_lens, max_tokens=max_tokens or p.max_tokens,
                    reference_batch=p.reference_batch, reference_seq_len=p.reference_seq_len,
                    rounds=rounds or p.rounds, check_workloads=p.check_workloads,
                    repeat_shapes=REPEAT_SHAPES)


def transfer_record(sources: Sequence[DeviceProfile], protocol: Protocol,
                    fingerprint: Fingerprint,
                    note: Callable[[str], None] = lambda message: None) -> Transfer:
    """What ``profile.json`` keeps of the sources: who they are and their coefficients at
    this profile's grid points (so the profile refits without them), and the tail of each
    source measured on this very machine (``same_machine_tails``). A source measured before
    profiles waited for ONNX Runtime's threads to stop spinning (``park_ms`` 0) is a prior
    but its tail is not frozen: the next session's runs shared a core with the spinning
    threads, which priced short runs' p90 at x2.4-2.5 the floor where this machine's own
    parked profile measures x1.26 (the 2026-11 Intel MiniLM profile at 1.6 ms, session 35).
    Nor is the tail of a source whose fingerprint predates a field this machine's records
    (``unchecked_fields``: no ``cpu_id``): it matches every CPU of its model name and ISA, as
    the AMD Zen 2 profile matched the Zen 4 cores masked to AVX2 (session 56)."""
    frozen = []
    differences = [fingerprint_differences(s.header.fingerprint, fingerprint) for s in sources]
    for s, differ in zip(sources, differences):  # load verified predictor.json by this sum
        same_machine = not differ
        unchecked = unchecked_fields(s.header.fingerprint, fingerprint)
        parked = s.header.protocol.park_ms > 0
        priced = same_machine and parked and not unchecked
        if same_machine and not priced:
            where = ("this machine" if not unchecked else "a machine whose fingerprint "
                     f"matches this one's but predates {', '.join(unchecked)} (another CPU of "
                     "this model name and ISA matches it too)")
            when = ("" if parked else ", before profiles waited for ONNX Runtime's threads to "
                    "stop spinning")
            note(f"{s.path}: measured on {where}{when}; a prior, but its latency tail is not "
                 "used" + ("" if parked else " (the spinning inflated short runs' tails)"))
        speed = s.machine_speed() if priced else None
        frozen.append({
            **({"tail": {p: s.model.tail[p] for p in protocol.precisions if p in s.model.tail}}
               if priced else {}),
            **({"speed_p90": round(speed["p90"], 6)} if speed is not None else {}),
            "profile": str(s.path), "fingerprint": s.header.fingerprint,
            "created": s.header.created, "predictor_sha256": s.header.files[META_FILE],
            "held_out_mape": {p: s.model.metrics[p]["held_out"]["mape"]
                              for p in s.precisions},
            "coef": {p: {workload_key(w): [round(float(v), 10) for v in s.model.coef_at(p, *w)]
                         for w in protocol.grid} for p in protocol.precisions}})
    return {"method": METHOD, "ridges": list(CANDIDATES), "sources": frozen,
            "differences": differences, "direct_default_minutes": None}


def penalty_scale(x: np.ndarray, space: DesignSpace) -> np.ndarray:
    """Each coefficient's typical feature value: the mean over the fitted shapes and every
    rectangle shape of the space (so a width no fitted shape uses is still held to its prior)."""
    rect = features([Shape((w,) * space.num_layers, space) for w in space.widths])
    return np.abs(np.vstack([x, rect])).mean(axis=0)


def scale_fit(x: np.ndarray, y: np.ndarray, priors: Sequence[np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: the non-negative mix of the priors' predictions plus an offset closest to
    ``y`` in relative error; its coefficients and the mix (one weight per prior, offset)."""
    from scipy.optimize import nnls

    cols = np.column_stack([x @ p for p in priors] + [np.ones(len(y))])
    mix = nnls(cols / y[:, None], np.ones(len(y)))[0]
    coef = sum(m * p for m, p in zip(mix, priors))
    coef = np.array(coef, dtype=np.float64)
    coef[SMOOTH.index("constant")] += mix[-1]
    return coef, mix


def prior_fit(x: np.ndarray, y: np.ndarray, priors: Sequence[np.ndarray], scale: np.ndarray,
              ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1 and 2 at one grid point: coefficients and the priors' mix. One trimmed refit
    without measurements missed by more than 8% and 5 MADs, as the direct fit does."""
    from scipy.optimize import nnls

    def solve(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prior, mix = scale_fit(x[keep], y[keep], priors)
        m = scale / float(np.mean(y[keep]))
        m[SMOOTH.index("constant")] = 0.0  # the offset is this device's own
        a = np.vstack([x[keep] / y[keep, None], np.sqrt(ridge) * np.diag(m)])
        b = np.concatenate([np.ones(int(keep.sum())), np.sqrt(ridge) * m * prior])
        return nnls(a, b)[0], mix

    keep = np.ones(len(y), dtype=bool)
    coef, mix = solve(keep)
    rel = x @ coef / y - 1
    mad = np.median(np.abs(rel - np.median(rel)))
    keep = np.abs(rel) <= max(0.08, 5 * 1.4826 * mad)
    if keep.sum() >= max(4, len(y) // 2) and not keep.all():
        coef, mix = solve(keep)
    return coef, mix


def choose_sources(x: np.ndarray, y: np.ndarray, priors: Sequence[np.ndarray]) -> list[int]:
    """Which priors to use at one grid point: each alone and all together, by the scaled
    prior's leave-one-shape-out relative error (the first on ties)."""
    if len(priors) == 1:
        return [0]
    subsets = [[i] for i in range(len(priors))] + [list(range(len(priors)))]
    best, best_err = subsets[0], np.inf
    for subset in subsets:
        err = 0.0
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            coef, _ = scale_fit(x[keep], y[keep], [priors[k] for k in subset])
            err += abs(float(x[i] @ coef) / y[i] - 1)
        if err < best_err - 1e-12:
            best, best_err = subset, err
    return best


def fit_transfer(header: ProfileHeader, records: list[dict[str, Any]],
                 held_keys: set[str] | None = None) -> LatencyModel:
    """This device's latency model from its transfer measurements and the frozen sources.

    Per precision, the fit is chosen by leave-one-shape-out error over the fitted shapes
    (pooled over the grid): the direct fit (``predictor.fit_point``, no prior) or the prior
    fit at a ridge of 1, 3 or 10. Where the sources' structure does not hold here (int8 on
    another ISA), the direct fit wins and the prior is not used; the held-out shapes never
    take part in the choice."""
    record = header.transfer
    if not record:
        raise ProfileError("this profile is not a transfer (no transfer record)")
    space, protocol = header.space, header.protocol
    chosen: dict[str, dict[str, Any]] = {}

    def priors_at(precision: str, w: Workload) -> list[np.ndarray]:
        return [np.asarray(s["coef"][precision][workload_key(w)]) for s in record["sources"]]

    def fit_with(candidate: float, precision: str, w: Workload, x: np.ndarray, y: np.ndarray
                 ) -> tuple[np.ndarray, Any]:
        if candidate == 0:
            return fit_point(x, y), None
        scale = penalty_scale(x, space)
        priors = priors_at(precision, w)
        subset = choose_sources(x, y, priors)
        coef, mix = prior_fit(x, y, [priors[i] for i in subset], scale, candidate)
        return coef, {"sources": subset, "mix": [round(float(v), 6) for v in mix]}

    main, gone = measured_latency(records, "main"), dropped_by_key(records)
    for precision in protocol.precisions:  # the fitted shapes, as fit_model splits them
        keys, x, points, test = grid_data(header, precision, main, gone, held_keys=held_keys)
        train = [i for i in range(len(keys)) if not test[i]]
        x = x[train]
        errors = {}
        if len(train) < 3:
            raise ProfileError(f"the transfer has {len(train)} fitted {precision} shapes "
                               "measured at every input size; it needs at least 3: run the "
                               "same profile command again to finish it")
        for candidate in CANDIDATES:
            total = 0.0
            for w in protocol.grid:
                y = np.array([points[w][keys[i]] for i in train])
                for i in range(len(train)):
                    keep = np.arange(len(train)) != i
                    coef, _ = fit_with(candidate, precision, w, x[keep], y[keep])
                    total += abs(float(x[i] @ coef) / y[i] - 1)
            errors[candidate] = total / (len(train) * len(protocol.grid))
        best = min(CANDIDATES, key=lambda c: (errors[c], c))
        chosen[precision] = {"fit": "direct" if best == 0 else "prior", "ridge": best,
                             "loo_mape": {("direct" if c == 0 else f"prior ridge {c:g}"): e
                                          for c, e in errors.items()},
                             "by_workload": {}}

    def full(precision: str, w: Workload, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        coef, detail = fit_with(chosen[precision]["ridge"], precision, w, x, y)
        if detail is not None:
            chosen[precision]["by_workload"][workload_key(w)] = detail
        return coef

    def prior_only(precision: str, w: Workload, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        priors = priors_at(precision, w)
        subset = choose_sources(x, y, priors)
        return scale_fit(x, y, [priors[i] for i in subset])[0]

    scaled = fit_model(header, records, held_keys=held_keys, point_fit=prior_only,
                       min_shapes=TRANSFER_MIN_SHAPES)
    model = fit_model(header, records, held_keys=held_keys, point_fit=full,
                      min_shapes=TRANSFER_MIN_SHAPES, method=record["method"])
    for precision in model.precisions:
        model.metrics[precision]["transfer"] = {
            "prior_held_out": scaled.metrics[precision]["held_out"], **chosen[precision]}
    model.tail = same_machine_tails(model.tail, record)
    return model


def same_machine_tails(tails: dict[str, Any], record: Transfer) -> dict[str, Any]:
    """A transfer's tail per precision, raised where larger to that of every source measured
    on this very machine (its frozen ``tail``). A transfer's own tail rests on its 2 minutes
    of the machine's time: one made in a calm stretch (91% of its groups within 1.1x of the
    fastest, p90 x1.06-1.13) saw 18.8% of later runs of real bundles over its p90 on the AMD
    Zen 5 class; raised to a Zen 5 profile's, 0.9-1.9% (session 23).

    Such a tail prices the slowdowns that source's groups saw, so it records the largest of
    their 90th percentiles (``priced_slowdown``, the source's frozen ``speed_p90``):
    ``DeviceProfile.measure`` takes a slowdown up to that out of a floor before applying the
    tail (``predictor.priced_drift``), where the transfer's own 2 minutes would allow about
    1.1x. On the session-23 transfer's 80 real-bundle windows, judged at p90 against its
    prediction: 2.3% median |error|, 82% within +-10% with the raised tail alone; 2.2%, 89%
    with the slowdown it prices too (``benchmarks/transfer_tail.py``)."""
    out = dict(tails)
    for source in record["sources"]:
        for precision, tail in (source.get("tail") or {}).items():
            if precision in out:
                base = out[precision]
                priced = max(base.get("priced_slowdown", 1.0), source.get("speed_p90", 1.0))
                out[precision] = {**raised_tail(base, tail),
                                  "same_machine": [*base.get("same_machine", []),
                                                   source["profile"]],
                                  **({"priced_slowdown": priced} if priced > 1.0 else {})}
    return out


def transfer_advice(header: ProfileHeader, model: LatencyModel, path: str | Path
                    ) -> str | None:
    """For an unreliable transfer (in ``path``): what failed, the retake of its floors timed
    slow (``retake_hint``), and what a direct profile would cost."""
    record = header.transfer
    t = trust(header, model)
    if not record or t["reliable"]:
        return None
    retake = retake_hint(path, header, t)
    prior = {p: model.metrics[p].get("transfer", {}).get("prior_held_out", {}).get("mape")
             for p in model.precisions}
    minutes = record.get("direct_default_minutes")
    legacy = record.get("direct_minutes")  # a transfer made before session 46
    cap = header.protocol.max_tokens
    sizes = "" if cap == Protocol().max_tokens else f", --max-tokens {cap}"
    here = int8_kernels(header.fingerprint.get("isa"))
    theirs = sorted({int8_kernels(s["fingerprint"].get("isa")) for s in record["sources"]})
    kernels = ("; int8's sources ran " + " and ".join(theirs) + f" int8 kernels, this CPU "
               f"runs {here}: add to --from a profile of a CPU that runs {here} (profiles "
               "show: device)" if "int8" in t["failed"] and here not in theirs else "")
    return ("the transfer did not reach the trust targets here ("
            + "; ".join(t["reasons"]) + "; the scaled source alone: "
            + ", ".join(f"{p} MAPE {v:.1%}" for p, v in prior.items() if v is not None)
            + "): " + (f"{retake}, " if retake else "")
            + "measure longer with --minutes, or profile this device directly"
            + (f" (profile without --from{sizes}: up to about {minutes:.0f} min here)"
               if minutes else f" (about {legacy:.0f} min for 40 shapes{sizes})" if legacy
               else "") + kernels)


def refit(profile, progress=None) -> LatencyModel:
    """Fit a finished transfer's measurements (what ``predictor.fit_profile`` does for a
    direct profile), saving the predictor and plots."""
    return fit_profile(profile, progress, fit=fit_transfer)
