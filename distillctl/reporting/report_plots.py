"""The report's pictures (matplotlib, Agg backend; each written atomically as one PNG):

- :func:`plot_accuracy`   accuracy against ipc, error bars, full-data / majority / chance lines
- :func:`plot_transfer`   the transfer matrix (distilled with x evaluated on), one heatmap per ipc
- :func:`plot_val_curve`  validation accuracy against outer step per Boost-DD stage, best step and stop marked
- :func:`plot_pca`        the distilled rows among the real training rows, 2-D PCA fitted on train, one panel per ipc

and :func:`pca_basis`, the projection :func:`plot_pca` draws (also stored in report.json).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.runs import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the same colour and marker per arm in every report
ARM_STYLE = {"distilled": ("o", "C0"), "distilled-hard": ("D", "C4"), "distilled-init": ("P", "C5"),
             "distilled-heads": ("X", "C6"), "random": ("s", "C1"), "herding": ("^", "C2"), "kcenter": ("v", "C3")}
#: real training rows drawn behind the synthetic ones in the PCA picture (a random subsample: speed, legibility)
PCA_REAL_ROWS = 2000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(summary: dict, path: Path, title: str) -> Path:
    """accuracy (%) against ipc on a log axis, error bars = std over seeds; full-data references (each one
    run), majority and chance as horizontal lines."""
    import matplotlib.ticker

    plt = _pyplot()
    rows = summary["tables"].get("accuracy", [])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for arm, header in summary["columns"]:
        if arm not in ARM_STYLE:
            continue
        pts = [(r["ipc"], r[arm]) for r in rows if r.get(arm)]
        if pts:
            marker, color = ARM_STYLE[arm]
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] * 100 for p in pts],
                        yerr=[p[1]["std"] * 100 for p in pts], marker=marker, color=color, capsize=3, label=header)
    styles = {"full": "-", "full-earlystop": "-.", "full-logreg": (0, (5, 1))}
    for arm, ref in (summary.get("references") or {}).items():
        acc = (ref or {}).get("accuracy")
        if not acc:
            continue
        ax.axhline(acc["mean"] * 100, color="black", ls=styles.get(arm, "-"), lw=1.2,
                   label=f"{summary['reference_headers'][arm]} ({acc['mean'] * 100:.1f} %)")
        if arm == "full":
            ax.axhspan((acc["mean"] - acc["std"]) * 100, (acc["mean"] + acc["std"]) * 100, color="black", alpha=0.08)
    maj = summary.get("majority")
    if maj:
        ax.axhline(maj["accuracy"] * 100, color="gray", ls="--", lw=1,
                   label=f"majority class ({maj['accuracy'] * 100:.1f} %)")
    if summary.get("chance") and (not maj or abs(summary["chance"] - maj["accuracy"]) > 1e-9):
        ax.axhline(summary["chance"] * 100, color="gray", ls=":", lw=1, label=f"chance ({summary['chance'] * 100:.1f} %)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # label only the ipc values
    if summary["ipcs"]:
        ax.set_xticks(summary["ipcs"])
        ax.set_xticklabels([str(i) for i in summary["ipcs"]])
    return _finish_line_plot(fig, ax, path, title, "instances per class (log scale)", "test accuracy (%)",
                             legend_size=8)


def plot_transfer(transfer: list[dict], path: Path, title: str) -> Path:
    """One heatmap per ipc: rows = student(s) the set was distilled with, columns = evaluating student;
    colour and first line = test accuracy (%), second line = its share of that student's full-data accuracy."""
    plt = _pyplot()
    n = len(transfer)
    cols = max(len(t["students"]) for t in transfer)
    rows = max(len(t["distilled_with"]) for t in transfer)
    label_w = 0.09 * max(len(str(m)) for t in transfer for m in t["distilled_with"])  # inches for row names
    # constrained layout keeps the row names, the colour bar and the titles inside the figure
    fig, axes = plt.subplots(1, n, figsize=(n * (label_w + 1.0 + 1.4 * cols) + 1.2, 1.8 + 0.8 * rows), dpi=120,
                             squeeze=False, layout="constrained")
    vals = [c["accuracy"]["mean"] * 100 for t in transfer for row in t["cells"] for c in row if c]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 100.0)
    for ax, t in zip(axes[0], transfer):
        grid = [[c["accuracy"]["mean"] * 100 if c else float("nan") for c in row] for row in t["cells"]]
        im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
        for i, row in enumerate(t["cells"]):
            for j, c in enumerate(row):
                if not c:
                    ax.text(j, i, "–", ha="center", va="center", color="gray")
                    continue
                text = f"{c['accuracy']['mean'] * 100:.1f}"
                if c.get("of_full") is not None:
                    text += f"\n{c['of_full'] * 100:.0f} % of full"
                light = c["accuracy"]["mean"] * 100 < (lo + hi) / 2  # white text on the dark end of viridis
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
        ax.set_xticks(range(len(t["students"])), t["students"])
        ax.set_yticks(range(len(t["distilled_with"])), t["distilled_with"])
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("distilled with")
        ax.set_title(f"ipc {t['ipc']}", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy (%)", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_val_curve(curves: list[dict], path: Path, title: str) -> Path:
    """Validation accuracy (%) against outer step, one line per Boost-DD stage (ipc); the chosen (best-on-val)
    step is a star, a recorded stop a cross with its reason in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for k, c in enumerate(curves):
        color = f"C{k % 10}"
        steps, accs = [p[0] for p in c["points"]], [p[1] * 100 for p in c["points"]]
        ax.plot(steps, accs, marker="o", ms=3, color=color, label=f"ipc {c['ipc']}")
        if c.get("chosen_step") is not None and c.get("chosen_val") is not None:
            ax.plot([c["chosen_step"]], [c["chosen_val"] * 100], marker="*", ms=14, color=color, mec="black",
                    ls="none", label=f"ipc {c['ipc']}: set used (step {c['chosen_step']})")
        stop = c.get("stop")
        if stop and stop.get("step") is not None:
            ax.axvline(stop["step"], color=color, ls=":", lw=1)
            ax.plot([stop["step"]], [accs[-1] if accs else 0], marker="x", ms=9, color=color, ls="none",
                    label=f"ipc {c['ipc']}: stopped at step {stop['step']}"
                          + (f" ({stop['reason']})" if stop.get("reason") else ""))
    return _finish_line_plot(fig, ax, path, title, "outer step (within its stage)", "validation accuracy (%)",
                             legend_size=7)


def _finish_line_plot(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, legend_size: int) -> Path:
    """Axis labels, title, a light grid and the legend (lower right) of a line plot, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def pca_basis(X: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(mean (d,), components (d, 2), explained variance ratio (2,)) of the rows of X, in float64.

    An exact SVD of the centred rows (no randomised approximation: the picture must not move between
    runs); each component's sign is fixed so that its largest-magnitude loading is positive.
    """
    import torch

    X = X.double()
    mu = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mu, full_matrices=False)  # Vh: (min(n, d), d)
    comps = Vh[:2].T.clone()  # (d, 2)
    if comps.shape[1] < 2:  # one row or one dimension: pad so the picture still has two axes
        comps = torch.cat([comps, torch.zeros(X.shape[1], 2 - comps.shape[1], dtype=X.dtype)], 1)
    for k in range(comps.shape[1]):
        if comps[comps[:, k].abs().argmax(), k] < 0:
            comps[:, k] = -comps[:, k]
    var = S.pow(2)
    ratio = (var[:2] / var.sum()) if var.sum() > 0 else torch.zeros(2, dtype=X.dtype)
    return mu, comps, torch.cat([ratio, torch.zeros(2 - ratio.numel(), dtype=X.dtype)])


def plot_pca(X: "torch.Tensor", y: "torch.Tensor", sets: list[dict], label_names: list[str], path: Path,
             title: str, *, seed: int = 0) -> tuple[Path, dict]:
    """The distilled rows in the plane of the first two principal components of the real training rows.

    ``sets``: ``[{"ipc", "x": (n, d), "classes": (n,)}]``, one panel each. Real rows: small and faint, a
    random subsample of :data:`PCA_REAL_ROWS`; synthetic rows: large, outlined, numbered by their row in the
    set (the numbering of the nearest-texts table), coloured by class. Returns (path, the projection data).
    """
    import torch

    plt = _pyplot()
    mu, comps, ratio = pca_basis(X)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(X.shape[0], generator=gen)[:PCA_REAL_ROWS] if X.shape[0] > PCA_REAL_ROWS \
        else torch.arange(X.shape[0])
    real = ((X[keep].double() - mu) @ comps).numpy()  # (m, 2)
    real_y = y[keep].long().numpy()
    faint = 0.35 if len(keep) < 500 else 0.12  # many dots need less ink each to stay a background
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.6), dpi=120, squeeze=False)
    data = {"explained_variance_ratio": [round(float(v), 6) for v in ratio], "real_rows_drawn": int(len(keep)),
            "sets": []}
    for ax, s in zip(axes[0], sets):
        syn = ((s["x"].double() - mu) @ comps).numpy()  # (n, 2)
        classes = [int(c) for c in s["classes"]]
        for c, name in enumerate(label_names):
            color = f"C{c % 10}"
            pts = real[real_y == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=faint, color=color, linewidths=0, label=f"{name} (real)")
            mine = [i for i, k in enumerate(classes) if k == c]
            if mine:
                ax.scatter(syn[mine, 0], syn[mine, 1], s=90, marker="*", color=color, edgecolors="black",
                           linewidths=0.8, label=f"{name} (distilled)", zorder=3)
        for i, (px, py) in enumerate(syn):
            ax.annotate(str(i), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7, zorder=4)
        ax.set_xlabel(f"PC 1 ({ratio[0] * 100:.1f} % of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1] * 100:.1f} % of variance)")
        ax.set_title(f"ipc {s['ipc']}", fontsize=10)
        ax.grid(True, alpha=0.2)
        data["sets"].append({"ipc": s["ipc"], "points": [[round(float(a), 6), round(float(b), 6)] for a, b in syn],
                             "classes": classes})
    legend = axes[0][-1].legend(fontsize=7, loc="best", markerscale=2.0)
    for handle in legend.legend_handles:  # the faint real dots would be invisible in the legend
        handle.set_alpha(1.0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path), data
