import torch

import ddpm


def schedule():
    return ddpm.NoiseSchedule(ddpm.linear_betas(50))


def test_predict_x0_inverts_add_noise():
    s = schedule()
    x_0, eps = torch.randn(64, 2), torch.randn(64, 2)
    t = torch.randint(0, 50, (64,))
    x_t = s.add_noise(x_0, eps, t)
    assert torch.allclose(ddpm.predict_x0(x_t, eps, s.alphas_cumprod[t, None]), x_0, atol=1e-3)


def test_add_noise_has_the_marginal_variance_of_eq_4():
    s = schedule()
    x_0 = torch.full((200_000, 2), 2.0)
    x_t = s.add_noise(x_0, torch.randn_like(x_0), torch.full((200_000,), 10))
    alpha_bar = s.alphas_cumprod[10].item()
    assert abs(x_t.mean().item() - 2.0 * alpha_bar**0.5) < 0.01
    assert abs(x_t.var().item() - (1 - alpha_bar)) < 0.01


def test_posterior_is_the_product_of_the_two_gaussians():
    # q(x_{t-1} | x_t, x_0) is proportional to q(x_{t-1} | x_0) q(x_t | x_{t-1}): multiply them.
    s, t = schedule(), 20
    x_0, x_t = torch.randn(8, 2), torch.randn(8, 2)
    alpha_bar_prev, alpha_t, beta_t = s.alphas_cumprod[t - 1], s.alphas[t], s.betas[t]
    precision = 1 / (1 - alpha_bar_prev) + alpha_t / beta_t
    direct_mean = (
        alpha_bar_prev.sqrt() * x_0 / (1 - alpha_bar_prev) + alpha_t.sqrt() * x_t / beta_t
    ) / precision
    mean, variance = ddpm.posterior(x_0, x_t, s.alphas_cumprod[t], alpha_bar_prev)
    assert torch.allclose(mean, direct_mean, atol=1e-5)
    assert torch.allclose(variance, 1 / precision, rtol=1e-4)


def test_ddim_with_eta_1_is_the_ddpm_step():
    s, t = schedule(), 30
    x_t, eps, z = torch.randn(16, 2), torch.randn(16, 2), torch.randn(16, 2)
    args = (x_t, eps, s.alphas_cumprod[t], s.alphas_cumprod[t - 1], z)
    assert torch.allclose(ddpm.ddim_step(*args, eta=1.0), ddpm.ddpm_step(*args), atol=1e-5)


def test_ddim_with_eta_0_ignores_the_noise_and_follows_eq_12():
    s, t = schedule(), 30
    x_t, eps = torch.randn(16, 2), torch.randn(16, 2)
    a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 5]
    step = ddpm.ddim_step(x_t, eps, a, a_prev, torch.randn(16, 2), eta=0.0)
    again = ddpm.ddim_step(x_t, eps, a, a_prev, torch.randn(16, 2), eta=0.0)
    x_0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    assert torch.equal(step, again)
    assert torch.allclose(step, a_prev.sqrt() * x_0 + (1 - a_prev).sqrt() * eps, atol=1e-5)


def test_clipping_keeps_the_predicted_x0_inside_the_data_box():
    clip_range = torch.tensor([[-1.0, -2.0], [1.0, 2.0]])
    x_0 = ddpm.clip_x0(torch.tensor([[5.0, -5.0], [0.5, 0.5]]), clip_range)
    assert torch.equal(x_0, torch.tensor([[1.0, -2.0], [0.5, 0.5]]))


def test_inference_timesteps_span_T_minus_1_to_0():
    assert ddpm.inference_timesteps(50) == list(range(49, -1, -1))
    assert ddpm.inference_timesteps(50, 5) == [49, 37, 24, 12, 0]


class OracleEps(torch.nn.Module):
    """The exact eps for data concentrated at one point c: every sampler must land on c."""

    def __init__(self, s, c):
        super().__init__()
        self.s, self.c = s, c

    def forward(self, x_t, t, c=None):
        a = self.s.alphas_cumprod[t, None]
        return (x_t - a.sqrt() * self.c) / (1 - a).sqrt()


def test_ddim_with_all_steps_and_eta_0_is_deterministic_and_finds_a_point_mass():
    s, c = schedule(), torch.tensor([1.5, -0.5])

    def run(seed):
        return ddpm.sample(
            OracleEps(s, c), s, 100, torch.Generator().manual_seed(seed), sampler="ddim"
        )

    first = run(0)
    assert torch.allclose(first, c.expand(100, 2), atol=1e-4)
    assert torch.allclose(run(0), first)


def test_ddpm_sampler_with_few_steps_finds_a_point_mass():
    s, c = schedule(), torch.tensor([-2.0, 3.0])
    x_0 = ddpm.sample(
        OracleEps(s, c),
        s,
        100,
        torch.Generator().manual_seed(0),
        sampler="ddpm",
        num_inference_steps=7,
    )
    assert torch.allclose(x_0, c.expand(100, 2), atol=1e-4)
