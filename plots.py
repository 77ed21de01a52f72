"""Every figure of the project is drawn here, with one style and one set of axis limits."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LIMIT = 6.0  # all datasets fit in [-6, 6]^2, as in the original's plots
POINT = dict(s=4, alpha=0.5, color="tab:blue", linewidths=0)


def _square_axes(ax):
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def save_frames(frames: np.ndarray, epochs: list[int], folder: Path) -> None:
    """One PNG per saved frame: folder/NNNN.png, NNNN the index of the frame."""
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    _square_axes(ax)
    scatter = ax.scatter(frames[0][:, 0], frames[0][:, 1], **POINT)
    for i, (points, epoch) in enumerate(zip(frames, epochs)):
        scatter.set_offsets(points)  # redraw only the points: one figure for all frames
        ax.set_title(f"epoch {epoch}")
        fig.savefig(folder / f"{i:04d}.png", dpi=80)
    plt.close(fig)


def save_samples(points: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    _square_axes(ax)
    ax.scatter(points[:, 0], points[:, 1], **POINT)
    ax.set_title(title)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
