"""discrete.py: tokens, the masked-diffusion loss, the unmasking sampler and the exact likelihoods,
checked against brute force on tiny vocabularies with table models (no network)."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR
from torch import nn

import ddpm
import discrete
import likelihood
import options
import run_folder


class TableModel(nn.Module):
    """Any model: fixed random logits (L, K) for each of the (K + 1)^L sentences z."""

    num_classes, digits = 0, 1

    def __init__(self, K: int, L: int, seed: int = 0):
        super().__init__()
        self.vocab, self.length, self.bins = K, L, K
        generator = torch.Generator().manual_seed(seed)
        self.table = 2 * torch.randn((K + 1) ** L, L, K, generator=generator)

    def forward(self, z, c=None):
        index = (z * (self.vocab + 1) ** torch.arange(self.length)).sum(1)  # (n,)
        return self.table[index]


class JointModel(TableModel):
    """A consistent model: the exact conditionals p(x^i | revealed tokens) of a joint p (K^L,)."""

    def __init__(self, K: int, L: int, seed: int = 0):
        super().__init__(K, L, seed)
        generator = torch.Generator().manual_seed(seed)
        self.p = torch.rand(K**L, generator=generator, dtype=torch.float64) ** 3
        self.p /= self.p.sum()
        self.states = torch.tensor(list(itertools.product(range(K), repeat=L)))  # (K^L, L)

    def forward(self, z, c=None):
        fits = ((z[:, None] == self.states) | (z[:, None] == self.vocab)).all(-1)  # (n, K^L)
        onehots = nn.functional.one_hot(self.states.T, self.vocab).double()  # (L, K^L, K)
        return torch.einsum("ns,lsk->nlk", fits * self.p, onehots).log()


def log_p_of(model, x_0, given: list[int]) -> torch.Tensor:
    """(n, L) log p(x_0^i | the tokens of x_0 at `given`) of every i, straight from the model."""
    z = torch.full_like(x_0, model.vocab)
    z[:, given] = x_0[:, given]
    return discrete.subs(model(z).double(), z).gather(-1, x_0[..., None])[..., 0]


def all_sentences(K: int, L: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=L)))  # (K^L, L)


@pytest.mark.parametrize("K, L", [(4, 2), (2, 4)])
def test_nelbo_is_the_integral_over_t_of_the_weighted_cross_entropy(K, L):
    # Brute force: at each t, the mean over every mask (probability t^k (1 - t)^(L - k)) of
    # (1/t) x the cross-entropy of the masked tokens, integrated by Gauss-Legendre (exact: the
    # integrand is a polynomial of degree L - 1 in t).
    model, x_0 = TableModel(K, L), all_sentences(K, L)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    brute = torch.zeros(len(x_0), dtype=torch.float64)
    for node, weight in zip((nodes + 1) / 2, weights / 2):
        for masked in itertools.product([0, 1], repeat=L):
            k = sum(masked)
            given = [i for i in range(L) if not masked[i]]
            cross_entropy = -(log_p_of(model, x_0, given) * torch.tensor(masked)).sum(1)
            brute += weight * node ** (k - 1) * (1 - node) ** (L - k) * cross_entropy
    table = discrete.conditionals(model, x_0)
    torch.testing.assert_close(discrete.nelbo(table), brute)


def test_the_training_loss_estimates_the_nelbo_without_bias():
    model, x_0 = TableModel(3, 2), torch.tensor([[0, 2], [1, 1]])
    exact = discrete.nelbo(discrete.conditionals(model, x_0)).mean().item()
    torch.manual_seed(0)
    batch = x_0.repeat(100_000, 1)
    losses = [discrete.masked_loss(model, batch).item() for _ in range(4)]
    assert np.mean(losses) == pytest.approx(exact * (1 - discrete.T_MIN), rel=0.02)


@pytest.mark.parametrize("K, L, order", [(4, 2, "any"), (2, 4, "any"), (2, 4, "blocks")])
def test_the_sampler_likelihood_is_the_mean_over_its_orders(K, L, order):
    model, x_0 = TableModel(K, L, seed=1), all_sentences(K, L)
    blocks = discrete.blocks_of(model, order)
    orders = [
        sigma
        for sigma in itertools.permutations(range(L))
        if all(blocks[a] <= blocks[b] for a, b in zip(sigma, sigma[1:]))
    ]
    assert len(orders) == (math.factorial(L) if order == "any" else 4)
    products = [
        sum(log_p_of(model, x_0, list(sigma[:j]))[:, sigma[j]] for j in range(L)).exp()
        for sigma in orders
    ]
    brute = torch.stack(products).mean(0).log()
    table = discrete.conditionals(model, x_0)
    torch.testing.assert_close(discrete.sampler_log_likelihood(table, blocks), brute)
    if order == "any":  # the NELBO is the mean NLL of all L! orders: Jensen
        assert (discrete.nelbo(table) >= -brute - 1e-9).all()


@pytest.mark.parametrize("L", [2, 4])
def test_a_consistent_model_has_nelbo_and_likelihood_equal_to_its_joint(L):
    model = JointModel(3 if L == 2 else 2, L)
    table = discrete.conditionals(model, model.states)
    torch.testing.assert_close(discrete.nelbo(table), -model.p.log())
    for order in discrete.ORDERS:
        log_p = discrete.sampler_log_likelihood(table, discrete.blocks_of(model, order))
        torch.testing.assert_close(log_p, model.p.log())


def empirical(model, z: torch.Tensor) -> torch.Tensor:
    """How often each sentence (in all_sentences' order) occurs in z (n, L)."""
    index = (z * model.vocab ** torch.arange(model.length - 1, -1, -1)).sum(1)
    return torch.bincount(index, minlength=model.vocab**model.length).double() / len(z)


@pytest.mark.parametrize("K, L, order", [(3, 2, "any"), (2, 4, "blocks"), (2, 4, "any")])
def test_the_sampler_draws_from_its_exact_likelihood(K, L, order):
    model, n = TableModel(K, L, seed=2), 40_000
    generator = torch.Generator().manual_seed(0)
    *_, (t, z) = discrete.unmasking(model, n, generator, order=order)
    assert t == 0 and (z < K).all()
    table = discrete.conditionals(model, all_sentences(K, L))
    p = discrete.sampler_log_likelihood(table, discrete.blocks_of(model, order)).exp()
    assert (empirical(model, z) - p).abs().max() < 4 * (0.25 / n) ** 0.5


def test_one_step_draws_x_and_y_independently():
    model, n = TableModel(3, 2, seed=3), 40_000
    *_, (_, z) = discrete.unmasking(model, n, torch.Generator().manual_seed(0), num_steps=1)
    marginals = log_p_of(model, all_sentences(3, 2), []).exp()  # (9, 2): p(x) and p(y)
    assert (empirical(model, z) - marginals.prod(1)).abs().max() < 4 * (0.25 / n) ** 0.5


@pytest.mark.parametrize("L, steps, order", [(2, 2, "any"), (4, 4, "blocks"), (4, 2, "blocks")])
def test_the_sampler_reveals_evenly_and_coarse_first(L, steps, order):
    model = TableModel(2, L)
    chain = list(discrete.unmasking(model, 500, torch.Generator().manual_seed(0), steps, order))
    assert [t for t, _ in chain] == pytest.approx(np.linspace(1, 0, steps + 1))
    revealed = torch.stack([(z < model.vocab) for _, z in chain])  # (steps + 1, n, L)
    counts = revealed.sum(-1)  # (steps + 1, n)
    assert (counts == torch.arange(steps + 1)[:, None] * (L // steps)).all()
    if order == "blocks":  # after the first half of the tokens, the coarse block is whole
        assert revealed[steps // 2][:, :2].all()


def test_tokens_round_trip_and_two_digits_name_the_same_bins():
    u = torch.rand(1000, 2, generator=torch.Generator().manual_seed(0))
    for digits in (1, 2):
        z = discrete.tokenize(u, 16, digits)
        assert z.shape == (1000, 2 * digits) and (z < discrete.digit_base(16, digits)).all()
        back = discrete.detokenize(z, 16, digits, torch.Generator().manual_seed(1))
        assert ((back * 16).floor() == (u * 16).floor()).all()  # decoded within its own bin
    coarse_fine = discrete.tokenize(u, 16, 2)
    assert (discrete.bin_index(coarse_fine, 16, 2) == discrete.tokenize(u, 16, 1)).all()
    # dequantisation fills the bin evenly
    z = torch.zeros(20_000, 2, dtype=torch.long)
    spread = discrete.detokenize(z, 4, 1, torch.Generator().manual_seed(2)) * 4
    assert spread.min() >= 0 and spread.max() < 1 and spread.mean() == pytest.approx(0.5, abs=0.01)


def test_antithetic_times_cover_the_interval_evenly():
    t = discrete.antithetic_t(100).sort().values
    assert t.min() >= discrete.T_MIN and t.max() <= 1
    torch.testing.assert_close(t.diff(), torch.full((99,), (1 - discrete.T_MIN) / 100))


def test_the_box_maps_the_data_inside_the_unit_square_with_padding():
    points = torch.tensor([[0.0, -1.0], [2.0, 3.0]])
    shift, scale = discrete.box(points)
    u = (points - shift) / scale
    torch.testing.assert_close(u, torch.tensor([[1, 1], [21, 21]]) / 22)  # PAD = 0.05 of 1.1


TINY = ["--num_epochs", "2", "--hidden_size", "16", "--embedding_size", "8", "--bins", "16"]
TINY += ["--eval_batch_size", "200", "--save_images_step", "1"]


def test_its_own_defaults_are_not_options_typed():
    # discrete.py's set_defaults (128-wide embeddings, 60 epochs) must not count as typed, or a
    # checkpoint of another width is refused as if the user had asked for 128
    parser = discrete.build_parser()
    assert options.explicit_options(parser, []) == {}
    assert options.explicit_options(parser, ["--embedding_size", "16"]) == {"embedding_size": 16}
    assert parser.parse_args([]).embedding_size == 128  # and the parser keeps them


def test_a_tiny_run_writes_its_folder_and_samples_again(tmp_path, capsys):
    out = ["--exps_dir", str(tmp_path)]
    assert discrete.main([*TINY, *out, "--dataset", "moons", "--digits", "2"]) == 0
    run = tmp_path / "discrete"
    assert {"model.pth", "metrics.json", "frames.npy", "config.json"} <= set(
        p.name for p in run.iterdir()
    )
    assert (run / "images").is_dir()
    printed = capsys.readouterr().out
    assert "NLL" in printed and "per class" in printed  # moons: its two classes
    again = ["--checkpoint", str(run / "model.pth"), "--num_epochs", "0"]
    again += [
        "--experiment_name",
        "again",
        "--num_inference_steps",
        "1",
        "--eval_batch_size",
        "200",
    ]
    assert discrete.main([*again, *out]) == 0  # bins and digits come from the checkpoint
    assert np.load(tmp_path / "again" / "frames.npy").shape == (1, 200, 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "flow"], "--method is an option of ddpm.py"),
        (["--no_stable_target"], "--no_stable_target is an option of ddpm.py"),
        (["--digits", "2", "--bins", "200"], "--bins must be a square"),
        (["--bins", "0"], "must be positive"),
        (["--bins", "1"], "--bins must be at least 2"),
    ],
)
def test_bad_input_ends_in_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        discrete.main([*args, "--exps_dir", str(tmp_path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_run_of_one_program_is_refused_by_the_other_in_one_line(tmp_path, capsys):
    out = ["--exps_dir", str(tmp_path)]
    assert discrete.main([*TINY, *out, "--dataset", "line"]) == 0
    assert ddpm.main([*TINY[:2], *out, "--dataset", "line", "--experiment_name", "ddpm"]) == 0
    capsys.readouterr()
    discrete_run, ddpm_run = tmp_path / "discrete", tmp_path / "ddpm"
    new = [*out, "--experiment_name", "new"]
    uses = [
        (ddpm.main, ["--checkpoint", str(discrete_run / "model.pth"), *new], "discrete.py"),
        (ddpm.main, [*out, "--experiment_name", "discrete", "--resume"], "discrete.py"),
        (ddpm.main, ["--reflow", str(discrete_run), *new], "discrete.py"),
        (likelihood.main, [str(discrete_run)], "discrete.py"),
        (discrete.main, ["--checkpoint", str(ddpm_run / "model.pth"), *new], "ddpm.py"),
    ]
    for main, args, program in uses:
        with pytest.raises(SystemExit) as stop:
            main(args)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1, error
        assert f"that checkpoint is a {program} run's: use it with {program}" in error


def test_help_names_the_token_options_and_hides_ddpms():
    help_text = discrete.build_parser().format_help()
    assert "--bins" in help_text and "--digits" in help_text and "--order" in help_text
    assert "--sigma_max" not in help_text and "--method" not in help_text
    assert (PROJECT_DIR / "discrete.py").is_file()


def test_ctrl_c_saves_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    run = [*TINY, "--num_epochs", "6", "--save_images_step", "2", "--exps_dir", str(tmp_path)]
    # as if Ctrl-C came in the first epoch (the signal itself: test_robustness.py)
    monkeypatch.setattr(run_folder.StopOnCtrlC, "requested", True)
    with pytest.raises(SystemExit) as stop:
        discrete.main([*run, "--experiment_name", "run"])
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted after epoch 1 of 6" in err and "python discrete.py" in err
    monkeypatch.undo()
    assert discrete.main([*run, "--experiment_name", "run", "--resume"]) == 0
    assert discrete.main([*run, "--experiment_name", "whole"]) == 0
    for output in ["loss.npy", "frames.npy"]:
        assert np.array_equal(
            np.load(tmp_path / "run" / output), np.load(tmp_path / "whole" / output)
        )
