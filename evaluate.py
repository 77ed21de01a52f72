"""How close are samples to the data? The exact 2-Wasserstein distance, against its floor.

W2 between two equal-size point sets is an assignment problem: pair every sample with
one reference point so that the mean squared distance is smallest. Two independent
draws of the *true* distribution are not at distance 0 either, so we report that floor
beside the score: a ratio of 1.0 means the samples are as close to the data as the
data is to itself at this n.

W2 cannot see blur: a soft dino that covers every stroke scores about 1. So we also report
improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of samples
that look like data (blur and stray points lower it), recall the share of data that the
samples cover (missing parts lower it).

    python evaluate.py exps/base            # last frame of a run, dataset from its config
    python evaluate.py exps/base/frames.npy --dataset dino --frame 10

The model's log-likelihood of held-out points is likelihood.py's: python likelihood.py exps/base
"""

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

import checkpoints
import datasets
import options


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


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """(n,) distance of each point to its k-th nearest neighbour among the others."""
    distances, _ = cKDTree(points).query(points, k + 1)  # (n, k + 1); column 0 is the point
    return distances[:, k]


def inside_balls(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(n,) whether each point lies in at least one ball (centres (m, 2), radii (m,))."""
    pairs = cKDTree(points).sparse_distance_matrix(
        cKDTree(centres), radii.max(), output_type="ndarray"
    )  # every (i, j, distance) pair closer than the largest radius
    inside = pairs["v"] <= radii[pairs["j"]]
    return np.bincount(pairs["i"][inside], minlength=len(points)) > 0


def precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = 3) -> tuple:
    """Improved precision and recall, Kynkäänniemi et al. 2019, sec. 2: each set's support is
    the union of balls reaching each of its points' k-th nearest neighbour: NaN for sets of k
    points or fewer, which have no k-th neighbour (every ball would be infinite)."""
    if min(len(samples), len(reference)) <= k:
        return math.nan, math.nan
    precision = inside_balls(samples, reference, knn_radii(reference, k)).mean()
    recall = inside_balls(reference, samples, knn_radii(samples, k)).mean()
    return float(precision), float(recall)


# One pair of draws makes a noisy yardstick: a true draw of moons scored 1.07 to 2.21 against one.
REFERENCE_DRAWS = 5
# Scores use at most this many samples, at random: the exact W2 assignment is O(n^3) (1000
# points: 0.2 s per W2, 2000: 1.4 s), and W2's floor depends on n, so ratios stay comparable.
SCORED_POINTS = 1000


def best_of(candidates: list, sample, reference: np.ndarray, m: int = 500):
    """The candidate whose samples, sample(candidate) -> (n, 2), score best against reference
    points (>= 2 m, 2): precision + recall - W2 ratio, W2 on m points over the floor of two
    halves of the reference (O(m^3)), precision and recall against its first 1000."""
    m = min(m, len(reference) // 2)
    floor = wasserstein2(reference[:m], reference[m : 2 * m])
    scores = {}
    for candidate in candidates:
        x = sample(candidate)
        w2_ratio = wasserstein2(x[:m], reference[:m]) / floor
        scores[candidate] = sum(precision_recall(x, reference[:1000])) - w2_ratio
    return max(scores, key=scores.get)


def draw_like(draw, labels: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """n points of draw(n, seed, label) (a datasets.Dataset's draw or unseen); with labels (n,),
    exactly as many of each class: a random split of classes would move the reference away from
    the samples and inflate the floor."""
    if labels is None:
        return draw(n, seed)[0]
    classes, counts = np.unique(labels, return_counts=True)
    # an independent seed per class
    seeds = np.random.SeedSequence(seed).generate_state(len(classes))
    return np.concatenate(
        [draw(int(m), int(s), label=int(k))[0] for k, m, s in zip(classes, counts, seeds)]
    )


def shares_of(counts: np.ndarray, size: int) -> np.ndarray:
    """Whole numbers that add up to `size`, in proportion to counts (rounded cumulatively)."""
    return np.diff(np.round(np.cumsum(counts) / counts.sum() * size).astype(int), prepend=0)


def subsample(labels: np.ndarray | None, n: int, size: int, seed: int) -> np.ndarray:
    """Indices of `size` of n points at random (fixed seed), each class keeping its share."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    quotas = shares_of(counts, size)
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == k), q, replace=False) for k, q in zip(classes, quotas)]
    )


