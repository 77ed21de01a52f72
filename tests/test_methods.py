"""The three training objectives and the samplers, against closed forms and exact denoisers."""

import json
import math

import pytest
import torch

import checkpoints
import datasets
import ddpm
import exact
import run_folder

CONFIG = {
    "beta_schedule": "cosine",
    "num_timesteps": 50,
    "flow_t": "uniform",
    "P_mean": -1.2,
    "P_std": 1.2,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "consistency": None,
    "stable_target": False,
}


def methods():
    return {name: ddpm.make_method(CONFIG | {"method": name}, 0.5) for name in ddpm.METHODS}


def noise_level(name, method, time_in):
    """The (B,) sigma of a training example, read back from the network's time input."""
    if name == "ddpm":
        return method.sigmas[time_in.long()]
    if name == "flow":
        return (time_in / 1000) / (1 - time_in / 1000)
    return (4 * time_in / 250).exp()  # edm: c_noise = ln(sigma) / 4


def test_each_forward_process_and_target_is_its_papers_closed_form():
    x_0, eps = torch.randn(1000, 2), torch.randn(1000, 2)
    for name, method in methods().items():
        x_in, time_in, target = method.training_example(x_0, eps)
        sigma = noise_level(name, method, time_in)[:, None]  # (B, 1)
        if name == "ddpm":  # Ho et al. 2020, eq. 4
            a = 1 / (1 + sigma**2)
            expected = a.sqrt() * x_0 + (1 - a).sqrt() * eps, eps
        if name == "flow":  # x_t = (1 - t) x_0 + t eps, v = eps - x_0
            t = time_in[:, None] / 1000
            expected = (1 - t) * x_0 + t * eps, eps - x_0
        if (
            name == "edm"
        ):  # Karras et al. 2022, Table 1: F's input c_in x, target (x_0 - c_skip x)/c_out
            s2 = sigma**2 + 0.25
            x = x_0 + sigma * eps
            expected = x / s2.sqrt(), (x_0 - 0.25 / s2 * x) / (sigma * 0.5 / s2.sqrt())
        assert torch.allclose(x_in, expected[0], atol=1e-4), name
        assert torch.allclose(target, expected[1], atol=1e-3, rtol=1e-3), name


def test_a_network_that_outputs_its_training_target_denoises_exactly():
    # Training and sampling speak the same language: the network is asked, at sampling time, the
    # same question (x_in, time_in) as in training, and its answer becomes x_0.
    x_0, eps = torch.randn(500, 2), torch.randn(500, 2)
    for name, method in methods().items():
        x_in, time_in, target = method.training_example(x_0, eps)
        sigma = noise_level(name, method, time_in)
        asked = []

        def network(x, t, c=None):
            asked.append((x, t))
            return target

        x_0_hat = method.D_theta(network, x_0 + sigma[:, None] * eps, sigma)
        assert torch.allclose(asked[0][0], x_in, atol=1e-4), name
        assert torch.allclose(asked[0][1], time_in, atol=1e-3), name
        assert torch.allclose(x_0_hat, x_0, atol=2e-3), name


def test_edm_preconditioning_limits():
    edm = methods()["edm"]
    c_skip, c_out, c_in, _ = edm.preconditioning(
        torch.tensor([1e-6, 0.5, 1e6], dtype=torch.float64)
    )
    assert c_skip[0] == pytest.approx(1) and c_out[0] == pytest.approx(0, abs=1e-5)  # D(x) = x
    assert c_skip[1] == pytest.approx(0.5) and c_out[1] == pytest.approx(0.5 / math.sqrt(2))
    assert c_skip[2] == pytest.approx(0, abs=1e-12) and c_out[2] == pytest.approx(0.5)  # D = F
    assert (c_in * torch.tensor([0.5, 0.5 * math.sqrt(2), 1e6])).tolist() == pytest.approx([1] * 3)


def test_the_stable_target_is_the_exact_denoiser_of_the_batch_as_data():
    # Xu et al. 2023: E[x_0 | x] with the batch's points as the data, an independent closed form
    # in exact.py (the empirical distribution's denoiser), at each point's own sigma.
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    sigma = torch.logspace(-2, 1, 64, dtype=torch.float64)[:, None]  # (B, 1)
    x = x_0 + sigma * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    batch = exact.GaussianMixture(torch.ones(64), x_0, torch.zeros(2))
    assert torch.allclose(ddpm.stable_target(x, sigma, x_0), batch.denoise(x, sigma[:, 0]))
    # each class's own points: the denoiser of the class's part of the batch
    c = torch.arange(64) % 3
    targets = ddpm.stable_target(x, sigma, x_0, c)
    for k in range(3):
        part = exact.GaussianMixture(torch.ones(int((c == k).sum())), x_0[c == k], torch.zeros(2))
        assert torch.allclose(targets[c == k], part.denoise(x[c == k], sigma[c == k, 0]))


