"""Every figure of the project is drawn here, with one style and one set of axis limits."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402

LIMIT = 6.0  # all datasets fit in [-6, 6]^2, as in the original's plots
POINT = dict(s=3, alpha=0.5, linewidths=0)
CELL_INCHES, DPI = 1.8, 80
# The headline pictures, big enough to see sharpness: 480 px, points small enough that the
# dino's dotted strokes (clusters 0.011 wide) stay apart.
LARGE_INCHES, SMALL_POINT = 6.0, dict(s=2, alpha=0.8, linewidths=0)


def _square_axes(ax, limits=None) -> None:
    """limits: (xmin, xmax, ymin, ymax), default [-6, 6]^2."""
    xmin, xmax, ymin, ymax = limits or (-LIMIT, LIMIT, -LIMIT, LIMIT)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal" if limits is None else "auto")
    ax.set_xticks([])
    ax.set_yticks([])


def _style(labels=None, point=POINT) -> dict:
    """Scatter style; one colour per class when there are labels."""
    if labels is None:
        return point | {"color": "tab:blue"}
    return point | {"c": labels, "cmap": "tab10", "vmin": 0, "vmax": 9}


def save_samples(data: np.ndarray, samples: np.ndarray, path: Path, title: str) -> None:
    """The README's headline picture: true points (N, 2) beside the samples (N, 2), both zoomed
    to the data's square box, with points large enough that the dino's dotted strokes show."""
    centre = (data.min(0) + data.max(0)) / 2
    half = (data.max(0) - data.min(0)).max() / 2 * 1.08
    fig, axes = plt.subplots(1, 2, figsize=(2 * LARGE_INCHES, LARGE_INCHES))
    for ax, points, name in zip(
        axes, (data, samples), (f"the data, {len(data)} fresh draws", title)
    ):
        ax.scatter(points[:, 0], points[:, 1], s=5, alpha=0.7, linewidths=0, color="tab:blue")
        _square_axes(ax, (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half))
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the titles above the square panels
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_frames(
    frames: np.ndarray, epochs: list[int], folder: Path, labels=None, limits=None
) -> None:
    """One PNG per saved frame: folder/NNNN.png, NNNN the index of the frame; labels (N,) colour
    the classes."""
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    _square_axes(ax, limits)
    scatter = ax.scatter(frames[0][:, 0], frames[0][:, 1], **_style(labels))
    for i, (points, epoch) in enumerate(zip(frames, epochs)):
        scatter.set_offsets(points)  # redraw only the points: one figure for all frames
        ax.set_title(f"epoch {epoch}")
        fig.savefig(folder / f"{i:04d}.png", dpi=DPI)
    plt.close(fig)


def save_grid(
    cells: list[list[np.ndarray]],
    path: Path,
    row_labels=None,
    col_labels=None,
    title=None,
    classes=None,
    paths=None,
    titles=None,
) -> None:
    """A grid of scatter plots: cells[row][col] is an (N, 2) point set, classes[row][col] its
    (N,) labels; paths[row][col], if not None, (steps, N, 2) lines drawn under the points;
    titles[row][col], if given, each cell's title in place of col_labels."""

    rows, cols = len(cells), len(cells[0])
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * CELL_INCHES, rows * CELL_INCHES), squeeze=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    for r, row in enumerate(cells):
        for c, points in enumerate(row):
            ax = axes[r][c]
            _square_axes(ax)
            if paths is not None and paths[r][c] is not None:
                ax.plot(paths[r][c][:, :, 0], paths[r][c][:, :, 1], color="0.6", linewidth=0.3)
            ax.scatter(
                points[:, 0], points[:, 1], **_style(None if classes is None else classes[r][c])
            )
            if col_labels and r == 0:
                ax.set_title(col_labels[c], fontsize=9)
            if titles:
                ax.set_title(titles[r][c], fontsize=9)
            if row_labels and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_animation(
    point_sets: list[np.ndarray], titles: list[str], path: Path, fps: int = 10
) -> None:
    """A GIF showing one point set per frame (matplotlib's Pillow writer)."""
    fig, ax = plt.subplots(figsize=(LARGE_INCHES, LARGE_INCHES))
    _square_axes(ax)
    scatter = ax.scatter(point_sets[0][:, 0], point_sets[0][:, 1], **_style(point=SMALL_POINT))

    def draw(i):
        scatter.set_offsets(point_sets[i])
        ax.set_title(titles[i], fontsize=9)
        return (scatter,)

    FuncAnimation(fig, draw, frames=len(point_sets)).save(
        path, writer=PillowWriter(fps=fps), dpi=DPI
    )
    plt.close(fig)


def save_loss(losses: np.ndarray, path: Path, window: int = 100) -> None:
    """Every step's loss, faint, under its moving average."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, color="tab:blue", alpha=0.2, linewidth=0.5, label="per step")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(
            np.arange(window - 1, len(losses)),
            smooth,
            color="tab:blue",
            label=f"mean of {window} steps",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (MSE of eps)")
    ax.set_yscale("log")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _show_log_density(ax, log_p: np.ndarray, extent) -> None:
    """log p on an (N, N) grid (rows along y) over extent (xmin, xmax, ymin, ymax), shown down to
    8 nats below its peak: the strokes and what lies between them."""
    top = log_p.max()
    ax.imshow(log_p, origin="lower", extent=extent, vmin=top - 8, vmax=top, cmap="magma")


def save_log_density(log_p: np.ndarray, extent, points: np.ndarray, path: Path, title: str):
    """One model's log density (an (N, N) grid over extent) with the training points on top."""
    fig, ax = plt.subplots(figsize=(LARGE_INCHES, LARGE_INCHES))
    _show_log_density(ax, log_p, extent)
    ax.scatter(points[:, 0], points[:, 1], s=1, color="white", alpha=0.4, linewidths=0)
    _square_axes(ax, None if tuple(extent) == (-LIMIT, LIMIT, -LIMIT, LIMIT) else extent)
    ax.set_title(f"{title}: log p (nats) and the training data", fontsize=10)
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_densities(
    log_densities: list[np.ndarray], samples: list[np.ndarray], titles: list[str], path: Path
) -> None:
    """A column per model: its log density over [-LIMIT, LIMIT]^2 (an (N, N) grid, rows along
    y) above its samples (M, 2)."""
    fig, axes = plt.subplots(2, len(titles), figsize=(len(titles) * 2.4, 2 * 2.4), squeeze=False)
    for column, (log_p, points, title) in enumerate(zip(log_densities, samples, titles)):
        top, bottom = axes[0][column], axes[1][column]
        _show_log_density(top, log_p, (-LIMIT, LIMIT, -LIMIT, LIMIT))
        _square_axes(top)
        top.set_title(title, fontsize=9)
        _square_axes(bottom)
        bottom.scatter(points[:, 0], points[:, 1], **_style(point=SMALL_POINT))
    axes[0][0].set_ylabel("log density", fontsize=9)
    axes[1][0].set_ylabel("1000 samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def padded_limits(points: np.ndarray) -> list[float]:
    """(xmin, xmax, ymin, ymax): the box of points (m, 2), widened by a fifth on every side."""
    low, high = points.min(0), points.max(0)
    return np.stack((low - 0.2 * (high - low), high + 0.2 * (high - low))).T.flatten().tolist()
