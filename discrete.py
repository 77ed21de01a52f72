"""Discrete diffusion on 2D points: masked diffusion of tokenised points (MDLM, Sahoo et al. 2024;
MD4, Shi et al. 2024), to which SEDD's absorbing form reduces (Lou et al. 2024; Ou et al. 2024).

Quantise x and y into V bins and a point is a sentence of two tokens. The forward process hides
tokens behind a MASK token; the network learns to fill in what is hidden from what is not; the
sampler starts from all-MASK and reveals the tokens, one per step by default. It reads top to
bottom like ddpm.py: tokens -> forward process and loss -> network -> sampler -> exact likelihood
-> run and CLI (ddpm.py's training loop, options, run folder and scores, reused).

    python discrete.py --dataset dino
    python discrete.py --dataset dino --digits 2 --experiment_name discrete_L4
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import checkpoints
import datasets
import ddpm
import evaluate
import likelihood
import options
import plots
import run_folder

# ----------------------------------------------------------------------------- 1. Tokens
# Each coordinate goes into V bins over the training data's box, padded by PAD of its range on
# every side so that held-out points fall inside. With --digits 2 a bin index k is written as two
# digits in base K = sqrt(V), k = K k_coarse + k_fine, and a point is the sentence
# (x_coarse, y_coarse, x_fine, y_fine): L = 4 tokens of K values each. MASK is token K, the one
# after the digits (K = V with one digit). A sample is decoded uniformly within its bin.
PAD = 0.05


def box(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) (2,) each: the padded box's low corner and size, so that (x - shift) / scale
    maps the box to [0, 1]^2 (ddpm.py's training units)."""
    low, high = points.min(0).values, points.max(0).values
    return low - PAD * (high - low), (1 + 2 * PAD) * (high - low)


def digit_base(bins: int, digits: int) -> int:
    """K, the values of one token: V itself, or sqrt(V) with two digits."""
    return bins if digits == 1 else math.isqrt(bins)