def test_the_stable_target_is_the_own_point_at_low_noise_and_the_mean_at_high():
    x_0 = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    eps = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]])
    low, high = torch.full((3, 1), 1e-3), torch.full((3, 1), 1e4)
    assert torch.allclose(ddpm.stable_target(x_0 + low * eps, low, x_0), x_0)
    mean = x_0.mean(0).expand(3, 2)
    assert torch.allclose(ddpm.stable_target(x_0 + high * eps, high, x_0), mean, atol=1e-3)


def test_edms_stable_target_has_less_variance_and_its_plain_one_is_x_0():
    # Two clusters seen at sigma = 3: which one made x is unclear, so x_0 varies from draw to
    # draw by about the clusters' spacing; the batch's posterior mean varies less.
    torch.manual_seed(0)
    x_0 = torch.cat((torch.full((128, 2), -1.0), torch.full((128, 2), 1.0)))
    edm = ddpm.make_method(CONFIG | {"method": "edm", "P_mean": math.log(3), "P_std": 1e-6}, 1)
    stable = ddpm.make_method(CONFIG | {"method": "edm", "stable_target": True}, 1)
    stable.P_mean, stable.P_std = edm.P_mean, edm.P_std
    eps = torch.randn(256, 2)
    torch.manual_seed(1)
    x_in, time_in, target = edm.training_example(x_0, eps)
    torch.manual_seed(1)
    x_in_stable, time_in_stable, target_stable = stable.training_example(x_0, eps)
    assert torch.equal(x_in, x_in_stable) and torch.equal(time_in, time_in_stable)
    c_skip, c_out, c_in, _ = edm.preconditioning(torch.tensor(3.0))
    assert torch.allclose(c_out * target + c_skip * x_in / c_in, x_0, atol=1e-5)
    D_target = c_out * target_stable + c_skip * x_in / c_in  # what D is trained towards
    assert D_target.var(0).sum() < 0.5 * x_0.var(0).sum()


def test_ddpm_time_input_is_the_timestep_on_trained_levels_and_interpolates_between():
    ddpm_method = methods()["ddpm"]
    sigmas = ddpm_method.sigmas
    between = (sigmas[10] * sigmas[11]).sqrt()  # halfway in log sigma
    t = ddpm_method.timestep(torch.stack((sigmas[0], sigmas[10], between, sigmas[49])))
    assert t.tolist() == pytest.approx([0, 10, 10.5, 49])


def test_grids_descend_to_zero_along_their_formulas():
    ddpm_method, flow, edm = methods().values()
    timesteps = ddpm.noise_levels("timesteps", ddpm_method, 5)
    assert timesteps == pytest.approx(ddpm_method.sigmas[[49, 37, 24, 12, 0]].tolist() + [0])
    karras = torch.tensor(ddpm.noise_levels("karras", edm, 10)[:-1])
    assert karras[[0, -1]].tolist() == pytest.approx([80, 0.002])
    assert torch.allclose(
        karras.diff() ** 0 * (karras ** (1 / 7)).diff()[0], (karras ** (1 / 7)).diff()
    )
    t = torch.tensor(ddpm.noise_levels("uniform_t", flow, 8)) / (
        1 + torch.tensor(ddpm.noise_levels("uniform_t", flow, 8))
    )
    assert t[0] == pytest.approx(80 / 81) and t[-1] == 0
    assert torch.allclose(t.diff(), t.diff()[0].expand(8))


