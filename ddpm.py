"""tiny-diffusion: diffusion models on 2D points, DDPM first (Ho et al. 2020).

Read it top to bottom: the noise schedule (1); DDPM's training and sampling as Ho et al. wrote
them (2); the view that makes DDPM, flow matching and EDM one family, x = x_0 + sigma eps and a
denoiser D(x; sigma) (3, Karras et al. 2022); the network (4); the methods as denoisers (5); their
loss (6); the samplers, which need only D (7); a run in training (8); the training loop (9);
reflow (10); consistency distillation (11); the command line (12). Timesteps are 0-based: t = 0..T-1
is the paper's t = 1..T.

    python ddpm.py --dataset dino
"""

import copy
import itertools
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import checkpoints
import datasets
import evaluate
import exact
import options
import plots
import run_folder
from adamw import AdamW
from positional_embeddings import DirectionalEmbedding, make_embedding

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


BETA_SCHEDULES = {"linear": linear_betas, "quadratic": quadratic_betas}
BETA_SCHEDULES |= {"cosine": cosine_betas, "sigmoid": sigmoid_betas}


# ------------------------------------------------------------------ 2. DDPM, as Ho et al. wrote it
class NoiseSchedule:
    """The per-timestep constants of Ho et al. 2020, as (T,) float32 tensors."""

    def __init__(self, betas: torch.Tensor):
        betas = betas.double()  # products of many (1 - beta) lose precision in float32
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # alpha_bar_t, Ho et al. 2020, eq. 4
        self.num_timesteps = len(betas)
        self.betas, self.alphas = betas.float(), alphas.float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()
        # beta~_t, the variance of the posterior q(x_{t-1} | x_t, x_0) (eq. 7); 0 at t = 1
        alphas_cumprod_prev = alphas_cumprod / alphas  # alpha_bar_{t-1}
        self.posterior_variance = (betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)).float()

    def add_noise(self, x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process q(x_t | x_0) in one jump, for each point's timestep t (B,)."""
        a, b = self.sqrt_alphas_cumprod[t, None], self.sqrt_one_minus_alphas_cumprod[t, None]
        return a * x_0 + b * eps  # Ho et al. 2020, eq. 4


def ddpm_training_example(schedule: NoiseSchedule, x_0: torch.Tensor, eps: torch.Tensor):
    """Ho et al. 2020, Algorithm 1 (training):
        repeat: x_0 ~ q(x_0); t ~ Uniform({1, ..., T}); eps ~ N(0, I)
                x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
                gradient step on |eps - eps_theta(x_t, t)|^2
    For a batch x_0 (B, 2) and its eps (B, 2): the network's input x_t, its time input t and its
    target eps. The loss (section 6) and the training loop (section 9) take the gradient steps."""
    t = torch.randint(0, schedule.num_timesteps, (len(x_0),), device=x_0.device)  # line 3
    return schedule.add_noise(x_0, eps, t), t.float(), eps  # line 5: eps_theta(x_t, t) ~ eps


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, generator: torch.Generator):
    """Ho et al. 2020, Algorithm 2 (sampling) from x_T ~ N(0, I) (n, 2), with sigma_t^2 = beta~_t:
    yields x_{t-1} for t = T, ..., 1. `--method ddpm` runs it in section 3's units (a test)."""
    x_t = x_T  # line 1
    for t in reversed(range(schedule.num_timesteps)):  # line 2
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device) if t else 0  # line 3
        eps = model(x_t, torch.full((len(x_t),), float(t), device=x_t.device))  # eps_theta(x_t, t)
        mean = (x_t - schedule.betas[t] / schedule.sqrt_one_minus_alphas_cumprod[t] * eps) / (
            schedule.alphas[t].sqrt()
        )
        x_t = mean + schedule.posterior_variance[t].sqrt() * z  # line 4
        yield x_t


# ------------------------------------------------------------ 3. One family: x = x_0 + sigma eps
# Divide DDPM's x_t by sqrt(alpha_bar_t): x = x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, with
# sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (Karras et al. 2022, sec. 2 and Table 1): noise
# is only added, never scaled, and sigma says how much. Flow and EDM noise so too, in their units:
#   DDPM  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps;  x = x_t / sqrt(alpha_bar_t)
#   flow  x_t = (1 - t) x_0 + t eps;  x = x_t / (1 - t), sigma = t / (1 - t)
#   EDM   x = x_0 + sigma eps
# Algorithm 2's eps_theta(x_t, t) becomes the denoiser D(x; sigma) = x - sigma eps_theta, an
# estimate of x_0 (Karras et al. 2022, eq. 3), and its step DDIM's with eta = 1 (section 7).
# Every method's network gives a D (section 5), and the samplers see only D and sigma.
def ddpm_sigmas(alpha_bar: torch.Tensor) -> torch.Tensor:
    """DDPM's (T,) sigma_t of its (T,) alpha_bar_t, growing with t."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def flow_x_t(x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Flow matching's: the straight line from x_0 at t = 0 to eps at t = 1 (t (B, 1))."""
    return (1 - t) * x_0 + t * eps


# ----------------------------------------------------------------------------- 4. The network
# The network is F(x_in, time_in, c) -> (B, 2): the noisy point x_in (B, 2) and its noise level
# time_in (B,) in its method's own units, and the classes c (B,) or None. The sinusoidal time
# embedding (frequencies 1 down to 1e-4) tells levels apart when time_in changes by ~1 or more
# between them, as DDPM's integer t do; so flow and EDM stretch theirs to a range like T = 1000's:
FLOW_TIME_SCALE = 1000  # flow's t in (0, 1)
EDM_TIME_SCALE = 250  # EDM's c_noise = ln(sigma) / 4, about -1.6 to 1.1 from sigma 0.002 to 80
# Its nonlinearity is SiLU (Elfwing et al. 2018), its blocks normalise their input (LayerNorm, Ba
# et al. 2016), and a directional embedding sees the point (x, y) whole: together 0.07 more
# precision on the dino at the same cost (RESULTS.md, "The network").
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
NORMS = {"layer": nn.LayerNorm, "none": lambda size: nn.Identity()}


class Block(nn.Module):
    def __init__(self, size: int, activation: str = "silu", norm: str = "layer"):
        super().__init__()
        self.norm = NORMS[norm](size)
        self.linear = nn.Linear(size, size)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.activation(self.linear(self.norm(x)))  # pre-norm residual block


