"""Consistency models (ddpm.py, section 11): multistep consistency sampling, the fine-tuning from
an EDM teacher, the levels a run stores, resuming, and bad command lines."""

import json
import math
from functools import partial

import pytest
import torch
from conftest import parsed_config, whole_and_resumed
from torch import nn

import ddpm
import run_folder

TINY = ["--hidden_size", "16", "--hidden_layers", "1", "--eval_batch_size", "100"]
TINY += ["--num_epochs", "2", "--save_images_step", "1"]
S = 0.5  # the data: N(0, S^2 I), and sigma_data = S


def gaussian_consistency(levels=None) -> ddpm.Consistency:
    """The Consistency method of N(0, S^2 I) (sigma_data = S), sampling up to sigma_max = 10."""
    method = ddpm.Consistency(S, -0.5, 2.0, 0.002, 10.0)
    method.levels = levels or {}
    return method


def ode_map(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE of N(0, S^2 I) carries x at sigma = t: to S x / sqrt(S^2 +
    t^2) at sigma = 0 (its marginals are N(0, (S^2 + t^2) I), and the flow is linear)."""
    return S * x / (S**2 + t[:, None] ** 2).sqrt()


class ExactConsistency(nn.Module):
    """The F whose preconditioned D (EDM, Table 1) is ode_map: F = (f - c_skip x) / c_out, which
    is c_in x (sqrt(S^2 + t^2) - S) / t, with t = exp(4 c_noise) read from the time input."""

    num_classes = 0

    def forward(self, x_in, time_in, c=None):
        t = (4 * time_in / ddpm.EDM_TIME_SCALE).exp()[:, None]
        return x_in * ((S**2 + t**2).sqrt() - S) / t


def moments(n_levels: dict, steps: int, n=20000):
    method = gaussian_consistency(n_levels)
    sampling = {"sampler": "consistency", "grid": "stored", "num_inference_steps": steps}
    start = {"init_noise": "data", "start_moments": (torch.zeros(2), torch.full((2,), S**2))}
    model = ExactConsistency()
    x = ddpm.sample(model, method, n, torch.Generator().manual_seed(0), **sampling, **start)
    return x.mean(0), x.std(0)


@pytest.mark.parametrize("levels", [[10.0], [10.0, 0.3], [2.0, 0.7, 0.2, 0.05]])
def test_multistep_consistency_sampling_with_the_exact_map_draws_the_gaussian(levels):
    # Song et al. 2023, Alg. 1: each jump lands on a draw of the data, each re-noising on the
    # marginal of the next level, so any levels give N(0, S^2) (20000 points: std to 1.5%)
    mean, std = moments({str(len(levels)): levels}, len(levels))
    assert mean.abs().max() < 0.02
    assert std.tolist() == pytest.approx([S, S], rel=0.03)


def test_the_stored_grid_is_the_runs_levels_else_karras():
    method = gaussian_consistency({"2": [3.0, 0.1]})
    assert ddpm.noise_levels("stored", method, 2) == [3.0, 0.1, 0.0]
    assert ddpm.noise_levels("stored", method, 3) == ddpm.noise_levels("karras", method, 3)
    assert ddpm.nfe("consistency", 4) == 4


def test_the_consistency_step_lands_on_D_and_renoises_to_the_next_level():
    x, z = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    D = lambda x, sigma: x / 2  # noqa: E731
    assert torch.equal(ddpm.consistency_step(D, x, 1.0, 0.0, lambda: z), x / 2)
    assert torch.equal(ddpm.consistency_step(D, x, 1.0, 0.3, lambda: z), x / 2 + 0.3 * z)


def consistency_config(*args) -> dict:
    config = parsed_config(*TINY, *args)
    return config | {"consistency": "a teacher", "consistency_sigmas": None}


def test_distilling_the_exact_denoiser_of_a_gaussian_learns_the_odes_map():
    # The teacher: a network whose D is the exact denoiser of N(0, S^2): with sigma_data = S its
    # F is 0 (D = c_skip x = S^2 x / (S^2 + t^2)). One jump of it lands far from where the ODE
    # does (at t = 10 it shrinks x 20x too much); distilled on its own ODE's chains, D must
    # land there at each level it learned.
    torch.manual_seed(0)
    args = ["--input_embedding", "identity", "--hidden_size", "64", "--hidden_layers", "2"]
    config = consistency_config(*args) | {
        "num_epochs": 60,
        "learning_rate": 2e-3,
        "ema_decay": 0.99,
    }
    data = S * torch.randn(4000, 2)
    run = ddpm.Run(config, data, None, [], torch.zeros(2), torch.ones(2), S)
    last = run.model.net[-1]
    nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
    run.ema.update()  # the EMA starts as the teacher, as a run from RUN's checkpoint does
    t = torch.tensor([0.3, 1.0, 2.0, 10.0]).repeat_interleave(1000)  # levels it learns
    x = (S**2 + t[:, None] ** 2).sqrt() * torch.randn(len(t), 2)  # x on the ODE's marginals

    def error(model) -> torch.Tensor:  # the RMS distance from the ODE's landing point, per t
        with torch.no_grad():
            D = run.method.D_theta(model, x, t)
        return ((D - ode_map(x, t)) ** 2).sum(-1).view(4, -1).mean(-1).sqrt()

    teacher = error(run.model)
    assert teacher[-1] > 0.6  # the exact denoiser's one jump from t = 10
    assert ddpm.train(run, partial(ddpm.trajectory_loss, run), frame=lambda run: None) == "done"
    # the teacher's chains land where the ODE does: 2 heun steps a level (RMS 0.019, seeds 0-3)
    paths = run.trajectories
    start = paths["x"][0]
    chain_error = (paths["end"] - ode_map(start, torch.full((len(start),), 10.0))).norm(dim=-1)
    assert chain_error.square().mean().sqrt() < 0.05 * S, chain_error.square().mean().sqrt()
    # within 0.1 S at every t (measured over seeds 0-3: 0.0005-0.0008, 0.006-0.008, 0.011-0.018
    # and 0.034-0.045 at t = 0.3, 1, 2, 10), a tenth of the teacher's one jump from t = 10
    fine_tuned = error(run.ema.module)
    assert (fine_tuned < 0.1 * S).all() and fine_tuned[-1] < teacher[-1] / 10, fine_tuned


def run_args(tmp_path, *args):
    return ["--dataset", "moons", *TINY, "--exps_dir", str(tmp_path), *args]


def test_a_consistency_run_stores_its_levels_resumes_and_samples_again(tmp_path, monkeypatch):
    assert ddpm.main(run_args(tmp_path, "--experiment_name", "t")) == 0  # an edm teacher
    ct = run_args(tmp_path, "--consistency", str(tmp_path / "t"))
    whole, resumed = whole_and_resumed(ct, tmp_path / "t", monkeypatch)
    assert torch.equal(whole["losses"], resumed["losses"])
    config = resumed["config"]
    assert config["consistency"] == str(tmp_path / "t" / "model.pth")
    assert config["method"] == "edm" and config["learning_rate"] == 1e-3  # its own defaults
    assert whole["config"]["consistency_sigmas"] == config["consistency_sigmas"]
    learned = ddpm.learned_levels(gaussian_consistency())  # sigma_min 0.002, sigma_max 10
    for steps, levels in config["consistency_sigmas"].items():  # from sigma_max, levels it learned
        assert len(levels) == int(steps) and levels[0] == config["sigma_max"]
        assert set(levels) <= set(learned) and levels == sorted(set(levels), reverse=True)
    assert list(config["consistency_sigmas"]) == ["1", "2", "4", "8"]
    for key in ("x", "end"):  # the teacher's chains, drawn once: a resumed run keeps them
        assert torch.equal(whole["trajectories"][key], resumed["trajectories"][key])
    teacher = torch.load(tmp_path / "t" / "model.pth")
    assert torch.equal(resumed["shift"], teacher["shift"])  # the teacher's units
    assert resumed["teacher"] == teacher["config"] == whole["teacher"]  # and its config
    again = ["--checkpoint", str(tmp_path / "resumed" / "model.pth"), "--num_epochs", "0"]
    assert ddpm.main(run_args(tmp_path, *again, "--num_inference_steps", "4", "--overwrite")) == 0
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert metrics["nfe"] == 4 and math.isfinite(metrics["w2_ratio"])


def test_resuming_a_consistency_run_of_ect_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    # a run of the earlier fine-tuning (ECT) drew no teacher chains: resumed, it would draw them
    # from its half-tuned model and go on with another loss
    assert ddpm.main(run_args(tmp_path, "--experiment_name", "t")) == 0
    ct = run_args(tmp_path, "--consistency", str(tmp_path / "t"), "--experiment_name", "ct")
    monkeypatch.setattr(run_folder.StopOnCtrlC, "requested", True)  # Ctrl-C in the first epoch
    with pytest.raises(SystemExit):
        ddpm.main(ct)
    monkeypatch.undo()
    checkpoint = torch.load(tmp_path / "ct" / "model.pth")
    assert len(checkpoint["losses"]) and checkpoint.pop("trajectories")  # as ECT's had none
    torch.save(checkpoint, tmp_path / "ct" / "model.pth")
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        ddpm.main([*ct, "--resume"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "trained by ECT" in err


def test_the_learned_levels_lie_between_sigma_min_and_sigma_max():
    method = gaussian_consistency()
    assert ddpm.learned_levels(method) == [10.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
    method.sigma_min, method.sigma_max = 0.05, 80.0  # never a step up, nor one of length 0
    assert ddpm.learned_levels(method) == [80.0, 10.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1]


def test_a_share_of_the_teacher_chains_is_the_unconditional_odes(teachers):
    # classifier-free guidance's null class learns the unconditional ODE's ends, from the whole
    # data's start, not the average of the classes' ends
    checkpoint = torch.load(teachers / "c" / "model.pth")
    paths, config = checkpoint["trajectories"], checkpoint["config"]
    null = paths["c"] == 2  # moons: classes 0 and 1, then the null class
    assert null.float().mean().item() == pytest.approx(config["cond_drop_prob"], abs=0.01)
    assert {0, 1} <= set(paths["c"][~null].tolist())


def test_going_on_from_a_consistency_checkpoint_keeps_its_teachers_chains(
    teachers, tmp_path, monkeypatch
):
    def redraw(run):
        raise AssertionError("the chains were drawn again, from the consistency model itself")

    monkeypatch.setattr(ddpm, "teacher_trajectories", redraw)
    more = ["--checkpoint", str(teachers / "c"), "--num_epochs", "1", "--experiment_name", "more"]
    assert ddpm.main(run_args(tmp_path, *more)) == 0
    kept = torch.load(tmp_path / "more" / "model.pth")["trajectories"]
    assert torch.equal(kept["end"], torch.load(teachers / "c" / "model.pth")["trajectories"]["end"])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A folder with three tiny runs of moons: t, an edm run, f, a flow run, and c, t's
    consistency model."""
    folder = tmp_path_factory.mktemp("teachers")
    assert ddpm.main(run_args(folder, "--experiment_name", "t")) == 0
    assert ddpm.main(run_args(folder, "--experiment_name", "f", "--method", "flow")) == 0
    consistency = ["--experiment_name", "c", "--consistency", str(folder / "t")]
    assert ddpm.main(run_args(folder, *consistency)) == 0
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--consistency", "nowhere"], "checkpoint nowhere not found"),
        (["--consistency", "{t}", "--method", "flow"], "denoiser: drop --method and --denoiser"),
        (["--consistency", "{f}"], "--consistency fine-tunes an edm run's denoiser: RUN is a flow"),
        (["--consistency", "{t}", "--dataset", "dino"], "the checkpoint has dataset=moons"),
        (["--consistency", "{t}", "--reflow", "{t}"], "--reflow and --consistency"),
        (["--consistency", "{t}", "--checkpoint", "{t}/model.pth"], "drop --checkpoint"),
        (["--grid", "stored"], "--grid stored is a consistency run's"),
        (["--consistency", "{c}"], "RUN is a consistency model; give its teacher"),
        (["--consistency", "{t}", "--P_mean", "-1"], "--P_mean sets how RUN trained"),
        (
            ["--checkpoint", "{c}", "--num_epochs", "0", "--num_inference_steps", "3"],
            "for 1, 2, 4 or 8",
        ),
    ],
)
def test_a_bad_consistency_run_is_a_one_line_error_before_any_work(
    teachers, tmp_path, capsys, args, message
):
    args = [arg.format(t=teachers / "t", f=teachers / "f", c=teachers / "c") for arg in args]
    with pytest.raises(SystemExit) as refused:
        ddpm.main([*run_args(tmp_path, "--experiment_name", "ct"), *args])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ct").exists()
