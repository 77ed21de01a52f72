"""How close are samples to the data? The exact 2-Wasserstein distance, against its floor.

W2 between two equal-size point sets is an assignment problem: pair every sample with
one reference point so that the mean squared distance is smallest. Two independent
draws of the *true* distribution are not at distance 0 either, so we report that floor
beside the score: a ratio of 1.0 means the samples are as close to the data as the
data is to itself at this n.

    python evaluate.py exps/base            # last frame of a run, dataset from its config
    python evaluate.py exps/base/frames.npy --dataset dino --frame 10
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import datasets


def wasserstein2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between two (n, 2) point sets with equal weights."""
    cost = cdist(a, b, "sqeuclidean")  # (n, n)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def _outside_box(points: np.ndarray, half_width: float, half_height: float) -> np.ndarray:
    excess = np.maximum(np.abs(points) - [half_width, half_height], 0)
    return np.linalg.norm(excess, axis=1)


def _off_ring_or_centre(
    points: np.ndarray, radius: float = 3.0, jitter: float = 0.09
) -> np.ndarray:
    # The circle's clusters lie within `jitter` (0.03 * 3) of the ring or of the origin.
    r = np.linalg.norm(points, axis=1)
    return np.minimum(np.maximum(np.abs(r - radius) - jitter, 0), np.maximum(r - jitter, 0))


# Distance from each point to the dataset's support, for datasets whose support is simple.
SUPPORT_DISTANCE = {
    "line": lambda points: _outside_box(points, 2.0, 4.0),
    "circle": _off_ring_or_centre,
}
SUPPORT_TOLERANCE = 0.05


# One pair of draws makes a noisy yardstick: a true draw of moons scored 1.07 to 2.21 against one.
REFERENCE_DRAWS = 5


def _score(samples: np.ndarray, draw, seed: int) -> dict:
    """W2 of samples against fresh draws, beside the floor (W2 between two fresh draws), each
    averaged over REFERENCE_DRAWS independent references."""
    w2, floor = [], []
    for k in range(REFERENCE_DRAWS):
        reference, another = draw(1000 + 100 * seed + k), draw(2000 + 100 * seed + k)
        w2.append(wasserstein2(samples, reference))
        floor.append(wasserstein2(another, reference))
    return {
        "w2": float(np.mean(w2)),
        "w2_floor": float(np.mean(floor)),
        "w2_ratio": float(np.mean(w2) / np.mean(floor)),
    }


def class_leakage(
    samples: np.ndarray, labels: np.ndarray, dataset: datasets.Dataset, seed: int = 0
) -> np.ndarray:
    """For each sample, whether it lies nearer another class's data than its own class's."""
    references = [dataset.draw(2000, 3000 + seed, label=k)[0] for k in range(len(dataset.classes))]
    nearest = np.stack(
        [cdist(samples, reference).min(axis=1) for reference in references], axis=1
    )  # (n, classes)
    return nearest.argmin(axis=1) != labels


def evaluate(
    samples: np.ndarray,
    dataset,
    seed: int = 0,
    data_dir: str | None = None,
    labels: np.ndarray | None = None,
) -> dict:
    """Score (n, 2) samples against fresh draws of `dataset` (a name or a datasets.Dataset),
    independent of the training set. For a conditional dataset, labels (n,) give each sample's
    class: each class is scored against its own distribution too, and the class leakage is
    measured."""

    dataset = datasets.load(dataset, data_dir) if isinstance(dataset, str) else dataset
    n = len(samples)
    only = (
        int(labels[0]) if labels is not None and len(np.unique(labels)) == 1 else None
    )  # one class asked for
    overall = _score(samples, lambda s: dataset.draw(n, s, label=only)[0], seed)
    metrics = {"dataset": dataset.name, "n": n, **overall}
    if dataset.name in SUPPORT_DISTANCE:
        distance = SUPPORT_DISTANCE[dataset.name](samples)
        metrics["off_support_fraction"] = float(np.mean(distance > SUPPORT_TOLERANCE))
    if dataset.classes and labels is not None:
        leaked = class_leakage(samples, labels, dataset, seed)
        metrics["class_leakage"] = float(leaked.mean())
        metrics["per_class"] = {}
        for k in np.unique(labels):
            mine = labels == k
            # With one class asked for, the overall score already is that class's.
            score = (
                overall
                if only is not None
                else _score(
                    samples[mine], lambda s: dataset.draw(int(mine.sum()), s, label=int(k))[0], seed
                )
            )
            metrics["per_class"][dataset.classes[k]] = score | {
                "n": int(mine.sum()),
                "class_leakage": float(leaked[mine].mean()),
            }
    return metrics


def format_metrics(metrics: dict) -> str:
    text = (
        f"W2 {metrics['w2']:.4f}  floor {metrics['w2_floor']:.4f}  ratio {metrics['w2_ratio']:.3f}"
    )
    if "off_support_fraction" in metrics:
        text += f"  off-support {100 * metrics['off_support_fraction']:.2f}%"
    if "per_class" in metrics:
        text += "  | per class ratio: " + ", ".join(
            f"{name} {m['w2_ratio']:.3f}" for name, m in metrics["per_class"].items()
        )
        text += f"  leakage {100 * metrics['class_leakage']:.2f}%"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", type=Path, help="an experiment folder, or a frames.npy of shape (frames, N, 2)"
    )
    parser.add_argument(
        "--dataset",
        help="a dataset name, comma-separated names or a file (default: the run's config.json)",
    )
    parser.add_argument("--frame", type=int, default=-1, help="which frame to score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference draws")
    parser.add_argument("--data_dir", help="folder holding DatasaurusDozen.tsv")
    args = parser.parse_args(argv)
    frames_path = args.path / "frames.npy" if args.path.is_dir() else args.path
    config_path = frames_path.parent / "config.json"
    dataset = args.dataset or (
        json.loads(config_path.read_text())["dataset"] if config_path.is_file() else None
    )
    if dataset is None:
        parser.error(f"no --dataset given and no {config_path}")
    if not frames_path.is_file():
        parser.error(f"{frames_path} not found")
    frames = np.load(frames_path)
    labels_path = frames_path.parent / "frame_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else None
    try:
        print(
            format_metrics(evaluate(frames[args.frame], dataset, args.seed, args.data_dir, labels))
        )
    except datasets.DatasetError as err:
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