def scored_size(dataset, labels: np.ndarray | None, n: int) -> int:
    """How many of n samples are scored: at most SCORED_POINTS, and no more than a file's
    held-out rows can match, class by class."""
    size, held = min(n, SCORED_POINTS), dataset.unseen_counts
    if held is None:
        return size
    counts = np.bincount(np.zeros(n, int) if labels is None else labels, minlength=len(held))
    while size > 0 and (shares_of(counts, size) > held).any():
        size -= 1
    if size == 0:
        raise datasets.DatasetError(
            f"{dataset.name}: too few held-out rows to score these samples; raise --held_out"
        )
    return size


def _references(dataset, labels: np.ndarray | None, n: int, seed: int) -> list[np.ndarray]:
    """REFERENCE_DRAWS sets of n points the model never saw (fresh draws, or a file's held-out
    rows), with labels' class counts."""
    return [
        draw_like(dataset.unseen, labels, n, 1000 + 100 * seed + k) for k in range(REFERENCE_DRAWS)
    ]


def _others(dataset, labels: np.ndarray | None, n: int, seed: int) -> list[np.ndarray]:
    """As many other true points for each of _references: their W2 to it is the floor."""
    return [
        draw_like(dataset.draw, labels, n, 2000 + 100 * seed + k) for k in range(REFERENCE_DRAWS)
    ]


def _score(samples: np.ndarray, labels: np.ndarray | None, dataset, seed: int, floor=None) -> dict:
    """W2, precision and recall of samples against points the model never saw with the samples'
    class counts, beside the floor (W2 between those and as many other true points; or floor, a
    list of them computed before), each averaged over REFERENCE_DRAWS."""
    references = _references(dataset, labels, len(samples), seed)
    pairs = [(samples, reference) for reference in references]
    pairs += [] if floor else list(zip(_others(dataset, labels, len(samples), seed), references))
    # scipy's assignment solver lets go of the GIL: two threads halve the time of the W2s
    with ThreadPoolExecutor(max_workers=2) as pool:
        distances = list(pool.map(wasserstein2, *zip(*pairs)))
    w2, floor = distances[:REFERENCE_DRAWS], floor or distances[REFERENCE_DRAWS:]
    precision, recall = np.mean([precision_recall(samples, r) for r in references], axis=0)
    return {
        "w2": float(np.mean(w2)),
        "w2_floor": float(np.mean(floor)),
        # nan when the floor is 0: a file scored against its training rows, all of them
        "w2_ratio": float(np.mean(w2) / np.mean(floor)) if np.mean(floor) > 0 else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
    }


def _scored_labels(dataset, labels: np.ndarray | None, n: int, seed: int) -> tuple:
    """Which of n samples are scored (indices, or None for all) and their labels (or None)."""
    size = scored_size(dataset, labels, n)
    if size == n:
        return None, labels
    chosen = subsample(labels, n, size, seed)
    return chosen, None if labels is None else labels[chosen]


def w2_floor(dataset, seed: int, n: int, labels: np.ndarray | None = None) -> dict:
    """The floor of evaluate(samples (n, 2), dataset, seed, labels=labels) before there are
    samples, for its floor argument: a run computes it while it trains."""
    chosen, labels = _scored_labels(dataset, labels, n, seed)
    size = n if chosen is None else len(chosen)
    pairs = zip(_others(dataset, labels, size, seed), _references(dataset, labels, size, seed))
    floor = [wasserstein2(other, reference) for other, reference in pairs]
    return {"scoring": (dataset.name, dataset.reference, seed, n), "labels": labels, "w2": floor}


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
    labels: np.ndarray | None = None,
    floor: dict | None = None,
    data_dir: str | None = None,
) -> dict:
    """Score (n, 2) samples against fresh draws of `dataset` (a name or a datasets.Dataset),
    independent of the training set. For a conditional dataset, labels (n,) give each sample's
    class: each class is scored against its own distribution too, and the class leakage is
    measured. floor: w2_floor(dataset, seed, n, labels), if it was computed before."""

    dataset = datasets.load(dataset, data_dir) if isinstance(dataset, str) else dataset
    n = len(samples)
    chosen, labels = _scored_labels(dataset, labels, n, seed)
    samples = samples if chosen is None else samples[chosen]
    if floor is not None:  # it must be this scoring's floor
        same_labels = np.array_equal(floor["labels"], labels)  # None equals only None
        if floor["scoring"] != (dataset.name, dataset.reference, seed, n) or not same_labels:
            raise ValueError(f"the floor of another scoring: {floor['scoring']}")
    metrics = {"dataset": dataset.name, "n": n, "n_scored": len(samples)}
    if dataset.is_file:
        metrics["reference"] = dataset.reference
    metrics |= _score(samples, labels, dataset, seed, None if floor is None else floor["w2"])
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
            score = metrics if mine.all() else _score(samples[mine], labels[mine], dataset, seed)
            metrics["per_class"][dataset.classes[k]] = {
                key: score[key] for key in ("w2", "w2_floor", "w2_ratio", "precision", "recall")
            } | {"n": int(mine.sum()), "class_leakage": float(leaked[mine].mean())}
    return metrics


