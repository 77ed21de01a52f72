"""The 2D point clouds we learn: dino, moons, line and circle, as in the original tiny-diffusion.

Every built-in dataset is a function `(n, rng) -> (n, 2) float32 array`, so the training set and
the evaluation's independent reference draws come from the same distribution. A file has only
its rows: a fixed share of them is held out of training, and the scores use those alone.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

TRAIN_SIZE, TRAIN_SEED = 8000, 42  # the original's training set: 8000 points, seed 42

# The Datasaurus Dozen (Matejka & Fitzmaurice 2017, "Same Stats, Different Graphs"), shipped in
# static/ as the original tiny-diffusion ships it (also bundled, MIT, in the datasauRus R package).
DATASAURUS_FILE = "DatasaurusDozen.tsv"
DATASAURUS_SHA256 = "c8c4792c3ed15238ba07dad6ab778adc79d72e3e1324ead4d8c1ae52849780f8"
DATA_DIR_ENV = "TINY_DIFFUSION_DATA_DIR"
STATIC_DIR = Path(__file__).resolve().parent / "static"


class DatasetError(Exception):
    """A dataset cannot be read; the message says how to fix it."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def datasaurus_path(data_dir: str | None = None) -> Path:
    """Where the verified TSV is: `data_dir`, else $TINY_DIFFUSION_DATA_DIR, else static/."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        # os.path.expanduser leaves ~nobody as it is; Path.expanduser raises
        path = Path(os.path.expanduser(data_dir)) / DATASAURUS_FILE
        fix = f"point --data_dir (or {DATA_DIR_ENV}) at a folder holding a good copy"
    else:
        path = STATIC_DIR / DATASAURUS_FILE
        fix = f"restore it with: git checkout static/{DATASAURUS_FILE}"
    if not path.is_file():
        raise DatasetError(f"{path} not found; {fix}")
    if _sha256(path.read_bytes()) != DATASAURUS_SHA256:
        raise DatasetError(
            f"{path} is damaged or not the Datasaurus Dozen (sha256 is not {DATASAURUS_SHA256}); "
            + fix
        )
    return path


# The Datasaurus Dozen's 13 shapes; its "circle" is renamed so the original's circle keeps its name.
DATASAURUS_SHAPES = {
    "away": "away",
    "bullseye": "bullseye",
    "datasaurus_circle": "circle",
    "dino": "dino",
    "dots": "dots",
    "h_lines": "h_lines",
    "high_lines": "high_lines",
    "slant_down": "slant_down",
    "slant_up": "slant_up",
    "star": "star",
    "v_lines": "v_lines",
    "wide_lines": "wide_lines",
    "x_shape": "x_shape",
}


# Each shape is its 142 rows plus Gaussian jitter of this std, in the table's units.
DATASAURUS_JITTER = 0.15
# The table's x spans about 0..108 and y 0..96: our units are table / half - 1, times 4.
DATASAURUS_HALF_RANGE = np.array([54.0, 48.0])


def datasaurus_units(xy: np.ndarray) -> np.ndarray:
    """(n, 2) points of the table mapped to ours, about -4..4 (a per-axis scale 4 / half)."""
    return (xy / DATASAURUS_HALF_RANGE - 1) * 4


def datasaurus_rows(shape: str, data_dir: str | None = None) -> np.ndarray:
    """The (142, 2) rows of one shape, in the table's units (read by numpy: pandas would add 0.3 s
    to every run's start-up)."""
    names, x, y = np.loadtxt(
        datasaurus_path(data_dir), dtype=str, delimiter="\t", skiprows=1, unpack=True
    )
    return np.stack((x, y), axis=1)[names == shape].astype(np.float64)


def datasaurus(shape: str):
    def draw(n: int, rng: np.random.Generator, data_dir: str | None = None) -> np.ndarray:
        points = datasaurus_rows(shape, data_dir)  # (142, 2)
        xy = points[rng.integers(0, len(points), n)] + rng.normal(size=(n, 2)) * DATASAURUS_JITTER
        return datasaurus_units(xy)

    return draw


def moons(
    n: int, rng: np.random.Generator, data_dir: str | None = None, upper: np.ndarray | None = None
) -> np.ndarray:
    # scikit-learn's make_moons(noise=0.03), with a random angle along each half circle.
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5 if upper is None else upper
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    xy = np.stack((x, y), axis=1) + rng.normal(size=(n, 2)) * 0.03
    return np.stack(((xy[:, 0] + 0.3) * 2 - 1, (xy[:, 1] + 0.3) * 3 - 1), axis=1)


def line(n: int, rng: np.random.Generator, data_dir: str | None = None) -> np.ndarray:
    return np.stack((rng.uniform(-0.5, 0.5, n), rng.uniform(-1, 1, n)), axis=1) * 4


