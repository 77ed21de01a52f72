import math

import pytest
import torch

import ddpm


@pytest.mark.parametrize("name", list(ddpm.BETA_SCHEDULES))
@pytest.mark.parametrize("T", [10, 50, 1000])
def test_every_schedule_is_increasing_and_ends_in_pure_noise(name, T):
    betas = ddpm.BETA_SCHEDULES[name](T)
    assert betas.shape == (T,)
    assert (betas > 0).all() and (betas <= ddpm.MAX_BETA).all()
    assert (betas[1:] >= betas[:-1]).all()
    assert ddpm.NoiseSchedule(betas).alphas_cumprod[-1] < 1e-3  # x_T is ~N(0, I)


def test_linear_schedule_is_ho_et_al_at_T_1000_and_rescaled_elsewhere():
    assert torch.allclose(
        ddpm.linear_betas(1000), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    )
    betas = ddpm.linear_betas(50)
    assert betas[0].item() == pytest.approx(20 * 1e-4) and betas[-1].item() == pytest.approx(
        20 * 0.02
    )
    assert torch.allclose(
        betas[1:] - betas[:-1], torch.full((49,), (0.4 - 0.002) / 49, dtype=torch.float64)
    )


def test_quadratic_schedule_is_linear_in_sqrt_beta():
    roots = ddpm.quadratic_betas(100).sqrt()
    assert roots[0].item() == pytest.approx(math.sqrt(10 * 1e-4))
    assert roots[-1].item() == pytest.approx(math.sqrt(10 * 0.02))
    assert torch.allclose(roots[1:] - roots[:-1], (roots[-1] - roots[0]) / 99)


def test_cosine_schedule_matches_nichol_dhariwal_eq_17():
    T, s = 100, 0.008
    alphas_cumprod = ddpm.NoiseSchedule(ddpm.cosine_betas(T)).alphas_cumprod.double()
    for t in [0, 10, 50, 90]:  # code's t is the paper's t + 1
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5)
    assert ddpm.cosine_betas(T)[-1].item() == ddpm.MAX_BETA  # the 0.999 clip at t = T


def test_sigmoid_schedule_alpha_bar_is_a_falling_sigmoid():
    T = 200
    alphas_cumprod = ddpm.NoiseSchedule(ddpm.sigmoid_betas(T)).alphas_cumprod.double()
    s = torch.sigmoid
    expected = (s(torch.tensor(3.0)) - s(torch.tensor(0.0))) / (
        s(torch.tensor(3.0)) - s(torch.tensor(-3.0))
    )
    assert alphas_cumprod[T // 2 - 1].item() == pytest.approx(
        expected.item(), rel=1e-4
    )  # midpoint t = T/2


def test_alphas_cumprod_is_the_running_product_of_one_minus_beta():
    betas = ddpm.cosine_betas(30)
    schedule = ddpm.NoiseSchedule(betas)
    product = 1.0
    for t in range(30):
        product *= 1 - betas[t].item()
        assert schedule.alphas_cumprod[t].item() == pytest.approx(product, rel=1e-5)
