"""Figures of a comparison: pass@k against k, and metrics over training steps, each with bands.

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot: no global
backend switch (safe on headless machines and inside a user's notebook), and the returned Figure can
be inspected (lines, labels) before it is saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Colour-blind-safe (Okabe-Ito); a variant keeps its colour in every panel and figure.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
BASE_STYLE = {"color": "0.25", "linestyle": "--", "marker": "s"}


@dataclass
class Curve:
    """y over x with a band [lo, hi] (same length as x); ``raw``: the unsmoothed y when y is a
    smoothed series (drawn faint behind it)."""

    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    raw: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.x, self.y, self.lo, self.hi = (np.asarray(a, dtype=np.float64) for a in (self.x, self.y, self.lo, self.hi))
        if self.raw is not None:
            self.raw = np.asarray(self.raw, dtype=np.float64)


def colours(labels: list[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def band_alpha(lines: int) -> float:
    """Band opacity for a panel of ``lines`` curves: overlapping fills of 4-6 variants stay readable."""
    return 0.18 if lines <= 3 else 0.07


def _draw(ax: Axes, curve: Curve, label: str, alpha: float = 0.18, **style: Any) -> None:
    if curve.raw is not None:  # the raw series, faint and unlabelled, behind its smoothed line
        ax.plot(curve.x, curve.raw, linewidth=0.8, alpha=0.3, color=style.get("color"), label="_raw")
    ax.plot(curve.x, curve.y, label=label, linewidth=1.8, markersize=4, **({"marker": "o"} | style))
    band = ~(np.isnan(curve.lo) | np.isnan(curve.hi))
    # A zero-width band (one seed, no per-problem data) would only draw an outline: skip it.
    if band.any() and not np.allclose(curve.lo[band], curve.hi[band]):
        ax.fill_between(curve.x[band], curve.lo[band], curve.hi[band], alpha=alpha, color=style.get("color"),
                        linewidth=0)
        if alpha < 0.18:  # a light fill: its edges drawn thin, so each variant's band stays traceable
            for edge in (curve.lo[band], curve.hi[band]):
                ax.plot(curve.x[band], edge, linewidth=0.6, alpha=0.5, color=style.get("color"), label="_band")


def passk_figure(curves: dict[str, Curve], base: tuple[str, Curve] | None = None, title: str = "pass@k",
                 band_note: str = "", diffs: tuple[str, dict[str, Curve]] | None = None) -> Figure:
    """pass@k against k (log2 axis) per variant, the base/reference model dashed; with ``diffs``
    = (baseline, {variant: curve of variant - baseline}) a second panel below shows the paired
    differences with their bands around a zero line."""
    fig = Figure(figsize=(6.4, 7.2 if diffs else 4.4))
    ax = fig.add_subplot(2, 1, 1) if diffs else fig.add_subplot()
    palette = colours([*curves, *[v for v in (diffs[1] if diffs else {}) if v not in curves]])
    ks: set[float] = set()
    alpha = band_alpha(len(curves) + (base is not None))
    if base is not None:
        _draw(ax, base[1], base[0], alpha, **BASE_STYLE)
        ks.update(base[1].x.tolist())
    for label, curve in curves.items():
        _draw(ax, curve, label, alpha, color=palette[label])
        ks.update(curve.x.tolist())
    _k_axis(ax, ks)
    ax.set_ylabel("pass@k (unbiased)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)  # pass@k rises with k: the lower right stays clear
    if diffs:
        baseline, series = diffs
        dx = fig.add_subplot(2, 1, 2, sharex=ax)
        dx.axhline(0.0, color=palette.get(baseline, "0.25"), linewidth=1.0, linestyle="--")
        for label, curve in series.items():
            _draw(dx, curve, f"{label} − {baseline}", band_alpha(len(series)), color=palette[label])
        _k_axis(dx, ks)
        dx.set_ylabel(f"Δ pass@k vs {baseline}")
        dx.set_title(f"paired difference against {baseline} (95% interval over seeds x problems)", fontsize=10)
        dx.legend(loc="best", fontsize=8)
        fig.tight_layout(rect=(0, 0.03 if band_note else 0, 1, 1))
    if band_note:
        fig.text(0.01, 0.005, band_note, fontsize=7, color="0.35")
    return fig


def _k_axis(ax: Axes, ks: set[float]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(ks)
    ax.set_xticks(ticks, [str(int(k)) for k in ticks])
    ax.set_xlabel("k (samples per problem)")
    ax.grid(True, alpha=0.3)


def curves_figure(panels: list[tuple[str, dict[str, Curve]]], variants: list[str], band_note: str = "") -> Figure:
    """One panel per metric over training steps; each variant's mean over seeds with its band."""
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    palette = colours(variants)
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        alpha = band_alpha(sum(1 for c in series.values() if c.x.size))
        for label in variants:
            if label in series and series[label].x.size:
                _draw(ax, series[label], label, alpha, color=palette[label],
                      marker="." if series[label].x.size > 12 else "o")
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if band_note:
        fig.text(0.01, 0.005, band_note, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03 if band_note else 0, 1, 1))
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Render through the Agg canvas (no pyplot) and write a PNG."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return Path(path)