def format_metrics(metrics: dict) -> str:
    text = (
        f"W2 {metrics['w2']:.4f}  floor {metrics['w2_floor']:.4f}  ratio {metrics['w2_ratio']:.3f}"
        f"  precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}"
    )
    if "straightness" in metrics:
        text += f"  straightness {metrics['straightness']:.3f}"
    if "off_support_fraction" in metrics:
        text += f"  off-support {100 * metrics['off_support_fraction']:.2f}%"
    if "per_class" in metrics:
        text += "  | per class ratio/precision/recall: " + ", ".join(
            f"{name} {m['w2_ratio']:.3f}/{m['precision']:.2f}/{m['recall']:.2f}"
            for name, m in metrics["per_class"].items()
        )
        text += f"  leakage {100 * metrics['class_leakage']:.2f}%"
    notes = [f"scored on {metrics['n_scored']} of {metrics['n']} samples"]
    notes = notes if metrics["n_scored"] < metrics["n"] else []
    notes += [f"against {metrics['reference']}"] if "reference" in metrics else []
    return text + (f"  ({', '.join(notes)})" if notes else "")


def load_run_frame(path: Path, frame: int, dataset: str | None, data_dir: str | None) -> tuple:
    """(points (N, 2), labels (N,) or None, datasets.Dataset) of one frame of a run's frames.npy
    (path: the run's folder or the file), against the run's dataset unless one is named."""
    frames_path = path / "frames.npy" if path.is_dir() else path
    if not frames_path.is_file():
        raise options.UsageError(f"{frames_path} not found")
    try:
        frames = np.load(frames_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise options.UsageError(f"{frames_path} is not a .npy file ({err})") from None
    shape = frames.shape if isinstance(frames, np.ndarray) else ()
    if len(shape) == 3 and shape[0] == 0:  # a run that diverged, or was stopped, in epoch 0
        raise options.UsageError(f"{frames_path} holds no frames: its run stopped before its first")
    if len(shape) != 3 or shape[2] != 2 or 0 in shape:
        raise options.UsageError(f"{frames_path} is not frames of shape (frames, N, 2), N > 0")
    if not -len(frames) <= frame < len(frames):
        raise options.UsageError(
            f"--frame {frame}: {frames_path} has {len(frames)} frames, 0 to {len(frames) - 1} "
            "(or -1, the last)"
        )
    config_path = frames_path.parent / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (ValueError, OSError) as err:
        raise options.UsageError(f"{config_path} cannot be read ({err})") from None
    if dataset is None and "dataset" not in config:
        raise options.UsageError(f"no --dataset given and no dataset in {config_path}")
    held_out = (checkpoints.LEGACY_CONFIG | config)["held_out"]  # as the run was trained
    dataset = datasets.load(dataset or config["dataset"], data_dir, held_out)
    labels_path = frames_path.parent / "frame_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() and dataset.classes else None
    return frames[frame], labels, dataset


def main(argv=None) -> int:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", type=Path, help="an experiment folder, or a frames.npy of shape (frames, N, 2)"
    )
    parser.add_argument(
        "--dataset",
        help="a dataset name, comma-separated names or a file (default: the run's config.json)",
    )
    parser.add_argument(
        "--frame", type=int, default=-1, help="which frame to score (default: -1, the last)"
    )
    parser.add_argument(
        "--seed", type=options.seed, default=0, help="seed of the reference draws (default: 0)"
    )
    parser.add_argument("--data_dir", help="folder holding DatasaurusDozen.tsv")
    args = parser.parse_args(argv)
    with options.errors_in_one_line(parser):
        points, labels, dataset = load_run_frame(args.path, args.frame, args.dataset, args.data_dir)
        print(format_metrics(evaluate(points, dataset, args.seed, labels=labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
