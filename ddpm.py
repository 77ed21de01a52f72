"""tiny-diffusion: diffusion models on 2D points, DDPM first (Ho et al. 2020).

It reads top to bottom like the paper: noise schedule -> forward process q(x_t | x_0)
-> denoiser -> training loss -> reverse steps -> training loop -> CLI. Section 3 then writes
DDPM, flow matching and EDM as one family, a denoiser D(x; sigma) each (Karras et al. 2022),
so that every sampler of section 5 (DDPM, DDIM, Euler, Heun) works with every method.

Timesteps are 0-based in code: t = 0..T-1 here is the paper's t = 1..T.


    python ddpm.py --dataset dino
"""

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import datasets
import evaluate
import exact
import plots
from positional_embeddings import INPUT_EMBEDDINGS, TIME_EMBEDDINGS, make_embedding

PROJECT_DIR = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- 1. Noise schedule
# A schedule gives the variances beta_t of the T forward steps. What matters is where it
# ends: sampling starts from x_T ~ N(0, I), so alpha_bar_T = prod(1 - beta_t) must be ~0.
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: clip so no step destroys all signal at once


def linear_betas(T: int) -> torch.Tensor:
    # Ho et al.'s 1e-4..0.02 were tuned for T = 1000; scaling by 1000/T keeps alpha_bar_T ~ 0
    # for any T (as in Nichol & Dhariwal 2021's code).
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=MAX_BETA)


def quadratic_betas(T: int) -> torch.Tensor:
    scale = 1000 / T
    root = torch.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), T, dtype=torch.float64)
    return (root**2).clamp(max=MAX_BETA)


def _betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    # alpha_bar at t = 0, 1, ..., T (alpha_bar[0] = 1); beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: alpha_bar_t = f(t) / f(0),
    # f(t) = cos((t/T + s) / (1 + s) * pi/2)^2
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0])


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    # The sigmoid alpha_bar of Jabri et al. 2022 (Chen 2023, "On the importance of noise
    # scheduling", Alg. 1):
    # alpha_bar_t = (s(end) - s(start + (end - start) t/T)) / (s(end) - s(start)).
    v = torch.sigmoid((start + (end - start) * torch.arange(T + 1, dtype=torch.float64) / T) / tau)
    return _betas_from_alpha_bar((v[-1] - v) / (v[-1] - v[0]))