class Gaussian:
    """The exact denoiser of N(mu, s^2 I): D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    grid, sigma_min, sigma_max = "karras", 0.002, 80.0

    def __init__(self, mu, s):
        self.mu, self.s = torch.tensor(mu), s
        self.calls = 0

    def D_theta(self, model, x, sigma, c=None):
        self.calls += 1
        return self.mu + self.s**2 / (self.s**2 + sigma[:, None] ** 2) * (x - self.mu)


# The stochastic steps put E[x_0 | x] where the posterior of eqs. 6-7 wants x_0, so each step
# loses the variance of x_0 given x (Bao et al. 2022, "Analytic-DPM"): with 40 steps DDPM ends at
# std 0.44 instead of 0.5. They converge as the steps shrink; the ODE steps are accurate sooner.
@pytest.mark.parametrize(
    "sampler, grid, s_churn, num_steps",
    [
        ("ddpm", "karras", 0, 1000),
        ("ddim", "karras", 0, 1000),
        ("euler", "karras", 0, 200),
        ("heun", "karras", 0, 40),
        ("heun", "karras", 40, 200),
        ("euler", "uniform_t", 0, 200),
        ("heun", "uniform_t", 0, 40),
    ],
)
def test_every_sampler_reproduces_a_gaussian_from_its_exact_denoiser(
    sampler, grid, s_churn, num_steps
):
    gaussian = Gaussian([1.0, -2.0], 0.5)
    x_0 = ddpm.sample(
        None,
        gaussian,
        20_000,
        torch.Generator().manual_seed(0),
        sampler=sampler,
        grid=grid,
        num_inference_steps=num_steps,
        eta=0.5,
        s_churn=s_churn,
    )
    assert torch.allclose(x_0.mean(0), gaussian.mu, atol=0.02)
    assert x_0.std(0).tolist() == pytest.approx([0.5, 0.5], rel=0.03)


def ode_error(step, num_steps):
    """The error at sigma = 0.5 of steps from sigma = 2 on the probability-flow ODE of N(0, 1),
    whose solution is x(sigma) = x(2) sqrt(1 + sigma^2) / sqrt(5)."""
    gaussian = Gaussian([0.0, 0.0], 1.0)
    D = lambda x, sigma: gaussian.D_theta(None, x, torch.full((len(x),), sigma))  # noqa: E731
    x = torch.ones(1, 2, dtype=torch.float64)
    sigmas = torch.linspace(2, 0.5, num_steps + 1, dtype=torch.float64).tolist()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = step(D, x, sigma, sigma_next, None)
    return (x[0, 0] - math.sqrt(1.25 / 5)).abs().item()


def test_heun_is_second_order_and_euler_first():
    assert ode_error(ddpm.heun_step, 10) / ode_error(ddpm.heun_step, 20) == pytest.approx(
        4, rel=0.1
    )
    assert ode_error(ddpm.euler_step, 10) / ode_error(ddpm.euler_step, 20) == pytest.approx(
        2, rel=0.1
    )


def test_unscaled_initial_noise_shrinks_the_spread_by_sigma_max():
    # The ODE of N(0, s^2) maps x at sigma_max to x sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2):
    # eps (std 1) instead of sigma_max eps ends at std s / sqrt(s^2 + sigma_max^2), not s.
    gaussian = Gaussian([0.0, 0.0], 2.0)
    gaussian.sigma_max = 10.0
    options = dict(sampler="heun", num_inference_steps=18)
    generator = torch.Generator().manual_seed(0)
    scaled = ddpm.sample(None, gaussian, 20_000, generator, init_noise="scaled", **options)
    unscaled = ddpm.sample(None, gaussian, 20_000, generator, init_noise="unscaled", **options)
    assert scaled.std().item() == pytest.approx(2.0, rel=0.03)
    assert unscaled.std().item() == pytest.approx(2 / math.sqrt(104), rel=0.03)


def test_the_data_start_carries_an_off_centre_gaussian_exactly_and_the_scaled_one_does_not():
    # The ODE maps x at sigma_max to mu + (x - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2):
    # a start centred on 0 instead of mu ends off by mu s / sqrt(s^2 + sigma_max^2).
    mu, s = torch.tensor([3.0, -2.0]), 0.5
    gaussian = Gaussian(mu.tolist(), s)
    gaussian.sigma_max = 10.0
    options = dict(sampler="heun", num_inference_steps=40)
    moments = (mu, torch.full((2,), s**2))
    generator = torch.Generator().manual_seed(0)
    data = ddpm.sample(
        None, gaussian, 20_000, generator, init_noise="data", start_moments=moments, **options
    )
    scaled = ddpm.sample(None, gaussian, 20_000, generator, init_noise="scaled", **options)
    assert torch.allclose(data.mean(0), mu, atol=0.01)
    assert data.std(0).tolist() == pytest.approx([s, s], rel=0.02)
    offset = (mu * s / math.sqrt(s**2 + 10.0**2)).tolist()  # (0.15, -0.10)
    assert (mu - scaled.mean(0)).tolist() == pytest.approx(offset, abs=0.01)


@pytest.mark.parametrize("sampler", ddpm.SAMPLERS)
def test_nfe_counts_the_network_evaluations(sampler):
    gaussian = Gaussian([0.0, 0.0], 1.0)
    generator = torch.Generator().manual_seed(0)
    ddpm.sample(None, gaussian, 10, generator, sampler=sampler, num_inference_steps=7)
    assert gaussian.calls == ddpm.nfe(sampler, 7)


TINY = [
    "--dataset",
    "moons",
    "--num_epochs",
    "3",
    "--hidden_size",
    "16",
    "--hidden_layers",
    "1",
    "--eval_batch_size",
    "100",
]
SHORT_DDPM = ["--method", "ddpm", "--num_timesteps", "10"]  # T = 10: a fast DDPM


@pytest.mark.parametrize("method", list(ddpm.METHODS))
def test_each_method_trains_resumes_and_samples_with_every_sampler(method, tmp_path, monkeypatch):
    methods = {"ddpm": SHORT_DDPM, "flow": ["--method", "flow"], "edm": ["--method", "edm"]}
    run = [*TINY, *methods[method], "--exps_dir", str(tmp_path)]
    # as if Ctrl-C in the first epoch
    monkeypatch.setattr(run_folder.StopOnCtrlC, "requested", True)
    with pytest.raises(SystemExit) as stopped:
        ddpm.main([*run, "--experiment_name", "run"])
    assert stopped.value.code == 130
    monkeypatch.undo()
    assert ddpm.main([*run, "--experiment_name", "run", "--resume"]) == 0
    assert ddpm.main([*run, "--experiment_name", "whole"]) == 0
    losses = [torch.load(tmp_path / name / "model.pth")["losses"] for name in ("run", "whole")]
    assert torch.equal(*losses)  # the resumed run is the uninterrupted one
    checkpoint = str(tmp_path / "run" / "model.pth")
    for sampler in ddpm.SAMPLERS:
        sample = ["--checkpoint", checkpoint, "--num_epochs", "0", "--sampler", sampler]
        sample += ["--num_inference_steps", "10"]
        sample += ["--grid", "karras"] if (method, sampler) == ("ddpm", "heun") else []

        assert ddpm.main([*run, *sample, "--experiment_name", sampler]) == 0
        metrics = json.loads((tmp_path / sampler / "metrics.json").read_text())
        assert metrics["nfe"] == ddpm.nfe(sampler, 10) and metrics["w2_ratio"] > 0


def test_edm_measures_sigma_data_and_keeps_it_in_the_checkpoint(tmp_path):
    run = [*TINY, "--method", "edm", "--exps_dir", str(tmp_path)]
    assert ddpm.main([*run, "--experiment_name", "measured"]) == 0
    assert ddpm.main([*run, "--experiment_name", "given", "--sigma_data", "0.5"]) == 0
    measured, given = (torch.load(tmp_path / n / "model.pth") for n in ("measured", "given"))
    data = torch.from_numpy(datasets.load("moons").train_set()[0])
    assert measured["sigma_data"] == pytest.approx(data.std().item()) and given["sigma_data"] == 0.5


def test_heun_on_ddpms_trained_grid_is_refused_before_training(tmp_path, capsys):
    # The grid starts at sigma ~ 1e3: one Heun step from there to ~ 15 overshoots (see check_grid).
    with pytest.raises(SystemExit) as refused:
        ddpm.main([*TINY, *SHORT_DDPM, "--sampler", "heun", "--exps_dir", str(tmp_path)])
    assert refused.value.code == 2
    assert "--grid karras" in capsys.readouterr().err


def test_the_activation_is_kept_and_old_checkpoints_mean_gelu_and_the_plain_target(tmp_path):
    run = [*TINY, "--method", "edm", "--exps_dir", str(tmp_path)]
    assert ddpm.main([*run, "--experiment_name", "relu", "--activation", "relu"]) == 0
    path = tmp_path / "relu" / "model.pth"
    resampled = [*run, "--experiment_name", "resampled", "--num_epochs", "0", "--checkpoint"]
    assert ddpm.main([*resampled, str(path)]) == 0  # without --activation: the checkpoint's
    config = json.loads((tmp_path / "resampled" / "config.json").read_text())
    model = ddpm.make_model(config)
    assert {torch.nn.ReLU, torch.nn.GELU} & {type(module) for module in model.modules()} == {
        torch.nn.ReLU
    }
    checkpoint = torch.load(path)
    del checkpoint["config"]["activation"]  # as saved before --activation existed
    del checkpoint["config"]["stable_target"]  # and before the stable target (Xu et al. 2023)
    torch.save(checkpoint, tmp_path / "old.pth")
    old = checkpoints.load(tmp_path / "old.pth", torch.device("cpu"))
    assert old["config"]["activation"] == "gelu" and old["config"]["stable_target"] is False
