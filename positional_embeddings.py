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
# the typical gap between neighbouring training points. The dino's 8000 points in 142 dots sit
# 0.0017 std apart: scale 99, which drew its dots as 200 did (seed 0); a smooth Gaussian's 8000
# points 0.016 apart: scale 10, where 200 roughened its density (KL(data || model) 0.015 nats
# against 0.16 at seed 0; figures.py --likelihood). Half as many gaps (twice the scale) left the
# KL of the ring of Gaussians at 0.09 and the circle's at 0.45.
WAVELENGTH_GAPS = 37.0


def fourier_scale(points: np.ndarray) -> float:
    """The input_scale for training points (m, 2): 2 pi / (WAVELENGTH_GAPS * gap), with gap the
    median distance from a point to its nearest neighbour, each axis divided by its std: units
    that do not change when the data is shifted or stretched, and about those EDM's network sees
    (c_in x ~ x / sigma_data at low noise); repeated points count once."""
    z = np.unique(np.asarray(points, dtype=np.float64), axis=0)  # (m', 2)
    z = (z - z.mean(0)) / z.std(0)
    gap = float(np.median(cKDTree(z).query(z, 2)[0][:, 1]))  # column 0: the point itself
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