BETA_SCHEDULES = {
    "linear": linear_betas,
    "quadratic": quadratic_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


class NoiseSchedule:
    """The per-timestep constants of Ho et al. 2020, as (T,) float32 tensors."""

    def __init__(self, betas: torch.Tensor):
        betas = betas.double()  # products of many (1 - beta) lose precision in float32
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # alpha_bar_t, Ho et al. 2020, eq. 4
        self.num_timesteps = len(betas)
        self.betas, self.alphas, self.alphas_cumprod = (
            betas.float(),
            alphas.float(),
            alphas_cumprod.float(),
        )
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()

    @classmethod
    def named(cls, name: str, num_timesteps: int) -> "NoiseSchedule":
        return cls(BETA_SCHEDULES[name](num_timesteps))

    def to(self, device) -> "NoiseSchedule":
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # ------------------------------------------------------------------------- 2. Forward process
    def add_noise(self, x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Ho et al. 2020, eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        return (
            self.sqrt_alphas_cumprod[t, None] * x_0
            + self.sqrt_one_minus_alphas_cumprod[t, None] * eps
        )


# ----------------------------------------------------------------------------- 3. Denoiser
# One language for every method (Karras et al. 2022, "EDM", sec. 2 and Table 1): a noisy point is
# x = x_0 + sigma * eps ("variance exploding"), and sampling needs only the denoiser D(x; sigma),
# an estimate of x_0 (their eq. 3). A method (DDPM, flow, EDM below) says how its network is
# trained and how the network's output becomes D; the samplers of section 5 see only D and sigma.
#
# The network F is always called as F(x_in, time_in, c) -> (B, 2):
#   x_in    (B, 2)  the noisy point in the method's own units: DDPM's or flow's x_t, EDM's c_in x
#   time_in (B,)    the noise level in the method's own units, a float: DDPM's timestep t in
#                   [0, T), flow's 1000 t, EDM's 250 c_noise. The sinusoidal time embedding
#                   (frequencies 1 down to 1e-4) needs inputs that change by ~1 or more between
#                   levels the network must tell apart, as DDPM's integer timesteps do.
#   c       (B,)    class indices, or None for the null class
# It predicts eps (ddpm), the velocity eps - x_0 (flow) or EDM's F (edm).
#
# Its nonlinearity: GELU (Hendrycks & Gimpel 2016) by default; ReLU makes a training step
# 13-15% cheaper on a CPU but the samples less sharp (README, "The defaults, measured").
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


class Block(nn.Module):
    def __init__(self, size: int, activation: str = "gelu"):
        super().__init__()
        self.linear = nn.Linear(size, size)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.activation(self.linear(x))


class MLP(nn.Module):
    """F(x_in, time_in[, c]): x and y each get a sinusoidal embedding (frequencies up to
    input_scale), then time_in one.

    With num_classes > 0 a learned class embedding joins them; class index num_classes is
    the null class, "no class given" (Ho & Salimans 2022, sec. 3.2).
    """

    def __init__(
        self,
        hidden_size=128,
        hidden_layers=3,
        embedding_size=128,
        time_embedding="sinusoidal",
        input_embedding="sinusoidal",
        num_classes=0,
        input_scale=25.0,
        activation="gelu",
    ):
        super().__init__()
        self.embed_x = make_embedding(input_embedding, embedding_size, scale=input_scale)
        self.embed_y = make_embedding(input_embedding, embedding_size, scale=input_scale)
        self.embed_t = make_embedding(time_embedding, embedding_size)
        self.num_classes = num_classes
        self.embed_class = nn.Embedding(num_classes + 1, embedding_size) if num_classes else None
        in_size = (
            self.embed_x.out_dim
            + self.embed_y.out_dim
            + self.embed_t.out_dim
            + (embedding_size if num_classes else 0)
        )
        layers = [nn.Linear(in_size, hidden_size), ACTIVATIONS[activation]()]
        layers += [Block(hidden_size, activation) for _ in range(hidden_layers)]
        layers += [nn.Linear(hidden_size, 2)]
        self.net = nn.Sequential(*layers)

    def forward(
        self, x_in: torch.Tensor, time_in: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = [self.embed_x(x_in[:, 0]), self.embed_y(x_in[:, 1]), self.embed_t(time_in)]
        if self.num_classes:
            if c is None:
                c = torch.full((len(x_in),), self.num_classes, device=x_in.device)  # (B,)
            features.append(self.embed_class(c))
        return self.net(torch.cat(features, dim=-1))  # (B, in_size) -> (B, 2)


# A method is its forward process and training target (training_example), and the conversion of
# the network's output into D (denoised); `grid` names its own noise levels for sampling (sec. 5).
# training_example(x_0, eps) draws a noise level per point and returns the network's input,
# time input and target: every method's loss is then the plain MSE of section 4.
class DDPM:
    """Ho et al. 2020: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, F predicts eps.

    In VE terms (Karras et al. 2022, Table 1, "VP"): sigma_t = sqrt((1 - alpha_bar_t) /
    alpha_bar_t) and x_t = sqrt(alpha_bar) x with alpha_bar = 1 / (1 + sigma^2)."""

    grid, sampler, steps = "timesteps", "ddpm", None  # sampling defaults: every trained step

    def __init__(self, config: dict, sigma_data: float):
        self.schedule = NoiseSchedule.named(config["beta_schedule"], config["num_timesteps"])
        alpha_bar = self.schedule.alphas_cumprod
        self.sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()  # (T,) sigma_t, growing with t
        # the other grids run between --sigma_min and --sigma_max, within the trained levels
        self.sigma_min = max(config["sigma_min"], self.sigmas[0].item())
        self.sigma_max = min(config["sigma_max"], self.sigmas[-1].item())

    def to(self, device) -> "DDPM":
        self.schedule, self.sigmas = self.schedule.to(device), self.sigmas.to(device)
        return self

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor):
        t = torch.randint(0, self.schedule.num_timesteps, (len(x_0),), device=x_0.device)
        return self.schedule.add_noise(x_0, eps, t), t.float(), eps  # Ho et al. 2020, eq. 14

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (B,) t of each sigma: exact on the trained levels, log sigma interpolated between."""
        log_sigmas, log_sigma = self.sigmas.log(), sigma.log()
        i = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)  # (B,)
        low, high = log_sigmas[i - 1], log_sigmas[i]
        return i - 1 + ((log_sigma - low) / (high - low)).clamp(0, 1)

    def denoised(self, model, x, sigma, c=None) -> torch.Tensor:
        alpha_bar = 1 / (1 + sigma[:, None] ** 2)  # (B, 1)
        eps = model(alpha_bar.sqrt() * x, self.timestep(sigma), c)
        return x - sigma[:, None] * eps  # Ho et al. 2020, eq. 15 divided by sqrt(alpha_bar_t)

    def summary(self) -> str:
        alpha_bar_T = self.schedule.alphas_cumprod[-1].item()
        return f"ddpm, T = {self.schedule.num_timesteps}: alpha_bar_T = {alpha_bar_T:.2e}"


FLOW_T = {  # how flow matching draws its training times t in (0, 1)
    "uniform": lambda n, device: torch.rand(n, device=device),
    # Esser et al. 2024 (SD3), sec. 3.1: more weight on the middle times
    "logit_normal": lambda n, device: torch.sigmoid(torch.randn(n, device=device)),
}


class Flow:
    """Lipman et al. 2023, Liu et al. 2023: x_t = (1 - t) x_0 + t eps, F predicts v = eps - x_0.

    In VE terms sigma = t / (1 - t) and x_t = x / (1 + sigma); t = 1 is sigma = inf."""

    grid, sampler, steps = "uniform_t", "heun", 12  # sampling defaults

    def __init__(self, config: dict, sigma_data: float):
        self.draw_t, self.flow_t = FLOW_T[config["flow_t"]], config["flow_t"]
        self.sigma_min, self.sigma_max = config["sigma_min"], config["sigma_max"]

    def to(self, device) -> "Flow":
        return self

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor):
        t = self.draw_t(len(x_0), x_0.device)  # (B,)
        x_t = (1 - t[:, None]) * x_0 + t[:, None] * eps
        return x_t, 1000 * t, eps - x_0

    def denoised(self, model, x, sigma, c=None) -> torch.Tensor:
        t = sigma / (1 + sigma)  # (B,)
        x_t = x / (1 + sigma[:, None])
        return x_t - t[:, None] * model(x_t, 1000 * t, c)  # x_0 = x_t - t v

    def summary(self) -> str:
        return f"flow, t ~ {self.flow_t}"


class EDM:
    """Karras et al. 2022: x = x_0 + sigma eps, D = c_skip x + c_out F(c_in x; c_noise).

    The preconditioning (their Table 1) keeps F's input and target at unit variance for data of
    standard deviation sigma_data."""

    grid, sampler, steps = "karras", "heun", 12  # sampling defaults: 23 network evaluations

    def __init__(self, config: dict, sigma_data: float):
        self.sigma_data, self.P_mean, self.P_std = sigma_data, config["P_mean"], config["P_std"]
        self.sigma_min, self.sigma_max = config["sigma_min"], config["sigma_max"]

    def to(self, device) -> "EDM":
        return self

    def preconditioning(self, sigma: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of Karras et al. 2022, Table 1, each shaped as sigma."""
        s2 = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / s2
        return c_skip, sigma * self.sigma_data / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor):
        # ln sigma ~ N(P_mean, P_std^2), Karras et al. 2022, Table 1
        sigma = (self.P_mean + self.P_std * torch.randn(len(x_0), 1, device=x_0.device)).exp()
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)  # (B, 1) each
        x = x_0 + sigma * eps
        # the weight lambda = 1 / c_out^2 makes lambda |D - x_0|^2 = |F - target|^2 (their eq. 8)
        return c_in * x, 250 * c_noise[:, 0], (x_0 - c_skip * x) / c_out

    def denoised(self, model, x, sigma, c=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma[:, None])  # (B, 1) each
        return c_skip * x + c_out * model(c_in * x, 250 * c_noise[:, 0], c)

    def summary(self) -> str:
        return (
            f"edm, sigma_data = {self.sigma_data:.3g}, "
            f"ln sigma ~ N({self.P_mean:g}, {self.P_std:g}^2)"
        )


METHODS = {"ddpm": DDPM, "flow": Flow, "edm": EDM}


# ----------------------------------------------------------------------------- 4. Training loss
def loss_fn(
    model: nn.Module,
    method,
    x_0: torch.Tensor,
    c: torch.Tensor | None = None,
    cond_drop_prob: float = 0.0,
) -> torch.Tensor:
    eps = torch.randn_like(x_0)
    x_in, time_in, target = method.training_example(x_0, eps)
    if c is not None:
        # classifier-free guidance: the same model also learns p(x) (Ho & Salimans 2022, Alg. 1)
        c = torch.where(torch.rand(len(c), device=c.device) < cond_drop_prob, model.num_classes, c)
    return F.mse_loss(model(x_in, time_in, c), target)  # Ho et al. 2020's L_simple for ddpm


# ----------------------------------------------------------------------------- 5. Reverse process
# Sampling walks down a grid of noise levels sigma_0 > sigma_1 > ... > sigma_N = 0. A grid is a
# function (method, n) -> the n levels before the final 0, as a float64 tensor.
def inference_timesteps(num_timesteps: int, num_inference_steps: int | None = None) -> list[int]:
    """Evenly spaced timesteps from T-1 down to 0; all of them by default."""
    steps = num_inference_steps or num_timesteps
    return torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def timesteps_grid(method: DDPM, n: int) -> torch.Tensor:
    """DDPM's trained levels: sigma_t of n evenly spaced timesteps (Ho et al. 2020; n = T: all)."""
    return method.sigmas[inference_timesteps(len(method.sigmas), n)].double().cpu()


