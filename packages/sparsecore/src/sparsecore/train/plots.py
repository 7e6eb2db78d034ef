"""PNG plots of a run (matplotlib, Agg backend): learning curves and per-layer density."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CURVES_NAME = "curves.png"
DENSITY_NAME = "density.png"
#: Up to this many layers the density plot draws lines; more get a heatmap.
MAX_LINES = 10


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, metrics: list[dict[str, Any]], title: str) -> None:
    """Accuracy (left) and loss (right) per epoch, train dashed and test solid."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    style = {"marker": "o", "markersize": 4}
    acc_ax.plot(epochs, [100 * m["train_acc"] for m in metrics], "--", color="tab:blue", label="train", **style)
    acc_ax.plot(epochs, [100 * m["test_acc"] for m in metrics], "-", color="tab:orange",
                label=f"test (final {100 * metrics[-1]['test_acc']:.2f}%)", **style)
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "--", color="tab:blue", label="train", **style)
    loss_ax.plot(epochs, [m["test_loss"] for m in metrics], "-", color="tab:orange", label="test", **style)
    loss_ax.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    losses = [m[k] for m in metrics for k in ("train_loss", "test_loss")]
    if min(losses) > 0 and max(losses) / min(losses) > 10:  # log scale only when it spans a decade
        from matplotlib.ticker import FormatStrFormatter

        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        loss_ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    phases = _phase_spans(metrics)
    for ax in (acc_ax, loss_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
        for start, end, name, k in phases:
            ax.axvspan(start - 0.5, end + 0.5, color=f"C{k % 10}", alpha=0.08, lw=0)
            ax.text((start + end) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=8, color="0.3")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _phase_spans(metrics: list[dict[str, Any]]) -> list[tuple[int, int, str, int]]:
    spans: list[tuple[int, int, str, int]] = []
    for m in metrics:
        phase = m.get("phase")
        if phase is None:
            return []
        if spans and spans[-1][2] == phase:
            spans[-1] = (spans[-1][0], m["epoch"], phase, spans[-1][3])
        else:
            spans.append((m["epoch"], m["epoch"], phase, len(spans)))
    return spans if len(spans) > 1 else []


def plot_density(path: Path, metrics: list[dict[str, Any]], title: str) -> None:
    """Per-layer density per epoch: lines (with the overall density dashed) or, for many layers, a heatmap."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in metrics]
    names = list(metrics[-1]["layer_densities"])
    values = [[m["layer_densities"].get(n, float("nan")) for m in metrics] for n in names]
    if len(names) <= MAX_LINES:
        fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
        for k, (name, row) in enumerate(zip(names, values, strict=True)):
            ax.plot(epochs, row, marker="o", markersize=4, color=f"C{k % 10}", label=name)
        ax.plot(epochs, [m["density"] for m in metrics], "--", color="black", lw=2, label="overall")
        ax.set(xlabel="epoch", ylabel="density (fraction of weights kept)",
               title="Per-layer density at each epoch's evaluation")
        ax.set_ylim(0, max(1e-3, 1.1 * max(max(r) for r in [*values, [m["density"] for m in metrics]])))
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best", fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(epochs) + 4), max(4, 0.28 * len(names) + 1.5)),
                               constrained_layout=True)
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest",
                          extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(names) - 0.5, -0.5))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="epoch", title="Per-layer density at each epoch's evaluation")
        fig.colorbar(image, ax=ax, label="density (fraction of weights kept)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(run_dir: Path, metrics: list[dict[str, Any]], title: str, dense: bool = False) -> list[Path]:
    """Write the run's plots; the density plot is left out for dense runs. Returns the files written."""
    written = [Path(run_dir) / CURVES_NAME]
    plot_curves(written[0], metrics, title)
    if not dense:
        written.append(Path(run_dir) / DENSITY_NAME)
        plot_density(written[1], metrics, title)
    return written
