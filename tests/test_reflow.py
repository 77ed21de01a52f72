"""Reflow (Liu et al. 2023): pairs of a teacher's ODE, a flow trained on them, how straight its
paths are, and the checkpoints of each stage."""

import json
import math

import pytest
import torch
from conftest import parsed_config, whole_and_resumed

import checkpoints
import datasets
import ddpm
import exact

TINY = ["--hidden_size", "16", "--hidden_layers", "1", "--eval_batch_size", "100"]
TINY += ["--num_epochs", "2", "--save_images_step", "1"]


def config_of(*args) -> dict:
    return parsed_config(*TINY, *args)


def test_straightness_is_zero_on_a_straight_walk_and_eq_3_on_a_bend():
    def path(t_values, x_t_values):  # in flow's coordinates -> reverse_process's (sigma, x)
        return [
            (t / (1 - t), torch.tensor([x_t]) / (1 - t)) for t, x_t in zip(t_values, x_t_values)
        ]

    eps, x_0 = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.5])
    t = [0.8, 0.5, 0.2, 0.0]
    line = [((1 - s) * x_0 + s * eps).tolist() for s in t]
    assert ddpm.straightness(path(t, line)) == pytest.approx(0, abs=1e-12)
    # two steps of 0.4 in t with velocities v1, v2: S = |v1 - v2|^2 / 4
    bend = [[0.0, 0.0], [0.4, 0.0], [0.4, 0.4]]  # x_t at t = 0.8, 0.4, 0
    v1, v2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])  # dx_t/dt, from t = 0 up
    assert ddpm.straightness(path([0.8, 0.4, 0.0], bend)) == pytest.approx(
        ((v1 - v2) ** 2).sum().item() / 4
    )


def gaussian_teacher(mu, s):
    """A Run whose D is the exact denoiser of N(mu, s^2 I), unclipped: its ODE map is affine."""
    teacher = ddpm.make_run(config_of("--method", "flow", "--no_clip_x0"), datasets.load("dino"))
    teacher.denoiser = exact.ExactDenoiser([exact.GaussianMixture([1.0], mu[None], s)])
    teacher.class_means, teacher.class_vars = mu[None], torch.full((1, 2), s**2)  # its start
    return teacher


def test_the_pairs_are_the_end_points_of_the_teachers_ode(monkeypatch):
    # The probability-flow ODE of N(mu, s^2) carries x at sigma_max to mu + s (x - mu) /
    # sqrt(s^2 + sigma_max^2): each pair's x_0 must be that map of its chain's start,
    # x_0 + sigma_max eps, to the accuracy of the steps (12 Heun steps widen this Gaussian by 6%,
    # 100 are off by 1e-3).
    monkeypatch.setitem(ddpm.REFLOW_SAMPLING, "num_inference_steps", 100)
    mu, s = torch.tensor([1.0, -2.0]), 0.5
    teacher = gaussian_teacher(mu, s)
    pairs = ddpm.reflow_pairs(teacher, 4000, torch.Generator().manual_seed(0))
    sigma_max = teacher.config["sigma_max"]
    x_start = pairs["x_0"] + sigma_max * pairs["eps"]
    mean, var = teacher.start_moments(None)  # the chains start from the data start's Gaussian
    assert torch.allclose(x_start.mean(0), mean, atol=0.3)
    assert x_start.std(0).tolist() == pytest.approx((sigma_max**2 + var).sqrt().tolist(), rel=0.03)
    expected = mu + s * (x_start - mu) / math.hypot(s, sigma_max)
    assert torch.allclose(pairs["x_0"], expected, atol=2e-3)
    again = ddpm.reflow_pairs(teacher, 4000, torch.Generator().manual_seed(0))
    assert torch.equal(again["x_0"], pairs["x_0"])  # same noise in, same points out