def karras_grid(method, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_max to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = method.sigma_min ** (1 / rho), method.sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def uniform_t_grid(method, n: int) -> torch.Tensor:
    """Flow matching's even steps in t = sigma / (1 + sigma) (Lipman et al. 2023).

    The chain starts at t(sigma_max) < 1, not at t = 1: there sigma = inf and x = x_t / (1 - t) is
    undefined; from sigma_max = 10 the skipped stretch moves x_t by t(sigma_max) x_0 / sigma_max."""
    t_max = method.sigma_max / (1 + method.sigma_max)
    t = torch.linspace(t_max, 0, n + 1, dtype=torch.float64)[:-1]
    return t / (1 - t)


GRIDS = {"timesteps": timesteps_grid, "karras": karras_grid, "uniform_t": uniform_t_grid}


def noise_levels(grid: str, method, n: int) -> list[float]:
    """The n + 1 levels of an n-step chain: the grid, then 0."""
    return GRIDS[grid](method, n).tolist() + [0.0]


def clip_x0(x_0: torch.Tensor, clip_range: torch.Tensor | None) -> torch.Tensor:
    # At high noise a small error in the network's output throws x_0 far outside the data;
    # clipping to the data's box (2, 2) keeps each step sane.
    return x_0 if clip_range is None else x_0.clamp(clip_range[0], clip_range[1])


def denoised(model, method, x, sigma, c=None) -> torch.Tensor:
    """A network's D through its method; the exact denoiser (exact.py) gives D itself."""
    if isinstance(model, exact.ExactDenoiser):
        return model(x, sigma, c)
    return method.denoised(model, x, sigma, c)


def denoise(model, method, x, sigma: float, c=None, guidance_scale=1.0, clip_range=None):
    """D(x; sigma) of the points x (n, 2), clipped to the data's box.

    Classifier-free guidance, Ho & Salimans 2022, eq. 6 with w = guidance_scale - 1, on D:
    D_null + s (D_c - D_null). D is affine in the network's output, so this is their eps-mix.
    s = 1 is the plain conditional model, s > 1 sharpens the class."""
    sigma = torch.full((len(x),), sigma, device=x.device)  # (n,)
    if c is None or guidance_scale == 1.0:
        return clip_x0(denoised(model, method, x, sigma, c), clip_range)
    null = torch.full_like(c, model.num_classes)
    # one batched call for both
    both = denoised(
        model, method, torch.cat((x, x)), torch.cat((sigma, sigma)), torch.cat((c, null))
    )
    D_c, D_null = both.chunk(2)
    return clip_x0(D_null + guidance_scale * (D_c - D_null), clip_range)


# A step goes from sigma to sigma_next < sigma, calling D(x, sigma); z (n, 2) is fresh noise for
# the stochastic steps. One signature for all: step(D, x, sigma, sigma_next, z) -> x_next.
def to_d(x, sigma, x_0):
    """dx/dsigma of the probability-flow ODE, Karras et al. 2022, eq. 4 with s(t) = 1."""
    return (x - x_0) / sigma


def ddim_step(D, x, sigma, sigma_next, z, eta=0.0):
    """Song et al. 2021, eq. 12 divided by sqrt(alpha_bar_prev): x_next = x_0 + sqrt(sigma_next^2
    - c^2) eps + c z. eta = 1 is DDPM's ancestral step (Ho et al. 2020, eqs. 6-7), eta = 0 the
    Euler step."""
    x_0 = D(x, sigma)
    eps = (x - x_0) / sigma  # the eps consistent with the (clipped) x_0
    r = (sigma_next / sigma) ** 2
    c = eta * sigma_next * math.sqrt(1 - r)  # eq. 16's sigma_t, in VE units
    return x_0 + sigma_next * math.sqrt(1 - eta**2 * (1 - r)) * eps + c * z


def euler_step(D, x, sigma, sigma_next, z):
    """Karras et al. 2022, Alg. 1 without the correction: one Euler step of eq. 4."""
    return x + (sigma_next - sigma) * to_d(x, sigma, D(x, sigma))


def heun_step(D, x, sigma, sigma_next, z):
    """Karras et al. 2022, Alg. 1 lines 4-8: Heun's 2nd-order method, Euler into sigma = 0."""
    d = to_d(x, sigma, D(x, sigma))
    x_next = x + (sigma_next - sigma) * d  # Euler step
    if sigma_next == 0:
        return x_next
    d_next = to_d(x_next, sigma_next, D(x_next, sigma_next))  # 2nd-order correction
    return x + (sigma_next - sigma) * (d + d_next) / 2


def sde_step(D, x, sigma, sigma_next, z):
    """Euler-Maruyama on the reverse-time SDE: Karras et al. 2022, eq. 6 with sigma(t) = t and
    beta(t) = sigma'(t) / sigma(t) = 1 / sigma, which is Song et al. 2021's VE SDE run backwards
    (their eq. 6), with score = (D(x; sigma) - x) / sigma^2 (Karras et al. 2022, eq. 3):

        dx = -2 sigma score dsigma + sqrt(2 sigma) dW
        x_next = x + 2 (sigma_next - sigma) (x - D) / sigma + sqrt(2 sigma (sigma - sigma_next)) z

    Into sigma = 0 it takes the Euler step of eq. 4 instead, which lands on D: there the SDE's
    step would double back past D."""
    x_0 = D(x, sigma)
    if sigma_next == 0:
        return x_0
    # DDPM's ancestral step (ddim_step with eta = 1) discretises the same SDE: expanded to first
    # order in sigma - sigma_next it is this step; it differs on large steps, where it stays sane.
    # EDM's churn (Alg. 2) splits the SDE instead: it adds noise up to sigma_hat (the forward
    # process), then takes an ODE step down, where this step mixes both in one update.
    drift = 2 * (sigma_next - sigma) * to_d(x, sigma, x_0)
    return x + drift + math.sqrt(2 * sigma * (sigma - sigma_next)) * z


def make_step(sampler: str, eta: float):
    """The step of --sampler: DDPM's is DDIM's with eta = 1."""
    return {
        "ddpm": partial(ddim_step, eta=1.0),
        "ddim": partial(ddim_step, eta=eta),
        "euler": euler_step,
        "heun": heun_step,
        "sde": sde_step,
    }[sampler]


SAMPLERS = ("ddpm", "ddim", "euler", "heun", "sde")


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations of a chain: Heun's correction adds one on each step but the last."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def churn(x, sigma, gamma, generator):
    """Karras et al. 2022, Alg. 2 lines 5-6: raise the noise to sigma_hat = (1 + gamma) sigma by
    adding fresh noise (S_noise = 1)."""
    sigma_hat = sigma * (1 + gamma)
    eps = torch.randn(x.shape, generator=generator, device=x.device)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * eps, sigma_hat


def guided_at(i: int, num_steps: int, guidance_scale: float, guidance_interval=(0.0, 1.0)) -> float:
    """The scale for step i of num_steps: guidance_scale while the step's position in the chain,
    (N - i) / N, from 1 (pure noise) to 1/N (nearly clean), lies in (lo, hi], else 1.

    Kynkäänniemi et al. 2024 guide only in a limited interval of noise levels; (0, 1] guides
    every step. For DDPM with all T steps, (N - i) / N is (t + 1) / T."""
    lo, hi = guidance_interval
    return guidance_scale if lo < (num_steps - i) / num_steps <= hi else 1.0


@torch.inference_mode()
def reverse_process(
    model,
    method,
    n,
    generator,
    *,
    num_inference_steps,
    sampler="ddpm",
    grid=None,
    eta=0.0,
    s_churn=0.0,
    init_noise="scaled",
    clip_range=None,
    c=None,
    guidance_scale=1.0,
    guidance_interval=(0.0, 1.0),
):
    """Start from noise at sigma_max and step down the grid (default: the method's own) to
    sigma = 0, yielding (sigma, x) after each step; (sigma_max, x_start) comes first.

    init_noise "scaled" starts from sigma_max eps, EDM's start (for DDPM and flow the VE view of
    x_T ~ N(0, I)); "unscaled" from eps, as Diamond's sampler does. c: (n,) class of each point."""
    sigmas = noise_levels(grid or method.grid, method, num_inference_steps)
    step, N = make_step(sampler, eta), len(sigmas) - 1
    x = torch.randn(n, 2, generator=generator, device=generator.device)  # (n, 2)
    x = sigmas[0] * x if init_noise == "scaled" else x
    yield sigmas[0], x
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        s = guided_at(i, N, guidance_scale, guidance_interval)
        D = partial(denoise, model, method, c=c, guidance_scale=s, clip_range=clip_range)
        gamma = min(s_churn / N, math.sqrt(2) - 1)  # Karras et al. 2022, Alg. 2 line 4
        if gamma > 0:
            x, sigma = churn(x, sigma, gamma, generator)
        z = torch.randn(n, 2, generator=generator, device=generator.device)
        x = step(D, x, sigma, sigma_next, z)
        yield sigma_next, x


def sample(model, method, n, generator, **options) -> torch.Tensor:
    """Draw n points (n, 2): the end of the reverse process (options as for reverse_process)."""
    for _, x in reverse_process(model, method, n, generator, **options):
        pass
    return x


# ----------------------------------------------------------------------------- 6. Training loop
MODEL_FIELDS = (
    "dataset",
    "method",
    "sigma_data",
    "num_timesteps",
    "beta_schedule",
    "embedding_size",
    "hidden_size",
    "hidden_layers",
    "activation",
    "time_embedding",
    "input_embedding",
    "input_scale",
)
# where and how, not what, is trained
RUN_FIELDS = (
    "experiment_name",
    "exps_dir",
    "data_dir",
    "device",
    "checkpoint",
    "resume",
    "overwrite",
)

OUTPUT_FILES = (
    "config.json",
    "model.pth",
    "loss.npy",
    "loss.png",
    "frames.npy",
    "frame_labels.npy",
    "metrics.json",
)
CHECKPOINT_KEYS = {
    "config",
    "epoch",
    "model",
    "ema",
    "optimizer",
    "lr_schedule",
    "rng",
    "clip_range",
    "losses",
    "frames",
    "frame_epochs",
    "classes",
    "shift",
    "scale",
}


# What a config saved before these options existed meant, whatever their defaults are now.
LEGACY_CONFIG = {"method": "ddpm", "sigma_data": None, "input_scale": 25.0, "activation": "gelu"}

# Predicting eps = 0 scores 1; a loss this large (or NaN) means the optimisation has blown up.
DIVERGED_LOSS = 1e3


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class TrainingError(Exception):
    """Training stopped early; what was done so far is saved."""


def sampling_options(config: dict) -> dict:
    """reverse_process's options from a run's config; the method's own sampler, grid and number
    of steps where the config leaves them open."""
    method = METHODS[config["method"]]
    return {
        "sampler": config["sampler"] or method.sampler,
        "grid": config["grid"] or method.grid,
        "num_inference_steps": (
            config["num_inference_steps"] or method.steps or config["num_timesteps"]
        ),
        "eta": config["eta"],
        "s_churn": config["s_churn"],
        "init_noise": config["init_noise"],
        "guidance_scale": config["guidance_scale"],
        "guidance_interval": config["guidance_interval"],
    }


def make_model(config: dict, num_classes: int = 0) -> MLP:
    return MLP(
        config["hidden_size"],
        config["hidden_layers"],
        config["embedding_size"],
        config["time_embedding"],
        config["input_embedding"],
        num_classes,
        config["input_scale"],
        config["activation"],
    )


def is_frame_epoch(epoch: int, config: dict) -> bool:
    """Frames are sampled every save_images_step epochs and after the last one."""
    return epoch % config["save_images_step"] == 0 or epoch == config["num_epochs"] - 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but this machine has no CUDA device: use --device cpu")
    return torch.device(name)


def check_memory(config: dict) -> None:
    """Refuse a CPU run whose largest tensors alone outgrow the machine's memory: past it the
    kernel kills the process part way, where torch cannot raise. A lower bound, in bytes."""
    hidden, eval_points = config["hidden_size"], config["eval_batch_size"]
    batch = max(config["train_batch_size"], eval_points)
    width = 3 * config["embedding_size"] + (config["hidden_layers"] + 1) * hidden
    frames = config["num_epochs"] // config["save_images_step"] + 1
    needed = {
        # the inputs and activations of one forward pass, float32
        "--train_batch_size or --eval_batch_size": 4 * batch * width,
        # weights, gradients, AdamW's two moments and the EMA
        "--hidden_size or --hidden_layers": 5 * 4 * config["hidden_layers"] * hidden**2,
        # the loss of every step (at least one an epoch) and every frame's points
        "--num_epochs": 4 * config["num_epochs"] + 8 * frames * eval_points,
        # DDPM's schedule: 3 float64 and 6 float32 tensors of T values
        "--num_timesteps": 48 * config["num_timesteps"] if config["method"] == "ddpm" else 0,
    }
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if sum(needed.values()) > available:
        largest = max(needed, key=needed.get)
        raise UsageError(
            f"this run needs at least {sum(needed.values()) / 2**30:.0f} GiB at once and the "
            f"machine has {available / 2**30:.0f} GiB: lower {largest}"
        )


class StopOnCtrlC:
    """The first Ctrl-C asks training to stop after this epoch, so the saved state is whole."""

    requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "Ctrl-C: stopping after this epoch and saving (press again to quit without saving)"
        )

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


