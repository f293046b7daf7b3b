"""A profile's three plots, drawn when it is fitted, each titled with the figures that judge
it: the saved model against every measured floor (held-out error, noise floor, the trust
verdict), latency against parameters at the reference size (what int8 buys there), and the
machine's speed over the profile's time. matplotlib is imported here only."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .analysis import (SPEED_BANDS, dropped_by_key, group_key, group_slowdowns, machine_speed,
                       measured_latency, own_slowdowns)
from .fingerprint import cpu_name
from .folder import ProfileHeader, shape_from_key
from .protocol import describe_range, grid_cell

COLORS = {"fp32": "tab:blue", "int8": "tab:orange"}
FIT_PLOT, PARAMS_PLOT, SPEED_PLOT = PLOTS = ("actual_vs_predicted.png", "latency_vs_params.png",
                                             "machine_speed.png")


def draw_plots(profile: Path, header: ProfileHeader, model, records: list[dict[str, Any]],
               verdict: dict[str, Any], noise: dict[str, float | None],
               slow_floors: dict[str, dict[str, Any] | None]) -> None:
    """The three plots of a fitted ``model`` (a ``predictor.LatencyModel``), with its trust
    ``verdict`` (``predictor.trust``), each precision's noise floor and its floors timed slow
    (``predictor.slow_floors_of``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = header.fingerprint
    machine = f"{cpu_name(fp)} ({fp['device']}, {header.protocol.threads} threads)"
    try:
        _fit_plot(plt, profile, header, model, records, verdict, noise, machine)
        _params_plot(plt, profile, header, model, records, machine)
        _speed_plot(plt, profile, records, slow_floors, verdict["limits"]["max_slow_floors"],
                    machine)
    finally:
        plt.close("all")


def _fit_plot(plt, profile: Path, header: ProfileHeader, model, records, verdict, noise,
              machine: str) -> None:
    """Every measured floor against the saved model's prediction (fitted and check sizes)."""
    main, gone = measured_latency(records, "main"), dropped_by_key(records)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    lines = []
    lo, hi = np.inf, 0.0
    for precision in model.precisions:
        xs, ys = [], []
        for (p, b, s), shapes in main.items():
            if p != precision or grid_cell(model.grid, b, s) is None:
                continue
            keys = sorted(shapes)
            pred = model.predict([shape_from_key(k, header.space) for k in keys], precision,
                                 b, s, dropped=[gone.get(k, []) for k in keys])
            xs += [shapes[k] for k in keys]
            ys += list(pred)
        xs, ys = np.array(xs), np.array(ys)
        shown = (xs > 0) & (ys > 0)  # a fit to garbage may predict 0; trust flags say so
        xs, ys = xs[shown], ys[shown]
        lo, hi = min(lo, xs.min(), ys.min()), max(hi, xs.max(), ys.max())
        ax.scatter(xs, ys, s=6, alpha=0.4, color=COLORS.get(precision), label=precision)
        m = model.metrics[precision]["held_out"]
        floor = noise.get(precision)
        lines.append(f"{precision}: held-out R$^2$ {m['r2']:.4f}, MAPE {m['mape']:.2%}, "
                     f"{m['within_5pct']:.0%} within 5%, noise floor "
                     + (f"{floor:.1%}" if floor is not None else "n/a"))
    grid = np.geomspace(lo * 0.9, hi * 1.1, 50)
    ax.fill_between(grid, grid * 0.95, grid * 1.05, color="0.9", label="+-5%")
    ax.plot(grid, grid, color="0.5", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured latency floor (ms)",
           ylabel="predicted latency floor (ms, saved model)")
    ax.legend(loc="upper left")
    limits = verdict["limits"]
    lines.append(_wrapped(("reliable" if verdict["reliable"] else
                           "UNRELIABLE: " + "; ".join(verdict["reasons"]))
                          + f" (limits: held-out MAPE {limits['max_mape']:.0%}, noise floor "
                          f"{limits['max_noise_floor']:.0%}, floors timed slow "
                          f"{limits['max_slow_floors']:.0%})", 95))
    _finish(fig, ax, lines, 8, f"{machine}; {describe_range(model.grid)}", 7,
            profile / FIT_PLOT)


def _params_plot(plt, profile: Path, header: ProfileHeader, model, records,
                 machine: str) -> None:
    """Measured and predicted floors against parameters at the reference size, titled with
    what int8 buys there."""
    main, gone = measured_latency(records, "main"), dropped_by_key(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    b, s = header.protocol.reference
    title = [f"Latency floor vs parameters at batch {b} x {s} tokens"]
    floors: dict[str, dict[str, float]] = {}
    for precision in model.precisions:
        shapes = floors[precision] = main.get((precision, b, s), {})
        keys = sorted(shapes)
        params = [shape_from_key(k, header.space).params() / 1e6 for k in keys]
        ax.scatter(params, [shapes[k] for k in keys], s=10, color=COLORS.get(precision),
                   alpha=0.7, label=f"{precision}, measured")
        if keys:
            pred = model.predict([shape_from_key(k, header.space) for k in keys], precision,
                                 b, s, dropped=[gone.get(k, []) for k in keys])
            ax.scatter(params, pred, s=22, facecolors="none", edgecolors=COLORS.get(precision),
                       linewidths=0.8, label=f"{precision}, predicted")
    both = sorted(set(floors.get("fp32", {})) & set(floors.get("int8", {})))
    if both:
        gains = [floors["fp32"][k] / floors["int8"][k] for k in both]
        title.append(f"int8 buys {np.median(gains):.2f}x here (median of {len(both)} shapes, "
                     f"{min(gains):.2f}-{max(gains):.2f}x)")
    ax.set(xlabel="parameters (M, fused, paper convention)", ylabel="latency floor (ms)")
    ax.legend(fontsize=8)
    _finish(fig, ax, title, 10, machine, 8, profile / PARAMS_PLOT)


def _speed_plot(plt, profile: Path, records: list[dict[str, Any]],
                slow_floors: dict[str, dict[str, Any] | None], limit: float,
                machine: str) -> None:
    """The machine's speed over the profile's time: every group's slowdown
    (``group_slowdowns``: its reference graph against the fastest at its precision and size,
    or its sentinel against the sentinel's fastest where larger), in the order measured, with
    ``machine_speed``'s figures; below it, with a sentinel, every group's slowdown by its own
    reference (``own_slowdowns``, the slow-floors count's yardstick) with ``machine_speed``'s
    ``own`` figures; and each precision's floors timed slow (``slow_floors``) against the
    trust gate's ``limit``."""
    speed = machine_speed(records)
    own = own_slowdowns(records)[0] if speed and "own" in speed else None
    order: dict[tuple, dict[str, Any]] = {}
    for r in records:  # measurements.jsonl is in the order measured
        order.setdefault(group_key(r), r)
    fig, axes = plt.subplots(2 if own else 1, 1, figsize=(7, 8 if own else 4.5), sharex=True,
                             squeeze=False)
    top = axes[0][0]
    _speed_points(top, group_slowdowns(records), order)
    if own:
        _speed_points(axes[1][0], own, order)
    title = ["The machine's speed over the profile: the reference graph per group / fastest"
             + (" (or the sentinel's, where larger)" if any("sentinel_ms" in r for r in records)
                else "")]
    if speed:
        title.append(_speed_line(speed))
    counted = {p: v for p, v in slow_floors.items() if v}  # none before session 42
    calm = next((v["calm_over_fastest"] for v in counted.values() if "calm_over_fastest" in v),
                None)  # since session 48: the fastest speed held over a few groups in a row
    if calm is not None:
        top.axhline(SPEED_BANDS[0] * calm, color="C3", lw=1.0, ls=":",
                    label=f"{SPEED_BANDS[0]:g}x the calm speed (x{calm:.3f} the fastest)")
    floors = []
    if counted:
        mine = any(v.get("yardstick") == "own reference" for v in counted.values())
        what = (f"floors from groups whose own reference ran over {SPEED_BANDS[0]:g}x its "
                "calm time" if mine else f"floors timed over {SPEED_BANDS[0]:g}x the calm speed")
        floors.append(f"{what} after the looks: "
                      + ", ".join(f"{p} {v['slow']}/{v['points']} ({v['slow'] / v['points']:.0%})"
                                  for p, v in counted.items()) + f" (trust limit {limit:.0%})")
    top.set(ylabel="slowdown (x the fastest)")
    top.legend(fontsize=8)
    if own:
        low = axes[1][0]
        low.set(xlabel="group of turns, in the order measured",
                ylabel="slowdown (x its size's calm time)")
        low.set_title("\n".join(_wrapped(t, 100) for t in [
            "By each group's own reference over its size's time while the sentinel found the "
            "machine calm (the slow-floors count's yardstick)", _speed_line(speed["own"])]
            + floors), fontsize=9)
    else:
        top.set(xlabel="group of turns, in the order measured")
        title += floors
    _finish(fig, top, [_wrapped(t, 100) for t in title], 9, machine, 8, profile / SPEED_PLOT)


def _speed_points(ax, slow: dict[tuple, float], order: dict[tuple, dict[str, Any]]) -> None:
    """Each group's slowdown in ``slow`` in the order measured, per precision, a calm look's
    waited groups marked, with ``SPEED_BANDS`` drawn."""
    for precision in sorted({r["precision"] for r in order.values()}):
        for calm in (False, True):
            pts = [(i, slow[k]) for i, (k, r) in enumerate(order.items())
                   if k in slow and r["precision"] == precision and ("calm_wait" in r) == calm]
            if pts:
                ax.scatter(*zip(*pts), s=12 if not calm else 28, color=COLORS.get(precision),
                           marker="o" if not calm else "^", alpha=0.7,
                           label=precision + (", a calm look (waited)" if calm else ""))
    for band in SPEED_BANDS:
        ax.axhline(band, color="0.6", lw=0.8, ls="--")


def _speed_line(speed: dict[str, Any]) -> str:
    """``machine_speed``'s figures in one line."""
    return (f"{speed['groups']} groups: " + ", ".join(
        f"{share:.0%} within {band}x" for band, share in speed["within"].items())
        + f"; median {speed['median']:.2f}x, p90 {speed['p90']:.2f}x, worst {speed['max']:.2f}x")


def _finish(fig, ax, title: list[str], title_size: float, machine: str, machine_size: float,
            path: Path) -> None:
    """Title the plot with the figures that judge it, the machine above, and save it."""
    ax.set_title("\n".join(title), fontsize=title_size)
    fig.suptitle(_wrapped(machine), fontsize=machine_size)
    _save(fig, path)


def _wrapped(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