def tokenize(u: torch.Tensor, bins: int, digits: int) -> torch.Tensor:
    """Points u (n, 2) in [0, 1]^2 -> tokens (n, 2 * digits); points outside go to the edge bin."""
    k = (u * bins).floor().long().clamp(0, bins - 1)  # (n, 2): the bin of x and of y
    if digits == 1:
        return k
    K = digit_base(bins, digits)
    return torch.cat((k // K, k % K), dim=1)  # the coarse block, then the fine block


def bin_index(z: torch.Tensor, bins: int, digits: int) -> torch.Tensor:
    """Tokens (n, L) -> the bin (n, 2) of x and of y."""
    return z if digits == 1 else z[:, :2] * digit_base(bins, digits) + z[:, 2:]


def detokenize(z: torch.Tensor, bins: int, digits: int, generator) -> torch.Tensor:
    """Tokens (n, L) -> points (n, 2) in [0, 1]^2, uniform within their bins (dequantisation)."""
    k = bin_index(z, bins, digits).double()
    return (k + torch.rand(k.shape, generator=generator, dtype=torch.float64)) / bins


# ----------------------------------------------------------------------------- 2. Forward process
# MDLM / MD4 in continuous time with alpha_t = 1 - t: each token of x_0 is independently kept with
# probability alpha_t and replaced by MASK otherwise, q(z_t | x_0) = Cat(alpha_t x_0 + (1 - alpha_t)
# m) per token, m the MASK token (Sahoo et al. 2024; Shi et al. 2024). Once masked a token stays
# masked, and the reverse process only unmasks.
#
# The loss. With the SUBS parameterisation (Sahoo et al. 2024) the network never
# predicts MASK (it has no MASK logit) and revealed tokens are copied, so the continuous-time
# NELBO is the cross-entropy of the masked tokens alone, weighted by alpha_t' / (1 - alpha_t) =
# -1/t (the continuous-time limit of Sahoo et al. 2024 and Shi et al. 2024):
#
#     NELBO = E_{t ~ U(0, 1)} E_{z_t} [ (1/t) sum_{l: z_t^l = MASK} -log p_theta(x_0^l | z_t) ]
#
# SEDD (Lou et al. 2024) learns instead the ratios p_t(y) / p_t(z_t) of the states y one jump away
# from z_t (the concrete score), by the denoising score entropy. On the absorbing graph a jump
# unmasks one token, and Ou et al. 2024 (RADD, Thm 1) show that the true ratio is a scalar of t
# times a conditional of the clean data: p_t(z_t with z^l := v) / p_t(z_t) = alpha_t / (1 -
# alpha_t) p_0(x^l = v | the unmasked tokens of z_t). Put in the score entropy, that form turns it
# into this same weighted cross-entropy (their Thm 2: score entropy -> t-DCE -> lambda-DCE), and
# shows why the network needs no time input: what it predicts depends only on which tokens are
# revealed. Ou et al. also show that the NELBO is the expected NLL of an any-order autoregressive
# model: section 5 computes both exactly.
T_MIN = 1e-3  # t in [T_MIN, 1]: the weight 1/t stays finite


def antithetic_t(n: int, device=None) -> torch.Tensor:
    """(n,) times in [T_MIN, 1], one uniform draw shifted by i/n (the low-discrepancy sampler of
    Kingma et al. 2021, which Sahoo et al. 2024 use too): the batch covers [T_MIN, 1] evenly."""
    u = (torch.rand(1, device=device) + torch.arange(n, device=device) / n) % 1
    return T_MIN + (1 - T_MIN) * u


def subs(logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SUBS: log p_theta (n, L, K) of each token given z (n, L); a revealed token is copied (log
    probability 0 on itself, -inf elsewhere), a masked one gets the network's distribution."""
    K = logits.shape[-1]
    revealed = (z < K)[..., None]  # (n, L, 1)
    copied = torch.full_like(logits, -math.inf).scatter(-1, z.clamp(max=K - 1)[..., None], 0.0)
    return torch.where(revealed, copied, logits.log_softmax(-1))


def masked_loss(model: nn.Module, x_0: torch.Tensor, c=None) -> torch.Tensor:
    """The NELBO above on a batch of tokens x_0 (B, L) (of classes c (B,)), one t per sentence."""
    t = antithetic_t(len(x_0), x_0.device)  # (B,)
    masked = torch.rand(x_0.shape, device=x_0.device) < t[:, None]  # (B, L): probability t each
    z_t = torch.where(masked, model.vocab, x_0)
    log_p = subs(model(z_t, c), z_t).gather(-1, x_0[..., None])[..., 0]  # (B, L); 0 where revealed
    return -(log_p.sum(1) / t).mean()


def loss_fn(model, method, u_0: torch.Tensor, c=None, cond_drop_prob=0.0, eps=None):
    """ddpm.train's objective: the points u_0 (B, 2) in [0, 1]^2 as tokens, masked_loss. Classes
    are hidden at random, as in ddpm.loss_fn, so that the null class learns p(x) (method and eps:
    ddpm's, unused)."""
    if c is not None:
        c = torch.where(torch.rand(len(c), device=c.device) < cond_drop_prob, model.num_classes, c)
    return masked_loss(model, tokenize(u_0, model.bins, model.digits), c)


# ----------------------------------------------------------------------------- 3. Network
class TokenMLP(nn.Module):
    """p_theta(x_0^l | z) for every position l: ddpm.py's MLP trunk (its residual blocks, built by
    ddpm.make_model) with its ends swapped, L token embeddings (and a class's) concatenated in,
    L x K logits out. No time input (RADD): what is revealed says all the model needs."""

    def __init__(self, config: dict, num_classes: int = 0):
        super().__init__()
        self.bins, self.digits = config["bins"], config["digits"]
        self.vocab, self.length = digit_base(self.bins, self.digits), 2 * self.digits  # K, L
        self.num_classes = num_classes  # class num_classes: the null class, "no class given"
        E, H = config["embedding_size"], config["hidden_size"]
        self.embed = nn.Embedding(self.length * (self.vocab + 1), E)  # a table per position
        self.embed_class = nn.Embedding(num_classes + 1, E) if num_classes else None
        self.net = ddpm.make_model(config).net  # Linear, activation, blocks, LayerNorm, Linear
        self.net[0] = nn.Linear((self.length + bool(num_classes)) * E, H)
        self.net[-1] = nn.Linear(H, self.length * self.vocab)

    def forward(self, z: torch.Tensor, c=None) -> torch.Tensor:
        """Tokens z (B, L), MASK = K where hidden -> logits (B, L, K)."""
        offsets = torch.arange(self.length, device=z.device) * (self.vocab + 1)  # table of each l
        features = self.embed(z + offsets).flatten(1)  # (B, L E)
        if self.num_classes:
            c = torch.full((len(z),), self.num_classes, device=z.device) if c is None else c
            features = torch.cat((features, self.embed_class(c)), dim=1)
        return self.net(features).view(len(z), self.length, self.vocab)


# ----------------------------------------------------------------------------- 4. Sampler
# Ancestral unmasking (the reverse process of Sahoo et al. 2024 and Shi et al. 2024): from t to
# s < t a still-masked token is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) =
# (t - s) / t, drawn from p_theta(x_0^l | z_t), and a revealed token stays. Equivalently each
# token has a reveal time tau ~ U(0, 1) and is drawn on the step that contains it. Drawn
# independently, two tokens can share a step even with N = L steps; we draw the L times one per
# stratum ((L - 1 - r) / L, (L - r) / L] of a random ranking r, which keeps each tau ~ U(0, 1)
# (so each token's reveal probability above), and on N = L even steps reveals exactly one token a
# step: an any-order autoregressive sampler, whose likelihood section 5 computes exactly. On
# fewer steps tokens are revealed together, each drawn from its own conditional: x and y drawn
# independently, which puts points off the data (the README's table). With --digits 2 and
# --order blocks the ranking puts the coarse block first: Block Diffusion's order (Arriola et al.
# 2025), block after block, masked diffusion within a block. The categorical draws are made in
# float64: in float32 they are measurably biased (Zheng et al. 2024, "Masked diffusion models are
# secretly time-agnostic masked models and exploit inaccurate categorical sampling").
ORDERS = ("blocks", "any")


def blocks_of(model: TokenMLP, order: str) -> torch.Tensor:
    """(L,) the block of each position: coarse 0, fine 1 (--order blocks), or all 0 (any order)."""
    block = torch.arange(model.length) // 2  # (x, y) of one digit form a block
    return block if order == "blocks" else torch.zeros_like(block)


@torch.inference_mode()
def unmasking(model: TokenMLP, n: int, generator, num_steps=None, order="blocks", c=None):
    """Yield (t, z (n, L)) from all-MASK at t = 1 down to t = 0 on num_steps (default L) even
    steps; c (n,): each sentence's class. A step that reveals nothing calls no network."""
    L, K, device = model.length, model.vocab, generator.device
    z = torch.full((n, L), K, device=device)
    key = torch.rand(n, L, generator=generator, device=device, dtype=torch.float64)
    rank = (key + blocks_of(model, order).to(device)).argsort(1).argsort(1)  # (n, L)
    u = torch.rand(n, L, generator=generator, device=device, dtype=torch.float64)
    tau = 1 - (rank + u) / L  # (n, L): reveal times, each U(0, 1)
    times = torch.linspace(1, 0, (num_steps or L) + 1, dtype=torch.float64).tolist()
    yield 1.0, z
    for t, s in zip(times[:-1], times[1:]):
        reveal = (tau > s) & (tau <= t)  # (n, L)
        if reveal.any():
            probs = subs(model(z, c).double(), z)[reveal].exp()  # (revealed, K), float64
            z = z.clone()
            z[reveal] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        yield s, z


def sample(model: TokenMLP, n: int, generator, **options) -> torch.Tensor:
    """n points (n, 2) in [0, 1]^2: the last tokens of unmasking, decoded within their bins."""
    *_, (_, z) = unmasking(model, n, generator, **options)
    return detokenize(z, model.bins, model.digits, generator)


# ----------------------------------------------------------------------------- 5. Likelihood
# For L tokens the NELBO is a finite sum: a set M of k masked tokens has probability t^k (1 -
# t)^(L - k), and int_0^1 (1/t) t^k (1 - t)^(L - k) dt = (k - 1)! (L - k)! / L!, so
#
#     NELBO = sum_{M nonempty} (k - 1)! (L - k)! / L! sum_{l in M} -log p(x^l | x outside M):
#
# for L = 2, 1/2 [-log p(x) - log p(y | x) - log p(y) - log p(x | y)], the mean NLL of the two
# orders; for L = 4, 15 subsets. The sampler of section 4 on N = L steps is an autoregressive
# model in a random order: its exact likelihood is the mean over the orders it draws of the
# products of conditionals, for L = 2 1/2 [p(x) p(y | x) + p(y) p(x | y)], at least exp(-NELBO)
# (Jensen). Both are of the tokens; divided by the bin area, a density in the data's units,
# comparable with likelihood.py's NLL of a continuous model.
def members(S: int, L: int) -> list[int]:
    """The positions in the set S, a bitmask of L bits."""
    return [i for i in range(L) if S >> i & 1]


def conditionals(model: TokenMLP, x_0: torch.Tensor, c=None) -> torch.Tensor:
    """(2^L - 1, n, L) float64: log p(x_0^i | the tokens of x_0 in S) for every proper subset S
    of the positions (a bitmask: bit i set, token i given), one network call each."""
    L, table = model.length, []
    for S in range(2**L - 1):
        given = torch.zeros(L, dtype=torch.bool, device=x_0.device)
        given[members(S, L)] = True
        z = torch.where(given, x_0, model.vocab)
        table.append(subs(model(z, c).double(), z).gather(-1, x_0[..., None])[..., 0])
    return torch.stack(table)


def nelbo(table: torch.Tensor) -> torch.Tensor:
    """(n,) the NELBO in nats from conditionals' table: a sum over the masked sets M."""
    L = table.shape[-1]
    full, total = 2**L - 1, torch.zeros(table.shape[1], dtype=torch.float64)
    for M in range(1, 2**L):
        k = len(members(M, L))
        weight = math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
        total -= weight * sum(table[full ^ M][:, i] for i in members(M, L))
    return total


def sampler_log_likelihood(table: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(n,) log p of the N = L sampler from conditionals' table: the mean over its orders (every
    order that reveals blocks (L,) in increasing order) of the product of the conditionals. By
    the revealed sets S: f(S) = sum over the token i revealed last of f(S - i) p(x^i | x^(S - i)),
    over the orders that can reach S - i; p = f(all) / the number of orders."""
    L = table.shape[-1]
    log_f, orders = {0: torch.zeros(table.shape[1], dtype=torch.float64)}, {0: 1}
    for S in range(1, 2**L):
        before = {i: S ^ 1 << i for i in members(S, L)}  # the set before i was revealed
        # i can be last if the set before it was reachable and holds every earlier block
        last = [
            i
            for i, R in before.items()
            if R in orders and all(R >> j & 1 for j in range(L) if blocks[j] < blocks[i])
        ]
        if last:
            terms = [log_f[before[i]] + table[before[i]][:, i] for i in last]
            log_f[S] = torch.stack(terms).logsumexp(0)
            orders[S] = sum(orders[before[i]] for i in last)
    return log_f[2**L - 1] - math.log(orders[2**L - 1])


def likelihoods(run: ddpm.Run, points: np.ndarray, order: str) -> dict:
    """NLL per point in nats of points (n, 2) in the data's units under the EMA model's null class:
    the NELBO and the sampler's exact NLL, as densities (per unit area), and the points outside
    the box (counted in its edge bins)."""
    model = run.ema.module.eval()
    u = (torch.from_numpy(points) - run.shift) / run.scale  # (n, 2)
    with torch.inference_mode():
        table = conditionals(model, tokenize(u.to(run.data.device), model.bins, model.digits))
    log_area = (run.scale.double() / model.bins).log().sum().item()  # the bin's, data units
    sampler = -sampler_log_likelihood(table.cpu(), blocks_of(model, order))
    return {
        "nll": (nelbo(table.cpu()) + log_area).mean().item(),
        "nll_sampler": (sampler + log_area).mean().item(),
        "nll_outside_box": int(((u < 0) | (u > 1)).any(1).sum()),
    }


# ----------------------------------------------------------------------------- 6. Run
def make_run(config: dict, dataset: datasets.Dataset, checkpoint: dict | None = None) -> ddpm.Run:
    """A ddpm.Run of a TokenMLP on the training points in [0, 1]^2 of their padded box (kept in
    the checkpoint as shift and scale)."""
    device = options.resolve_device(config["device"])
    points, labels = (torch.from_numpy(array) for array in dataset.train_set())  # (m, 2), (m,)
    shift, scale = (
        (checkpoint["shift"].cpu(), checkpoint["scale"].cpu()) if checkpoint else box(points)
    )
    data = ((points - shift) / scale).to(device)
    labels = labels.to(device) if dataset.classes else None
    model = TokenMLP(config, len(dataset.classes))
    run = ddpm.Run(config, data, labels, dataset.classes, shift, scale, 1.0, model=model)
    if checkpoint:
        checkpoints.restore(run, checkpoint, config["resume"])
    run.plot_limits = plots.padded_limits(points.numpy()) if dataset.is_file else None
    return run


def load_run(path: Path) -> ddpm.Run:
    """The discrete run saved in model.pth at path, on the CPU."""
    checkpoint = checkpoints.load(path, torch.device("cpu"), "discrete.py")
    config = checkpoint["config"] | {"resume": False, "device": "cpu"}
    dataset = datasets.load(config["dataset"], config["data_dir"], config["held_out"])
    return make_run(config, dataset, checkpoint)


def sample_frame(run: ddpm.Run) -> None:
    """ddpm.train's frame: eval_batch_size points of the EMA model, the same draws every frame."""
    tic, config = time.perf_counter(), run.config
    generator = torch.Generator(run.data.device).manual_seed(config["seed"])
    steps = {"num_steps": config["num_inference_steps"], "order": config["order"]}
    n, model = config["eval_batch_size"], run.ema.module.eval()
    u = sample(model, n, generator, c=run.frame_classes, **steps)
    run.frames.append(u.cpu().float() * run.scale + run.shift)  # in the data's own units
    run.frame_epochs.append(run.epoch)
    run.frame_seconds += time.perf_counter() - tic


def run(config: dict, dataset: datasets.Dataset, checkpoint: dict | None = None) -> dict:
    """Train (or continue, or only sample) a model, score its last frame and its exact NLL on
    held-out points (likelihood.py's), write exps/<name>/."""
    started = time.perf_counter()
    torch.manual_seed(config["seed"])
    state = make_run(config, dataset, checkpoint)
    model, steps = state.model, config["num_inference_steps"] or state.model.length
    tqdm.write(
        f"masked diffusion: {model.bins} bins, L = {model.length} tokens of {model.vocab} values; "
        f"sampling: {steps} unmasking steps, {config['order']} order"
    )
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    labels = None if state.frame_classes is None else state.frame_classes.cpu().numpy()  # (n,)
    tic = time.perf_counter()
    status = ddpm.train(state, loss_fn, sample_frame)
    seconds = {"train": time.perf_counter() - tic - state.frame_seconds}
    if status == "interrupted":  # save what was done, and say where
        saved = checkpoints.state_of(state)
        run_folder.stop_early(out_dir, saved, labels, state.plot_limits, program="discrete.py")
    if status == "diverged":  # as ddpm.experiment: the losses up to the first bad one, no weights
        first_bad = int((~(state.losses <= ddpm.DIVERGED_LOSS)).nonzero()[0])
        saved = checkpoints.state_of(state) | {"losses": state.losses[: first_bad + 1].cpu()}
        run_folder.stop_early(out_dir, saved, labels, state.plot_limits, first_bad, "discrete.py")
    with run_folder.StopOnCtrlC(run_folder.AFTER_TRAINING):
        if not state.frames:  # --num_epochs 0: only sample the checkpoint
            sample_frame(state)
        tic, seed = time.perf_counter(), config["seed"]
        metrics = evaluate.evaluate(state.frames[-1].numpy(), dataset, seed, labels=labels)
        held_out = dataset.unseen(likelihood.NLL_POINTS, likelihood.NLL_SEED + seed)[0]
        metrics |= {"nfe": steps} | likelihoods(state, held_out, config["order"])
        if steps != model.length:  # the exact likelihood is that of the N = L sampler, not this
            del metrics["nll_sampler"]
        seconds |= {"frames": state.frame_seconds, "evaluate": time.perf_counter() - tic}
        saved = checkpoints.state_of(state)
        limits = state.plot_limits
        print(run_folder.save_run(out_dir, saved, labels, limits, metrics, seconds, started))
    return metrics


# ----------------------------------------------------------------------------- 7. Command line
# ddpm.py's options, with those of its continuous methods and samplers hidden and refused.
DDPM_ONLY = ("method", "num_timesteps", "beta_schedule", "flow_t", "P_mean", "P_std")
DDPM_ONLY += ("stable_target",)
DDPM_ONLY += ("sigma_data", "time_embedding", "input_embedding", "input_scale", "guidance_scale")
DDPM_ONLY += ("guidance_interval", "denoiser", "sampler", "grid", "sigma_min", "sigma_max")
DDPM_ONLY += ("s_churn", "init_noise", "eta", "clip_x0", "reflow", "reflow_pairs", "consistency")
TOKEN_FIELDS = ("bins", "digits")  # what the model is, besides ddpm's MODEL_FIELDS
# 60 epochs: masked diffusion learns the dino in fewer steps than the continuous default (125);
# tokens get embeddings of 128 (ddpm.py's default is 64), as its tables were measured
DEFAULTS = {"experiment_name": "discrete", "num_epochs": 60, "embedding_size": 128}


def build_parser() -> options.ArgumentParser:
    """`python discrete.py -h`: ddpm.py's run, data, network and training options; the tokens'."""
    parser = ddpm.build_parser()
    parser.prog = "discrete.py"
    parser.description = (
        "Train a masked diffusion model of tokenised 2D points, sample it, score it."
    )
    for action in parser._actions:
        if action.dest in DDPM_ONLY:
            action.help = argparse.SUPPRESS
    parser.set_defaults(**DEFAULTS)
    helps = {
        "num_inference_steps": "unmasking steps N (default: L, one token a step); fewer reveal "
        "tokens together",
        "embedding_size": "width of each token's (and the class's) embedding",
    }
    for action in parser._actions:
        action.help = helps.get(action.dest, action.help)
    parser.add_argument(
        "--bins",
        type=options.positive(int),
        default=576,
        help="V, the bins of each coordinate over the data's padded box (576 = 24^2: fine "
        "enough for the dino's dots, and a square, for --digits 2)",
    )
    parser.add_argument(
        "--digits",
        type=int,
        choices=(1, 2),
        default=1,
        help="tokens per coordinate: 1 (L = 2 tokens of V values), or 2, coarse and fine digits "
        "of sqrt(V) values (L = 4; V must be a square)",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="blocks",
        help="with --digits 2, what the sampler reveals first: the coarse block (x, y), then the "
        "fine one (Block Diffusion's order), or tokens in any order",
    )
    return parser


def sampling_options(config: dict) -> dict:
    """What checkpoints.prepare checks of the sampler: no grid of noise levels, N steps."""
    return {"grid": None, "num_inference_steps": config["num_inference_steps"]}


def prepare(parser, argv) -> tuple[dict, datasets.Dataset, dict | None]:
    """checkpoints.prepare's (config, dataset, checkpoint), with the tokens checked and a
    checkpoint's tokens taken as its other model fields are."""
    config, explicit = vars(parser.parse_args(argv)), options.explicit_options(parser, argv)
    flags = {action.dest: action.option_strings[0] for action in parser._actions}
    foreign = [flags[name] for name in DDPM_ONLY if name in explicit]  # --no_stable_target's too
    if foreign:
        raise options.UsageError(f"{foreign[0]} is an option of ddpm.py, not of discrete.py")
    if config["bins"] < 2:  # one bin: every point the same token, nothing to learn
        raise options.UsageError(f"--bins must be at least 2, got {config['bins']}")
    if config["digits"] == 2 and (
        config["bins"] < 4 or math.isqrt(config["bins"]) ** 2 != config["bins"]
    ):
        raise options.UsageError(
            f"--digits 2 writes a bin in two digits of sqrt(V) values: --bins must be a square "
            f"of at least 4 (e.g. 256 = 16^2), got {config['bins']}"
        )
    config, dataset, checkpoint = checkpoints.prepare(parser, argv, sampling_options, "discrete.py")
    if checkpoint is not None:
        config = checkpoints.merge_config(config, explicit, checkpoint["config"], TOKEN_FIELDS)
    # the method in config.json, and what loss.png names (plots.LOSS_TARGETS)
    return config | {"method": "discrete"}, dataset, checkpoint


def main(argv=None) -> int:
    ran = options.run_command(build_parser(), argv, prepare, run)
    if ran is None:  # --dataset list
        return 0
    config, metrics = ran
    nll = f"NLL {metrics['nll']:.3f}" + (
        f" (sampler {metrics['nll_sampler']:.3f})" if "nll_sampler" in metrics else ""
    )
    seconds = metrics["seconds"]["total"]
    print(f"{config['dataset']}: {evaluate.format_metrics(metrics)}  {nll} nats  ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