class EMA(AveragedModel):
    """theta_ema <- decay theta_ema + (1 - decay) theta after each step; sampling uses theta_ema.

    The numbers and state_dict of torch's AveragedModel with get_ema_multi_avg_fn (the first
    update copies theta), but the tensors of both models are listed once, here: its
    update_parameters(model) walks both module trees on every call, 0.8 ms a step here, 16x
    the lerp itself."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.averaged = [*self.module.parameters(), *self.module.buffers()]
        self.source = [*model.parameters(), *model.buffers()]  # updated in place by the optimizer

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - self.decay if self.n_averaged > 0 else 1.0  # lerp with weight 1 copies
        torch._foreach_lerp_(self.averaged, self.source, weight)
        self.n_averaged += 1


class Run:
    """Everything a run needs to continue: model, EMA, optimizer, losses and frames so far."""

    def __init__(
        self,
        config: dict,
        data: torch.Tensor,
        labels: torch.Tensor | None = None,
        classes=(),
        shift=None,
        scale=None,
        checkpoint: dict | None = None,
    ):
        """data: (m, 2) training points in training units, x = (x_data - shift) / scale;
        labels: (m,) classes or None."""
        self.config, self.data, self.labels = config, data, labels
        self.classes, device = list(classes), data.device
        # EDM's sigma_data: --sigma_data, else the std of the training data's coordinates,
        # measured once and kept in the checkpoint so the model is always preconditioned alike
        self.sigma_data = (
            config["sigma_data"] or (checkpoint or {}).get("sigma_data") or data.std().item()
        )
        self.method = METHODS[config["method"]](config, self.sigma_data).to(device)
        self.model = make_model(config, len(self.classes)).to(device)
        self.ema = EMA(self.model, config["ema_decay"])
        # fused: one kernel for all tensors, 5x faster than the per-tensor loop on CPU
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config["learning_rate"], fused=True
        )
        self.batches_per_epoch = math.ceil(len(data) / config["train_batch_size"])
        total_steps = config["num_epochs"] * self.batches_per_epoch
        # Cosine decay of the learning rate to 0: the last steps refine instead of jumping around.
        self.lr_schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total_steps, 1))
            if config["lr_decay"] == "cosine"
            else None
        )
        # filled without a sync per step
        self.losses = torch.full((total_steps,), math.nan, device=device)
        # (2, 2): the data's box
        self.clip_range = torch.stack((data.min(0).values, data.max(0).values))
        self.shift = torch.zeros(2) if shift is None else shift
        self.scale = torch.ones(2) if scale is None else scale
        self.plot_limits = None
        self.frame_classes = self._frame_classes()
        self.epoch, self.frames, self.frame_epochs, self.frame_seconds = 0, [], [], 0.0
        self.denoiser = self.ema.module  # what frames are sampled with (or exact.ExactDenoiser)
        if checkpoint:
            self.model.load_state_dict(checkpoint["model"])
            self.ema.load_state_dict(checkpoint["ema"])
            self.clip_range = checkpoint["clip_range"].to(device)
        if checkpoint and config["resume"]:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.lr_schedule:
                self.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
            torch.set_rng_state(checkpoint["rng"].cpu())
            self.epoch = checkpoint["epoch"]
            self.losses[: len(checkpoint["losses"])] = checkpoint["losses"]
            self.frames, self.frame_epochs = (
                list(checkpoint["frames"].cpu()),
                list(checkpoint["frame_epochs"]),
            )

    def sample_frame(self) -> None:
        tic = time.perf_counter()
        self.denoiser.eval()
        config = self.config
        # same x_T every frame: the animation follows the same points
        generator = torch.Generator(self.data.device).manual_seed(config["seed"])
        x_0 = sample(
            self.denoiser,
            self.method,
            config["eval_batch_size"],
            generator,
            clip_range=self.clip_range if config["clip_x0"] else None,
            c=self.frame_classes,
            **sampling_options(config),
        )
        self.frames.append(x_0.cpu() * self.scale + self.shift)  # in the data's own units
        self.frame_epochs.append(self.epoch)
        self.frame_seconds += time.perf_counter() - tic

    @property
    def frame_labels(self) -> np.ndarray | None:
        """The class of each frame point as (N,) numpy, or None without classes."""
        return None if self.frame_classes is None else self.frame_classes.cpu().numpy()

    def _frame_classes(self) -> torch.Tensor | None:
        """The class of each frame point: --class_label, else every class in its data share."""
        if not self.classes:
            return None
        n = self.config["eval_batch_size"]
        if self.config["class_label"] is not None:
            return torch.full(
                (n,), self.classes.index(self.config["class_label"]), device=self.data.device
            )
        in_data = np.bincount(self.labels.cpu().numpy(), minlength=len(self.classes))
        counts = torch.from_numpy(evaluate.shares_of(in_data, n)).to(self.data.device)
        classes = torch.arange(len(self.classes), device=self.data.device)
        return torch.repeat_interleave(classes, counts)  # (n,)

    def step(self, x_0: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """One optimisation step on a batch (B, 2) of classes c (B,).

        Returns the loss without waiting for it."""
        loss = loss_fn(self.model, self.method, x_0, c, self.config["cond_drop_prob"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.optimizer.step()
        if self.lr_schedule:
            self.lr_schedule.step()
        self.ema.update()
        return loss.detach()

    def train(self) -> str:
        """AdamW on L_simple with an EMA of the weights.

        Returns "done", "interrupted" or "diverged"."""
        config, data, B = self.config, self.data, self.batches_per_epoch
        bar = tqdm(
            total=len(self.losses),
            initial=self.epoch * B,
            desc=f"training on {config['dataset']}",
            unit="step",
            mininterval=0.25,
            dynamic_ncols=True,
        )
        with bar, StopOnCtrlC() as ctrl_c:
            while self.epoch < config["num_epochs"]:
                self.model.train()
                step = self.epoch * B
                # Batches by indexing tensors: no DataLoader, no per-item collation.
                order = torch.randperm(len(data), device=data.device)
                for batch in order.split(config["train_batch_size"]):
                    c = None if self.labels is None else self.labels[batch]
                    self.losses[step] = self.step(data[batch], c)
                    step += 1
                epoch_losses = self.losses[step - B : step]
                # one sync per epoch
                epoch_loss, worst = torch.stack((epoch_losses.mean(), epoch_losses.max())).tolist()
                if not worst <= DIVERGED_LOSS:  # also catches NaN
                    return "diverged"
                bar.set_postfix(loss=f"{epoch_loss:.4f}", refresh=False)
                bar.update(B)
                if is_frame_epoch(self.epoch, config):
                    self.sample_frame()
                self.epoch += 1
                if ctrl_c.requested:
                    return "interrupted"
        return "done"

    def checkpoint(self) -> dict:
        steps = self.epoch * self.batches_per_epoch
        return {
            "config": self.config,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else None,
            "rng": torch.get_rng_state(),
            "clip_range": self.clip_range.cpu(),
            "losses": self.losses[:steps].cpu(),
            "frames": torch.stack(self.frames)
            if self.frames
            else torch.zeros(0, self.config["eval_batch_size"], 2),
            "frame_epochs": self.frame_epochs,
            "classes": self.classes,
            "shift": self.shift,
            "scale": self.scale,
            "sigma_data": self.sigma_data,
        }


def write_atomically(path: Path, write) -> None:
    """write(file) to a temporary file, then rename: a crash never leaves a half-written `path`."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_outputs(
    out_dir: Path, run: Run, losses: torch.Tensor, with_checkpoint: bool = True
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = (
        torch.stack(run.frames).numpy()
        if run.frames
        else np.zeros((0, run.config["eval_batch_size"], 2), np.float32)
    )
    write_atomically(
        out_dir / "config.json",
        lambda f: f.write((json.dumps(run.config, indent=2) + "\n").encode()),
    )
    write_atomically(out_dir / "loss.npy", lambda f: np.save(f, losses.cpu().numpy()))
    plots.save_loss(losses.cpu().numpy(), out_dir / "loss.png")
    write_atomically(out_dir / "frames.npy", lambda f: np.save(f, frames))
    if run.frame_labels is not None:
        write_atomically(out_dir / "frame_labels.npy", lambda f: np.save(f, run.frame_labels))
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    if len(frames):
        plots.save_frames(
            frames, run.frame_epochs, out_dir / "images", run.frame_labels, run.plot_limits
        )
    if with_checkpoint:
        write_atomically(out_dir / "model.pth", lambda f: torch.save(run.checkpoint(), f))


