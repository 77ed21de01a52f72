"""The log-likelihood through the probability-flow ODE, and the reverse-SDE sampler, against
closed forms: exact denoisers of Gaussian mixtures, whose densities are known."""

import math
import re
from functools import partial

import pytest
import torch
from test_methods import TINY

import datasets
import ddpm
import exact
import likelihood

MIXTURE = exact.GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.5], [1.0, 1.0], [0.0, -1.0]], [0.3, 0.4])


def exact_D(mixture):
    """D(x, sigma: float) of a mixture, as likelihood.log_likelihood takes it."""
    return partial(ddpm.guided_D, exact.ExactDenoiser([mixture]), None)


def test_nll_of_a_gaussian_in_the_datas_units_is_its_closed_form():
    # The model trains on (x - shift) / scale; its NLL in the data's units adds sum(log scale).
    gaussian = exact.GaussianMixture([1.0], [[3.0, -20.0]], [0.8, 5.0])
    shift, scale = torch.tensor([3.0, -20.0]), torch.tensor([0.8, 5.0])
    trained_on = gaussian.standardised(shift, scale)
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = shift + scale * x  # (200, 2) true points
    model = exact.ExactDenoiser([trained_on])
    nll = likelihood.nll(model, None, x, trained_on, shift, scale, sigma_max=10.0)
    assert torch.allclose(nll, -gaussian.log_prob(x), atol=0.01)


def test_an_affine_map_of_the_data_shifts_the_log_likelihood_by_its_log_det():
    # The ODE of a * x + b under the mapped mixture, with the noise levels scaled by a, is the
    # ODE of x mapped point by point: log p moves by log |det| = 2 log a, to rounding error.
    a, b = 3.0, torch.tensor([2.0, -1.0], dtype=torch.float64)
    mapped = exact.GaussianMixture(
        MIXTURE.log_weights.exp(), a * MIXTURE.means + b, a * MIXTURE.var.sqrt()
    )
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prior = likelihood.moment_gaussian(x)
    log_p = likelihood.log_likelihood(exact_D(MIXTURE), x, prior, 10.0, steps=8, sigma_min=0.01)
    mapped_prior = exact.GaussianMixture([1.0], a * prior.means + b, a * prior.var.sqrt())
    log_p_mapped = likelihood.log_likelihood(
        exact_D(mapped), a * x + b, mapped_prior, 10.0 * a, steps=8, sigma_min=0.01 * a
    )
    assert torch.allclose(log_p_mapped, log_p - 2 * math.log(a), atol=1e-9)


def test_the_divergence_is_the_trace_of_a_finite_difference_jacobian():
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sigma, h, D = 0.5, 1e-5, exact_D(MIXTURE)

    def velocity(x):  # dx/dsigma of the probability-flow ODE, (20, 2)
        return (x - D(x, sigma)) / sigma

    state = torch.cat((x, torch.zeros(20, 1, dtype=torch.float64)), dim=1)
    divergence = likelihood.rates(D, state, math.log(sigma))[:, 2] / sigma  # d/ds = sigma d/dsigma
    e = torch.eye(2, dtype=torch.float64)
    finite = sum((velocity(x + h * e[i]) - velocity(x - h * e[i]))[:, i] / (2 * h) for i in (0, 1))
    assert torch.allclose(divergence, finite, atol=1e-6)


def test_the_exact_dino_denoiser_has_a_kl_near_0():
    # the solver's own floor: the ODE of the true denoiser, from a moment-matched prior
    dataset = datasets.load("dino")
    density = likelihood.closed_form(dataset)
    x = torch.from_numpy(dataset.draw(100, 7)[0]).double()
    prior = likelihood.moment_gaussian(torch.from_numpy(dataset.train_set()[0]))
    model, one = exact.ExactDenoiser([density]), torch.ones(2)
    nll = likelihood.nll(model, None, x, prior, 0 * one, one, sigma_max=10.0)
    assert abs((nll + density.log_prob(x)).mean()) < 0.01


def test_the_sde_sampler_with_an_exact_denoiser_reproduces_a_gaussian():
    mean, std = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])
    denoiser = exact.ExactDenoiser([exact.GaussianMixture([1.0], mean[None], std)])
    method = ddpm.EDM(sigma_data=1.0, P_mean=-1.2, P_std=1.2, sigma_min=0.002, sigma_max=80.0)
    generator = torch.Generator().manual_seed(0)
    x = ddpm.sample(denoiser, method, 20000, generator, sampler="sde", num_inference_steps=300)
    assert torch.allclose(x.mean(0), mean, atol=0.03)
    assert torch.allclose(x.std(0), std, rtol=0.03)


