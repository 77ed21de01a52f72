"""Every figure of the project is drawn here, with one style and one set of axis limits."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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
    titles[row][col] a line above each cell (under the column's label on the first row)."""

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
            above = [col_labels[c]] if col_labels and r == 0 else []
            above += [titles[r][c]] if titles else []
            if above:
                ax.set_title("\n".join(above), fontsize=9 if len(above) == 1 else 8)
            if row_labels and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_animation(
    point_sets: list[np.ndarray], titles: list[str], path: Path, durations: list[int]
) -> None:
    """A GIF showing one point set per frame, frame i for durations[i] milliseconds (Pillow)."""
    fig, ax = plt.subplots(figsize=(LARGE_INCHES, LARGE_INCHES), dpi=DPI)
    _square_axes(ax)
    scatter = ax.scatter(point_sets[0][:, 0], point_sets[0][:, 1], **_style(point=SMALL_POINT))
    images = []
    for points, title in zip(point_sets, titles):
        scatter.set_offsets(points)
        ax.set_title(title, fontsize=10)
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB"))
    plt.close(fig)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)


# What each method's loss is the MSE of (ddpm.py, section 6): the network's output F against
LOSS_TARGETS = {  # its target, for the title of loss.png
    "ddpm": "MSE of eps",
    "flow": "MSE of the velocity eps - x_0",
    "edm": "MSE of F against (x_0 - c_skip x) / c_out",
    "edm, stable target": "MSE of F against (E[x_0 | x] - c_skip x) / c_out",
    "edm, consistency": "pseudo-Huber |D(x_t) - the teacher's ODE end| / sqrt(t)",
    "discrete": "(1/t) cross-entropy of the masked tokens",
}


def _loss_target(config: dict) -> str:
    """What a run's loss fits: its method's LOSS_TARGETS entry, for EDM as it trained."""
    if config["method"] != "edm":
        return LOSS_TARGETS[config["method"]]
    if config.get("consistency"):
        return LOSS_TARGETS["edm, consistency"]
    return LOSS_TARGETS["edm, stable target" if config.get("stable_target") else "edm"]