def describe(err: Exception) -> str:
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


def rescue(out_dir: Path, run: Run, err: OSError, with_checkpoint: bool = True) -> str:
    """After writing to out_dir failed, save the weights where the disk takes them; say where.

    A write error at the end (disk full, folder removed) must not lose a long run."""
    failed = f"could not write outputs to {out_dir} ({describe(err)})"
    if not with_checkpoint:
        return failed
    name = f"tiny-diffusion-{run.config['experiment_name']}-{os.getpid()}.pth"
    for folder in (Path(tempfile.gettempdir()), Path()):
        try:
            path = (folder / name).absolute()
            write_atomically(path, lambda f: torch.save(run.checkpoint(), f))
        except OSError:
            continue
        return (
            f"{failed}; the trained model is saved at {path}: sample it with --checkpoint "
            f"{path} --num_epochs 0"
        )
    return f"{failed}, nor to {tempfile.gettempdir()} or the current folder: the model is lost"


def stop_early(out_dir: Path, run: Run, status: str) -> None:
    """Save what a diverged or interrupted run has done, and raise, saying where it is."""
    config = run.config
    if status == "diverged":
        first_bad = int((~(run.losses <= DIVERGED_LOSS)).nonzero()[0])  # NaN compares False
        try:  # no blown-up weights
            save_outputs(out_dir, run, run.losses[: first_bad + 1], with_checkpoint=False)
            saved = f"losses and frames so far are in {out_dir}"
        except OSError as err:
            saved = rescue(out_dir, run, err, with_checkpoint=False)
        raise TrainingError(
            f"training diverged: the loss was {run.losses[first_bad].item():.3g} at step "
            f"{first_bad} (epoch {run.epoch}); try a lower --learning_rate than "
            f"{config['learning_rate']:g}; {saved}"
        )
    try:
        save_outputs(out_dir, run, run.losses[: run.epoch * run.batches_per_epoch])
        saved = (
            f"saved in {out_dir}. Continue with: python ddpm.py --experiment_name "
            f"{config['experiment_name']} --exps_dir {config['exps_dir']} --resume"
        )
    except OSError as err:
        saved = rescue(out_dir, run, err)
    raise KeyboardInterrupt(
        f"interrupted after epoch {run.epoch} of {config['num_epochs']}; {saved}"
    )


