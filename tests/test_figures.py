"""Every kind of figure, drawn from a tiny run: valid images of the expected size."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import ablate
import ddpm
import figures
import plots

BASE = [
    "--dataset",
    "moons",
    "--num_epochs",
    "4",
    "--hidden_size",
    "16",
    "--num_timesteps",
    "10",
    "--eval_batch_size",
    "200",
    "--save_images_step",
    "1",
]
TINY = [*BASE, "--hidden_layers", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    exps = tmp_path_factory.mktemp("exps")
    assert ddpm.main([*TINY, "--exps_dir", str(exps), "--experiment_name", "tiny"]) == 0
    return exps / "tiny"


def image_size(path):
    with Image.open(path) as image:
        image.verify()  # raises on a broken file
    with Image.open(path) as image:
        return image.size, getattr(image, "n_frames", 1)


def test_a_run_draws_its_frames_and_its_loss_curve(tiny_run):
    assert image_size(tiny_run / "images" / "0003.png") == ((4 * plots.DPI, 4 * plots.DPI), 1)
    assert image_size(tiny_run / "loss.png") == ((5 * plots.DPI, 3 * plots.DPI), 1)


def test_forward_reverse_figures_and_the_animation(tiny_run, tmp_path):
    forward, reverse, gif = figures.draw_process_figures(tiny_run, tmp_path)
    one_row = (
        round(figures.SNAPSHOTS * plots.CELL_INCHES * plots.DPI),
        round(plots.CELL_INCHES * plots.DPI),
    )
    assert image_size(forward) == (one_row, 1)
    assert image_size(reverse) == (one_row, 1)
    side = round(plots.LARGE_INCHES * plots.DPI)  # 480 px: big enough to see sharpness
    # T + 1 states forward, and the default (edm) sampler's 12 steps + 1 back
    assert image_size(gif) == ((side, side), (10 + 1) + (12 + 1))


def test_the_headline_picture_shows_the_data_beside_the_samples_480_px_high(tiny_run, tmp_path):
    points = np.load(tiny_run / "frames.npy")[-1]
    plots.save_samples(points + 1, points, tmp_path / "samples.png", "moons")
    assert image_size(tmp_path / "samples.png") == ((960, 480), 1)


def test_forward_process_ends_in_noise_and_reverse_process_ends_near_the_data(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    forward = figures.forward_process(config)
    assert [t for t, _ in forward] == list(range(11))
    assert abs(forward[-1][1].std() - 1) < 0.1  # x_T ~ N(0, I)
    reverse = figures.reverse_process(tiny_run / "model.pth")
    sigmas = [sigma for sigma, _ in reverse]
    assert len(sigmas) == 12 + 1 and sigmas == sorted(sigmas, reverse=True) and sigmas[-1] == 0


def test_an_ablation_sweep_draws_a_row_per_value_writes_its_table_and_reuses_its_runs(tmp_path):
    figure = tmp_path / "grid.png"
    rows = ablate.sweep("hidden_layers", ["1", "2"], BASE, tmp_path, figure)
    assert [row["hidden_layers"] for row in rows] == ["1", "2"] and all(
        row["w2_ratio"] > 0 for row in rows
    )
    (width, height), _ = image_size(figure)
    assert (width, height) == (
        round(4 * plots.CELL_INCHES * plots.DPI),
        round(2 * plots.CELL_INCHES * plots.DPI),
    )  # 4 saved epochs
    markdown = ablate.write_table(rows, tmp_path / "table")
    assert markdown.count("\n") == 3 and (tmp_path / "table.csv").read_text().startswith(
        "hidden_layers,dataset,w2"
    )
    assert "w2_ratio,precision,recall" in (tmp_path / "table.csv").read_text()
    checkpoint = tmp_path / ablate.run_name([*BASE, "--hidden_layers", "1"]) / "model.pth"
    trained_at = checkpoint.stat().st_mtime_ns
    ablate.sweep("hidden_layers", ["1"], BASE, tmp_path, figure)
    assert checkpoint.stat().st_mtime_ns == trained_at  # reused, not trained again


def test_a_run_saved_before_an_option_existed_is_reused_when_that_option_is_at_its_default(
    tmp_path,
):
    out = ablate.run_once(TINY, tmp_path)
    config = json.loads((out / "config.json").read_text())
    del config["guidance_interval"]  # as written before --guidance_interval existed
    (out / "config.json").write_text(json.dumps(config))
    trained_at = (out / "model.pth").stat().st_mtime_ns
    assert (
        ablate.run_once(TINY, tmp_path) == out
        and (out / "model.pth").stat().st_mtime_ns == trained_at
    )
    other = ablate.run_once(
        [*TINY, "--guidance_interval", "0", "0.5"], tmp_path
    )  # another value is another run
    assert other != out and "_guidance_interval=0.0,0.5_" in other.name


def test_the_density_figure_has_a_column_per_model(tmp_path):
    log_p = [np.zeros((20, 20)) - k for k in range(3)]
    points = [np.random.default_rng(k).normal(size=(100, 2)) for k in range(3)]
    plots.save_densities(log_p, points, ["data", "ddpm", "edm"], tmp_path / "density.png")
    width, height = round(3 * 2.4 * plots.DPI), round(2 * 2.4 * plots.DPI)
    assert image_size(tmp_path / "density.png") == ((width, height), 1)


def test_the_reflow_figure_and_table_from_tiny_runs(tmp_path, monkeypatch):
    run_once = ablate.run_once

    def tiny(args, exps_dir):  # every training run tiny, every teacher's pairs few
        trains = "--checkpoint" not in args and "--denoiser" not in args
        small = (
            ["--num_epochs", "2", "--hidden_size", "16", "--hidden_layers", "1"] if trains else []
        )
        small += ["--reflow_pairs", "300"] if "--reflow" in args else []
        return run_once([*args, *small, "--eval_batch_size", "200"], exps_dir)

    monkeypatch.setattr(ablate, "run_once", tiny)
    monkeypatch.setattr(figures, "REFLOW_DATASETS", ["moons"])
    monkeypatch.setattr(figures, "REFLOW_SEEDS", ["0"])
    figures.reflow_figure(tmp_path, "moons", tmp_path / "reflow.png", n=200)
    cell = round(plots.CELL_INCHES * plots.DPI)
    assert image_size(tmp_path / "reflow.png") == ((4 * cell, 3 * cell), 1)
    table = figures.reflow_table(tmp_path).splitlines()
    # 4 flows at 4 step counts, the default run, the exact flow at 4 step counts
    assert len(table) == 2 + 4 * 4 + 1 + 4
    one_step = next(line for line in table if "| 2-rectified | 1 |" in line)
    assert float(one_step.split("|")[-3]) < 0.5  # its straightness, in the row


def test_revealed_boxes_narrow_from_the_whole_box_to_the_bin_of_the_point():
    model = SimpleNamespace(vocab=4, length=4)  # V = 16 bins, coarse and fine digits
    shift, scale = torch.tensor([-1.0, 0.0]), torch.tensor([2.0, 4.0])
    z = torch.tensor([[4, 4, 4, 4], [1, 4, 4, 4], [1, 3, 2, 4], [1, 3, 2, 0]])
    corners = figures.revealed_boxes(z, model, shift, scale)  # (5, 4, 2)
    low, high = corners[0], corners[2]
    np.testing.assert_allclose(np.stack((low[0], high[0])), [[-1, 0], [1, 4]])  # all MASK
    np.testing.assert_allclose(np.stack((low[1], high[1])), [[-0.5, 0], [0, 4]])  # coarse x = 1
    # coarse x = 1, y = 3, fine x = 2: x in bin 6 of 16, y in the top quarter
    np.testing.assert_allclose(np.stack((low[2], high[2])), [[-0.25, 3], [-0.125, 4]])
    # the whole point: the bin 6 of 16 in x, 12 of 16 in y
    np.testing.assert_allclose(low[3], [-1 + 6 / 16 * 2, 12 / 16 * 4])
    np.testing.assert_allclose(high[3] - low[3], [2 / 16, 4 / 16])


def test_the_discrete_figure_from_tiny_runs(tmp_path, monkeypatch):
    run_once, discrete_run = ablate.run_once, figures.discrete_run
    small = ["--num_epochs", "2", "--hidden_size", "16", "--bins", "16", "--eval_batch_size", "200"]
    monkeypatch.setattr(ablate, "run_once", lambda args, exps: run_once([*args, *TINY], exps))
    monkeypatch.setattr(
        figures, "discrete_run", lambda args, exps: discrete_run([*args, *small], exps)
    )
    figures.discrete_figure(tmp_path, tmp_path / "discrete.png", n=200)
    cell = round(plots.CELL_INCHES * plots.DPI)
    assert image_size(tmp_path / "discrete.png") == ((5 * cell, 2 * cell), 1)