def test_the_nll_of_a_trained_run_prints_the_line(tmp_path, capsys):
    assert ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--experiment_name", "tiny"]) == 0
    capsys.readouterr()
    assert likelihood.main([str(tmp_path / "tiny"), "--steps", "4"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"NLL -?\d+\.\d{3} nats per point \(held-out, n = 1000\)", first), first
    (tmp_path / "one.csv").write_text("x,y\n0.5,0.25\n")  # any number of points to score
    assert likelihood.main([str(tmp_path / "tiny"), "--points", str(tmp_path / "one.csv")]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header == "x,y,log_p" and row.startswith("0.5,0.25,")


@pytest.mark.parametrize("extra", [["--exact"], ["--dataset", "moons"]])
def test_a_runs_folder_with_exact_or_a_dataset_says_what_to_drop(extra, capsys):
    with pytest.raises(SystemExit) as stop:
        likelihood.main(["exps/base", *extra])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "drop --exact and --dataset" in error


def test_the_exact_nll_refuses_a_dataset_without_a_closed_form_density(capsys):
    with pytest.raises(SystemExit) as refused:
        likelihood.main(["--exact", "--dataset", "moons,line"])
    assert refused.value.code == 2
    assert "closed-form density" in capsys.readouterr().err


@pytest.fixture
def two_threads():
    """torch on two threads for the test, the thread count as it was after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("omp_num_threads", [None, "2"])
def test_the_nll_command_runs_on_one_thread_unless_omp_num_threads_says(
    omp_num_threads, two_threads, monkeypatch, capsys
):
    # On a shared 2-core machine two threads made the ODE's ~46,000 ops wait for each other:
    # 1000 points took up to 190 s instead of 5-8 s on one thread, as a run trains.
    if omp_num_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_num_threads)
    threads = []

    def report(args):  # what the ODE would run on, without running it
        threads.append(torch.get_num_threads())
        return ["NLL"]

    monkeypatch.setattr(likelihood, "report", report)
    assert likelihood.main(["exps/any"]) == 0
    assert threads == [1 if omp_num_threads is None else 2]


def test_the_correlated_gaussian_is_its_closed_form():
    gaussian = likelihood.correlated_gaussian()
    x = likelihood.density_draws("gaussian", 20_000, 0)
    cov = torch.tensor([[4.0, 1.6], [1.6, 1.0]], dtype=torch.float64)
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.03)
    assert torch.allclose(x.T.cov(), cov, atol=0.08)
    independent = torch.distributions.MultivariateNormal(gaussian.mean, cov)
    assert torch.allclose(gaussian.log_prob(x[:100]), independent.log_prob(x[:100]))
    # its entropy, 1 + log 2 pi + log det / 2, is the mean -log p of its draws
    entropy = 1 + math.log(2 * math.pi) + cov.logdet().item() / 2
    assert abs(-gaussian.log_prob(x).mean().item() - entropy) < 0.03


@pytest.mark.parametrize("name", ["ring", "swiss_roll"])
def test_each_test_mixture_is_a_density_its_draws_follow(name):
    # the swiss roll with 400 of its 4000 points along the arc, 0.22 apart: as smooth, 10x faster
    density = likelihood.swiss_roll(400) if name == "swiss_roll" else likelihood.gaussian_ring()
    # cells 0.125 wide, half the components' std, over all the mass: a Riemann sum of smooth
    # Gaussians this fine is exact to far below the tolerances
    edges = torch.linspace(-16, 16, 257, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    log_p = density.log_prob(grid)
    assert abs(log_p.exp().sum().item() * 0.125**2 - 1) < 1e-3
    # draws land where the density is: their mean -log p against a Riemann sum of the entropy
    entropy = -(log_p.exp() * log_p).sum().item() * 0.125**2
    x = density.sample(5000, torch.Generator().manual_seed(0))
    assert abs(-density.log_prob(x).mean().item() - entropy) < 0.05


def test_a_test_csv_is_a_file_dataset_of_its_rows(tmp_path):
    path = likelihood.write_test_csv("ring", tmp_path)
    first = path.read_bytes()
    assert likelihood.write_test_csv("ring", tmp_path).read_bytes() == first  # the same rows
    dataset = datasets.load(str(path))
    points = dataset.train_set()[0]
    assert dataset.is_file and len(points) + len(dataset.unseen(10**6, 0)[0]) == 8000
    radii = (points**2).sum(1) ** 0.5  # eight Gaussians of std 0.25 on the circle of radius 2
    assert abs(radii.mean() - 2) < 0.05