def circle(n: int, rng: np.random.Generator, data_dir: str | None = None) -> np.ndarray:
    # Directions snapped to a 5x5 grid: 16 clusters on the ring, plus one at the centre.
    xy = np.round(rng.uniform(-0.5, 0.5, (n, 2)) / 2, 1) * 2
    xy /= np.linalg.norm(xy, axis=1, keepdims=True) + 1e-10
    theta = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0, 0.03, n)
    xy += r[:, None] * np.stack((np.cos(theta), np.sin(theta)), axis=1)
    return xy * 3


DATASETS = {"moons": moons, "line": line, "circle": circle} | {
    name: datasaurus(shape) for name, shape in DATASAURUS_SHAPES.items()
}
FILE_SUFFIXES = (".csv", ".tsv", ".npy")


def names_a_file(spec: str) -> bool:
    """Whether --dataset spec is a file's path (my.csv, MY.CSV), not built-in shapes' names."""
    return spec.lower().endswith(FILE_SUFFIXES)


MIN_FILE_POINTS = 10
# A file's rows held out of training for its scores: this share of each class (at least one row
# of a class with two or more), at most HELD_OUT_MAX rows in all, chosen once by HELD_OUT_SEED.
HELD_OUT, HELD_OUT_MAX, HELD_OUT_SEED = 0.1, 2000, 20_171_001