class MLP(nn.Module):
    """F(x_in, time_in[, c]): the point (x, y) gets a directional embedding (or x and y one each;
    frequencies up to input_scale), time_in a sinusoidal one, and with num_classes > 0 the class
    a learned one; class num_classes is the null class (Ho & Salimans 2022, sec. 3.2)."""

    def __init__(
        self,
        hidden_size=128,
        hidden_layers=3,
        embedding_size=64,
        time_embedding="sinusoidal",
        input_embedding="directional",
        num_classes=0,
        input_scale=25.0,
        activation="silu",
        block_norm="layer",
    ):
        super().__init__()
        self.joint = input_embedding == "directional"
        if self.joint:  # one embedding of the point (x, y)
            self.embed_xy = DirectionalEmbedding(embedding_size, scale=input_scale)
        else:
            self.embed_x = make_embedding(input_embedding, embedding_size, scale=input_scale)
            self.embed_y = make_embedding(input_embedding, embedding_size, scale=input_scale)
        self.embed_t = make_embedding(time_embedding, embedding_size)
        self.num_classes = num_classes
        self.embed_class = nn.Embedding(num_classes + 1, embedding_size) if num_classes else None
        points = [self.embed_xy] if self.joint else [self.embed_x, self.embed_y]
        in_size = sum(e.out_dim for e in (*points, self.embed_t))
        in_size += embedding_size if num_classes else 0
        layers = [nn.Linear(in_size, hidden_size), ACTIVATIONS[activation]()]
        layers += [Block(hidden_size, activation, block_norm) for _ in range(hidden_layers)]
        layers += [nn.LayerNorm(hidden_size)] if block_norm == "layer" else []
        layers += [nn.Linear(hidden_size, 2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x_in: torch.Tensor, time_in: torch.Tensor, c=None) -> torch.Tensor:
        if self.joint:
            features = [self.embed_xy(x_in), self.embed_t(time_in)]
        else:
            features = [self.embed_x(x_in[:, 0]), self.embed_y(x_in[:, 1]), self.embed_t(time_in)]
        if self.num_classes:
            if c is None:
                c = torch.full((len(x_in),), self.num_classes, device=x_in.device)  # (B,)
            features.append(self.embed_class(c))
        return self.net(torch.cat(features, dim=-1))  # (B, in_size) -> (B, 2)


# ---------------------------------------------------------------- 5. The methods, as denoisers
# A method says how its network is trained: training_example(x_0, eps, c) draws a noise level per
# point and returns the network's input, time input and target, for the plain MSE of section 6
# (c, the points' classes, only EDM's stable target reads).
# And how the network's output becomes D: D_theta(model, x, sigma, c), the network's D(x; sigma).
# grid, sampler, steps and s_churn are its sampling defaults (section 7).
class DDPM:
    """Ho et al. 2020 (section 2) as a denoiser: D(x; sigma) = x - sigma eps_theta(x_t, t), with
    x_t = sqrt(alpha_bar) x and alpha_bar = 1 / (1 + sigma^2) (Karras et al. 2022, Table 1, VP)."""

    grid, sampler, steps, s_churn = "timesteps", "ddpm", None, 0.0  # Algorithm 2: all T steps

    def __init__(self, betas: torch.Tensor, sigma_min: float, sigma_max: float):
        self.schedule = NoiseSchedule(betas)
        self.sigmas = ddpm_sigmas(self.schedule.alphas_cumprod)  # (T,)
        # the other grids run between sigma_min and sigma_max, within the trained levels
        self.sigma_min = max(sigma_min, self.sigmas[0].item())
        self.sigma_max = min(sigma_max, self.sigmas[-1].item())

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor, c=None):
        return ddpm_training_example(self.schedule, x_0, eps)  # Algorithm 1

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (B,) t of each sigma: exact on the trained levels, log sigma interpolated between."""
        log_sigmas, log_sigma = self.sigmas.log(), sigma.log()
        i = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)  # (B,)
        low, high = log_sigmas[i - 1], log_sigmas[i]
        return i - 1 + ((log_sigma - low) / (high - low)).clamp(0, 1)

    def D_theta(self, model, x, sigma, c=None) -> torch.Tensor:
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
    """Lipman et al. 2023, Liu et al. 2023, with t reversed as Esser et al. 2024 have it (t = 1
    is noise, sigma = inf): F predicts the velocity v = eps - x_0 of x_t, and x_0 = x_t - t v."""

    grid, sampler, steps, s_churn = "uniform_t", "heun", 12, 0.0  # sampling defaults

    def __init__(self, flow_t: str, sigma_min: float, sigma_max: float):
        self.draw_t, self.flow_t = FLOW_T[flow_t], flow_t  # how training draws t, by name
        self.sigma_min, self.sigma_max = sigma_min, sigma_max  # the sampling grids' ends

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor, c=None):
        t = self.draw_t(len(x_0), x_0.device)  # (B,)
        return flow_x_t(x_0, eps, t[:, None]), FLOW_TIME_SCALE * t, eps - x_0

    def D_theta(self, model, x, sigma, c=None) -> torch.Tensor:
        t = sigma / (1 + sigma)  # (B,)
        x_t = x / (1 + sigma[:, None])
        return x_t - t[:, None] * model(x_t, FLOW_TIME_SCALE * t, c)  # x_0 = x_t - t v

    def summary(self) -> str:
        return f"flow, t ~ {self.flow_t}"


class EDM:
    """Karras et al. 2022: D = c_skip x + c_out F(c_in x; c_noise). The preconditioning (their
    Table 1) keeps F's input and target at unit variance for data of std sigma_data."""

    grid, sampler, steps, s_churn = "karras", "sde", 50, 2.0  # 50 NFE: the ODE misplaces arcs' mass

    def __init__(self, sigma_data, P_mean, P_std, sigma_min, sigma_max, stable_target=False):
        self.sigma_data, self.P_mean, self.P_std = sigma_data, P_mean, P_std
        self.sigma_min, self.sigma_max = sigma_min, sigma_max  # the sampling grids' ends
        self.stable_target = stable_target  # train towards the batch's E[x_0 | x], below

    def preconditioning(self, sigma: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of Karras et al. 2022, Table 1, each shaped as sigma."""
        s2 = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / s2
        return c_skip, sigma * self.sigma_data / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4

    def training_example(self, x_0: torch.Tensor, eps: torch.Tensor, c=None):
        # ln sigma ~ N(P_mean, P_std^2), Karras et al. 2022, Table 1
        sigma = (self.P_mean + self.P_std * torch.randn(len(x_0), 1, device=x_0.device)).exp()
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)  # (B, 1) each
        x = x_0 + sigma * eps  # the family's forward process (section 3)
        target = stable_target(x, sigma, x_0, c) if self.stable_target else x_0
        # the weight lambda = 1 / c_out^2 makes lambda |D - x_0|^2 = |F - target|^2 (their eq. 8)
        return c_in * x, EDM_TIME_SCALE * c_noise[:, 0], (target - c_skip * x) / c_out

    def D_theta(self, model, x, sigma, c=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma[:, None])  # (B, 1) each
        return c_skip * x + c_out * model(c_in * x, EDM_TIME_SCALE * c_noise[:, 0], c)

    def summary(self) -> str:
        mean, std = self.P_mean, self.P_std
        return f"edm, sigma_data = {self.sigma_data:.3g}, ln sigma ~ N({mean:g}, {std:g}^2)"


def stable_target(x, sigma, x_0, c=None) -> torch.Tensor:
    """E[x_0 | x] with the batch's points x_0 (B, 2) as the data (of each one's class c (B,)),
    for x = x_0 + sigma eps (B, 2), sigma (B, 1): Xu et al. 2023's stable target (the batch is
    their reference batch). At low noise a point's own x_0 outweighs the rest, as in the plain
    target; at high noise, where many x_0 could have made x, their mean replaces the one draw."""
    # (B, B): log N(x_i; x_0j, sigma_i^2) but for terms of row i alone, which the softmax drops
    log_weights = (x @ x_0.T - x_0.square().sum(1) / 2) / sigma**2
    if c is not None:  # a class's own points; an unconditional D learns their mean over classes
        log_weights = log_weights.masked_fill(c[:, None] != c, -math.inf)
    return F.linear(log_weights.softmax(1), x_0.T)  # weights @ x_0 (B, 2), as linear: 3x faster


class Consistency(EDM):
    """EDM's D fine-tuned into a consistency model (section 11), levels {str(N): N levels}."""

    grid, sampler, steps, s_churn, levels = "stored", "consistency", 2, 0.0, {}

    def summary(self) -> str:  # it trains on its teacher's chains, not at levels it draws
        return f"edm, sigma_data = {self.sigma_data:.3g}, distilled into a consistency model"