def run(config: dict, dataset: datasets.Dataset, checkpoint: dict | None = None) -> dict:
    """Train (or continue, or load) a model, sample frames with its EMA weights, evaluate, and
    write exps/<name>/."""
    started = time.perf_counter()
    device = resolve_device(config["device"])
    torch.manual_seed(config["seed"])
    points, labels = (torch.from_numpy(array) for array in dataset.train_set())  # (m, 2), (m,)
    if checkpoint:
        shift, scale = checkpoint["shift"].cpu(), checkpoint["scale"].cpu()
    elif (
        dataset.is_file
    ):  # own data is standardised for training; frames and metrics stay in its units
        shift, scale = points.mean(0), points.std(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        shift, scale = torch.zeros(2), torch.ones(2)
    data = ((points - shift) / scale).to(device)
    state = Run(
        config,
        data,
        labels.to(device) if dataset.classes else None,
        dataset.classes,
        shift,
        scale,
        checkpoint,
    )
    if config["denoiser"] == "exact":  # the true distribution's, in training units
        mixtures = [
            m.standardised(shift, scale) for m in exact.class_mixtures(dataset, config["data_dir"])
        ]
        state.denoiser = exact.ExactDenoiser(mixtures).to(device)
    if dataset.is_file:
        low, high = points.min(0).values, points.max(0).values
        state.plot_limits = (
            torch.stack((low - 0.2 * (high - low), high + 0.2 * (high - low))).T.flatten().tolist()
        )
    options = sampling_options(config)
    num_evals = nfe(options["sampler"], options["num_inference_steps"])
    tqdm.write(
        f"{state.method.summary()}; sampling: {options['sampler']} on the "
        f"{options['grid']} grid, {options['num_inference_steps']} steps, NFE = {num_evals}"
    )
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]

    tic = time.perf_counter()
    status = state.train()
    train_seconds = time.perf_counter() - tic - state.frame_seconds
    if status != "done":
        stop_early(out_dir, state, status)
    if not state.frames:  # --num_epochs 0: only sample the checkpoint
        state.sample_frame()

    tic = time.perf_counter()
    metrics = evaluate.evaluate(
        state.frames[-1].numpy(), dataset, seed=config["seed"], labels=state.frame_labels
    )
    evaluate_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    try:
        trained = config["denoiser"] == "mlp"  # an exact denoiser has no weights
        save_outputs(out_dir, state, state.losses, with_checkpoint=trained)
        metrics["nfe"] = num_evals
        metrics["seconds"] = {
            "train": train_seconds,
            "frames": state.frame_seconds,
            "evaluate": evaluate_seconds,
            "write": time.perf_counter() - tic,
            "total": time.perf_counter() - started,
        }
        write_atomically(
            out_dir / "metrics.json",
            lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode()),
        )
    except OSError as err:
        raise TrainingError(rescue(out_dir, state, err, with_checkpoint=trained)) from None
    return metrics | {"out_dir": str(out_dir)}


# ----------------------------------------------------------------------------- 7. Command line
def one_line(message: str) -> str:
    """The message with its line breaks escaped: a typed name may hold a newline."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def finite(kind):
    """An argparse type: a number of this kind, never nan or inf."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


# Counts and sizes above this are typos, and some would overflow torch's 64-bit sizes unchecked.
LARGEST_INT = 2**31 - 1


