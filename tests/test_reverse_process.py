import math

import pytest
import torch

import ddpm


def schedule():
    return ddpm.NoiseSchedule(ddpm.linear_betas(50))


def test_add_noise_has_the_marginal_variance_of_eq_4():
    s = schedule()
    x_0 = torch.full((200_000, 2), 2.0)
    x_t = s.add_noise(x_0, torch.randn_like(x_0), torch.full((200_000,), 10))
    alpha_bar = s.alphas_cumprod[10].item()
    assert abs(x_t.mean().item() - 2.0 * alpha_bar**0.5) < 0.01
    assert abs(x_t.var().item() - (1 - alpha_bar)) < 0.01


def vp_step(step, x_t, x_0, alpha_bar_t, alpha_bar_prev, z):
    """One VE step from x_t (Ho et al.'s units) with a denoiser answering x_0, back in x_t units."""
    sigma, sigma_prev = (((1 - a) / a).sqrt().item() for a in (alpha_bar_t, alpha_bar_prev))
    x_next = step(lambda x, s: x_0, x_t / alpha_bar_t.sqrt(), sigma, sigma_prev, lambda: z)
    return alpha_bar_prev.sqrt() * x_next


def test_the_ddpm_step_is_the_posterior_q_of_eqs_6_7_as_a_product_of_two_gaussians():
    # q(x_{t-1} | x_t, x_0) is proportional to q(x_{t-1} | x_0) q(x_t | x_{t-1}): multiply them.
    s, t = schedule(), 20
    x_0, x_t, z = torch.randn(8, 2), torch.randn(8, 2), torch.randn(8, 2)
    alpha_bar_prev, alpha_t, beta_t = s.alphas_cumprod[t - 1], s.alphas[t], s.betas[t]
    precision = 1 / (1 - alpha_bar_prev) + alpha_t / beta_t
    mean = (
        alpha_bar_prev.sqrt() * x_0 / (1 - alpha_bar_prev) + alpha_t.sqrt() * x_t / beta_t
    ) / precision
    step = ddpm.make_step("ddpm", eta=0.0)  # DDPM's step ignores --eta
    x_prev = vp_step(step, x_t, x_0, s.alphas_cumprod[t], alpha_bar_prev, z)
    assert torch.allclose(x_prev, mean + precision.rsqrt() * z, atol=1e-4)


def test_ddim_with_eta_0_ignores_the_noise_follows_eq_12_and_is_the_euler_step():
    s, t = schedule(), 30
    x_t, x_0 = torch.randn(16, 2), torch.randn(16, 2)
    a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 5]
    step = ddpm.make_step("ddim", eta=0.0)
    x_prev = vp_step(step, x_t, x_0, a, a_prev, torch.randn(16, 2))
    again = vp_step(step, x_t, x_0, a, a_prev, torch.randn(16, 2))
    euler = vp_step(ddpm.euler_step, x_t, x_0, a, a_prev, torch.randn(16, 2))
    eps = (x_t - a.sqrt() * x_0) / (1 - a).sqrt()
    assert torch.equal(x_prev, again)
    assert torch.allclose(x_prev, a_prev.sqrt() * x_0 + (1 - a_prev).sqrt() * eps, atol=1e-5)
    assert torch.allclose(euler, x_prev, atol=1e-5)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_noise_is_eq_16(eta):
    s, t = schedule(), 30
    x_t, x_0, z = torch.randn(16, 2), torch.randn(16, 2), torch.randn(16, 2)
    a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 5]
    x_prev = vp_step(ddpm.make_step("ddim", eta), x_t, x_0, a, a_prev, z)
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()  # Song et al. 2021, eq. 16
    eps = (x_t - a.sqrt() * x_0) / (1 - a).sqrt()
    expected = a_prev.sqrt() * x_0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    assert torch.allclose(x_prev, expected, atol=1e-5)


def test_clipping_keeps_the_predicted_x0_inside_the_data_box():
    clip_range = torch.tensor([[-1.0, -2.0], [1.0, 2.0]])
    x_0 = ddpm.clip_x0(torch.tensor([[5.0, -5.0], [0.5, 0.5]]), clip_range)
    assert torch.equal(x_0, torch.tensor([[1.0, -2.0], [0.5, 0.5]]))


