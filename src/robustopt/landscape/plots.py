"""Figures of the landscape experiments, drawn from saved numbers (:class:`Result`).

Every figure is built on matplotlib's object API with an Agg canvas of its own, so the
caller's global backend is never touched, and written atomically as a PNG reduced to a
256-colour palette (these figures are committed to the repository; they stay small).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from .common import Result

DPI = 100
_RUN_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, *, palette: bool = True) -> bytes:
    """The figure as PNG bytes (optionally quantised to a 256-colour palette)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = buf.getvalue()
    if not palette:
        return data
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    small = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure as a (small) PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, figure_png(fig))
    return path


def _loss_scale(ax, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=0.1)


# ----------------------------------------------------------------------------- experiment 1


def plot_direction(result: Result, path: str | Path, title: str | None = None) -> Path:
    """Loss along the FGSM and PGD segments: one thin line per point, the median bold."""
    a, s = result.arrays, result.meta["summary"]
    t = a["t"]
    fig = new_figure(9.0, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    both = np.concatenate([a["fgsm_loss"].ravel(), a["pgd_loss"].ravel()])
    for ax, key, name, color in ((axes[0], "fgsm_loss", "FGSM", "tab:blue"),
                                 (axes[1], "pgd_loss", "PGD", "tab:red")):
        curves = a[key]
        for row in curves:
            ax.plot(t, row, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(t, np.median(curves, axis=0), color="black", linewidth=2, label="median")
        acc = s["fgsm_accuracy"] if key == "fgsm_loss" else s["pgd_accuracy"]
        ax.set_title(f"x + t ({name} point - x): end loss {curves[:, -1].mean():.3g}, "
                     f"acc {acc:.0%}", fontsize=9)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        _loss_scale(ax, both)
    axes[0].set_ylabel(f"{result.meta['settings']['loss']} loss")
    axes[0].legend(fontsize=8, loc="upper left")
    th = result.meta["settings"]["threat"]
    fig.suptitle((title + ": " if title else "") + f"loss along the attack direction "
                 f"({s['n']} points, {th['norm']} eps {th['eps']:g})", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- experiment 2


def plot_restarts(results: Sequence[tuple[str, Result]], path: str | Path,
                  max_points: int = 5) -> Path:
    """Histograms of the final PGD loss over restarts: one row per model, one column per point."""
    rows = len(results)
    cols = min(max(r.arrays["final_loss"].shape[0] for _, r in results), max_points)
    fig = new_figure(2.6 * cols + 0.6, 2.3 * rows + 0.5)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, (label, res) in enumerate(results):
        final = res.arrays["final_loss"]
        idx = res.meta.get("indices") or list(range(final.shape[0]))
        for j in range(cols):
            ax = axes[i, j]
            if j >= final.shape[0]:
                ax.axis("off")
                continue
            ax.hist(final[j], bins=60, color=_RUN_COLORS[i % len(_RUN_COLORS)], log=True)
            ax.set_title(f"{label}: test #{idx[j]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("final loss", fontsize=7)
            if j == 0:
                ax.set_ylabel("restarts (log)", fontsize=7)
    s = results[0][1].meta["settings"]
    fig.suptitle(f"final PGD-{s['steps']} loss over {s['restarts']:,} random restarts "
                 f"({s['threat']['norm']} eps {s['threat']['eps']:g})", fontsize=10)
    return save_figure(fig, path)


def plot_traces(results: Sequence[tuple[str, Result]], path: str | Path,
                max_points: int = 5) -> Path:
    """Loss against PGD iteration for the first restarts (the seed's Figure 1)."""
    results = [(lbl, r) for lbl, r in results if "trace" in r.arrays]
    rows = max(len(results), 1)
    cols = min(max((r.arrays["trace"].shape[0] for _, r in results), default=1), max_points)
    fig = new_figure(2.6 * cols + 0.6, 2.3 * rows + 0.5)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, (label, res) in enumerate(results):
        tr = res.arrays["trace"]
        idx = res.meta.get("indices") or list(range(tr.shape[0]))
        for j in range(cols):
            ax = axes[i, j]
            if j >= tr.shape[0]:
                ax.axis("off")
                continue
            for row in tr[j]:
                ax.plot(np.arange(tr.shape[2]), row, color=_RUN_COLORS[i % len(_RUN_COLORS)],
                        alpha=0.5, linewidth=0.8)
            ax.set_title(f"{label}: test #{idx[j]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("PGD iteration", fontsize=7)
            if j == 0:
                ax.set_ylabel("loss", fontsize=7)
    if results:
        fig.suptitle(f"loss along PGD for {results[0][1].arrays['trace'].shape[1]} random "
                     "starts per point", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- experiment 3


def plot_surface(result: Result, path: str | Path, title: str | None = None,
                 max_points: int = 3) -> Path:
    """Per point: the loss on the (l1, l2) plane and on the segment between the maxima."""
    a = result.arrays
    lam, s = a["lam"], a["s"]
    n = min(a["loss"].shape[0], max_points)
    idx = result.meta.get("indices") or list(range(a["loss"].shape[0]))
    fig = new_figure(8.5, 3.4 * n + 0.4)
    axes = np.atleast_2d(fig.subplots(n, 2, squeeze=False,
                                      gridspec_kw={"width_ratios": [1.15, 1]}))
    extent = (lam[0], lam[-1], lam[0], lam[-1])
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")  # outside the set
    for i in range(n):
        ax = axes[i, 0]
        shown = np.where(a["inside"][i], a["loss"][i], np.nan)
        if not np.isfinite(shown).any():
            shown = a["loss"][i]
        im = ax.imshow(shown, origin="lower", extent=extent, aspect="equal",
                       cmap=cmap, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        ax.plot([1, 0], [0, 1], color="white", linestyle="--", linewidth=1)
        ax.plot([0, 1, 0], [0, 0, 1], "o", color="white", markersize=4)
        ax.annotate("x", (0, 0), color="white", fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
        ax.annotate("adv1", (1, 0), color="white", fontsize=8, xytext=(-24, 4),
                    textcoords="offset points")
        ax.annotate("adv2", (0, 1), color="white", fontsize=8, xytext=(4, -10),
                    textcoords="offset points")
        ax.set_xlabel("λ1 (towards adv1)", fontsize=8)
        ax.set_ylabel("λ2 (towards adv2)", fontsize=8)
        ax.tick_params(labelsize=7)
        ang = float(a["angle_deg"][i])
        base = a["random_angle_deg"][i] if "random_angle_deg" in a else float("nan")
        ax.set_title(f"test #{idx[i]}: angle(d1, d2) = {ang:.1f}° (random pair {base:.0f}°)"
                     "\ngrey: outside the threat set", fontsize=8)
        ax2 = axes[i, 1]
        seg = a["segment_loss"][i]
        ax2.plot(s, seg, color="tab:red", label="loss on the segment")
        ax2.plot([0, 1], [seg[0], seg[-1]], color="gray", linestyle="--", label="chord")
        ax2.set_xlabel("s in (1-s) adv1 + s adv2", fontsize=8)
        ax2.set_ylabel("loss", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
        ax2.set_title(f"between the maxima: ends {seg[0]:.3g} / {seg[-1]:.3g}, "
                      f"min {seg.min():.3g}", fontsize=8)
    th = result.meta["settings"]["threat"]
    fig.suptitle((title + ": " if title else "") + "two PGD maxima from different starts "
                 f"({th['norm']} eps {th['eps']:g})", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- experiment 4


def plot_curves(result: Result, path: str | Path | None = None, title: str | None = None
                ) -> Path | bytes:
    """Robust loss and accuracies against training iterations, one colour per run.

    Returns the path written, or the PNG bytes when ``path`` is None (for the report).
    """
    runs = result.meta["runs"]
    fig = new_figure(10.0, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    styles = {"train_loss": ("-", "training loss ({})"),
              "heldout_robust_loss": ("--", "held-out PGD loss"),
              "train_robust_acc": (":", "training acc. ({})"),
              "heldout_clean_acc": ("--", "held-out clean acc."),
              "heldout_pgd_acc": ("-", "held-out PGD acc.")}
    x_is_iter = all(r.get("iteration") for r in runs)
    losses = []
    for i, r in enumerate(runs):
        color = _RUN_COLORS[i % len(_RUN_COLORS)]
        xs = r["iteration"] if x_is_iter else r["epoch"]
        adv = r.get("adversary")
        seen = "clean examples" if adv == "none" else f"{adv or 'adv.'} examples"
        for key, (ls, name) in styles.items():
            name = name.format(seen)
            if key not in r:
                continue
            ys = [np.nan if v is None else v for v in r[key]]
            ax = ax_loss if key.endswith("loss") else ax_acc
            if ax is ax_loss:
                losses.extend(ys)
            ax.plot(xs, ys, linestyle=ls, marker="o", markersize=3, color=color,
                    label=f"{r['label']}: {name}" if len(runs) > 1 else name)
    for ax, ylabel in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.set_xlabel("training iterations" if x_is_iter else "epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if len(runs) > 1 else 7)
    ax_acc.set_ylim(-0.02, 1.02)
    if losses:
        _loss_scale(ax_loss, np.asarray(losses, dtype=float))
    ax_loss.set_title("training loss and held-out robust (PGD) loss", fontsize=9)
    ax_acc.set_title("robust and clean accuracy", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is None:
        return figure_png(fig)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- experiment 5


def plot_fgsm_vs_pgd(result: Result, path: str | Path) -> Path:
    """Grouped bars: clean, FGSM, FGSM (predicted labels) and PGD accuracy per model."""
    meta = result.meta
    labels = meta["labels"]
    cols = meta["columns"]
    names = {"clean": "clean", "fgsm": "FGSM", "fgsm_pred": "FGSM (pred. labels)",
             "pgd": f"PGD-{meta['settings']['steps']}"}
    colors = {"clean": "tab:gray", "fgsm": "tab:blue", "fgsm_pred": "tab:cyan",
              "pgd": "tab:red"}
    fig = new_figure(1.9 * len(labels) + 3.0, 3.6)
    ax = fig.subplots(1, 1)
    width = 0.8 / len(cols)
    xs = np.arange(len(labels))
    for k, c in enumerate(cols):
        vals = [meta["models"][lbl]["accuracy"][c] for lbl in labels]
        bars = ax.bar(xs + (k - (len(cols) - 1) / 2) * width, vals, width, label=names[c],
                      color=colors[c])
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.0%}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(xs, [lbl + (" (leaks)" if meta["models"][lbl]["label_leaking"] else "")
                       for lbl in labels], fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    th = meta["settings"]["threat"]
    ax.set_title(f"accuracy under FGSM and PGD ({meta['settings']['n']} test points, "
                 f"{th['norm']} eps {th['eps']:g})", fontsize=9)
    return save_figure(fig, path)