def positive(kind):
    number = finite(kind)

    def parse(text: str):
        value = number(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if kind is int and value > LARGEST_INT:
            raise argparse.ArgumentTypeError(f"must be at most {LARGEST_INT}, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="ddpm.py",
        description="Train a DDPM on a 2D point cloud, sample it, and score the samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--experiment_name",
        default="base",
        help="outputs go to <exps_dir>/<experiment_name>/; an existing run is never replaced "
        "without --overwrite",
    )
    parser.add_argument(
        "--exps_dir", default=str(PROJECT_DIR / "exps"), help="folder holding all experiments"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run <experiment_name> where it stopped",
    )
    parser.add_argument(
        "--dataset",
        default="dino",
        help=(
            f"the point cloud to learn: one of {', '.join(datasets.DATASETS)}; several names "
            "joined by commas (each one a class, e.g. dino,star,bullseye); or your own "
            ".csv/.tsv/.npy file with columns x,y (else its first two numeric columns) and an "
            "optional label (or class) column. moons has two classes, its two moons. "
            "`--dataset list` prints the names"
        ),
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help=f"folder holding {datasets.DATASAURUS_FILE} (or set {datasets.DATA_DIR_ENV}); "
        "default: static/, downloaded once",
    )
    parser.add_argument(
        "--train_batch_size", type=positive(int), default=256, help="points per optimisation step"
    )
    parser.add_argument(
        "--eval_batch_size",
        type=positive(int),
        default=1000,
        help="points sampled for each frame and for the evaluation",
    )
    parser.add_argument(
        "--num_epochs",
        type=int,
        default=150,
        help="passes over the 8000 training points (0: only sample --checkpoint)",
    )
    parser.add_argument(
        "--learning_rate", type=positive(float), default=2e-3, help="AdamW learning rate"
    )
    parser.add_argument(
        "--lr_decay",
        default="cosine",
        choices=("none", "cosine"),
        help="learning-rate schedule over the run",
    )
    parser.add_argument(
        "--method",
        default="edm",
        choices=list(METHODS),
        help="training objective: ddpm (Ho et al. 2020, predicts eps), flow (flow matching, "
        "predicts eps - x_0) or edm (Karras et al. 2022, preconditioned denoiser)",
    )
    parser.add_argument(
        "--num_timesteps",
        type=positive(int),
        default=50,
        help="T, the number of diffusion steps (ddpm); the default number of sampling steps",
    )
    parser.add_argument(
        "--beta_schedule",
        default="cosine",
        choices=list(BETA_SCHEDULES),
        help="how beta_t grows with t",
    )
    parser.add_argument(
        "--flow_t",
        default="uniform",
        choices=list(FLOW_T),
        help="flow: how training draws t in (0, 1), uniform or logit-normal (Esser et al. 2024)",
    )
    parser.add_argument(
        "--P_mean",
        type=finite(float),
        default=-2.0,
        help="edm: mean of ln sigma in training (Karras et al. use -1.2 for images; lower puts "
        "more training on the fine detail of these shapes)",
    )
    parser.add_argument(
        "--P_std", type=positive(float), default=1.5, help="edm: std of ln sigma in training"
    )
    parser.add_argument(
        "--sigma_data",
        type=positive(float),
        default=None,
        help="edm: the data's standard deviation in the preconditioning (default: measured "
        "from the training data)",
    )
    parser.add_argument(
        "--embedding_size",
        type=positive(int),
        default=128,
        help="width of each sinusoidal/learnable embedding (even, at least 4, for sinusoidal)",
    )
    parser.add_argument("--hidden_size", type=positive(int), default=128, help="width of the MLP")
    parser.add_argument(
        "--hidden_layers", type=positive(int), default=3, help="residual blocks in the MLP"
    )
    parser.add_argument(
        "--activation", default="gelu", choices=ACTIVATIONS, help="the MLP's nonlinearity"
    )
    parser.add_argument(
        "--time_embedding", default="sinusoidal", choices=TIME_EMBEDDINGS, help="how the MLP sees t"
    )
    parser.add_argument(
        "--input_embedding",
        default="sinusoidal",
        choices=INPUT_EMBEDDINGS,
        help="how the MLP sees x and y",
    )
    parser.add_argument(
        "--input_scale",
        type=positive(float),
        default=200.0,
        help="the highest frequency of the sinusoidal embedding of x and y, in radians per unit "
        "of the data as trained (Tancik et al. 2020's Fourier-feature scale): higher lets the MLP "
        "draw finer detail",
    )
    parser.add_argument(
        "--cond_drop_prob",
        type=finite(float),
        default=0.1,
        help="for datasets with classes: how often training hides the class, so the model also "
        "learns p(x) for guidance",
    )
    parser.add_argument(
        "--class_label",
        default=None,
        help="sample only this class (default: every class in its share of the data)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=finite(float),
        default=1.0,
        help="classifier-free guidance scale s: 1 plain conditional, >1 sharper classes, "
        "0 unconditional",
    )
    parser.add_argument(
        "--guidance_interval",
        type=finite(float),
        nargs=2,
        default=[0.0, 1.0],
        metavar=("LO", "HI"),
        help=(
            "guide only the steps from x_t with LO < t/T <= HI, s = 1 elsewhere "
            "(Kynkäänniemi et al. 2024); t/T runs from 1/T, nearly clean, to 1, pure noise"
        ),
    )
    parser.add_argument(
        "--ema_decay",
        type=finite(float),
        default=0.995,
        help="decay of the moving average of the weights used for sampling, in [0, 1)",
    )
    parser.add_argument(
        "--denoiser",
        default="mlp",
        choices=("mlp", "exact"),
        help="exact: no training; sample with the true distribution's E[x_0 | x_t] (exact.py), "
        "the limit any network can reach with these sampler options",
    )
    parser.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLERS,
        help="ancestral DDPM steps, DDIM steps (--eta), or EDM's Euler or Heun steps of the "
        "probability-flow ODE (Heun: 2 network evaluations per step but the last), or "
        "Euler-Maruyama steps of the reverse-time SDE (sde) (default: the method's own: ddpm for "
        "ddpm, heun for flow and edm)",
    )
    parser.add_argument(
        "--grid",
        default=None,
        choices=list(GRIDS),
        help="the noise levels of the sampling steps: DDPM's trained timesteps (ddpm only), "
        "the rho = 7 grid between --sigma_max and --sigma_min, or even steps in flow's t "
        "(default: the method's own: timesteps, uniform_t, karras)",
    )
    parser.add_argument(
        "--num_inference_steps",
        type=positive(int),
        default=None,
        help="sampling steps, on the timesteps grid a subset of the T timesteps (default: the "
        "method's own: all T for ddpm, 12 for flow and edm)",
    )
    parser.add_argument(
        "--sigma_min",
        type=positive(float),
        default=0.002,
        help="flow and edm: the last noise level > 0 of the karras grid (below the dino's "
        "jitter, 0.011)",
    )
    parser.add_argument(
        "--sigma_max",
        type=positive(float),
        default=10.0,
        help="flow and edm: the first noise level of a chain (ddpm: its own sigma_T)",
    )
    parser.add_argument(
        "--s_churn",
        type=finite(float),
        default=0.0,
        help="stochastic churn of Karras et al. 2022, Alg. 2: noise added back before each "
        "step (0: none)",
    )
    parser.add_argument(
        "--init_noise",
        default="scaled",
        choices=("scaled", "unscaled"),
        help="start from sigma_max * eps (scaled) or from eps (unscaled, Diamond's sampler)",
    )
    parser.add_argument(
        "--eta",
        type=finite(float),
        default=0.7,
        help="DDIM's eta in [0, 1]: 0 deterministic, 1 as noisy as DDPM (0.7 measured best at "
        "20 steps, see README)",
    )
    parser.add_argument(
        "--no_clip_x0",
        dest="clip_x0",
        action="store_false",
        help="do not clip the predicted x_0 to the data's range",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="start from this model.pth (with --num_epochs 0: only sample and evaluate)",
    )
    parser.add_argument(
        "--save_images_step",
        type=positive(int),
        default=10,
        help="save a frame every this many epochs",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed and device give identical losses and samples"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda when available",
    )
    return parser


def parse_config(argv) -> dict:
    """The config of a command line, every option at its default unless given (not checked)."""
    return vars(build_parser().parse_args(argv))


