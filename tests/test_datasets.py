import hashlib

import numpy as np
import pandas as pd
import pytest

import datasets

BOXES = {"moons": 4.0, "line": 4.0, "circle": 3.1} | {
    shape: 4.6 for shape in datasets.DATASAURUS_SHAPES
}  # points lie in [-box, box]^2


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_every_dataset_draws_n_points_in_its_box_deterministically_per_seed(name):
    points = datasets.get_dataset(name, 500, seed=1)
    assert points.shape == (500, 2) and points.dtype == np.float32
    assert np.abs(points).max() <= BOXES[name]
    assert np.array_equal(points, datasets.get_dataset(name, 500, seed=1))
    assert not np.array_equal(points, datasets.get_dataset(name, 500, seed=2))


def test_line_fills_its_rectangle_and_circle_sits_on_its_ring_or_centre():
    line = datasets.get_dataset("line", 4000, seed=0)
    assert np.allclose(line.min(0), [-2, -4], atol=0.05) and np.allclose(
        line.max(0), [2, 4], atol=0.05
    )
    radius = np.linalg.norm(datasets.get_dataset("circle", 4000, seed=0), axis=1)
    assert ((np.abs(radius - 3) <= 0.09) | (radius <= 0.09)).all()
    assert (
        0.01 < np.mean(radius <= 0.09) < 0.1
    )  # the centre cluster: one grid direction of 25, sampled unevenly


def test_moons_are_two_interleaved_half_circles():
    points = datasets.get_dataset("moons", 4000, seed=0)
    x, y = (
        (points[:, 0] + 1) / 2 - 0.3,
        (points[:, 1] + 1) / 3 - 0.3,
    )  # undo the original's rescaling
    upper = np.hypot(x, y)
    lower = np.hypot(x - 1, y - 0.5)
    assert (np.minimum(np.abs(upper - 1), np.abs(lower - 1)) < 0.15).all()


def test_dino_is_the_jittered_datasaurus_dino_rescaled():
    points = datasets.get_dataset("dino", 8000)
    table = pd.read_csv(datasets.datasaurus_path(), sep="\t")  # read independently of datasets.py
    dino = table.loc[table["dataset"] == "dino", ["x", "y"]].to_numpy()
    scaled = np.stack(((dino[:, 0] / 54 - 1) * 4, (dino[:, 1] / 48 - 1) * 4), axis=1)
    nearest = np.min(np.linalg.norm(points[:, None] - scaled[None], axis=2), axis=1)
    assert nearest.max() < 0.1  # jitter 0.15 in raw units is ~0.011 after scaling


def test_the_shipped_tsv_is_the_datasaurus_dozen(monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    path = datasets.datasaurus_path()
    assert path == datasets.STATIC_DIR / datasets.DATASAURUS_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == datasets.DATASAURUS_SHA256


def test_a_missing_static_copy_says_how_to_restore_it(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "STATIC_DIR", tmp_path)
    with pytest.raises(datasets.DatasetError, match="not found; restore it with: git checkout"):
        datasets.datasaurus_path()


def test_a_data_dir_without_the_tsv_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="not found"):
        datasets.datasaurus_path(str(tmp_path))


def test_a_damaged_local_copy_is_refused(tmp_path):
    (tmp_path / datasets.DATASAURUS_FILE).write_text("dataset\tx\ty\n")
    with pytest.raises(datasets.DatasetError, match="damaged"):
        datasets.datasaurus_path(str(tmp_path))
