import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

import datasets
import ddpm
import options
from positional_embeddings import (
    EMBEDDINGS,
    NEIGHBOUR_RANKS,
    QUERY_POINTS,
    WAVELENGTH_GAPS,
    DirectionalEmbedding,
    SinusoidalEmbedding,
    fourier_scale,
    make_embedding,
)

EXPECTED_WIDTH = {"sinusoidal": 16, "learnable": 16, "linear": 1, "identity": 1, "zero": 1}


@pytest.mark.parametrize("kind", list(EMBEDDINGS))
def test_every_embedding_maps_a_batch_of_scalars_to_its_width(kind):
    embedding = make_embedding(kind, 16, scale=25.0)
    out = embedding(torch.randn(7))
    assert out.shape == (7, EXPECTED_WIDTH[kind]) == (7, embedding.out_dim)


def test_sinusoidal_embedding_is_sin_then_cos_of_geometric_frequencies():
    out = SinusoidalEmbedding(8, scale=2.0)(torch.tensor([0.5]))[0]
    freqs = [10000 ** (-i / 3) for i in range(4)]
    expected = [math.sin(1.0 * f) for f in freqs] + [math.cos(1.0 * f) for f in freqs]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_directional_embedding_is_sin_then_cos_of_waves_across_the_plane():
    embedding = DirectionalEmbedding(5, scale=200.0)
    K = embedding.wave_vectors  # (2, 5): one wave vector per column
    lengths = K.norm(dim=0)
    assert torch.allclose(lengths, 200.0 * 400.0 ** (-torch.arange(5) / 4))  # 200 down to 0.5
    angles = torch.atan2(K[1], K[0]) % math.pi
    golden = (torch.arange(5) * (math.sqrt(5) - 1) / 2 % 1) * math.pi
    assert torch.allclose(angles, golden, atol=1e-5)
    assert (angles.sort().values.diff() > 0.3).all()  # five directions, well apart
    xy = torch.tensor([[0.3, -0.2]])
    phases = [0.3 * K[0, k] - 0.2 * K[1, k] for k in range(5)]
    expected = [math.sin(p) for p in phases] + [math.cos(p) for p in phases]
    assert torch.allclose(embedding(xy)[0], torch.tensor(expected), atol=1e-4)


def test_sinusoidal_embedding_refuses_an_odd_size():
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(15)


@pytest.mark.parametrize("time_embedding", ["sinusoidal", "learnable", "linear", "zero"])
@pytest.mark.parametrize(
    "input_embedding", ["directional", "sinusoidal", "learnable", "linear", "identity"]
)
def test_the_denoiser_predicts_one_eps_per_point(time_embedding, input_embedding):
    model = ddpm.MLP(
        hidden_size=32,
        hidden_layers=2,
        embedding_size=16,
        time_embedding=time_embedding,
        input_embedding=input_embedding,
    )
    assert model(torch.randn(5, 2), torch.randint(0, 50, (5,))).shape == (5, 2)


def test_the_data_derived_scale_on_a_grid_is_between_one_step_and_sqrt_pi_steps():
    # A 40 x 40 grid of unit steps, in stds (sqrt(1599 / 12) per axis): the nearest neighbour is
    # a step away, the k-th of an inner point about sqrt(k / pi) steps for large k, so the gap
    # lies between 1 / sqrt(pi) and 1 step
    x, y = np.meshgrid(np.arange(40.0), np.arange(40.0))
    grid = np.stack((x.ravel(), y.ravel()), 1)  # (1600, 2)
    one_step = 2 * math.pi * math.sqrt(1599 / 12) / WAVELENGTH_GAPS  # the scale of a gap of 1
    scale = fourier_scale(grid)
    assert one_step < scale < math.sqrt(math.pi) * one_step
    # shifted and stretched per axis, or with every point twice: the same scale
    assert fourier_scale(grid * [7.0, -0.5] + [100.0, 3.0]) == pytest.approx(scale, rel=1e-9)
    assert fourier_scale(np.concatenate((grid, grid))) == pytest.approx(scale, rel=1e-9)


def test_the_data_derived_scale_is_lower_on_dots_than_the_nearest_gap_says():
    # the dino's 142 jittered dots near 40 (the nearest gap alone: near 100); 8000 draws of a
    # Gaussian near 10
    dino = datasets.load("dino").train_set()[0]
    gaussian = np.random.default_rng(0).normal(size=(8000, 2))
    assert 30 < fourier_scale(dino) < 50 and 5 < fourier_scale(gaussian) < 15


def test_on_many_points_the_scale_takes_its_medians_over_a_sample_of_them():
    # 30 000 draws of a Gaussian: the medians over QUERY_POINTS of them, against every point's
    # own k-th neighbours (the rule over all of them, computed here)
    z = np.random.default_rng(1).normal(size=(30_000, 2))
    ranks = NEIGHBOUR_RANKS
    z_std = (z - z.mean(0)) / z.std(0)
    medians = np.median(cKDTree(z_std).query(z_std, ranks + 1)[0], axis=0)
    gap = math.exp(np.mean(np.log(medians / np.sqrt(ranks))))
    assert QUERY_POINTS < len(z)
    assert fourier_scale(z) == pytest.approx(2 * math.pi / (WAVELENGTH_GAPS * gap), rel=0.02)


def test_a_model_needs_autos_number_first():
    config = vars(ddpm.build_parser().parse_args([]))  # --input_scale auto, as parsed
    with pytest.raises(ValueError, match="resolve_input_scale"):
        ddpm.make_model(config)
    line = datasets.load("line")
    scale = round(fourier_scale(line.train_set()[0]), 1)
    model = ddpm.make_model(options.resolve_input_scale(config, line))
    assert model.embed_xy.wave_vectors.norm(dim=0).max().item() == pytest.approx(scale)