def explicit_options(argv) -> dict:
    """The options the user typed, without the defaults."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def check_config(config: dict) -> None:
    if config["num_epochs"] < 0 or (config["num_epochs"] == 0 and not config["checkpoint"]):
        raise UsageError("--num_epochs must be positive (or 0 with --checkpoint, to only sample)")
    sinusoidal = "sinusoidal" in (config["time_embedding"], config["input_embedding"])
    if sinusoidal and (config["embedding_size"] < 4 or config["embedding_size"] % 2):
        raise UsageError(
            "--embedding_size must be even and at least 4 for sinusoidal embeddings, "
            f"got {config['embedding_size']}"
        )
    if not config["sigma_min"] < config["sigma_max"]:
        raise UsageError(
            "--sigma_min must be below --sigma_max, got "
            f"{config['sigma_min']:g} and {config['sigma_max']:g}"
        )
    if config["s_churn"] < 0:
        raise UsageError(f"--s_churn must be at least 0, got {config['s_churn']:g}")
    if not 0 <= config["ema_decay"] < 1:
        raise UsageError(f"--ema_decay must be in [0, 1), got {config['ema_decay']}")
    if not 0 <= config["eta"] <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {config['eta']}")
    if not 0 <= config["cond_drop_prob"] <= 1:
        raise UsageError(f"--cond_drop_prob must be in [0, 1], got {config['cond_drop_prob']}")
    if config["guidance_scale"] < 0:
        raise UsageError(f"--guidance_scale must be at least 0, got {config['guidance_scale']}")
    if not 0 <= config["seed"] < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {config['seed']}")
    lo, hi = config["guidance_interval"]
    if not 0 <= lo < hi <= 1:
        raise UsageError(f"--guidance_interval LO HI needs 0 <= LO < HI <= 1, got {lo:g} {hi:g}")
    name = config["experiment_name"]
    if not name or name in (".", "..") or any(sep in name for sep in "/\\") or name.startswith("."):
        raise UsageError(
            "--experiment_name must be a plain folder name (no path separators, no leading "
            f"dot), got {name!r}"
        )


def check_grid(config: dict) -> None:
    """The sampler's grid against the model: run once a checkpoint's config is merged."""
    options = sampling_options(config)
    grid, steps = options["grid"], options["num_inference_steps"]
    if grid == "timesteps" and config["method"] != "ddpm":
        raise UsageError(f"--grid timesteps needs --method ddpm, got --method {config['method']}")
    if grid == "timesteps" and options["sampler"] == "heun":
        # Its first step spans sigma ~ 1e3-2e4 down to ~ 15, where Heun's average of the two
        # slopes overshoots; DDPM's and DDIM's steps are exact there.
        raise UsageError("--sampler heun needs a grid that starts lower: add --grid karras")
    if grid == "timesteps" and steps > config["num_timesteps"]:
        raise UsageError(
            f"--num_inference_steps {steps} is more than the {config['num_timesteps']} "
            "training timesteps"
        )


def load_checkpoint(path: Path, device: torch.device) -> dict:
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found")
    try:
        # map_location: a CUDA checkpoint loads on a CPU
        checkpoint = torch.load(path, map_location=device, weights_only=True)

    except Exception as err:
        raise UsageError(
            f"{path} is not a tiny-diffusion checkpoint ({type(err).__name__}); "
            "give the model.pth of a run"
        ) from None
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
        raise UsageError(
            f"{path} is not a tiny-diffusion checkpoint (it lacks its keys); "
            "give the model.pth of a run"
        )
    checkpoint["config"] = LEGACY_CONFIG | checkpoint["config"]
    return checkpoint


def merge_checkpoint_config(config: dict, explicit: dict, saved: dict, fields) -> dict:
    """Take `fields` from the checkpoint's config; refuse if the user asked for other values."""
    differ = [field for field in fields if field in explicit and explicit[field] != saved[field]]
    if differ:
        asked = ", ".join(f"{field}={explicit[field]}" for field in differ)
        had = ", ".join(f"{field}={saved[field]}" for field in differ)
        raise UsageError(
            f"the checkpoint has {had} but you asked for {asked}: drop those options or use "
            "another checkpoint"
        )
    return config | {field: saved[field] for field in fields}


def check_writable(out_dir: Path) -> None:
    """Create out_dir and write a file in it: a folder that refuses is found before training."""
    probe = out_dir / ".write-test"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(probe, lambda f: f.write(b"tiny-diffusion"))
        probe.unlink()
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise UsageError(f"cannot write outputs to {out_dir}: {describe(err)}") from None


def prepare(argv) -> tuple[dict, datasets.Dataset, dict | None]:
    """Parse and check the command line; load the checkpoint and the dataset it names.

    Raises UsageError (or DatasetError) before anything of an existing run is removed."""
    config, explicit = parse_config(argv), explicit_options(argv)
    check_config(config)
    if config["denoiser"] == "exact":  # nothing to train or load
        if {"num_epochs", "checkpoint", "resume"} & explicit.keys():
            raise UsageError(
                "--denoiser exact trains nothing: drop --num_epochs/--checkpoint/--resume"
            )
        config["num_epochs"] = 0
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    device = resolve_device(config["device"])
    checkpoint, replacing = (
        None,
        not config["resume"] and out_dir.is_dir() and any(out_dir.iterdir()),
    )
    if config["resume"]:
        if config["checkpoint"]:
            raise UsageError(
                "--resume continues <experiment_name>; do not give --checkpoint with it"
            )
        checkpoint = load_checkpoint(out_dir / "model.pth", device)
        fields = [field for field in checkpoint["config"] if field not in RUN_FIELDS]
        config = merge_checkpoint_config(config, explicit, checkpoint["config"], fields)
        if checkpoint["epoch"] >= config["num_epochs"]:
            raise UsageError(
                f"{out_dir} finished all {config['num_epochs']} epochs: nothing to resume"
            )
    else:
        if replacing and not config["overwrite"]:
            raise UsageError(
                f"{out_dir} already holds a run: pass --overwrite to replace it, --resume to "
                "continue it, or choose another --experiment_name"
            )
        if config["checkpoint"]:
            checkpoint = load_checkpoint(Path(config["checkpoint"]), device)
            config = merge_checkpoint_config(config, explicit, checkpoint["config"], MODEL_FIELDS)
    check_grid(config)
    # the checkpoint's dataset, when there is one
    dataset = datasets.load(config["dataset"], config["data_dir"])
    if config["class_label"] is not None and config["class_label"] not in dataset.classes:
        raise UsageError(
            f"--class_label {config['class_label']!r} is not a class of {dataset.name}: "
            f"its classes are {', '.join(dataset.classes) or 'none'}"
        )
    if device.type == "cpu" and hasattr(os, "sysconf"):
        check_memory(config)  # on a GPU torch raises its out-of-memory error in time
    check_writable(out_dir)
    if replacing:
        # nothing of the replaced run may survive to be mistaken for the new one
        for name in OUTPUT_FILES:
            (out_dir / name).unlink(missing_ok=True)

        shutil.rmtree(out_dir / "images", ignore_errors=True)
    return config, dataset, checkpoint


def is_out_of_memory(err: Exception) -> bool:
    """An allocation the machine cannot make: torch's CPU allocator raises a plain RuntimeError."""
    out_of_memory = (MemoryError, torch.OutOfMemoryError)
    return isinstance(err, out_of_memory) or "can't allocate memory" in str(err)


def use_run_threads() -> None:
    """One torch thread, unless OMP_NUM_THREADS asks for more: on an idle 2-core machine a second
    thread shortens a step by only about a fifth, and on a busy one threads that wait for each
    other make a step up to 10x slower."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def main(argv=None) -> int:
    parser = build_parser()
    if vars(parser.parse_args(argv))["dataset"] == "list":
        print("\n".join(datasets.DATASETS))
        return 0
    use_run_threads()
    try:
        config, dataset, checkpoint = prepare(argv)
        metrics = run(config, dataset, checkpoint)
    except (UsageError, datasets.DatasetError) as err:
        parser.error(str(err))
    except TrainingError as err:
        parser.exit(1, f"{parser.prog}: {one_line(str(err))}\n")
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        parser.exit(
            1,
            f"{parser.prog}: out of memory ({one_line(str(err).splitlines()[0])}): choose a "
            "smaller --hidden_size, --embedding_size, --train_batch_size, --eval_batch_size, "
            "--num_timesteps or --num_epochs\n",
        )
    except KeyboardInterrupt as err:
        parser.exit(130, f"{parser.prog}: {one_line(str(err) or 'interrupted')}\n")
    files = "config.json loss.npy frames.npy images/ metrics.json"
    files = files if config["denoiser"] == "exact" else "model.pth " + files
    print(f"outputs in {metrics['out_dir']}/: {files}")
    seconds = metrics["seconds"]["total"]
    print(f"{config['dataset']}: {evaluate.format_metrics(metrics)}  ({seconds:.1f} s)")

    return 0


if __name__ == "__main__":
    sys.exit(main())