METHODS = {"ddpm": DDPM, "flow": Flow, "edm": EDM}


# ----------------------------------------------------------------------------- 6. Training loss
def loss_fn(
    model: nn.Module, method, x_0: torch.Tensor, c=None, cond_drop_prob=0.0, eps=None
) -> torch.Tensor:
    """The plain MSE of the network's output against the method's target, at a noise level
    drawn per point; c (B,): the points' classes, hidden at random (cond_drop_prob).
    eps (B, 2): the noise coupled to each x_0 (reflow, section 10); default fresh noise."""
    eps = torch.randn_like(x_0) if eps is None else eps
    x_in, time_in, target = method.training_example(x_0, eps, c)
    if c is not None:
        # classifier-free guidance: the same model also learns p(x) (Ho & Salimans 2022, Alg. 1)
        c = torch.where(torch.rand(len(c), device=c.device) < cond_drop_prob, model.num_classes, c)
    return F.mse_loss(model(x_in, time_in, c), target)  # Ho et al. 2020's L_simple for ddpm


# ----------------------------------------------------------------------------- 7. Samplers
# Sampling walks down a grid of noise levels sigma_0 > sigma_1 > ... > sigma_N = 0. A grid gives
# the n levels before the final 0, as a float64 tensor.
def timesteps_grid(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """DDPM's trained levels: sigma_t of n evenly spaced t from T-1 down to 0 (n = T: all)."""
    t = torch.linspace(len(sigmas) - 1, 0, n, dtype=torch.float64).round().long()  # (n,)
    return sigmas[t.to(sigmas.device)].double().cpu()


def karras_grid(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_max to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def uniform_t_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Flow matching's even steps in t = sigma / (1 + sigma) (Lipman et al. 2023). The chain
    starts at t(sigma_max) < 1, not at t = 1: there sigma = inf and x = x_t / (1 - t) is undefined;
    from sigma_max = 10 the skipped stretch moves x_t by t(sigma_max) x_0 / sigma_max."""
    t_max = sigma_max / (1 + sigma_max)
    t = torch.linspace(t_max, 0, n + 1, dtype=torch.float64)[:-1]
    return t / (1 - t)


# Each grid's numbers from the method: DDPM's trained levels, or its sigma_min and sigma_max.
GRIDS = {
    "timesteps": lambda method, n: timesteps_grid(n, method.sigmas),
    "karras": lambda method, n: karras_grid(n, method.sigma_min, method.sigma_max),
    "uniform_t": lambda method, n: uniform_t_grid(n, method.sigma_min, method.sigma_max),
    # a consistency run's searched levels (section 11), else karras's
    "stored": lambda method, n: torch.as_tensor(
        method.levels.get(str(n), karras_grid(n, method.sigma_min, method.sigma_max)),
        dtype=torch.float64,
    ),
}


def noise_levels(grid: str, method, n: int) -> list[float]:
    """The n + 1 levels of an n-step chain: the grid, then 0."""
    return GRIDS[grid](method, n).tolist() + [0.0]


def clip_x0(x_0: torch.Tensor, clip_range: torch.Tensor | None) -> torch.Tensor:
    # At high noise a small error in the network's output throws x_0 far outside the data;
    # clipping to the data's box (2, 2) keeps each step sane.
    return x_0 if clip_range is None else x_0.clamp(clip_range[0], clip_range[1])


def guided_D(model, method, x, sigma: float, c=None, guidance_scale=1.0, clip_range=None):
    """The D(x; sigma) a sampler steps with, for points x (n, 2): the network's (method.D_theta)
    or the exact one (exact.py, in the network's place), guided, then clipped to the data's box.
    Classifier-free guidance, Ho & Salimans 2022, eq. 6 with w = guidance_scale - 1, on D:
    D_null + s (D_c - D_null). D is affine in the network's output, so this is their eps-mix.
    s = 1 is the plain conditional model, s > 1 sharpens the class."""
    sigma = torch.full((len(x),), sigma, device=x.device)  # (n,)
    D = model if isinstance(model, exact.ExactDenoiser) else partial(method.D_theta, model)
    if c is None or guidance_scale == 1.0:
        return clip_x0(D(x, sigma, c), clip_range)
    null = torch.full_like(c, model.num_classes)
    both = torch.cat((x, x)), torch.cat((sigma, sigma)), torch.cat((c, null))  # one batched call
    D_c, D_null = D(*both).chunk(2)
    return clip_x0(D_null + guidance_scale * (D_c - D_null), clip_range)


# A step goes from sigma to sigma_next < sigma with D(x, sigma) (guided_D): step(D, x, sigma,
# sigma_next, noise) -> x_next, where only a stochastic step calls noise() for fresh noise (n, 2).
def dx_dsigma(x, sigma, x_0):
    """The probability-flow ODE's dx/dsigma = (x - D) / sigma: Karras et al. 2022, eq. 4, s = 1."""
    return (x - x_0) / sigma


def ddim_step(D, x, sigma, sigma_next, noise, eta=0.0):
    """Song et al. 2021, eq. 12 divided by sqrt(alpha_bar_prev): x_next = x_0 + sqrt(sigma_next^2
    - c^2) eps + c z. eta = 1 is Algorithm 2's step (Ho et al. 2020, eqs. 6-7), eta = 0 Euler's."""
    x_0 = D(x, sigma)
    eps = (x - x_0) / sigma  # the eps consistent with the (clipped) x_0
    r = (sigma_next / sigma) ** 2
    c = eta * sigma_next * math.sqrt(1 - r)  # eq. 16's sigma_t, in VE units
    x_next = x_0 + sigma_next * math.sqrt(1 - eta**2 * (1 - r)) * eps
    return x_next + c * noise() if c else x_next


def euler_step(D, x, sigma, sigma_next, noise):
    """Karras et al. 2022, Alg. 1 without the correction: one Euler step of eq. 4."""
    return x + (sigma_next - sigma) * dx_dsigma(x, sigma, D(x, sigma))


def heun_step(D, x, sigma, sigma_next, noise):
    """Karras et al. 2022, Alg. 1 lines 4-8: Heun's 2nd-order method, Euler into sigma = 0."""
    d = dx_dsigma(x, sigma, D(x, sigma))
    x_next = x + (sigma_next - sigma) * d  # Euler step
    if sigma_next == 0:
        return x_next
    d_next = dx_dsigma(x_next, sigma_next, D(x_next, sigma_next))  # 2nd-order correction
    return x + (sigma_next - sigma) * (d + d_next) / 2


def sde_step(D, x, sigma, sigma_next, noise):
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
    # Algorithm 2's step (ddim_step, eta = 1) discretises the same SDE: to first order in
    # sigma - sigma_next it is this step, and it stays sane on large steps. EDM's churn (Alg. 2)
    # splits the SDE: noise up to sigma_hat (the forward process), then an ODE step down.
    drift = 2 * (sigma_next - sigma) * dx_dsigma(x, sigma, x_0)
    return x + drift + math.sqrt(2 * sigma * (sigma - sigma_next)) * noise()


def consistency_step(D, x, sigma, sigma_next, noise):
    """Song et al. 2023, Alg. 1 (multistep consistency sampling): x_0 = D(x; sigma), then noise."""
    return D(x, sigma) + (sigma_next * noise() if sigma_next else 0)


def make_step(sampler: str, eta: float):
    """The step of --sampler: DDPM's (Algorithm 2's) is DDIM's with eta = 1."""
    steps = {"ddpm": partial(ddim_step, eta=1.0), "ddim": partial(ddim_step, eta=eta)}
    steps |= {"consistency": consistency_step}
    return (steps | {"euler": euler_step, "heun": heun_step, "sde": sde_step})[sampler]


SAMPLERS = ("ddpm", "ddim", "euler", "heun", "sde", "consistency")


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations of a chain: Heun's correction adds one on each step but the last."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def churn(x, sigma, gamma, noise):
    """Karras et al. 2022, Alg. 2 lines 5-6: add noise (S_noise = 1) up to (1 + gamma) sigma."""
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * noise(), sigma_hat


def guided_at(i: int, num_steps: int, guidance_scale: float, guidance_interval=(0.0, 1.0)) -> float:
    """The scale for step i of num_steps: guidance_scale while the step's place in the chain,
    (N - i) / N from 1 (pure noise) to 1/N, lies in (lo, hi], else 1 (Kynkäänniemi et al. 2024
    guide in an interval of levels). For DDPM's T steps, (N - i) / N = (t + 1) / T."""
    lo, hi = guidance_interval
    return guidance_scale if lo < (num_steps - i) / num_steps <= hi else 1.0


# A chain's start at sigma_max, one per --init_noise, from noise eps (n, 2): "scaled", EDM's,
# for DDPM and flow the VE view of x_T ~ N(0, I); "unscaled", as Diamond's sampler; "data", the
# noisy data's mean and variance, with moments = (mean, var) of each point's class, (n, 2) each.
STARTS = {
    "scaled": lambda sigma_max, eps, moments: sigma_max * eps,
    "unscaled": lambda sigma_max, eps, moments: eps,
    "data": lambda sigma_max, eps, moments: moments[0] + (sigma_max**2 + moments[1]).sqrt() * eps,
}


@torch.inference_mode()
def reverse_process(
    model, method, n, generator, *,
    num_inference_steps, sampler="ddpm", grid=None,  # the chain: the default path
    eta=0.0, s_churn=0.0,  # more noise: DDIM's eta, EDM's churn (Karras et al. 2022, Alg. 2)
    init_noise="scaled", start_moments=None,  # its start (STARTS)
    c=None, guidance_scale=1.0, guidance_interval=(0.0, 1.0), clip_range=None,  # its D (guided_D)
):  # fmt: skip
    """Start from noise at sigma_max and step down the grid (default: the method's own) to
    sigma = 0, yielding (sigma, x) after each step; (sigma_max, x_start) comes first.
    c: (n,) class of each point; start_moments: STARTS' moments."""
    sigmas = noise_levels(grid or method.grid, method, num_inference_steps)
    step, N = make_step(sampler, eta), len(sigmas) - 1
    noise = partial(torch.randn, n, 2, generator=generator, device=generator.device)
    x = STARTS[init_noise](sigmas[0], noise(), start_moments)  # (n, 2)
    yield sigmas[0], x
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        s = guided_at(i, N, guidance_scale, guidance_interval)
        D = partial(guided_D, model, method, c=c, guidance_scale=s, clip_range=clip_range)
        gamma = min(s_churn / N, math.sqrt(2) - 1)  # Karras et al. 2022, Alg. 2's gamma_i
        if gamma > 0:
            x, sigma = churn(x, sigma, gamma, noise)
        z = noise()  # drawn on every step, used or not: the random stream of earlier versions
        x = step(D, x, sigma, sigma_next, lambda: z)
        yield sigma_next, x


def sample(model, method, n, generator, **options) -> torch.Tensor:
    """Draw n points (n, 2): the end of the reverse process (options as for reverse_process)."""
    *_, (_, x_0) = reverse_process(model, method, n, generator, **options)
    return x_0


# ----------------------------------------------------------------------------- 8. A run
class EMA(AveragedModel):
    """theta_ema <- decay theta_ema + (1 - decay) theta after each step; sampling uses theta_ema.
    torch's AveragedModel with get_ema_multi_avg_fn (the first update copies theta), with both
    models' tensors listed once: its update_parameters walks both module trees, 16x the lerp."""

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


def make_method(config: dict, sigma_data: float, device="cpu"):
    """A run's method, built from the numbers its config names (DDPM's schedule on device)."""
    levels = config["sigma_min"], config["sigma_max"]
    if config["method"] == "ddpm":
        betas = BETA_SCHEDULES[config["beta_schedule"]](config["num_timesteps"])
        return DDPM(betas.to(device), *levels)
    if config["method"] == "flow":
        return Flow(config["flow_t"], *levels)
    method = (Consistency if config["consistency"] else EDM)(
        sigma_data, config["P_mean"], config["P_std"], *levels, config["stable_target"]
    )
    method.levels = config.get("consistency_sigmas") or {}  # a consistency run's, section 11
    return method


# The options that say what network a run trains: MLP's arguments, by the same names.
MODEL_OPTIONS = ("hidden_size", "hidden_layers", "embedding_size", "time_embedding")
MODEL_OPTIONS += ("input_embedding", "input_scale", "activation", "block_norm")


def make_model(config: dict, num_classes: int = 0) -> MLP:
    if config["input_scale"] == "auto":  # a number from the data, as checkpoints.prepare does
        raise ValueError("input_scale auto: take it from the data, options.resolve_input_scale")
    return MLP(num_classes=num_classes, **{option: config[option] for option in MODEL_OPTIONS})


def sampling_options(config: dict) -> dict:
    """reverse_process's options from a run's config, the method's own where it leaves them open."""
    method = Consistency if config["consistency"] else METHODS[config["method"]]
    steps = config["num_inference_steps"] or method.steps or config["num_timesteps"]
    given = ("eta", "init_noise", "guidance_scale", "guidance_interval")
    return {
        "sampler": config["sampler"] or method.sampler,
        "s_churn": method.s_churn if config["s_churn"] is None else config["s_churn"],
        "grid": config["grid"] or method.grid,
        "num_inference_steps": steps,
    } | {name: config[name] for name in given}


def class_shares(labels: torch.Tensor | None, num_classes: int, n: int) -> torch.Tensor | None:
    """The (n,) classes of n points, every class in its share of labels (None without classes)."""
    if not num_classes:
        return None
    in_data = np.bincount(labels.cpu().numpy(), minlength=num_classes)
    counts = torch.from_numpy(evaluate.shares_of(in_data, n)).to(labels.device)
    return torch.repeat_interleave(torch.arange(num_classes, device=labels.device), counts)


def frame_classes(config: dict, labels: torch.Tensor | None, classes: list) -> torch.Tensor | None:
    """The (n,) class of each frame point: --class_label, else every class in its data share."""
    n = config["eval_batch_size"]
    if classes and config["class_label"] is not None:
        return torch.full((n,), classes.index(config["class_label"]), device=labels.device)
    return class_shares(labels, len(classes), n)


class Run:
    """A model in training: its method and network, the EMA, AdamW, the losses and the frames so
    far. checkpoints.py saves and restores it; the run folder (run_folder.py) writes it out."""

    def __init__(self, config, data, labels, classes, shift, scale, sigma_data, **parts):
        """data (m, 2): training points in training units, (x - shift) / scale; labels (m,). parts:
        reflow's pairs (section 10), frames' denoiser (the EMA's), the model (discrete.py's)."""
        pairs, denoiser, model = (parts.get(name) for name in ("pairs", "denoiser", "model"))
        self.config, self.data, self.labels = config, data, labels
        self.classes, self.sigma_data, device = list(classes), sigma_data, data.device
        self.method = make_method(config, sigma_data, device)
        self.model = (make_model(config, len(self.classes)) if model is None else model).to(device)
        self.ema = EMA(self.model, config["ema_decay"])
        self.batches_per_epoch = math.ceil(len(data) / config["train_batch_size"])
        steps = config["num_epochs"] * self.batches_per_epoch
        # Cosine decay of the learning rate to 0: the last steps refine instead of jumping around.
        decay_steps = max(steps, 1) if config["lr_decay"] == "cosine" else None
        # Its gradient clipped to norm 1 before each step (adamw.py), as the original's was.
        self.optimizer = AdamW(self.model.parameters(), config["learning_rate"], decay_steps, 1.0)
        self.losses = torch.full((steps,), math.nan, device=device)  # no sync per step
        self.clip_range = torch.stack((data.min(0).values, data.max(0).values))  # (2, 2): the box
        self.shift, self.scale = shift, scale
        self.frame_classes = frame_classes(config, labels, self.classes)
        # init_noise "data" starts from the mean and variance of each frame point's class, (n, 2)
        groups = [data[labels == k] for k in range(len(self.classes))] if self.classes else [data]
        var_means = [torch.var_mean(group, 0, correction=0) for group in groups]
        self.class_vars, self.class_means = (torch.stack(moment) for moment in zip(*var_means))
        self.moments = self.start_moments(self.frame_classes)
        self.epoch, self.frames, self.frame_epochs, self.frame_seconds = 0, [], [], 0.0
        self.frames_started = []  # being sampled (sample_frame)
        self.denoiser = self.ema.module if denoiser is None else denoiser
        self.pairs, self.noise = pairs, pairs["eps"] if pairs else None  # reflow's, and their eps
        self.trajectories = None  # a consistency run's teacher chains (section 11), drawn once

    def start_moments(self, c: torch.Tensor | None) -> tuple:
        """init_noise "data"'s (mean, var) of each point's class c (n,), (n, 2) each."""
        c = 0 if c is None else c  # (classes or 1, 2) -> (n, 2) or (2,)
        return self.class_means[c], self.class_vars[c]


def make_run(config: dict, dataset: datasets.Dataset, checkpoint=None, pairs=None) -> Run:
    """A Run on the dataset's training points in training units: a file's standardised. With
    --reflow, on the teacher's pairs instead (teacher_pairs, section 10, or the checkpoint's)."""
    device = options.resolve_device(config["device"])
    points, labels = (torch.from_numpy(array) for array in dataset.train_set())  # (m, 2), (m,)
    if checkpoint:
        shift, scale = checkpoint["shift"].cpu(), checkpoint["scale"].cpu()
    elif dataset.is_file:  # frames and metrics stay in the file's own units
        shift, scale = points.mean(0), points.std(0)  # > 0: datasets refuses flat files
    else:
        shift, scale = torch.zeros(2), torch.ones(2)
    data = ((points - shift) / scale).to(device)
    labels = labels.to(device) if dataset.classes else None
    pairs = (pairs or (checkpoint or {}).get("pairs")) if config["reflow"] else None
    if pairs:  # in the teacher's units (kept in the checkpoint)
        data, labels, shift, scale = (pairs[key] for key in ("x_0", "labels", "shift", "scale"))
    # EDM's sigma_data: --sigma_data, else the std of the training data's coordinates,
    # measured once and kept in the checkpoint so the model is always preconditioned alike
    sigma_data = config["sigma_data"] or (checkpoint or {}).get("sigma_data") or data.std().item()
    parts = {"pairs": pairs}
    if config["denoiser"] == "exact":  # the true distribution's, in training units
        parts["denoiser"] = exact.denoiser_of(dataset, config["data_dir"], shift, scale).to(device)
    run = Run(config, data, labels, dataset.classes, shift, scale, sigma_data, **parts)
    if checkpoint:
        checkpoints.restore(run, checkpoint, config["resume"])
    return run


def is_frame_epoch(epoch: int, config: dict) -> bool:
    """Frames are sampled every save_images_step epochs and after the last one."""
    return epoch % config["save_images_step"] == 0 or epoch == config["num_epochs"] - 1


def frame_points(run: Run, seed: int, snapshot=None, **options) -> torch.Tensor:
    """eval_batch_size points (n, 2) from seed of the frames' D and method, or of snapshot's."""
    config, generator = run.config, torch.Generator(run.data.device).manual_seed(seed)
    clip_range, n = run.clip_range if config["clip_x0"] else None, config["eval_batch_size"]
    sampling = {"clip_range": clip_range, "c": run.frame_classes, "start_moments": run.moments}
    options = sampling_options(config) | sampling | options
    D, method = (run.denoiser, run.method) if snapshot is None else snapshot
    return sample(D.eval(), method, n, generator, **options)


# Frames (the animation follows the same x_T), the straightness and the scoring's floor need no
# training: they run on a second thread, on the core a run's one torch thread leaves idle
# (options.use_run_threads).
SECOND_THREAD = ThreadPoolExecutor(max_workers=1)


def sample_frame(run: Run) -> None:
    """Start a frame on the second thread, of copies of the frames' D and method as they are at
    this epoch (training and the consistency level search change them); the same x_T every frame."""
    snapshot = copy.deepcopy((run.denoiser, run.method))
    run.frames_started.append(SECOND_THREAD.submit(frame_points, run, run.config["seed"], snapshot))
    run.frame_epochs.append(run.epoch)


def finish_frames(run: Run) -> None:
    """Wait for the frames started (frame_seconds: how long) and keep them in the data's units."""
    tic, started, run.frames_started = time.perf_counter(), run.frames_started, []
    run.frames += [x_0.result().cpu() * run.scale + run.shift for x_0 in started]
    run.frame_seconds += time.perf_counter() - tic


def train_step(run: Run, x_0: torch.Tensor, c=None, eps=None, objective=loss_fn) -> torch.Tensor:
    """One AdamW step on x_0 (B, 2), classes c (B,), reflow's eps (B, 2); the loss, not waiting."""
    loss = objective(run.model, run.method, x_0, c, run.config["cond_drop_prob"], eps)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()  # the gradient clipped to norm 1, then AdamW's update
    run.ema.update()
    return loss.detach()


# ----------------------------------------------------------------------------- 9. Training loop
# Predicting eps = 0 scores 1; a loss this large (or NaN) means the optimisation has blown up.
DIVERGED_LOSS = 1e3


def train(run: Run, objective=loss_fn, frame=sample_frame) -> str:
    """AdamW on objective (section 6's loss), epoch after epoch of shuffled batches, with an EMA of
    the weights that samples a frame every few epochs: "done", "interrupted" or "diverged"."""
    config, data, B = run.config, run.data, run.batches_per_epoch
    steps, desc = len(run.losses), f"training on {config['dataset']}"
    bar = tqdm(total=steps, initial=run.epoch * B, desc=desc, unit="step", dynamic_ncols=True)
    status = "done"
    with bar, run_folder.StopOnCtrlC() as ctrl_c:
        while status == "done" and run.epoch < config["num_epochs"]:
            run.model.train()
            step = run.epoch * B
            # Batches by indexing tensors: no DataLoader, no per-item collation.
            order = torch.randperm(len(data), device=data.device)
            for batch in order.split(config["train_batch_size"]):
                c = None if run.labels is None else run.labels[batch]
                eps = None if run.noise is None else run.noise[batch]  # reflow's pairs
                run.losses[step] = train_step(run, data[batch], c, eps, objective)
                step += 1
            epoch_losses = run.losses[step - B : step]  # read with one sync per epoch
            epoch_loss, worst = torch.stack((epoch_losses.mean(), epoch_losses.max())).tolist()
            if not worst <= DIVERGED_LOSS:  # also catches NaN
                status = "diverged"
                break
            bar.set_postfix(loss=f"{epoch_loss:.4f}", refresh=False)
            bar.update(B)
            if is_frame_epoch(run.epoch, config):
                frame(run)
            run.epoch += 1
            status = "interrupted" if ctrl_c.requested else status
        finish_frames(run)  # not if training raised: its error is the one to report, not a frame's
    return status


# ----------------------------------------------------------------------------- 10. Reflow
# Reflow (Liu et al. 2023, sec. 2.2 and Alg. 1): a trained model's ODE couples each noise eps with
# the point x_0 it carries eps to. A flow trained on these pairs in place of independent ones
# (x_t = (1 - t) x_0 + t eps, the same loss) has paths that cross less: they are straighter, and a
# few Euler steps suffice. Any model with an ODE can teach: flow, EDM, DDPM (as DDIM).
REFLOW_SAMPLING = {"sampler": "heun", "grid": "karras", "num_inference_steps": 12, "s_churn": 0.0}


def reflow_pairs(teacher: Run, m: int, generator: torch.Generator) -> dict:
    """m chains of the teacher's ODE (REFLOW_SAMPLING, its start and clipping): x_0 (m, 2) where
    each ends, and eps (m, 2) such that it starts at x_0 + sigma_max eps; labels (m,): classes.
    This eps, not the start's own noise, makes the teacher's start the student's noisy point at
    sigma_max, where the student's chains begin: its marginal there is the start's Gaussian
    exactly. (x_0 and eps are coupled, so x_0 + sigma_max eps is not x_0 + noise.)"""
    c = class_shares(teacher.labels, len(teacher.classes), m)
    clip_range = teacher.clip_range if teacher.config["clip_x0"] else None
    options = sampling_options(teacher.config) | REFLOW_SAMPLING
    start = {"start_moments": teacher.start_moments(c), "clip_range": clip_range, "c": c}
    chain = reverse_process(teacher.denoiser, teacher.method, m, generator, **start, **options)
    (sigma_max, x_start), *_, (_, x_0) = chain
    eps = (x_start - x_0) / sigma_max
    return {"x_0": x_0.clone(), "eps": eps.clone(), "labels": c}  # clones can be trained on


def teacher_pairs(config: dict, dataset: datasets.Dataset) -> dict:
    """The pairs of the teacher run --reflow (--reflow_pairs of them), with its units and config."""
    tic, device = time.perf_counter(), options.resolve_device(config["device"])
    checkpoint = checkpoints.load(Path(config["reflow"]), device)
    teacher = make_run(checkpoints.teacher_config(config, checkpoint), dataset, checkpoint)
    generator = torch.Generator(device).manual_seed(config["seed"])
    pairs = reflow_pairs(teacher, config["reflow_pairs"] or len(teacher.data), generator)
    units = {"shift": teacher.shift, "scale": teacher.scale, "teacher": teacher.config}
    return pairs | units | {"seconds": time.perf_counter() - tic}


def straightness(path: list) -> float:
    """Liu et al. 2023, eq. 3 in discrete form: the mean over a chain's steps (weighted by their
    length in t) of |(eps - x_0) - v|^2, v the step's velocity dx_t/dt, in flow's coordinates
    x_t = x / (1 + sigma), t = sigma / (1 + sigma): 0 when every path is a straight line walked
    at constant speed. path: reverse_process's (sigma, x (n, 2)), noise first."""
    t = torch.tensor([sigma / (1 + sigma) for sigma, _ in path], dtype=torch.float64)  # (N + 1,)
    x_t = torch.stack([x / (1 + sigma) for sigma, x in path]).cpu().double()  # (N + 1, n, 2)
    dt = t[:-1] - t[1:]  # (N,): t falls to 0
    v = (x_t[:-1] - x_t[1:]) / dt[:, None, None]  # (N, n, 2): each step's velocity
    v_mean = (x_t[0] - x_t[-1]) / dt.sum()  # (n, 2): the straight line's, eps - x_0 at t = 1
    return ((dt[:, None] * ((v - v_mean) ** 2).sum(-1)).sum(0) / dt.sum()).mean().item()


def path_straightness(run: Run) -> float:
    """The straightness of the run's own ODE, from 100 Euler steps in even t of its frame points."""
    generator = torch.Generator(run.data.device).manual_seed(run.config["seed"])
    fine = {"sampler": "euler", "grid": "uniform_t", "num_inference_steps": 100, "s_churn": 0.0}
    start = {"c": run.frame_classes, "start_moments": run.moments}
    n, options = run.config["eval_batch_size"], sampling_options(run.config) | fine
    path = reverse_process(run.denoiser, run.method, n, generator, **start, **options)
    return straightness(list(path))


# ----------------------------------------------------------------------------- 11. Consistency
# A consistency model (Song et al. 2023) jumps from any x on an ODE path to the path's end x_0:
# D(x; t) = x_0 for every (x, t) on it. --consistency RUN tunes RUN's D so, at fixed levels,
# towards the ends of RUN's own ODE paths (distillation; Luhman & Luhman 2021).
TRAJECTORY_LEVELS = (10.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)  # those in the run's range
TRAJECTORY_CHAINS, TRAJECTORY_SUBSTEPS = 10_000, 2  # heun steps between two levels: ~1 s


def learned_levels(method) -> list[float]:
    """The levels a consistency model learns: sigma_max, then TRAJECTORY_LEVELS in its range."""
    lower = (s for s in TRAJECTORY_LEVELS if method.sigma_min < s < method.sigma_max)
    return [method.sigma_max, *lower]


def teacher_trajectories(run: Run) -> dict:
    """Chains of the teacher's ODE (its EMA network, before the first step): heun steps
    geometric in sigma from the data start at sigma_max through the levels, and on to 0:
    {"sigma" (L,), "x" (L, M, 2): each chain at each level, "end" (M, 2), "c" (M,) or None}. A
    Gaussian start below sigma_max misplaces the mass (the dino's exact ODE map from 1: W2 ratio
    1.47-1.56, from 10: 0.92-1.18), so every chain, and every chain a run samples, starts there."""
    M, method = TRAJECTORY_CHAINS, copy.copy(run.method)
    levels = learned_levels(method)
    ends = torch.tensor([*levels, method.sigma_min]).log()
    fine = [torch.linspace(a, b, TRAJECTORY_SUBSTEPS + 1)[:-1] for a, b in zip(ends, ends[1:])]
    grid = [*torch.cat(fine).exp().tolist(), method.sigma_min]  # then 0
    method.levels = {str(len(grid)): grid}
    c = class_shares(run.labels, len(run.classes), M)
    generator = torch.Generator(run.data.device).manual_seed(run.config["seed"] + 2)
    mean, var = run.start_moments(c)  # (M, 2) each with classes
    if c is not None:  # cond_drop_prob of them the unconditional ODE's: the null class's
        dropped = torch.rand(M, generator=generator, device=c.device) < run.config["cond_drop_prob"]
        c = torch.where(dropped, len(run.classes), c)
        mean = torch.where(dropped[:, None], run.data.mean(0), mean)  # from the whole data's
        var = torch.where(dropped[:, None], run.data.var(0, correction=0), var)
    start = {"init_noise": run.config["init_noise"], "start_moments": (mean, var)}
    clip_range = run.clip_range if run.config["clip_x0"] else None
    options = {"num_inference_steps": len(grid), "sampler": "heun", "grid": "stored"}
    chain = reverse_process(
        run.ema.module, method, M, generator, **start, **options, c=c, clip_range=clip_range
    )
    path = [x.clone() for _, x in chain]  # at each level of method.levels, then at 0
    xs = torch.stack(path[: len(levels) * TRAJECTORY_SUBSTEPS : TRAJECTORY_SUBSTEPS])
    return {"sigma": torch.tensor(levels, device=run.data.device), "x": xs, "end": path[-1], "c": c}


def trajectory_loss(run: Run, model, method, x_0, c=None, cond_drop_prob=0.0, eps=None):
    """Consistency distillation (Song et al. 2023, Alg. 2) with the teacher's whole path as the
    target: the chain's end replaces both their one teacher step and the model's own D at the
    next level. For (level, chain) pairs drawn evenly, the pseudo-Huber distance d = sqrt(|D(x; t)
    - end|^2 + c^2) - c, c = 0.00054 sqrt(2) (Song & Dhariwal 2023, sec. 3.3), weighted 1 /
    sqrt(t). x_0: the data batch, only for its size (an epoch is as many steps as the teacher's);
    the chains are drawn the first time."""
    if run.trajectories is None:
        run.trajectories = teacher_trajectories(run)
    paths, B, device = run.trajectories, len(x_0), x_0.device
    level = torch.randint(len(paths["sigma"]), (B,), device=device)
    chain = torch.randint(paths["end"].shape[0], (B,), device=device)
    t, x_t, end = paths["sigma"][level], paths["x"][level, chain], paths["end"][chain]
    c = None if paths["c"] is None else paths["c"][chain]  # some the null class's own chains
    huber_c = 0.00054 * math.sqrt(2)
    distance = (((method.D_theta(model, x_t, t, c) - end) ** 2).sum(-1) + huber_c**2).sqrt()
    return ((distance - huber_c) / t.sqrt()).mean()


def consistency_frame(run: Run) -> None:
    """A frame (sample_frame); after the last epoch, first the levels it keeps for N = 1, 2, 4, 8
    steps: sigma_max and the N - 1 of the lower levels it learned whose samples score best
    against training points (evaluate.best_of), from other noise than frames'."""
    if run.epoch < run.config["num_epochs"] - 1:
        return sample_frame(run)
    seed, sigma_max = run.config["seed"] + 1, run.method.sigma_max
    generator = torch.Generator(run.data.device).manual_seed(seed)
    reference = run.data[torch.randperm(len(run.data), generator=generator)].cpu().numpy()

    def points_at(levels: tuple) -> np.ndarray:  # (n, 2) of N = len(levels) steps
        run.method.levels = {str(len(levels)): list(levels)}
        return frame_points(run, seed, num_inference_steps=len(levels)).cpu().numpy()

    sigmas, m = {}, min(200, run.config["eval_batch_size"])  # W2: O(m^3); 500 took 6 s on moons
    lower = learned_levels(run.method)[1:]
    for N in (n for n in options.CONSISTENCY_STEPS if n <= len(lower) + 1):
        grids = [(sigma_max, *rest) for rest in itertools.combinations(lower, N - 1)]
        levels = evaluate.best_of(grids, points_at, reference, m)
        sigmas[str(N)] = [round(sigma, 6) for sigma in levels]
    run.config["consistency_sigmas"] = run.method.levels = sigmas
    sample_frame(run)


# ----------------------------------------------------------------------------- 12. Command line
def experiment(config: dict, dataset: datasets.Dataset, checkpoint: dict | None = None) -> dict:
    """Train (or continue, or only sample) a model, score its last frame, write exps/<name>/."""
    started, seed, n = time.perf_counter(), config["seed"], config["eval_batch_size"]
    torch.manual_seed(seed)
    drawn = config["reflow"] and "pairs" not in (checkpoint or {})  # the teacher's pairs to draw
    run = make_run(config, dataset, checkpoint, teacher_pairs(config, dataset) if drawn else None)
    sampling = sampling_options(config)
    num_evals = nfe(sampling["sampler"], sampling["num_inference_steps"])
    tqdm.write(
        f"{run.method.summary()}; sampling: {sampling['sampler']} on the "
        f"{sampling['grid']} grid, {sampling['num_inference_steps']} steps, NFE = {num_evals}"
    )
    if run.pairs:
        teacher = run.pairs["teacher"]
        tqdm.write(
            f"reflow of {config['reflow']} ({teacher['method']}): {len(run.data)} pairs of its "
            f"ODE, {REFLOW_SAMPLING['num_inference_steps']} heun steps on the karras grid"
        )
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    labels = None if run.frame_classes is None else run.frame_classes.cpu().numpy()  # (n,)
    limits = plots.padded_limits(dataset.train_set()[0]) if dataset.is_file else None  # a file's
    floor = SECOND_THREAD.submit(evaluate.w2_floor, dataset, seed, n, labels)  # needs no model
    tic, consistency = time.perf_counter(), [partial(trajectory_loss, run), consistency_frame]
    status = train(run, *(consistency if config["consistency"] else []))
    seconds = {"setup": tic - started, "train": time.perf_counter() - tic - run.frame_seconds}
    if status == "interrupted":  # save what was done, and say where
        run_folder.stop_early(out_dir, checkpoints.state_of(run), labels, limits)
    if status == "diverged":  # the losses up to the first bad one, and no blown-up weights
        first_bad = int((~(run.losses <= DIVERGED_LOSS)).nonzero()[0])  # NaN compares False
        saved = checkpoints.state_of(run) | {"losses": run.losses[: first_bad + 1].cpu()}
        run_folder.stop_early(out_dir, saved, labels, limits, diverged_at=first_bad)
    with run_folder.StopOnCtrlC(run_folder.AFTER_TRAINING):
        if not run.frames:  # --num_epochs 0: only sample the checkpoint
            sample_frame(run)
            finish_frames(run)
        tic, straight = time.perf_counter(), SECOND_THREAD.submit(path_straightness, run)
        metrics = evaluate.evaluate(run.frames[-1].numpy(), dataset, seed, labels, floor.result())
        seconds |= {"frames": run.frame_seconds, "evaluate": time.perf_counter() - tic}
        tic = time.perf_counter()
        metrics |= {"nfe": num_evals, "straightness": straight.result()}
        seconds["straightness"] = time.perf_counter() - tic  # the wait for it after scoring
        seconds |= {"pairs": run.pairs["seconds"]} if run.pairs else {}
        saved = checkpoints.state_of(run)
        print(run_folder.save_run(out_dir, saved, labels, limits, metrics, seconds, started))
    return metrics


def build_parser() -> options.ArgumentParser:
    """`python ddpm.py -h`: every option (options.py), with the names this file defines."""
    names = {"method": METHODS, "beta_schedule": BETA_SCHEDULES, "flow_t": FLOW_T, "grid": GRIDS}
    names |= {"activation": ACTIVATIONS, "block_norm": NORMS, "sampler": SAMPLERS}
    return options.build_parser(names)


def main(argv=None) -> int:
    prepare = partial(checkpoints.prepare, sampling_options=sampling_options)
    if ran := options.run_command(build_parser(), argv, prepare, experiment):  # or --dataset list
        config, metrics = ran
        seconds = metrics["seconds"]["total"]
        print(f"{config['dataset']}: {evaluate.format_metrics(metrics)}  ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
