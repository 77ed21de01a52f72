"""The exact denoiser of a known distribution: what a perfect network would predict.

Karras et al. 2022 (EDM) write every diffusion model through one denoiser,

    D(y; sigma) = E[x_0 | x_0 + sigma * eps = y],   eps ~ N(0, I),

the "variance exploding" form. DDPM's x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is
the same thing scaled: y = x_t / sqrt(alpha_bar_t) has sigma_t = sqrt((1 - alpha_bar_t) /
alpha_bar_t). For a Gaussian mixture D is closed form, so a sampler fed it shows what any
network could reach at that setting, and a sampler bug cannot hide behind a half-trained model.
"""

import numpy as np
import torch
from torch import nn

import datasets

# Other datasets are replaced by this many fresh draws, each a component of std 0.
EMPIRICAL_POINTS, EMPIRICAL_SEED = 10_000, 4242
ROWS_PER_CHUNK = 2**19  # bounds the (rows, K, 2) intermediates at ~8 MB each


class GaussianMixture(nn.Module):
    """p(x) = sum_k w_k N(x; mu_k, diag(s_k^2)) in 2D, in float64.

    weights (K,), means (K, 2), std (2,) or (K, 2) (per axis, shared or per component)."""

    def __init__(self, weights, means, std):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("log_weights", (weights / weights.sum()).log())  # (K,)
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))  # (K, 2)
        std = torch.as_tensor(std, dtype=torch.float64)
        self.register_buffer("var", std.expand_as(self.means) ** 2)  # (K, 2)

    def _log_joint(self, y: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
        """(n, K): log w_k + log N(y; mu_k, s_k^2 + sigma^2), y ~ x_0 + sigma eps given k."""
        var = self.var + sigma2[:, None, None]  # (n, K, 2)
        d2 = (y[:, None, :] - self.means) ** 2  # (n, K, 2)
        return self.log_weights - 0.5 * (d2 / var + var.log() + np.log(2 * np.pi)).sum(-1)

    def _denoise(self, y, sigma2):
        # Bayes' rule per component: x_0 | y, k ~ N(mu_k + s_k^2 / (s_k^2 + sigma^2) (y - mu_k), .)
        posterior = torch.softmax(self._log_joint(y, sigma2), dim=1)  # (n, K), log-sum-exp safe
        var = self.var + sigma2[:, None, None]  # (n, K, 2)
        x_0 = self.means + self.var / var * (y[:, None, :] - self.means)  # (n, K, 2)
        return (posterior[:, :, None] * x_0).sum(1)  # (n, 2)

    def denoise(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """D(y; sigma) = E[x_0 | y] for y (n, 2) and sigma a number or (n,); float64 (n, 2).

        With std 0 (an empirical distribution) D is a weighted average of the stored points,
        and sigma must be > 0."""
        y = y.double()
        sigma2 = torch.as_tensor(sigma, dtype=torch.float64, device=y.device).expand(len(y)) ** 2
        rows = max(1, ROWS_PER_CHUNK // len(self.means))
        return torch.cat(
            [self._denoise(y[i : i + rows], sigma2[i : i + rows]) for i in range(0, len(y), rows)]
        )

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """(n,) log density of x (n, 2), or of x_0 + sigma eps; needs std > 0 when sigma = 0."""
        x = x.double()
        sigma2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(len(x)) ** 2
        rows = max(1, ROWS_PER_CHUNK // len(self.means))
        chunks = [(x[i : i + rows], sigma2[i : i + rows]) for i in range(0, len(x), rows)]
        return torch.cat([self._log_joint(*chunk).logsumexp(dim=1) for chunk in chunks])

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2) float64 draws: a component by its weight, then its Gaussian."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return self.means[k] + self.var[k].sqrt() * eps

    @property
    def has_density(self) -> bool:
        """False for an empirical distribution (std 0), whose log_prob at sigma = 0 is not one."""
        return bool((self.var > 0).all())

    @property
    def mean(self) -> torch.Tensor:
        """(2,) E[x_0]: what D(y; sigma) tends to as sigma grows."""
        return self.log_weights.exp() @ self.means

    def standardised(self, shift: torch.Tensor, scale: torch.Tensor) -> "GaussianMixture":
        """The mixture of (x - shift) / scale (per axis), the units a run trains in."""
        shift, scale = shift.double(), scale.double()
        return GaussianMixture(
            self.log_weights.exp(), (self.means - shift) / scale, self.var.sqrt() / scale
        )


class UniformBox(nn.Module):
    """x_0 uniform on the box [low, high] (2,), in float64: the line dataset.

    Each axis is independent, and x_0 given y = x_0 + sigma eps is a normal of mean y and std
    sigma truncated to [low, high]: D is its mean, p(y) the mass of that normal in the box."""

    has_density = True

    def __init__(self, low, high):
        super().__init__()
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float64))  # (2,)
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float64))  # (2,)

    def _bounds(self, y: torch.Tensor, sigma):
        """alpha, beta = (low - y) / sigma, (high - y) / sigma, (n, 2) each, and sigma (n, 1)."""
        y = y.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=y.device).expand(len(y))
        sigma = sigma.clamp_min(1e-12)[:, None]  # sigma = 0 is the limit of a tiny sigma
        return (self.low - y) / sigma, (self.high - y) / sigma, sigma, y

    @staticmethod
    def _log_mass(alpha, beta):
        """log (Phi(beta) - Phi(alpha)), alpha < beta, from the tail where it is not ~1 - 1."""
        upper = (
            alpha > 0
        )  # both in the upper tail: Phi(beta) - Phi(alpha) = Phi(-alpha) - Phi(-beta)
        a, b = torch.where(upper, -beta, alpha), torch.where(upper, -alpha, beta)
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        return log_b + torch.log1p(-torch.exp(log_a - log_b))

    def denoise(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """D(y; sigma) = E[x_0 | y], (n, 2) float64: the truncated normal's mean, per axis."""
        alpha, beta, sigma, y = self._bounds(y, sigma)
        log_mass = self._log_mass(alpha, beta)
        log_phi = lambda z: -0.5 * z**2 - 0.5 * np.log(2 * np.pi)  # noqa: E731
        shift = torch.exp(log_phi(alpha) - log_mass) - torch.exp(log_phi(beta) - log_mass)
        return (y + sigma * shift).clamp(self.low, self.high)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """(n,) log density of x (n, 2), or of x_0 + sigma eps."""
        alpha, beta, _, _ = self._bounds(x, sigma)
        return (self._log_mass(alpha, beta) - (self.high - self.low).log()).sum(1)

    def standardised(self, shift: torch.Tensor, scale: torch.Tensor) -> "UniformBox":
        shift, scale = shift.double(), scale.double()
        return UniformBox((self.low - shift) / scale, (self.high - shift) / scale)


def moons(arc_points: int = 2000) -> list[GaussianMixture]:
    """The two moons of datasets.moons in closed form, to any accuracy: each half circle as
    arc_points Gaussians of its noise (0.03, then scaled by (2, 3)) at even angles, the upper
    moon first; arc_points = 2000 puts them 0.0016 apart, 1/20 of the noise."""
    angle = (torch.arange(arc_points, dtype=torch.float64) + 0.5) / arc_points * np.pi
    upper = torch.stack((angle.cos(), angle.sin()), 1)  # (K, 2)
    lower = torch.stack((1 - angle.cos(), 0.5 - angle.sin()), 1)
    scale = torch.tensor([2.0, 3.0], dtype=torch.float64)
    to_ours = lambda xy: (xy + 0.3) * scale - 1  # noqa: E731  as datasets.moons
    return [
        GaussianMixture(torch.ones(arc_points), to_ours(arc), 0.03 * scale)
        for arc in (upper, lower)
    ]


def circle(radii: int = 12, angles: int = 24) -> GaussianMixture:
    """datasets.circle in closed form, to a fine approximation: 17 clusters (the directions of a
    5 x 5 grid, weighted by how many grid points share each, and the centre), each a disk of
    radius 0.09 whose radius is uniform (not its area). Each disk is radii x angles Gaussians at
    the midpoints of even steps in radius and angle, of std half a radial step (0.004)."""
    grid = torch.arange(-2, 3, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)  # (25, 2)
    norms = points.norm(dim=1, keepdim=True)
    directions, counts = torch.unique(
        (points / norms.clamp_min(1e-10)).round(decimals=9), dim=0, return_counts=True
    )  # 16 directions on the ring and (0, 0), each with its share of the 25 grid points
    r = (torch.arange(radii, dtype=torch.float64) + 0.5) / radii * 0.09
    theta = (torch.arange(angles, dtype=torch.float64) + 0.5) / angles * 2 * np.pi
    disk = (r[:, None, None] * torch.stack((theta.cos(), theta.sin()), -1)).reshape(-1, 2)
    means = (3 * directions[:, None, :] + disk[None]).reshape(-1, 2)  # (17 * radii * angles, 2)
    weights = counts.double().repeat_interleave(len(disk))
    return GaussianMixture(weights, means, torch.full((2,), 0.045 / radii, dtype=torch.float64))


def datasaurus(shape: str, data_dir: str | None = None) -> GaussianMixture:
    """A Datasaurus shape in closed form: its 142 rows, equally likely, plus Gaussian jitter
    (datasets.datasaurus), mapped to our units."""
    rows = datasets.datasaurus_rows(shape, data_dir)  # (142, 2)
    scale = datasets.datasaurus_units(np.ones(2)) - datasets.datasaurus_units(np.zeros(2))
    return GaussianMixture(
        np.ones(len(rows)), datasets.datasaurus_units(rows), datasets.DATASAURUS_JITTER * scale
    )


def empirical(points: np.ndarray) -> GaussianMixture:
    """The distribution that puts mass 1/m on each of m points (m, 2).

    Its D at low noise snaps y onto the nearest stored point: a sampler fed it reproduces
    the stored points, the memorisation a network that learnt it perfectly would show."""
    return GaussianMixture(np.ones(len(points)), points, np.zeros(2))


def class_mixtures(dataset: datasets.Dataset, data_dir: str | None = None) -> list:
    """The true distribution of each class of `dataset` and, last, of the whole dataset: a
    Datasaurus shape (or a list of them), moons, line or circle in closed form, else an
    empirical one (a file's training rows, or EMPIRICAL_POINTS fresh draws of a list)."""
    if not dataset.is_file and dataset.name in CLOSED_FORMS:
        return CLOSED_FORMS[dataset.name]()
    names = dataset.name.split(",")
    if not dataset.is_file and all(name in datasets.DATASAURUS_SHAPES for name in names):
        shapes = [datasaurus(datasets.DATASAURUS_SHAPES[name], data_dir) for name in names]
        # the classes in equal shares (datasets._mixture)
        return shapes if len(shapes) == 1 else shapes + [_whole(shapes)]
    if dataset.is_file:
        points, labels = dataset.train_set()
    else:
        points, labels = dataset.draw(EMPIRICAL_POINTS, EMPIRICAL_SEED)
    per_class = [empirical(points[labels == k]) for k in range(len(dataset.classes))]
    return per_class + [empirical(points)]


def _whole(parts: list[GaussianMixture]) -> GaussianMixture:
    """The mixture of parts in equal shares."""
    return GaussianMixture(
        torch.cat([part.log_weights.exp() for part in parts]),
        torch.cat([part.means for part in parts]),
        torch.cat([part.var.sqrt() for part in parts]),
    )


# The generators of datasets.py written as densities: one per class, then the whole.
CLOSED_FORMS = {
    "moons": lambda: moons() + [_whole(moons())],
    "line": lambda: [
        UniformBox([-2.0, -4.0], [2.0, 4.0])
    ],  # datasets.line: U(-0.5, 0.5) x U(-1, 1), times 4
    "circle": lambda: [circle()],
}


class ExactDenoiser(nn.Module):
    """D(x, sigma, c) -> E[x_0 | x] (B, 2) for x (B, 2) = x_0 + sigma eps, sigma (B,), c (B,) or
    None: what every method's network is trained to give, here exact, so it takes the network's
    place in any sampler (ddpm.guided_D).

    mixtures: one per class, then the whole distribution, which is also classifier-free
    guidance's null class (index num_classes)."""

    def __init__(self, mixtures: list):
        super().__init__()
        self.mixtures = nn.ModuleList(mixtures)
        self.num_classes = len(mixtures) - 1

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor | None = None):
        c = torch.full_like(sigma, self.num_classes, dtype=torch.long) if c is None else c
        x_0 = torch.empty_like(x, dtype=torch.float64)
        for k in c.unique().tolist():
            rows = c == k
            x_0[rows] = self.mixtures[k].denoise(x[rows], sigma[rows])
        return x_0.to(x.dtype)


def denoiser_of(dataset: datasets.Dataset, data_dir, shift, scale) -> ExactDenoiser:
    """The exact denoiser of a dataset's classes, in the units a run trains in."""
    mixtures = class_mixtures(dataset, data_dir)
    return ExactDenoiser([mixture.standardised(shift, scale) for mixture in mixtures])
