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
ROWS_PER_CHUNK = 2**21  # bounds the (rows, K, 2) intermediates at ~32 MB each


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
        return self._log_joint(x, sigma2).logsumexp(dim=1)

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
    Datasaurus shape (or a list of them) in closed form, else an empirical one (a file's own
    rows, or EMPIRICAL_POINTS fresh draws)."""
    names = dataset.name.split(",")
    if not dataset.is_file and all(name in datasets.DATASAURUS_SHAPES for name in names):
        shapes = [datasaurus(datasets.DATASAURUS_SHAPES[name], data_dir) for name in names]
        if len(shapes) == 1:
            return shapes
        # the classes in equal shares (datasets._mixture)
        whole = GaussianMixture(
            torch.cat([shape.log_weights.exp() for shape in shapes]),
            torch.cat([shape.means for shape in shapes]),
            torch.cat([shape.var.sqrt() for shape in shapes]),
        )
        return shapes + [whole]
    if dataset.is_file:
        points, labels = dataset.train_set()
    else:
        points, labels = dataset.draw(EMPIRICAL_POINTS, EMPIRICAL_SEED)
    per_class = [empirical(points[labels == k]) for k in range(len(dataset.classes))]
    return per_class + [empirical(points)]


class ExactDenoiser(nn.Module):
    """D(x, sigma, c) -> E[x_0 | x] (B, 2) for x (B, 2) = x_0 + sigma eps, sigma (B,), c (B,) or
    None: what every method's network is trained to give, here exact, so it takes the network's
    place in any sampler (ddpm.denoise).

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
