import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_datasaurus

import datasets

BOXES = {"moons": 4.0, "line": 4.0, "circle": 3.1} | {
    shape: 4.6 for shape in datasets.DATASAURUS_SHAPES
}  # points lie in [-box, box]^2


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=needs_datasaurus if name in datasets.DATASAURUS_SHAPES else ())
        for name in datasets.DATASETS
    ],
)
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


@needs_datasaurus
def test_dino_is_the_jittered_datasaurus_dino_rescaled():
    points = datasets.get_dataset("dino", 8000)
    table = datasets.datasaurus_table()
    dino = table.loc[table["dataset"] == "dino", ["x", "y"]].to_numpy()
    scaled = np.stack(((dino[:, 0] / 54 - 1) * 4, (dino[:, 1] / 48 - 1) * 4), axis=1)
    nearest = np.min(np.linalg.norm(points[:, None] - scaled[None], axis=2), axis=1)
    assert nearest.max() < 0.1  # jitter 0.15 in raw units is ~0.011 after scaling


@pytest.fixture
def tsv_server(tmp_path):
    """Serve a folder on 127.0.0.1 and yield (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def empty_static(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "STATIC_DIR", tmp_path / "static")
    return tmp_path / "static"


@needs_datasaurus
def test_a_missing_tsv_is_downloaded_once_verified_and_stored_in_static(tsv_server, empty_static):
    served, url = tsv_server
    (served / "d.tsv").write_bytes((SHARED_DATA / datasets.DATASAURUS_FILE).read_bytes())
    path = datasets.datasaurus_path(url=f"{url}/d.tsv")
    assert path == empty_static / datasets.DATASAURUS_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == datasets.DATASAURUS_SHA256
    (served / "d.tsv").unlink()  # a second call does not download again
    assert datasets.datasaurus_path(url=f"{url}/d.tsv") == path


def test_a_download_with_the_wrong_checksum_is_refused_and_not_stored(tsv_server, empty_static):
    served, url = tsv_server
    (served / "d.tsv").write_text("dataset\tx\ty\ndino\t1\t2\n")
    with pytest.raises(datasets.DatasetError, match="sha256.*--data_dir"):
        datasets.datasaurus_path(url=f"{url}/d.tsv")
    assert not (empty_static / datasets.DATASAURUS_FILE).exists()


def test_a_failed_download_says_how_to_fix_it(tsv_server, empty_static):
    _, url = tsv_server
    with pytest.raises(datasets.DatasetError, match="could not download.*--data_dir"):
        datasets.datasaurus_path(url=f"{url}/missing.tsv")


def test_a_data_dir_without_the_tsv_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="not found"):
        datasets.datasaurus_path(str(tmp_path))


def test_a_damaged_local_copy_is_refused(tmp_path):
    (tmp_path / datasets.DATASAURUS_FILE).write_text("dataset\tx\ty\n")
    with pytest.raises(datasets.DatasetError, match="damaged"):
        datasets.datasaurus_path(str(tmp_path))