class Dataset:
    """A distribution to learn: draws (points (n, 2), labels (n,)) with any seed, optionally of
    one class.

    `classes` names the classes of a conditional dataset (empty when there are none): the two
    moons, the parts of a comma-separated list such as "dino,star", or a file's label column.
    """

    def __init__(self, name: str, classes: list[str], draw, rows=None, held_out=None):
        """draw(n, rng, label) -> (points, labels); a file's training rows and held-out rows,
        each (points (m, 2), labels (m,)), or None."""
        self.name, self.classes, self._draw = name, classes, draw
        self._train, self._held_out = rows, held_out
        self.is_file = rows is not None

    def draw(self, n: int, seed: int, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """n fresh points (a file: of its training rows), optionally of one class."""
        points, labels = self._draw(n, np.random.default_rng(seed), label)
        return points.astype(np.float32), labels.astype(np.int64)

    def unseen(self, n: int, seed: int, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """n points the model never saw: fresh draws, or a random n of a file's held-out rows
        (all of them if there are fewer)."""
        if self._held_out is None:
            return self.draw(n, seed, label)
        points, labels = self._held_out
        rows = np.arange(len(points)) if label is None else np.flatnonzero(labels == label)
        chosen = np.random.default_rng(seed).permutation(rows)[:n]
        return points[chosen], labels[chosen]

    @property
    def unseen_counts(self) -> np.ndarray | None:
        """(classes or 1,) how many points unseen() has of each class; None: any number."""
        if self._held_out is None:
            return None
        return np.bincount(self._held_out[1], minlength=max(len(self.classes), 1))

    @property
    def reference(self) -> str:
        """What the scores compare samples with."""
        if not self.is_file:
            return "fresh draws"
        if self._held_out is None:
            return f"its {len(self._train[0])} training rows (none held out)"
        return f"{len(self._held_out[0])} held-out rows"

    def train_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The training points: a file's training rows, or the original's 8000 draws, seed 42."""
        if self._train is not None:
            return self._train
        return self.draw(TRAIN_SIZE, TRAIN_SEED)


def _builtin(name: str, data_dir: str | None) -> Dataset:
    if name == "moons":  # the two moons are its classes

        def draw(n, rng, label):
            upper = rng.random(n) < 0.5 if label is None else np.full(n, label == 0)
            return moons(n, rng, data_dir, upper), (~upper).astype(int)

        return Dataset(name, ["upper", "lower"], draw)
    return Dataset(
        name, [], lambda n, rng, label: (DATASETS[name](n, rng, data_dir), np.zeros(n, int))
    )


def _mixture(names: list[str], data_dir: str | None) -> Dataset:
    """One class per named dataset, in equal proportions."""

    def draw(n, rng, label):
        labels = rng.integers(0, len(names), n) if label is None else np.full(n, label)
        points = np.zeros((n, 2))
        for k, name in enumerate(names):
            points[labels == k] = DATASETS[name]((labels == k).sum(), rng, data_dir)
        return points, labels

    return Dataset(",".join(names), names, draw)


def read_points_file(path: Path, to_train=True) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(points (m, 2), labels (m,) or None, class names) from a .csv, .tsv or .npy file; points
    to train on (to_train) must be at least MIN_FILE_POINTS and spread in x and in y."""
    import pandas as pd  # here, not at the top: only a user's file needs it (0.3 s to import)

    def bad(problem):
        return DatasetError(f"{path}: {problem}")

    if not path.is_file():
        raise bad("file not found")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            table = pd.DataFrame(array.reshape(len(array), -1) if array.ndim else array[None])
        else:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (ValueError, OSError, EOFError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise bad(
            f"cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'empty'})"
        ) from None
    if table.empty:
        raise bad("is empty")
    label_column = next((c for c in table.columns if str(c).lower() in ("label", "class")), None)
    if {"x", "y"} <= set(table.columns):
        xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    else:
        numeric = [
            c
            for c in table.columns
            if c != label_column and pd.api.types.is_numeric_dtype(table[c])
        ]
        if len(numeric) < 2:
            raise bad(
                "needs two numeric columns (named x and y, or the first two numeric ones); "
                f"found {len(numeric)}"
            )
        xy = table[numeric[:2]]
    points = xy.to_numpy(dtype=np.float64)
    broken = ~np.isfinite(points).all(axis=1)
    if broken.any():
        raise bad(
            f"{broken.sum()} rows have missing, non-numeric, NaN or infinite coordinates "
            f"(first: row {int(np.argmax(broken)) + 1})"
        )
    if to_train and len(points) < MIN_FILE_POINTS:
        raise bad(f"has {len(points)} points; at least {MIN_FILE_POINTS} are needed")
    # training standardises each coordinate of the float32 points by its spread
    flat = [
        name for name, spread in zip("xy", np.ptp(points.astype(np.float32), axis=0)) if not spread
    ]
    if to_train and flat:
        raise bad(
            f"all points have the same {' and the same '.join(flat)} (spread 0): the model needs "
            "spread in both coordinates"
        )
    if label_column is None:
        return points, None, []
    unlabelled = table[label_column].isna().to_numpy()
    if unlabelled.any():
        raise bad(
            f"{unlabelled.sum()} rows have no {label_column} (first: row "
            f"{int(np.argmax(unlabelled)) + 1}): give every row one, or drop the column"
        )
    classes = sorted(table[label_column].astype(str).unique())
    return points, table[label_column].astype(str).map(classes.index).to_numpy(), classes


def held_out_rows(labels: np.ndarray, share: float) -> np.ndarray:
    """(m,) whether each row is held out: `share` of each class's rows, rounded, and at least one
    of a class with two or more, at most HELD_OUT_MAX in all; the same rows every time."""
    share = min(share, HELD_OUT_MAX / len(labels))
    rng, held = np.random.default_rng(HELD_OUT_SEED), np.zeros(len(labels), bool)
    for k in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == k))
        count = min(max(round(share * len(rows)), 1), len(rows) - 1) if share > 0 else 0
        held[rows[:count]] = True
    return held


def _file(path: Path, held_out: float) -> Dataset:
    points, labels, classes = read_points_file(path)
    points, labels = (
        points.astype(np.float32),
        np.zeros(len(points), np.int64) if labels is None else labels.astype(np.int64),
    )
    held = held_out_rows(labels, held_out)
    train_points, train_labels = points[~held], labels[~held]

    def draw(n, rng, label):  # training rows: without replacement while there are enough
        rows = (
            np.arange(len(train_points)) if label is None else np.flatnonzero(train_labels == label)
        )
        chosen = (
            rng.permutation(rows)[:n] if n <= len(rows) else rows[rng.integers(0, len(rows), n)]
        )
        return train_points[chosen], train_labels[chosen]

    held_out = (points[held], labels[held]) if held.any() else None
    return Dataset(str(path), classes, draw, (train_points, train_labels), held_out)


def load(spec: str, data_dir: str | None = None, held_out: float = HELD_OUT) -> Dataset:
    """A dataset by name ("dino"), comma-separated names ("dino,star,bullseye"), or file path
    (of whose rows the share held_out is kept out of training, for scoring)."""
    if names_a_file(spec):
        return _file(Path(os.path.expanduser(spec)), held_out)
    names = [name.strip() for name in spec.split(",")]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise DatasetError(
            f"unknown dataset {unknown[0]!r}: choose from {', '.join(DATASETS)}, a "
            "comma-separated list of them, or a .csv/.tsv/.npy file"
        )
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise DatasetError(f"{spec!r} names {twice} twice: each class once")
    return _mixture(names, data_dir) if len(names) > 1 else _builtin(names[0], data_dir)


def get_dataset(
    name: str, n: int = TRAIN_SIZE, seed: int = TRAIN_SEED, data_dir: str | None = None
) -> np.ndarray:
    """Draw n points of dataset `name` with its own seed: (n, 2) float32."""
    return load(name, data_dir).draw(n, seed)[0]