def save_loss(losses: np.ndarray, path: Path, config: dict, window: int = 100) -> None:
    """Every step's loss, faint, under its moving average; the title names what the run's
    (config's) network is fit to."""
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
    ax.set_ylabel("loss")
    ax.set_title(f"{config['method']}: {_loss_target(config)}", fontsize=9)
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
    log_densities: list[np.ndarray],
    samples: list[np.ndarray],
    titles: list[str],
    path: Path,
    top_value: float,
) -> None:
    """A column per model: its log density over [-LIMIT, LIMIT]^2 (an (N, N) grid, rows along
    y) above its samples (M, 2). One colour scale for all, from top_value down 8 nats (higher
    values in its top colour), and its bar."""
    fig, axes = plt.subplots(2, len(titles), figsize=(len(titles) * 2.4, 2 * 2.4), squeeze=False)
    for column, (log_p, points, title) in enumerate(zip(log_densities, samples, titles)):
        top, bottom = axes[0][column], axes[1][column]
        top.imshow(
            log_p,
            origin="lower",
            extent=(-LIMIT, LIMIT, -LIMIT, LIMIT),
            vmin=top_value - 8,
            vmax=top_value,
            cmap="magma",
        )
        _square_axes(top)
        top.set_title(title, fontsize=9)
        _square_axes(bottom)
        bottom.scatter(points[:, 0], points[:, 1], **_style(point=SMALL_POINT))
    axes[0][0].set_ylabel("log density", fontsize=9)
    axes[1][0].set_ylabel("1000 samples", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    bar = fig.colorbar(axes[0][0].images[0], cax=fig.add_axes((0.94, 0.55, 0.012, 0.4)))
    bar.set_label("log p (nats); higher: top colour", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_field(
    grid: np.ndarray,
    arrows: list[list[np.ndarray]],
    errors: list[np.ndarray],
    data: np.ndarray,
    path: Path,
    row_labels: list[str],
    col_labels: list[str],
    limits,
) -> None:
    """Rows of vector fields over an even grid of points (G*G, 2), arrows[row][col] (G*G, 2):
    each drawn as an arrow of one length in its direction, coloured by its true length (a log
    scale), over the data (M, 2) in grey; a last row of errors[col] (E, E), rows along y, on a
    log colour scale. limits: (xmin, xmax, ymin, ymax) of every panel."""
    rows, cols = len(arrows) + 1, len(col_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.0, rows * 3.7), squeeze=False)
    spacing = (grid[:, 0].max() - grid[:, 0].min()) / (np.sqrt(len(grid)) - 1)
    lengths = matplotlib.colors.LogNorm(1e-3, 10)
    for r, row in enumerate(arrows):
        for c, arrow in enumerate(row):
            ax = axes[r][c]
            ax.scatter(data[:, 0], data[:, 1], s=1, color="0.6", linewidths=0)
            length = np.linalg.norm(arrow, axis=1, keepdims=True)
            unit = 0.8 * spacing * arrow / np.maximum(length, 1e-12)
            field = ax.quiver(
                *grid.T, *unit.T, length[:, 0], angles="xy", scale_units="xy", scale=1,
                width=0.007, headwidth=4, cmap="turbo", norm=lengths,
            )  # fmt: skip
    norm = matplotlib.colors.LogNorm(1e-3, max(error.max() for error in errors))
    for c, error in enumerate(errors):
        image = axes[-1][c].imshow(
            error, origin="lower", extent=limits, norm=norm, cmap="viridis", interpolation="nearest"
        )
        axes[-1][c].scatter(data[:, 0], data[:, 1], s=1, color="white", alpha=0.3, linewidths=0)
    for r, row in enumerate(axes):
        for c, ax in enumerate(row):
            _square_axes(ax, limits)
            ax.set_aspect("equal")
            if r == 0:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    for mappable, (bottom, height), label in (
        (field, (1 / rows + 0.05, 1 - 1 / rows - 0.1), "arrow's length |D(x; σ) - x|"),
        (image, (0.05, 1 / rows - 0.1), "|D_network - D_exact|"),
    ):
        bar = fig.colorbar(mappable, cax=fig.add_axes((0.91, bottom, 0.012, height)))
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_paths(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, limits=None) -> None:
    """A panel per (title, paths (steps, k, 2), samples (N, 2)): the paths in grey from their
    start (a black dot) to their end (a red one), over the samples in blue."""
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * 3.0, 4.0), squeeze=False)
    for ax, (title, lines, points) in zip(axes[0], panels):
        ax.scatter(points[:, 0], points[:, 1], **_style(point=SMALL_POINT))
        ax.plot(lines[:, :, 0], lines[:, :, 1], color="0.35", linewidth=0.6)
        ax.scatter(lines[0, :, 0], lines[0, :, 1], s=6, color="black", zorder=3)
        ax.scatter(lines[-1, :, 0], lines[-1, :, 1], s=6, color="tab:red", zorder=3)
        _square_axes(ax, limits)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_noise_levels(
    log_sigma: np.ndarray,
    curves: list[tuple[str, np.ndarray, np.ndarray]],
    marks: list[tuple[float, str]],
    path: Path,
) -> None:
    """Two panels over one log-sigma axis, log_sigma (L,) natural logs: for each (name, density
    (L,), weighted (L,)) the density of the training noise levels per unit of ln sigma (above)
    and that density times the loss weight (below, a log scale, zeros left out); marks:
    (sigma, name) dotted lines, named above the figure."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    sigma = np.exp(log_sigma)
    for name, density, weighted in curves:
        top.plot(sigma, density, label=name)
        bottom.plot(sigma, np.where(weighted > 0, weighted, np.nan), label=name)
    for ax in (top, bottom):
        ax.set_xscale("log")
        for value, _ in marks:
            ax.axvline(value, color="0.5", linestyle=":", linewidth=1)
    named = top.secondary_xaxis("top")
    named.set_xticks([value for value, _ in marks], [name for _, name in marks], fontsize=8)
    named.minorticks_off()
    top.set_ylabel("training density p(ln σ)")
    top.set_ylim(bottom=0)
    bottom.set_yscale("log")
    bottom.set_ylim(1e-3, 1e4)
    bottom.set_ylabel("p(ln σ) × λ(σ): weight on |D - x_0|²")
    bottom.set_xlabel("σ (log scale)")
    bottom.set_xlim(sigma[0], sigma[-1])
    fig.legend(*top.get_legend_handles_labels(), loc="lower center", frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def padded_limits(points: np.ndarray) -> list[float]:
    """(xmin, xmax, ymin, ymax): the box of points (m, 2), widened by a fifth on every side."""
    low, high = points.min(0), points.max(0)
    return np.stack((low - 0.2 * (high - low), high + 0.2 * (high - low))).T.flatten().tolist()