def test_the_timesteps_grid_spans_T_minus_1_to_0():
    sigmas = torch.arange(50.0)  # sigma_t = t, t = 0..49
    assert ddpm.timesteps_grid(50, sigmas).tolist() == list(range(49, -1, -1))
    assert ddpm.timesteps_grid(5, sigmas).tolist() == [49, 37, 24, 12, 0]


class OracleEps(torch.nn.Module):
    """The exact eps for data concentrated at one point c: every sampler must land on c."""

    def __init__(self, s, c):
        super().__init__()
        self.s, self.c = s, c

    def forward(self, x_t, t, c=None):
        a = self.s.alphas_cumprod[t.round().long(), None]  # the sampler asks at trained levels
        return (x_t - a.sqrt() * self.c) / (1 - a).sqrt()


def linear_ddpm(T=50):
    return ddpm.DDPM(ddpm.linear_betas(T), sigma_min=0.002, sigma_max=10.0)


def test_ddim_with_all_steps_and_eta_0_is_deterministic_and_finds_a_point_mass():
    method, c = linear_ddpm(), torch.tensor([1.5, -0.5])

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        model = OracleEps(method.schedule, c)
        return ddpm.sample(model, method, 100, generator, sampler="ddim", num_inference_steps=50)

    first = run(0)
    assert torch.allclose(first, c.expand(100, 2), atol=1e-4)
    assert torch.allclose(run(0), first)


def test_ddpm_sampler_with_few_steps_finds_a_point_mass():
    method, c = linear_ddpm(), torch.tensor([-2.0, 3.0])
    x_0 = ddpm.sample(
        OracleEps(method.schedule, c),
        method,
        100,
        torch.Generator().manual_seed(0),
        sampler="ddpm",
        num_inference_steps=7,
    )
    assert torch.allclose(x_0, c.expand(100, 2), atol=1e-4)


def test_algorithm_1_draws_t_uniformly_and_noises_by_eq_4_with_eps_as_target():
    s, x_0, eps = schedule(), torch.randn(50_000, 2), torch.randn(50_000, 2)
    x_t, t, target = ddpm.ddpm_training_example(s, x_0, eps)  # what --method ddpm trains on
    assert torch.equal(t, t.round()) and t.min() == 0 and t.max() == 49
    assert t.long().bincount().float().std() / 1000 < 0.05  # 1000 of each of the 50 timesteps
    a = s.alphas_cumprod[t.long(), None]
    assert torch.allclose(x_t, a.sqrt() * x_0 + (1 - a).sqrt() * eps, atol=1e-6)
    assert torch.equal(target, eps)


def test_algorithm_2_as_written_is_the_chain_that_sampler_ddpm_runs_in_sigma_units():
    # Ho et al. 2020, Algorithm 2 in x_t and integer t, against --method ddpm --sampler ddpm on all
    # T trained levels, which steps x = x_t / sqrt(alpha_bar_t) with D(x; sigma): the same chain,
    # with the same noise, up to float32 rounding.
    method = linear_ddpm()
    alpha_bar, mu, s = method.schedule.alphas_cumprod, torch.tensor([1.0, -2.0]), 0.5

    def eps_theta(x_t, t, c=None):  # E[eps | x_t] for data N(mu, s^2 I), and a wiggle
        a = alpha_bar[t.round().long(), None]
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s**2 + 1 - a) + 0.1 * torch.sin(
            3 * x_t
        )

    options = dict(sampler="ddpm", grid="timesteps", num_inference_steps=50)
    chain = ddpm.reverse_process(
        eps_theta, method, 500, torch.Generator().manual_seed(0), **options
    )
    x_ts = [x / math.sqrt(1 + sigma**2) for sigma, x in chain]  # x_t = sqrt(alpha_bar) x
    generator = torch.Generator().manual_seed(0)
    torch.randn(500, 2, generator=generator)  # the start, x_T, drawn by reverse_process
    plain = list(ddpm.ddpm_sample(eps_theta, method.schedule, x_ts[0], generator))
    assert len(plain) == 50
    for x_t, expected in zip(plain, x_ts[1:]):
        assert torch.allclose(x_t, expected, atol=1e-5)  # float32 rounding: |x_t| < 5
    assert (plain[-1] - x_ts[-1]).abs().max() > 0  # two computations, not one
