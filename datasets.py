"""The 2D point clouds we learn: dino, moons, line and circle, as in the original tiny-diffusion.

Every dataset is a function `(n, rng) -> (n, 2) float32 array`, so the training set and
the evaluation's independent reference draws come from the same distribution.
"""
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_SIZE, TRAIN_SEED = 8000, 42  # the original's training set: 8000 points, seed 42

# The Datasaurus Dozen (Matejka & Fitzmaurice 2017) is third-party data: never committed.
DATASAURUS_FILE = "DatasaurusDozen.tsv"
DATASAURUS_URL = "https://raw.githubusercontent.com/tanelp/tiny-diffusion/master/static/DatasaurusDozen.tsv"
DATASAURUS_SHA256 = "c8c4792c3ed15238ba07dad6ab778adc79d72e3e1324ead4d8c1ae52849780f8"
DATA_DIR_ENV = "TINY_DIFFUSION_DATA_DIR"
STATIC_DIR = Path(__file__).resolve().parent / "static"


class DatasetError(Exception):
    """A dataset cannot be read; the message says how to fix it."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_datasaurus(path: Path, url: str = DATASAURUS_URL) -> None:
    """Fetch the TSV once, check its sha256, and only then store it at `path`."""
    fix = f"download it by hand to {path}, or pass --data_dir DIR (or set {DATA_DIR_ENV}) to a folder holding {DATASAURUS_FILE}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as err:
        raise DatasetError(f"could not download {url} ({err}); {fix}") from None
    if _sha256(data) != DATASAURUS_SHA256:
        raise DatasetError(f"{url} gave a file whose sha256 is not {DATASAURUS_SHA256}; {fix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)  # atomic: a crash never leaves half a file at `path`


def datasaurus_path(data_dir: str | None = None, url: str = DATASAURUS_URL) -> Path:
    """Where the verified TSV is: `data_dir`, else $TINY_DIFFUSION_DATA_DIR, else static/ (downloaded once)."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = Path(data_dir).expanduser() / DATASAURUS_FILE
        if not path.is_file():
            raise DatasetError(f"{path} not found; point --data_dir (or {DATA_DIR_ENV}) at the folder holding {DATASAURUS_FILE}")
    else:
        path = STATIC_DIR / DATASAURUS_FILE
        if not path.is_file():
            download_datasaurus(path, url)
    if _sha256(path.read_bytes()) != DATASAURUS_SHA256:
        raise DatasetError(f"{path} is damaged or not the Datasaurus Dozen (sha256 is not {DATASAURUS_SHA256}); delete it to download it again, or replace it with a good copy")
    return path


def datasaurus_table(data_dir: str | None = None) -> pd.DataFrame:
    return pd.read_csv(datasaurus_path(data_dir), sep="\t")


def dino(n: int, rng: np.random.Generator, data_dir: str | None = None) -> np.ndarray:
    table = datasaurus_table(data_dir)
    points = table.loc[table["dataset"] == "dino", ["x", "y"]].to_numpy()  # (142, 2)
    xy = points[rng.integers(0, len(points), n)] + rng.normal(size=(n, 2)) * 0.15
    return np.stack(((xy[:, 0] / 54 - 1) * 4, (xy[:, 1] / 48 - 1) * 4), axis=1)


def moons(n: int, rng: np.random.Generator, data_dir: str | None = None) -> np.ndarray:
    # scikit-learn's make_moons(noise=0.03), with a random angle along each half circle.
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
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


DATASETS = {"dino": dino, "moons": moons, "line": line, "circle": circle}


def get_dataset(name: str, n: int = TRAIN_SIZE, seed: int = TRAIN_SEED, data_dir: str | None = None) -> np.ndarray:
    """Draw n points of dataset `name` with its own seed: (n, 2) float32."""
    return DATASETS[name](n, np.random.default_rng(seed), data_dir).astype(np.float32)
