"""Every kind of figure, drawn from a tiny run: valid images of the expected size."""

import csv
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import ablate
import datasets
import ddpm
import exact
import figures
import plots
import positional_embeddings

BASE = [
    "--dataset",
    "moons",
    "--num_epochs",
    "4",
    "--hidden_size",
    "16",
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


def test_loss_png_names_the_target_of_each_method(tmp_path, monkeypatch):
    """EDM's loss is not an MSE of eps: each method's curve says what its network is fit to."""
    labels = {}
    monkeypatch.setattr(plots.plt, "close", lambda fig: labels.update(t=fig.axes[0].get_title()))
    named = [
        ("ddpm", [], "eps"),
        ("flow", [], "eps - x_0"),
        ("edm", [], "(E[x_0 | x] - c_skip x) / c_out"),  # the default: the stable target
        ("edm", ["--no_stable_target"], "(x_0 - c_skip x) / c_out"),
        ("edm", ["--consistency", "RUN"], "|D(x_t) - the teacher's ODE end| / sqrt(t)"),
    ]
    for method, args, target in named:
        config = vars(ddpm.build_parser().parse_args(["--method", method, *args]))
        plots.save_loss(np.linspace(1, 0.1, 300), tmp_path / "loss.png", config)
        assert labels["t"].startswith(f"{method}: ") and labels["t"].endswith(target), labels


def test_the_process_figure_and_the_animation_in_one_noise_unit(tiny_run, tmp_path):
    process, gif = figures.draw_process_figures(tiny_run, tmp_path)
    cell = round(plots.CELL_INCHES * plots.DPI)
    assert image_size(process) == ((figures.SNAPSHOTS * cell, 2 * cell), 1)
    side = round(plots.LARGE_INCHES * plots.DPI)  # 480 px: big enough to see sharpness
    # sigma = 0 and GIF_FORWARD_FRAMES levels forward, the default (edm) sampler's steps + 1 back
    frames = 1 + figures.GIF_FORWARD_FRAMES + ddpm.EDM.steps + 1
    assert image_size(gif) == ((side, side), frames)
    with Image.open(gif) as image:
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            durations.append(image.info["duration"])
    assert durations[-1] == 1500 and durations[-2] > durations[0]  # the end held, reverse slower


def test_the_headline_picture_shows_the_data_beside_the_samples_480_px_high(tiny_run, tmp_path):
    points = np.load(tiny_run / "frames.npy")[-1]
    plots.save_samples(points + 1, points, tmp_path / "samples.png", "moons")
    assert image_size(tmp_path / "samples.png") == ((960, 480), 1)


def test_forward_process_ends_in_noise_and_reverse_process_ends_near_the_data(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    forward = figures.forward_process(config, [0.0, 100.0])
    assert [sigma for sigma, _ in forward] == [0.0, 100.0]
    assert abs(forward[-1][1].std() - 1) < 0.1  # x_0 + 100 eps, shown / sqrt(1 + 100^2): ~ N(0, I)
    reverse = figures.reverse_process(tiny_run / "model.pth")
    sigmas = [sigma for sigma, _ in reverse]
    assert len(sigmas) == ddpm.EDM.steps + 1 and sigmas[-1] == 0
    assert sigmas == sorted(sigmas, reverse=True)


def test_an_ablation_sweep_draws_a_row_per_value_writes_its_table_and_reuses_its_runs(tmp_path):
    figure = tmp_path / "grid.png"
    rows = ablate.sweep("hidden_layers", ["1", "2"], BASE, tmp_path, figure)
    assert [row["hidden_layers"] for row in rows] == ["1", "2"] and all(
        row["w2_ratio"] > 0 for row in rows
    )
    (width, height), _ = image_size(figure)
    assert (width, height) == (
        round(3 * plots.CELL_INCHES * plots.DPI),
        round(2 * plots.CELL_INCHES * plots.DPI),
    )  # 4 saved epochs, the first (after one epoch) not shown
    markdown = ablate.write_table(rows, tmp_path / "table")
    assert markdown.count("\n") == 3 and (tmp_path / "table.csv").read_text().startswith(
        "hidden_layers,dataset,w2"
    )
    assert "w2_ratio,precision,recall" in (tmp_path / "table.csv").read_text()
    checkpoint = tmp_path / ablate.run_name([*BASE, "--hidden_layers", "1"]) / "model.pth"
    trained_at = checkpoint.stat().st_mtime_ns
    ablate.sweep("hidden_layers", ["1"], BASE, tmp_path, figure)
    assert checkpoint.stat().st_mtime_ns == trained_at  # reused, not trained again


@pytest.mark.parametrize(
    "argv, message",
    [
        (["learning_rate", "abc"], "ablate.py: error: argument --learning_rate: expected a number"),
        (["stable_target", "true", "false"], "on/off switch (--no_stable_target)"),
        (["guidance_interval", "0.5 0.2"], "--guidance_interval LO HI needs 0 <= LO < HI <= 1"),
    ],
)
def test_a_sweep_refused_before_its_first_run_says_so_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        ablate.main(argv)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and message in error, error


def test_a_two_number_option_is_swept_by_values_of_two_numbers(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(ablate, "run_once", lambda args, exps_dir: started.append(args) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the first run starts, with both numbers
        ablate.sweep("guidance_interval", ["0 0.5"], BASE, tmp_path, tmp_path / "grid.png")
    assert started[0][-3:] == ["--guidance_interval", "0", "0.5"]


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


def test_a_run_sampled_from_a_checkpoint_is_redone_when_the_checkpoint_is_trained_again(tmp_path):
    teacher = ablate.run_once(TINY, tmp_path)
    again = ["--checkpoint", str(teacher / "model.pth"), "--num_epochs", "0"]
    sampled = ablate.run_once(again, tmp_path)
    sampled_at = (sampled / "metrics.json").stat().st_mtime_ns
    assert ablate.run_once(again, tmp_path) == sampled  # reused while the teacher is the same
    assert (sampled / "metrics.json").stat().st_mtime_ns == sampled_at
    later = sampled_at + 10**9
    os.utime(teacher / "model.pth", ns=(later, later))  # as if the teacher was trained again
    ablate.run_once(again, tmp_path)
    assert (sampled / "metrics.json").stat().st_mtime_ns > sampled_at


def test_the_density_figure_has_a_column_per_model(tmp_path):
    log_p = [np.zeros((20, 20)) - k for k in range(3)]
    points = [np.random.default_rng(k).normal(size=(100, 2)) for k in range(3)]
    plots.save_densities(log_p, points, ["data", "ddpm", "edm"], tmp_path / "density.png", 0.0)
    width, height = round(3 * 2.4 * plots.DPI), round(2 * 2.4 * plots.DPI)
    assert image_size(tmp_path / "density.png") == ((width, height), 1)


@pytest.fixture
def tiny_runs(monkeypatch):
    """Every run that ablate.run_once trains is tiny (2 epochs of a small network), every
    teacher's pairs few, every frame 200 points."""
    run_once = ablate.run_once

    def tiny(args, exps_dir):
        trains = "--checkpoint" not in args and "--denoiser" not in args
        small = (
            ["--num_epochs", "2", "--hidden_size", "16", "--hidden_layers", "1"] if trains else []
        )
        small += ["--reflow_pairs", "300"] if "--reflow" in args else []
        return run_once([*args, *small, "--eval_batch_size", "200"], exps_dir)

    monkeypatch.setattr(ablate, "run_once", tiny)


def test_the_reflow_figure_and_table_from_tiny_runs(tmp_path, monkeypatch, tiny_runs):
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


def test_the_defaults_tables_from_tiny_runs(tmp_path, monkeypatch):
    run_once = ablate.run_once

    def tiny(args, exps_dir):  # every training run tiny
        small = ["--num_epochs", "2", "--hidden_size", "16", "--hidden_layers", "1"]
        trains = "--checkpoint" not in args and "--denoiser" not in args
        return run_once([*args, *(small if trains else []), "--eval_batch_size", "200"], exps_dir)

    monkeypatch.setattr(ablate, "run_once", tiny)
    monkeypatch.setattr(figures, "DEFAULT_DATASETS", ["line"])
    monkeypatch.setattr(figures, "DEFAULT_SEEDS", ["0", "1"])
    defaults, samplers = figures.defaults_tables(tmp_path).split("\n\n")
    network, limit = defaults.splitlines()[2:]
    assert network.startswith("| line | **network** |") and limit.startswith("|  | limit |")
    assert limit.count("%") == 2  # the line's off-support, one per seed
    rows = samplers.splitlines()[2:]
    assert [row.split(" | ")[0][2:] for row in rows] == list(figures.SAMPLER_SETTINGS)
    # the default's row is the runs' own samples: its worst precision is the network row's
    precisions = [float(cell.split(" / ")[1]) for cell in network.split(" | ")[2:4]]
    default = next(row for row in rows if "the default" in row)
    assert float(default.split(" | ")[1].split(" / ")[1]) == min(precisions)


def table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines()[2:]]


def test_the_field_figure_from_a_tiny_run(tmp_path, tiny_runs):
    rows = table_rows(figures.field_figure(tmp_path, tmp_path / "field.png"))
    size = (round(4 * 3.0 * plots.DPI), round(3 * 3.7 * plots.DPI))  # 4 sigmas, 3 rows
    assert image_size(tmp_path / "field.png") == (size, 1)
    assert [float(row[0]) for row in rows] == figures.FIELD_SIGMAS
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)


def test_the_paths_figure_names_each_chains_cost_and_straightness(tmp_path, tiny_runs):
    rows = table_rows(figures.paths_figure(tmp_path, tmp_path / "paths.png"))
    assert image_size(tmp_path / "paths.png") == ((4 * 3 * plots.DPI, 4 * plots.DPI), 1)
    assert [int(row[1]) for row in rows] == [50, 50, 23, 50]
    ancestral, euler, heun, sde = (float(row[2]) for row in rows)
    assert heun < sde and euler < ancestral  # the ODE's paths are straighter than the SDE's


def sigma_of(name: str, method, time_in: torch.Tensor) -> torch.Tensor:
    """The noise level of a training example, from the network's time input (ddpm.py, sec. 3)."""
    if name == "ddpm":
        return method.sigmas[time_in.long()]
    if name == "flow":
        t = time_in / 1000
        return t / (1 - t)
    return (time_in / 250 * 4).exp()  # 250 c_noise, c_noise = ln(sigma) / 4


PLAIN = ["--no_stable_target"]  # the loss weight is the plain target's: D's error against x_0
METHODS = {name: ddpm.make_method(vars(ddpm.build_parser().parse_args(["--method", name, *PLAIN])),
                                  1.8)
           for name in ddpm.METHODS}  # fmt: skip


@pytest.mark.parametrize("name", ddpm.METHODS)
def test_the_loss_weight_turns_each_methods_loss_into_the_denoisers_weighted_error(name):
    method, generator = METHODS[name], torch.Generator().manual_seed(0)
    x_0, eps, F = (torch.randn(256, 2, generator=generator) for _ in range(3))
    _, time_in, target = method.training_example(2 * x_0, eps)
    sigma = sigma_of(name, method, time_in)
    D = method.D_theta(lambda *_: F, 2 * x_0 + sigma[:, None] * eps, sigma)
    loss = ((F - target) ** 2).sum(1)  # the method's loss at each point, F the network's output
    weighted = figures.loss_weight(method, sigma) * ((D - 2 * x_0) ** 2).sum(1)
    torch.testing.assert_close(loss, weighted, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ddpm.METHODS)
def test_the_training_density_is_that_of_the_levels_training_draws(name):
    method = METHODS[name]
    torch.manual_seed(0)
    _, time_in, _ = method.training_example(torch.zeros(100_000, 2), torch.zeros(100_000, 2))
    drawn = sigma_of(name, method, time_in).double().log().sort().values.numpy()
    # P(ln sigma <= u) at the midpoints between DDPM's levels, where its spread density is exact
    levels = METHODS["ddpm"].sigmas.double().log().numpy()
    u = (levels[1:] + levels[:-1]) / 2
    axis = np.linspace(np.log(1e-9), u[-1], 400_000)
    density = figures.training_density(method, axis)
    cdf = np.concatenate(([0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(axis))))
    empirical = np.searchsorted(drawn, u, side="right") / len(drawn)
    np.testing.assert_allclose(np.interp(u, axis, cdf), empirical, atol=0.01)


def test_the_noise_levels_figure_and_its_table(tmp_path):
    rows = table_rows(figures.noise_levels_figure(tmp_path, tmp_path / "noise_levels.png"))
    assert image_size(tmp_path / "noise_levels.png") == ((7 * plots.DPI, 7 * plots.DPI), 1)
    weights = {row[0]: float(row[4]) for row in rows}  # p lambda at sigma = 0.011
    assert weights["edm"] > weights["flow"] > weights["ddpm"] == 0  # DDPM's levels start at 0.04


def test_the_stable_target_is_nearer_the_posterior_mean_than_x_0_at_every_noise_level(tmp_path):
    figures.targets_figure(tmp_path, tmp_path / "targets.png")
    rows = list(csv.DictReader((tmp_path / "ablations" / "targets.csv").open()))
    plain, stable = ([float(row[f"RMS of {k} - E[x_0 given x]"]) for row in rows] for k in
                     ("x_0", "stable"))  # fmt: skip
    assert len(rows) == len(figures.TARGET_SIGMAS) and all(s < p for s, p in zip(stable, plain))
    assert plain == sorted(plain)  # x_0 strays further from the mean as the noise grows
    assert stable[-1] < plain[-1] / 10  # at sigma = 3 the batch's mean is near the true one
    panels = len(figures.TARGET_PANELS) * 2
    assert image_size(tmp_path / "targets.png") == ((panels * 3 * plots.DPI, 4 * plots.DPI), 1)


def test_the_method_by_nfe_grid_and_table_from_tiny_runs(tmp_path, monkeypatch, tiny_runs):
    monkeypatch.setattr(figures, "NFE_COLUMNS", [1, 23])
    monkeypatch.setattr(figures, "NFE_SEEDS", ["0"])
    rows = table_rows(figures.methods_nfe(tmp_path, tmp_path / "methods_nfe.png"))
    cell = round(plots.CELL_INCHES * plots.DPI)
    assert image_size(tmp_path / "methods_nfe.png") == ((2 * cell, 4 * cell), 1)
    assert [row[0] for row in rows[::2]] == ["DDPM", "flow", "EDM", "2-rectified flow"]
    assert all(len(row[-1].split(" / ")) == 3 for row in rows)  # W2 ratio / precision / recall


def test_the_exact_density_of_a_cell_is_its_mass_over_its_area():
    edges = torch.linspace(-1, 1, 5)  # cells 0.5 wide
    point = exact.GaussianMixture([1.0], [[0.25, -0.25]], [1e-4, 1e-4])  # in one cell
    cells = figures.cell_log_density(point, edges).exp()
    assert cells[1, 2] == pytest.approx(1 / 0.25) and cells.sum() == pytest.approx(1 / 0.25)
    wide = exact.GaussianMixture([1.0], [[0.0, 0.0]], [3.0, 3.0])  # smooth: the point value
    centre = torch.tensor([[0.25, 0.25]])
    assert cells.shape == (4, 4) and figures.cell_log_density(wide, edges)[2, 2].item() == (
        pytest.approx(wide.log_prob(centre).item(), abs=5e-3)
    )


def test_a_runs_score_is_redone_and_saved_only_when_evaluate_py_is_newer(
    tiny_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(metrics | {"w2_ratio": -1.0}))
    assert ablate.score(out)["w2_ratio"] == -1.0  # scored after evaluate.py last changed: kept
    newer = tmp_path / "evaluate.py"
    newer.write_text("")
    later = (out / "metrics.json").stat().st_mtime + 10
    os.utime(newer, (later, later))
    monkeypatch.setattr(ablate, "SCORED_BY", [newer])
    assert ablate.score(out)["w2_ratio"] == metrics["w2_ratio"]  # redone
    assert json.loads((out / "metrics.json").read_text())["w2_ratio"] == metrics["w2_ratio"]


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


def test_the_fourier_scale_table_names_autos_number_beside_each_scales_kl(
    tmp_path, monkeypatch, tiny_runs
):
    monkeypatch.setattr(figures, "FOURIER_SCALES", [("25", "-2", ["0"]), ("auto", "-1.5", ["0"])])
    header, _, *rows = figures.fourier_scale_table(tmp_path).splitlines()
    assert header.startswith("| Fourier scale | P_mean | NLL | KL(data ‖ model) | KL per seed |")
    auto = round(positional_embeddings.fourier_scale(datasets.load("dino").train_set()[0]), 1)
    cells = [row.strip("| ").split(" | ") for row in rows]
    assert [cell[:2] for cell in cells] == [["25", "-2"], [f"{auto:g}", "-1.5"]]
    assert all(float(cell[4]) > 0 for cell in cells)  # a 2-epoch network is far from the data
