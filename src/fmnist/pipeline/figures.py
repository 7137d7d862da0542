"""Pictures for people: sample grids, prediction grids, confusion matrices, comparison bars.

Figures are matplotlib Figure objects saved by the Agg canvas, outside pyplot's registry; only
mlxtend's confusion matrix needs pyplot, which it gets on the Agg backend when it draws. Only
the compare stage imports this module, which spares the others matplotlib's import.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fmnist.pipeline.atomic import atomic_path

# No software/version stamp in PNGs, so identical inputs give identical bytes.
PNG_METADATA = {"Software": None}
RIGHT, WRONG = "green", "red"
_MLXTEND_CONFUSION = "fmnist_mlxtend_plot_confusion_matrix"


def new_figure(figsize: tuple[float, float]) -> Figure:
    """Return an empty figure that belongs to no pyplot state (freed when dropped)."""
    return Figure(figsize=figsize)


def save_figure(fig: Figure, path: str | Path) -> None:
    """Save a figure as PNG atomically (Figure.savefig uses the Agg canvas for PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata=PNG_METADATA)


def pick(n_items: int, k: int, seed: int) -> list[int]:
    """Pick `k` distinct indices reproducibly (numpy's generator, independent of torch)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_items, size=min(k, n_items), replace=False).tolist())


def image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    rows: int,
    cols: int,
    colors: Sequence[str] | None = None,
) -> None:
    """Draw grayscale images in a rows x cols grid, each titled (and optionally coloured)."""
    lines = max((title.count("\n") + 1 for title in titles), default=1)
    fig = new_figure((2.2 * cols, (2.1 + 0.2 * lines) * rows))
    axes = fig.subplots(rows, cols)
    for i, ax in enumerate(np.asarray(axes).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            color = colors[i] if colors is not None else "black"
            # A fixed y spares matplotlib placing each title around its axes' ticks on every
            # draw (there are none: the axes are off), which was most of the grid's time.
            ax.set_title(titles[i], fontsize=9, color=color, y=1.0)
    fig.tight_layout()
    save_figure(fig, path)


def sample_grid(
    images: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    path: str | Path,
    seed: int,
    rows: int = 4,
    cols: int = 4,
) -> None:
    """Draw randomly picked images titled with their class names."""
    chosen = pick(len(images), rows * cols, seed)
    titles = [classes[int(labels[i])] for i in chosen]
    image_grid(images[chosen], titles, path, rows, cols)


def prediction_grid(
    images: np.ndarray,
    predictions: Sequence[int],
    truths: Sequence[int],
    classes: Sequence[str],
    path: str | Path,
    seed: int,
    rows: int = 3,
    cols: int = 3,
) -> None:
    """Draw random images titled 'Pred: X', 'Truth: Y', green when right and red when wrong."""
    chosen = pick(len(images), rows * cols, seed)
    pairs = [(int(predictions[i]), int(truths[i])) for i in chosen]
    # Two lines: on one, the titles of neighbouring images ran into each other.
    titles = [f"Pred: {classes[p]}\nTruth: {classes[t]}" for p, t in pairs]
    colors = [RIGHT if p == t else WRONG for p, t in pairs]
    image_grid(images[chosen], titles, path, rows, cols, colors)


def _mlxtend_confusion_matrix() -> Callable[..., tuple[Figure, Axes]]:
    """mlxtend's plot_confusion_matrix, loaded from its own module file.

    `from mlxtend.plotting import ...` runs the package's __init__, which imports scikit-learn
    for other plots: 0.7 s of the compare stage. The function's module needs only pyplot and
    numpy. Should a release move the file, the package import still works, only slower.
    """
    module = sys.modules.get(_MLXTEND_CONFUSION)
    found = importlib.util.find_spec("mlxtend") if module is None else None
    if found is not None and found.origin and "mlxtend.plotting" not in sys.modules:
        file = Path(found.origin).parent / "plotting" / "plot_confusion_matrix.py"
        if file.is_file():
            spec = importlib.util.spec_from_file_location(_MLXTEND_CONFUSION, file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[_MLXTEND_CONFUSION] = module
    if module is not None:
        return module.plot_confusion_matrix
    from mlxtend.plotting import plot_confusion_matrix

    return plot_confusion_matrix


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> tuple[Figure, Axes]:
    """Draw a confusion matrix with mlxtend, as the lesson does: true classes in rows."""
    import matplotlib.pyplot as plt

    plot_confusion_matrix = _mlxtend_confusion_matrix()
    # mlxtend labels pyplot's current axes, so the figure must be pyplot's; on Agg, never a
    # window. Set here, not at import, so that importing this module changes nothing.
    plt.switch_backend("agg")
    fig, ax = plot_confusion_matrix(conf_mat=matrix, class_names=list(classes), figsize=(10, 7))
    ax.set_title(title)
    return fig, ax


def confusion_png(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str) -> None:
    """Save `confusion_figure` as PNG."""
    import matplotlib.pyplot as plt

    fig, _ = confusion_figure(matrix, classes, title)
    save_figure(fig, path)
    plt.close(fig)


def accuracy_bars(models: Sequence[str], accuracy: Sequence[float], path: str | Path) -> None:
    """Draw test accuracy per model as horizontal bars, labelled with the value."""
    fig = new_figure((7, 0.6 * len(models) + 1.2))
    ax = fig.add_subplot()
    percent = [100 * a for a in accuracy]
    bars = ax.barh(list(models), percent, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{p:.2f}%" for p in percent], padding=3)
    ax.set_xlim(0, 105)
    ax.set_xlabel("test accuracy (%)")
    ax.invert_yaxis()
    ax.set_title("Fashion-MNIST test accuracy by model")
    fig.tight_layout()
    save_figure(fig, path)
