"""Embeddings that turn a scalar (a coordinate or a timestep) into a feature vector.

Each embedding maps a (B,) tensor to (B, out_dim), the directional one a (B, 2) point. The
sinusoidal one is the Transformer's (Vaswani et al. 2017, sec. 3.5), used by Ho et al. 2020 for
timesteps; giving it to the x and y coordinates too lets a small MLP fit sharp 2D shapes
(Tancik et al. 2020, "Fourier features"), and the directional one's waves across the plane
sharper still.
"""

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn


class SinusoidalEmbedding(nn.Module):
    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        if size < 4 or size % 2:
            raise ValueError(f"sinusoidal embedding size must be even and at least 4, got {size}")
        half = size // 2
        # Geometric frequencies from 1 down to 1/10000 (Vaswani et al. 2017, sec. 3.5).
        self.register_buffer(
            "freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        )
        self.scale = scale
        self.out_dim = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x * self.scale)[:, None] * self.freqs  # (B, size/2)
        return torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)  # (B, size)


class DirectionalEmbedding(nn.Module):
    """Fourier features of the 2D point itself (Tancik et al. 2020), not of x and y apart: sin
    and cos of k . (x, y) for `size` wave vectors k, whose lengths run geometrically from scale
    down to scale / 400, each along its own direction (golden-ratio angles in [0, pi)). One layer
    can then draw detail along any direction. (B, 2) -> (B, 2 size): as wide as the sinusoidal
    embeddings of x and y together."""

    def __init__(self, size: int, scale: float = 1.0, frequency_range: float = 400.0):
        super().__init__()
        freqs = scale * torch.exp(-math.log(frequency_range) * torch.arange(size) / (size - 1))
        angles = (torch.arange(size) * (math.sqrt(5) - 1) / 2 % 1.0) * math.pi  # (size,)
        wave_vectors = torch.stack((torch.cos(angles), torch.sin(angles))) * freqs  # (2, size)
        self.register_buffer("wave_vectors", wave_vectors)
        self.out_dim = 2 * size

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        phases = xy @ self.wave_vectors  # (B, size)
        return torch.cat((torch.sin(phases), torch.cos(phases)), dim=-1)  # (B, 2 size)


# The Fourier scale of --input_scale auto, from the data: the finest wave spans this many times
# the data's typical gap, the geometric mean over k = 1, 2, 4, ..., 512 of the median distance to
# the k-th nearest neighbour over sqrt(k) (in stds). On smooth 2D data every term is about the
# nearest-neighbour gap (the k-th distance grows as sqrt(k)): a Gaussian of 8000 points gets 10,
# a ring of 8 Gaussians 16 (KL(data || model) 0.016 and 0.052 nats, seeds 0-2; 0.14 and 0.27 at
# a fixed 200, seed 0). The dino's 142 dots of ~56 points hold the small k to a dot's size while
# k >= 64 reach across dots: 40, where the nearest gap alone gave 99 (KL 0.691 against 0.780;
# issue #32, RESULTS.md "The likelihood on every dataset").
WAVELENGTH_GAPS = 33.8
NEIGHBOUR_RANKS = 2 ** np.arange(10)  # k = 1, 2, 4, ..., 512
# The medians are taken over at most this many points (a fixed draw of them; every point of the
# built-in shapes), each against all: 200 000 points cost 0.7 s, not 11.
QUERY_POINTS = 8000


def fourier_scale(points: np.ndarray) -> float:
    """The input_scale for training points (m, 2): 2 pi / (WAVELENGTH_GAPS * gap), with gap the
    geometric mean over k in NEIGHBOUR_RANKS (those below the number of points) of the median
    distance from a point to its k-th nearest neighbour, divided by sqrt(k); each axis divided by
    its std: units that do not change when the data is shifted or stretched, and about those
    EDM's network sees (c_in x ~ x / sigma_data at low noise); repeated points count once, and
    the medians are over QUERY_POINTS of them at most."""
    z = np.unique(np.asarray(points, dtype=np.float64), axis=0)  # (m', 2)
    z = (z - z.mean(0)) / z.std(0)
    ranks = NEIGHBOUR_RANKS[NEIGHBOUR_RANKS < len(z)]
    rng = np.random.default_rng(0)
    queries = z if len(z) <= QUERY_POINTS else z[rng.choice(len(z), QUERY_POINTS, replace=False)]
    # (q, ranks): column 0 is the point itself; workers=-1, every core (0.37 s on one, dino)
    distances = cKDTree(z).query(queries, ranks + 1, workers=-1)[0]
    gap = math.exp(np.mean(np.log(np.median(distances, axis=0) / np.sqrt(ranks))))
    return 2 * math.pi / (WAVELENGTH_GAPS * gap)


class LinearEmbedding(nn.Module):
    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        self.size, self.scale, self.out_dim = size, scale, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.size * self.scale)[:, None]  # (B, 1)


class LearnableEmbedding(nn.Module):
    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        self.size, self.out_dim = size, size
        self.linear = nn.Linear(1, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, None] / self.size)  # (B, size)


class IdentityEmbedding(nn.Module):
    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        self.out_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, None]  # (B, 1)


class ZeroEmbedding(nn.Module):
    """Hides the input from the model: the ablation for "does the MLP need to know t?"."""

    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        self.out_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)[:, None]  # (B, 1)


EMBEDDINGS = {
    "sinusoidal": SinusoidalEmbedding,
    "linear": LinearEmbedding,
    "learnable": LearnableEmbedding,
    "identity": IdentityEmbedding,
    "zero": ZeroEmbedding,
}
TIME_EMBEDDINGS = ("sinusoidal", "learnable", "linear", "zero")
INPUT_EMBEDDINGS = ("directional", "sinusoidal", "learnable", "linear", "identity")


def make_embedding(kind: str, size: int, scale: float = 1.0) -> nn.Module:
    return EMBEDDINGS[kind](size, scale)