def test_a_flow_on_the_pairs_of_an_affine_map_is_straight_and_samples_in_one_step(monkeypatch):
    monkeypatch.setitem(ddpm.REFLOW_SAMPLING, "num_inference_steps", 100)  # pairs to 1e-3
    mu, s = torch.tensor([1.0, -2.0]), 0.5
    teacher = gaussian_teacher(mu, s)
    pairs = ddpm.reflow_pairs(teacher, 4000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    config = config_of("--method", "flow", "--input_embedding", "identity", "--hidden_size", "64")
    config |= {"num_epochs": 60, "save_images_step": 60, "eval_batch_size": 4000}
    student = ddpm.Run(config, pairs["x_0"], None, [], torch.zeros(2), torch.ones(2), 1.0)
    student.noise = pairs["eps"]
    assert ddpm.train(student) == "done"
    assert ddpm.path_straightness(student) < 0.01
    assert ddpm.path_straightness(teacher) > 0.1  # the Gaussian's own ODE bends (s != 1)
    one_step = ddpm.sampling_options(config) | {"sampler": "euler", "num_inference_steps": 1}
    one_step |= {"start_moments": student.moments}
    x_0 = ddpm.sample(student.ema.module, student.method, 4000, torch.Generator(), **one_step)
    assert torch.allclose(x_0.mean(0), mu, atol=0.05)
    assert x_0.std(0).tolist() == pytest.approx([s, s], rel=0.05)


def run_args(tmp_path, *args):
    return ["--dataset", "moons", *TINY, "--exps_dir", str(tmp_path), *args]


@pytest.mark.parametrize("teacher_method", ["flow", "edm"])
def test_each_stage_trains_resumes_and_samples_and_records_its_teacher(
    tmp_path, teacher_method, monkeypatch
):
    assert ddpm.main(run_args(tmp_path, "--method", teacher_method, "--experiment_name", "t")) == 0
    reflow = run_args(tmp_path, "--reflow", str(tmp_path / "t"), "--reflow_pairs", "300")
    whole, resumed = whole_and_resumed(reflow, tmp_path / "t", monkeypatch)  # the 2-rectified
    assert torch.equal(whole["losses"], resumed["losses"])
    assert torch.equal(whole["pairs"]["x_0"], resumed["pairs"]["x_0"])
    student = torch.load(tmp_path / "resumed" / "model.pth", weights_only=True)
    assert student["config"]["method"] == "flow"
    assert student["config"]["reflow"] == str(tmp_path / "t" / "model.pth")
    assert student["pairs"]["teacher"]["method"] == teacher_method
    # same noise in, same points out: the teacher rebuilt from its model.pth gives the pairs
    teacher_checkpoint = checkpoints.load(tmp_path / "t" / "model.pth", torch.device("cpu"))
    config = checkpoints.teacher_config(student["config"], teacher_checkpoint)
    teacher = ddpm.make_run(config, datasets.load("moons"), teacher_checkpoint)
    again = ddpm.reflow_pairs(teacher, 300, torch.Generator().manual_seed(0))  # seed 0's
    assert all(torch.equal(again[key], student["pairs"][key]) for key in ("x_0", "eps", "labels"))
    in_data = teacher.labels.bincount() / len(teacher.labels)  # moons: about half each
    assert (student["pairs"]["labels"].bincount() - 300 * in_data).abs().max() <= 1
    # a second reflow (the 3-rectified flow), and sampling a reflow in one step
    rf2 = str(tmp_path / "resumed" / "model.pth")
    rf3 = run_args(tmp_path, "--reflow", rf2, "--experiment_name", "rf3", "--reflow_pairs", "300")
    assert ddpm.main(rf3) == 0
    one_step = ["--checkpoint", str(tmp_path / "rf3" / "model.pth"), "--num_epochs", "0"]
    one_step += ["--sampler", "euler", "--num_inference_steps", "1", "--experiment_name", "one"]
    assert ddpm.main(run_args(tmp_path, *one_step)) == 0
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["nfe"] == 1 and metrics["straightness"] >= 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reflow", "nowhere"], "checkpoint nowhere not found"),
        (["--reflow", "{t}", "--method", "edm"], "--reflow trains a flow"),
        (["--reflow", "{t}", "--dataset", "dino"], "the checkpoint has dataset=moons"),
        (["--reflow_pairs", "100"], "--reflow_pairs is the number of pairs of --reflow RUN"),
    ],
)
def test_a_bad_reflow_is_a_one_line_error_before_any_work(tmp_path, capsys, args, message):
    assert ddpm.main(run_args(tmp_path, "--method", "flow", "--experiment_name", "t")) == 0
    capsys.readouterr()
    args = [arg.format(t=tmp_path / "t") for arg in args]
    with pytest.raises(SystemExit) as refused:
        ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--experiment_name", "rf", *args])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rf").exists()
