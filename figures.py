"""Rebuild every figure and table of the README and RESULTS.md: python figures.py, or one part
with python figures.py --NAME (-h lists them). Each prints its seconds.

Runs (or reuses) in exps/ the runs each part needs, then draws into static/: the default run's
samples, process figure, animation and loss curve; the denoiser's field; paths per method; where
each method trains, and towards what (EDM's targets); the method x NFE grid; the ablation grids;
the density, reflow, guidance, discrete and consistency figures; and the tables of the defaults,
the sampler study and the likelihood on every dataset (with three smooth .csv files of known
density, written to exps/data/). The tables go to exps/ablations/.
"""

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import scipy.stats
import torch

import ablate
import checkpoints
import datasets
import ddpm
import discrete
import evaluate
import exact
import likelihood
import options
import plots
import run_folder
from options import PROJECT_DIR

STATIC_DIR = PROJECT_DIR / "static"
# (option, values): the ablations that teach, on the dino with every other option at its default
# (EDM); the swept value wins.
ABLATIONS = [
    ("learning_rate", ["1e-2", "2e-3", "5e-4", "1e-4"]),
    ("num_inference_steps", ["12", "25", "50", "100"]),  # SDE: as many NFE
    ("input_embedding", ["directional", "sinusoidal", "learnable", "linear", "identity"]),
    ("hidden_size", ["32", "64", "128", "256"]),
]
SNAPSHOTS = 6  # columns of the process figure
# The GIF: forward frames at 0 and at geometric noise levels up to the sampler's start, then every
# state of the sampler; milliseconds per frame, the last one held.
GIF_FORWARD_FRAMES, GIF_MS = 30, {"forward": 80, "reverse": 100, "last": 1500}


def forward_process(config: dict, sigmas, n: int = 1000, seed: int = 0) -> list[tuple]:
    """(sigma, x) for each sigma: x = x_0 + sigma eps, the same points and noise throughout (the
    family's noisy point, Karras et al. 2022, sec. 2), shown as x / sqrt(1 + sigma^2) as the
    reverse process is."""
    x_0 = torch.from_numpy(
        datasets.get_dataset(config["dataset"], n, seed=seed, data_dir=config["data_dir"])
    )
    eps = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed))
    return [(sigma, ((x_0 + sigma * eps) / math.sqrt(1 + sigma**2)).numpy()) for sigma in sigmas]


def reverse_process(checkpoint_path: Path, seed: int = 0) -> list[tuple[float, np.ndarray]]:
    """(sigma, x) from sigma_max down to 0: a chain of the run's EMA model and sampler from its
    frame points' start. x is shown as x / sqrt(1 + sigma^2), DDPM's x_t: the noise stays in
    view."""
    run, _ = likelihood.load_run(checkpoint_path)
    return [(sigma, (x / math.sqrt(1 + sigma**2)).numpy()) for sigma, x in _chain(run, seed)]


def _spaced(steps: list, count: int) -> list:
    return [steps[i] for i in np.linspace(0, len(steps) - 1, count).round().astype(int)]


def draw_process_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    """process.png and diffusion.gif of a finished run: the forward process x_0 + sigma eps and
    the run's sampler, one noise unit (sigma) for both. In the figure each column is one sigma,
    the sampler's state above the data noised to the same sigma."""
    config = json.loads((run_dir / "config.json").read_text())
    reverse = reverse_process(run_dir / "model.pth")
    shown = _spaced(reverse, SNAPSHOTS)[::-1]  # sigma = 0 first
    forward = forward_process(config, [sigma for sigma, _ in shown])
    paths = [out_dir / "process.png", out_dir / "diffusion.gif"]
    sampler = ddpm.sampling_options(config)
    plots.save_grid(
        [[x for _, x in forward], [x for _, x in shown]],
        paths[0],
        row_labels=[
            "forward:\nx_0 + σ ε  →",
            f"←  reverse:\n{sampler['sampler']}, {sampler['num_inference_steps']} steps",
        ],
        col_labels=[f"σ = {sigma:.3g}" for sigma, _ in shown],
        title="one noise level σ per column; points shown as x / √(1 + σ²)",
    )
    levels = [0.0, *np.geomspace(0.01, reverse[0][0], GIF_FORWARD_FRAMES).tolist()]
    frames = [(f"forward: σ = {sigma:.3g}", x) for sigma, x in forward_process(config, levels)]
    frames += [(f"reverse ({sampler['sampler']}): σ = {sigma:.3g}", x) for sigma, x in reverse]
    durations = [GIF_MS["forward"]] * (len(levels)) + [GIF_MS["reverse"]] * (len(reverse) - 1)
    plots.save_animation(
        [x for _, x in frames],
        [f"{title}   (shown: x / √(1 + σ²))" for title, _ in frames],
        paths[1],
        [*durations, GIF_MS["last"]],
    )
    return paths


def _chain(run: ddpm.Run, seed: int, **sampling) -> list[tuple[float, torch.Tensor]]:
    """The states (sigma, x) of one chain of the run's EMA model from its frame points' start,
    its sampler changed by `sampling`: the same seed, the same noise at the start."""
    clip_range = run.clip_range if run.config["clip_x0"] else None
    start = {"c": run.frame_classes, "start_moments": run.moments, "clip_range": clip_range}
    options = ddpm.sampling_options(run.config) | sampling
    generator = torch.Generator().manual_seed(seed)
    n, model = run.config["eval_batch_size"], run.ema.module.eval()
    return list(ddpm.reverse_process(model, run.method, n, generator, **start, **options))


# ----------------------------------------------------------------------------- The denoiser's field
FIELD_SIGMAS, FIELD_ARROWS, FIELD_CELLS = [0.05, 0.2, 1.0, 5.0], 17, 60


def _field_grid(limits, count: int, centres: bool = False) -> torch.Tensor:
    """(count * count, 2) points on an even grid over limits (xmin, xmax, ymin, ymax), rows along
    y: from edge to edge, or the centres of count x count cells (an image's pixels)."""
    axes = []
    for low, high in (limits[:2], limits[2:]):
        edges = torch.linspace(low, high, count + 1 if centres else count)
        axes.append((edges[1:] + edges[:-1]) / 2 if centres else edges)
    return torch.stack(torch.meshgrid(*axes, indexing="xy"), -1).reshape(-1, 2)


def field_figure(exps_dir: Path, path: Path) -> str:
    """static/field.png: D(x; sigma) - x over the plane at FIELD_SIGMAS for the default dino run's
    network and the exact denoiser, and where they differ; returns the RMS difference at each
    sigma over noisy data x_0 + sigma eps, and over the whole grid."""
    run, dataset = likelihood.load_run(ablate.run_once([], exps_dir) / "model.pth")
    network = partial(ddpm.guided_D, run.ema.module.eval(), run.method)
    true = partial(
        ddpm.guided_D,
        exact.denoiser_of(dataset, run.config["data_dir"], run.shift, run.scale),
        None,
    )
    data = run.data
    limits = plots.padded_limits(data.numpy())
    arrows_at, fine = _field_grid(limits, FIELD_ARROWS), _field_grid(limits, FIELD_CELLS, True)
    arrows, errors, rows = [[], []], [], []
    eps = torch.randn(data.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for sigma in FIELD_SIGMAS:
            for row, D in zip(arrows, (network, true)):
                row.append((D(arrows_at, sigma) - arrows_at).numpy())
            error = (network(fine, sigma) - true(fine, sigma)).norm(dim=1)
            errors.append(error.reshape(FIELD_CELLS, FIELD_CELLS).numpy())
            noisy = data + sigma * eps
            on_data = (network(noisy, sigma) - true(noisy, sigma)).norm(dim=1)
            rows.append(
                {"sigma": sigma, "rms on noisy data": on_data.square().mean().sqrt().item()}
                | {"rms over the picture": error.square().mean().sqrt().item()}
            )
    plots.save_field(
        arrows_at.numpy(),
        arrows,
        errors,
        data.numpy(),
        path,
        row_labels=["network: D(x; σ) - x", "exact: D(x; σ) - x", "|D_network - D_exact|"],
        col_labels=[f"σ = {sigma:g}" for sigma in FIELD_SIGMAS],
        limits=limits,
    )
    return ablate.write_table(rows, exps_dir / "ablations" / "field")


# ----------------------------------------------------------------------------- Paths per method
# (title, the run's options, its sampler's changes): the same noise carried to data by each.
PATHS = [
    ("DDPM, ancestral", ["--method", "ddpm"], {}),  # its own 50 steps on its trained levels
    ("flow, Euler", ["--method", "flow"], {"sampler": "euler", "num_inference_steps": 50}),
    ("EDM, Heun ODE", [], {"sampler": "heun", "num_inference_steps": 12, "s_churn": 0.0}),
    ("EDM, SDE", [], {"sampler": "sde", "num_inference_steps": 50, "s_churn": 0.0}),
]
PATH_COUNT = 30


def paths_figure(exps_dir: Path, path: Path) -> str:
    """static/paths.png: PATH_COUNT chains of each of PATHS from the same noise (seed 0), drawn in
    flow's coordinates x / (1 + sigma), where a straight path is a straight line, over the chain's
    final samples; each titled with its NFE and straightness (ddpm.straightness, all points)."""
    panels, rows = [], []
    for title, run_args, sampling in PATHS:
        run, _ = likelihood.load_run(ablate.run_once(run_args, exps_dir) / "model.pth")
        chain = _chain(run, 0, **sampling)
        options = ddpm.sampling_options(run.config) | sampling
        cost = ddpm.nfe(options["sampler"], options["num_inference_steps"])
        straightness = ddpm.straightness(chain)
        lines = torch.stack([x[:PATH_COUNT] / (1 + sigma) for sigma, x in chain]).numpy()
        name = f"{title}\nNFE {cost}, straightness {straightness:.3g}"
        panels.append((name, lines, chain[-1][1].numpy()))
        rows.append({"chain": title, "NFE": cost, "straightness": straightness})
    plots.save_paths(panels, path, plots.padded_limits(np.concatenate([p[2] for p in panels])))
    return ablate.write_table(rows, exps_dir / "ablations" / "paths")


# ----------------------------------------------------------------------------- Where each trains
def loss_weight(method, sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) (B,): the weight that makes the method's loss |F - target|^2 (section 4) the
    denoiser's lambda |D - x_0|^2 (Karras et al. 2022, eq. 2 and Table 1). D is affine in the
    network's output F, D = a x + b F (section 3), and the target is the F for which D = x_0, so
    F - target = (D - x_0) / b and lambda = 1 / b^2. b is read off the method's own D: with F = 1
    minus with F = 0. It is 1 / sigma^2 for ddpm, 1 / t^2 for flow, 1 / c_out^2 for edm (eq. 8)."""
    x = torch.zeros(len(sigma), 2)
    outputs = [lambda *_, value=value: torch.full((len(sigma), 2), value) for value in (1.0, 0.0)]
    one, zero = (method.D_theta(F, x, sigma) for F in outputs)
    return 1 / (one - zero)[:, 0] ** 2


def training_density(method, log_sigma: np.ndarray) -> np.ndarray:
    """p(ln sigma) (L,) of the noise levels the method's training_example draws, at log_sigma (L,).
    DDPM's T levels have mass 1 / T each, spread here over the stretch of ln sigma nearer to it
    than to its neighbours."""
    sigma = np.exp(log_sigma)
    if isinstance(method, ddpm.EDM):  # ln sigma ~ N(P_mean, P_std^2), Karras et al. 2022, Table 1
        return scipy.stats.norm.pdf(log_sigma, method.P_mean, method.P_std)
    if isinstance(method, ddpm.Flow):  # t = sigma / (1 + sigma)
        if method.flow_t == "uniform":  # t ~ U(0, 1): p(ln sigma) = dt / d ln sigma
            return sigma / (1 + sigma) ** 2
        return scipy.stats.norm.pdf(log_sigma)  # logit-normal: ln sigma = logit t ~ N(0, 1)
    levels = method.sigmas.double().log().numpy()  # (T,) ln sigma_t, growing
    middles = (levels[1:] + levels[:-1]) / 2
    edges = np.concatenate(([2 * levels[0] - middles[0]], middles, [2 * levels[-1] - middles[-1]]))
    cell = np.searchsorted(edges, log_sigma) - 1  # (L,): the level each ln sigma is nearest to
    inside = (cell >= 0) & (cell < len(levels))
    widths = np.diff(edges)[cell.clip(0, len(levels) - 1)]
    return np.where(inside, 1 / (len(levels) * widths), 0.0)


NOISE_AXIS = (1e-3, 1e3)  # the sigma axis of the figure
NOISE_MARKS = [0.011, 1.0, 10.0]  # sigmas tabulated


LOSS_WEIGHTS = {"ddpm": "1/σ²", "flow": "1/t² = (1 + σ)²/σ²", "edm": "1/c_out²"}  # legend


def noise_levels_figure(exps_dir: Path, path: Path) -> str:
    """static/noise_levels.png: each method's density of training noise levels and that density
    times its loss weight in D's units, at the default settings on the dino (sigma_data measured as
    a run measures it); a table of both at a few sigmas. No training: closed forms."""
    config = vars(ddpm.build_parser().parse_args([]))
    points, _ = datasets.load(config["dataset"]).train_set()
    sigma_data = torch.from_numpy(points).std().item()  # as ddpm.make_run measures it
    log_sigma = np.linspace(*np.log(NOISE_AXIS), 2000)
    curves, rows = [], []
    for name in ddpm.METHODS:
        method = ddpm.make_method(config | {"method": name}, sigma_data)
        density = training_density(method, log_sigma)
        weight = loss_weight(method, torch.from_numpy(np.exp(log_sigma)).float()).double().numpy()
        legend = f"{method.summary()}; λ = {LOSS_WEIGHTS[name]}"
        curves.append((legend, density, density * weight))
        at = np.log(NOISE_MARKS)
        table = np.stack([training_density(method, at), np.interp(at, log_sigma, density * weight)])
        rows.append(
            {"method": name}
            | {f"p at σ = {s:g}": table[0, i] for i, s in enumerate(NOISE_MARKS)}
            | {f"p λ at σ = {s:g}": table[1, i] for i, s in enumerate(NOISE_MARKS)}
        )
    marks = [(config["sigma_min"], "σ_min"), (0.011, "dots 0.011")]
    marks += [(sigma_data, f"σ_data {sigma_data:.2g}"), (config["sigma_max"], "σ_max")]
    plots.save_noise_levels(log_sigma, curves, marks, path)
    return ablate.write_table(rows, exps_dir / "ablations" / "noise_levels")


# ----------------------------------------------------------------------- What EDM trains towards
TARGET_SIGMAS, TARGET_PANELS, TARGET_COUNT = [0.1, 0.3, 1.0, 3.0], [0.3, 1.0], 40


def targets_figure(exps_dir: Path, path: Path) -> str:
    """static/targets.png: the targets of one training batch (256 dino points, seed 0) at
    TARGET_PANELS: each noisy point x joined to the plain target, the x_0 that made it, and to the
    stable target, E[x_0 | x] over the batch (ddpm.stable_target); a table of the RMS distance of
    each from the exact E[x_0 | x] of the whole dino at TARGET_SIGMAS. No training."""
    dataset = datasets.load("dino")
    points = torch.from_numpy(dataset.train_set()[0]).float()
    exact_D = exact.denoiser_of(dataset, None, torch.zeros(2), torch.ones(2))  # the run's units
    true = partial(ddpm.guided_D, exact_D, None)
    generator = torch.Generator().manual_seed(0)
    x_0 = points[torch.randperm(len(points), generator=generator)[:256]]  # (256, 2)
    eps = torch.randn(x_0.shape, generator=generator)
    panels, rows = [], []
    for sigma in TARGET_SIGMAS:
        x = x_0 + sigma * eps
        stable = ddpm.stable_target(x, torch.full((len(x), 1), sigma), x_0)
        targets, posterior_mean = {"x_0": x_0, "stable": stable}, true(x, sigma)
        rms = {name: (target - posterior_mean).norm(dim=1).square().mean().sqrt().item()
               for name, target in targets.items()}  # fmt: skip
        rows.append({"sigma": sigma} | {f"RMS of {k} - E[x_0 given x]": v for k, v in rms.items()})
        if sigma in TARGET_PANELS:
            for name, target in targets.items():
                lines = torch.stack([x, target])[:, :TARGET_COUNT].numpy()  # (2, k, 2)
                title = f"{name}, σ = {sigma:g}\nRMS from E[x_0 | x]: {rms[name]:.2f}"
                panels.append((title, lines, points.numpy()))
    plots.save_paths(panels, path, plots.padded_limits(points.numpy()))  # far x leave the frame
    return ablate.write_table(rows, exps_dir / "ablations" / "targets")


METRICS = ("w2_ratio", "precision", "recall")
WORST = {"w2_ratio": max, "precision": min, "recall": min}  # the worst of several seeds


def _triple(w2_ratio: float, precision: float, recall: float) -> str:
    return f"{w2_ratio:.2f} / {precision:.2f} / {recall:.2f}"


def _mean_and_worst(runs: list[dict]) -> tuple[str, str]:
    """W2 ratio / precision / recall of several seeds' metrics: their means, and the worst."""
    mean = _triple(*(np.mean([m[key] for m in runs]) for key in METRICS))
    return mean, _triple(*(WORST[key](m[key] for m in runs) for key in METRICS))


def _off_support(runs: list[dict]) -> str:
    return ", ".join(f"{100 * m['off_support_fraction']:.1f}%" for m in runs)


# ----------------------------------------------------------------------------- Methods x NFE
# Each method trained at the default budget, and the flow's 2-rectified flow (its reflow, sec. 6).
NFE_ROWS = {"DDPM": ["--method", "ddpm"], "flow": ["--method", "flow"], "EDM": []}
NFE_COLUMNS, NFE_SEEDS = [1, 2, 4, 8, 23, 50], ["0", "1", "2"]
HEUN_12 = ["--sampler", "heun", "--num_inference_steps", "12"]  # 23 NFE, the default until #32


def nfe_sampler(row: str, nfe: int) -> list[str]:
    """The sampler of a row at nfe network evaluations: DDPM its ancestral steps on its trained
    levels (Ho et al. 2020, Alg. 2); the flows Euler steps even in t (Liu et al. 2023); EDM its
    default at 50 (the SDE with churn), 12 Heun steps with churn at 23, and below 23 Euler on its
    rho = 7 grid without churn (Heun counts odd NFE only)."""
    steps = ["--num_inference_steps", str(nfe)]
    if row == "DDPM":
        return ["--sampler", "ddpm", *steps]
    if row != "EDM":
        return ["--sampler", "euler", *steps]
    if nfe == 50:
        return []
    if nfe == 23:
        return HEUN_12
    return ["--sampler", "euler", "--s_churn", "0", *steps]


def nfe_runs(seed: str, exps_dir: Path) -> dict[str, Path]:
    """The trained runs of NFE_ROWS at one seed and the 2-rectified flow of its flow."""
    runs = {
        row: ablate.run_once([*args, "--seed", seed], exps_dir) for row, args in NFE_ROWS.items()
    }
    reflow = ["--method", "flow", "--seed", seed, "--reflow", str(runs["flow"] / "model.pth")]
    return runs | {"2-rectified flow": ablate.run_once(reflow, exps_dir)}


def methods_nfe(exps_dir: Path, path: Path) -> str:
    """static/methods_nfe.png: a row per method, a column per NFE, seed 0's samples titled with
    their W2 ratio / precision / recall; the table: mean and worst over NFE_SEEDS."""
    scores, cells = {}, {}  # (row, nfe) -> [metrics of each seed]; seed 0's samples
    for seed in NFE_SEEDS:
        for row, run in nfe_runs(seed, exps_dir).items():
            for nfe in NFE_COLUMNS:
                args = ["--checkpoint", str(run / "model.pth"), "--num_epochs", "0"]
                out = ablate.run_once([*args, "--seed", seed, *nfe_sampler(row, nfe)], exps_dir)
                metrics = ablate.score(out)
                assert metrics["nfe"] == nfe, (row, nfe, metrics["nfe"])
                scores.setdefault((row, nfe), []).append(metrics)
                if seed == NFE_SEEDS[0]:
                    cells[row, nfe] = np.load(out / "frames.npy")[-1]
    rows = [*NFE_ROWS, "2-rectified flow"]
    samplers = {"DDPM": "ancestral", "flow": "Euler", "2-rectified flow": "Euler"}
    samplers["EDM"] = "Euler; at 23 Heun\n+ churn, at 50 SDE"
    plots.save_grid(
        [[cells[row, nfe] for nfe in NFE_COLUMNS] for row in rows],
        path,
        row_labels=[f"{row}\n({samplers[row]})" for row in rows],
        col_labels=[f"NFE {nfe}" for nfe in NFE_COLUMNS],
        titles=[
            [_triple(*(scores[row, nfe][0][k] for k in METRICS)) for nfe in NFE_COLUMNS]
            for row in rows
        ],
    )
    table = []
    for row, summary in ((row, summary) for row in rows for summary in ("mean", "worst")):
        sampler = samplers[row].replace("\n", " ")
        line = {"method": row, "sampler": sampler, "seeds": f"{len(NFE_SEEDS)}, {summary}"}
        for nfe in NFE_COLUMNS:
            mean, worst = _mean_and_worst(scores[row, nfe])
            line[f"NFE {nfe}"] = mean if summary == "mean" else worst
        table.append(line)
    return ablate.write_table(table, exps_dir / "ablations" / "methods_nfe")


DENSITY_CELLS = 80  # the density figure's grid: 80 x 80 cells over [-6, 6]^2, 0.15 wide
# RK4 steps of the picture's ODE: 32 moved the default run's NLL by 0.08 nats (likelihood.py)
# from 128, invisible on its 8-nat colour scale, at a quarter of the cost; the table uses 128.
DENSITY_STEPS = 32


def cell_log_density(mixture: exact.GaussianMixture, edges: torch.Tensor) -> torch.Tensor:
    """(N, N) log of the mean density over each cell of the grid whose edges (N + 1,) are the same
    on both axes, rows along y: the mixture's mass in the cell over the cell's area. Its
    components are axis-aligned Gaussians, so a component's mass in a cell is a product of
    differences of normal CDFs. (Point values on a grid coarser than the components would show
    only those a grid point happens to fall on.)"""
    std = mixture.var.sqrt()  # (K, 2)
    z = (edges.double()[None, :, None] - mixture.means[:, None, :]) / std[:, None, :]
    cdf = torch.special.ndtr(z)  # (K, N + 1, 2)
    mass = cdf[:, 1:] - cdf[:, :-1]  # (K, N, 2): each component's share of each column and row
    cells = torch.einsum("k,kx,ky->yx", mixture.log_weights.exp(), mass[..., 0], mass[..., 1])
    return (cells / (edges[1] - edges[0]) ** 2).clamp_min(1e-300).log()


def density_figure(exps_dir: Path, path: Path) -> str:
    """static/density.png: log p_model of each method's default dino run (through the
    probability-flow ODE, likelihood.py) at the centre of each cell beside the exact density's
    mean over each cell, above their samples; and the NLL / KL table of the same runs."""
    edges = torch.linspace(-plots.LIMIT, plots.LIMIT, DENSITY_CELLS + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    dino = datasets.load("dino")
    true = likelihood.closed_form(dino)
    images, samples = [cell_log_density(true, edges).numpy()], [dino.draw(1000, 1)[0]]
    titles, rows = ["the data (exact, cell means)"], []
    for method in ddpm.METHODS:
        out = ablate.run_once(["--method", method], exps_dir)
        run, _ = likelihood.load_run(out / "model.pth")
        model_nll = likelihood.run_nll(run)
        picture_nll = likelihood.run_nll(run, DENSITY_STEPS)
        images.append(-picture_nll(grid).numpy().reshape(DENSITY_CELLS, DENSITY_CELLS))
        samples.append(np.load(out / "frames.npy")[-1])
        titles.append(method)
        held_out = torch.from_numpy(dino.draw(likelihood.NLL_POINTS, likelihood.NLL_SEED)[0])
        nll = model_nll(held_out)
        kl = nll + true.log_prob(held_out)
        rows.append({"method": method, "nll": nll.mean().item(), "kl": kl.mean().item()})
    # the scale's top: the exact density's highest cell (the models' peaks, point values, are
    # higher where a grid point falls on one)
    plots.save_densities(images, samples, titles, path, top_value=images[0].max())
    return ablate.write_table(rows, exps_dir / "ablations" / "likelihood")


# The default run's likelihood on every dataset: the built-in shapes, whose densities are closed
# forms (exact.py), and smooth .csv files of known density (likelihood.TEST_DENSITIES), trained
# on as a user's own file is.
LIKELIHOOD_DATASETS = ["dino", "moons", "line", "circle", *likelihood.TEST_DENSITIES]
# A table each, (options, seeds): the defaults, the fixed Fourier scale of the dino's dots that
# they replaced (seed 0), and EDM's plain target x_0 in place of the stable one (Xu et al. 2023;
# ddpm.py, section 5)
LIKELIHOOD_OPTIONS = {
    "defaults": ([], ["0", "1", "2"]),
    "input_scale_200": (["--input_scale", "200"], ["0"]),
    "no_stable_target": (["--no_stable_target"], ["0", "1", "2"]),
}


def _truth(name: str, seed: int) -> tuple:
    """(density, x (n, 2)): a dataset's closed-form density and NLL_POINTS fresh true points, a
    shape's held-out draws or a test density's own."""
    if name in likelihood.TEST_DENSITIES:
        seed += likelihood.TEST_SEED + 1  # draws the file's rows never came from
        x = likelihood.density_draws(name, likelihood.NLL_POINTS, seed).float()
        return likelihood.TEST_DENSITIES[name](), x
    dataset = datasets.load(name)
    x = torch.from_numpy(dataset.unseen(likelihood.NLL_POINTS, likelihood.NLL_SEED + seed)[0])
    return likelihood.closed_form(dataset), x


def _mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """The mean of (n,) values and its standard error."""
    return values.mean().item(), (values.std() / len(values) ** 0.5).item()


def likelihood_scores(run: Path, truth: tuple) -> dict:
    """A run's metrics.json with its NLL, KL(data || model) and the limit, the true -log p
    (each a mean over the points of truth = _truth(...), with its standard error), in nats. The
    exact denoiser's NLL through the same ODE is that limit to the solver's error (KL 0.000 on the
    dino, RESULTS.md), at up to 100x a run's cost on the 4000-Gaussian moons and circle."""
    density, x = truth
    nll = likelihood.run_nll(likelihood.load_run(run / "model.pth")[0])(x).double()  # (n,)
    log_p = density.log_prob(x)  # (n,)
    scores = {"nll": nll, "kl": nll + log_p, "limit": -log_p}  # KL paired per point: low noise
    return ablate.score(run) | {key: _mean_and_error(v) for key, v in scores.items()}


def _plus_minus(runs: list[dict], key: str) -> str:
    """The mean over runs of each one's (mean, standard error), with the error of that mean."""
    means, errors = zip(*(m[key] for m in runs))
    return f"{np.mean(means):.3f} ± {np.linalg.norm(errors) / len(runs):.3f}"


def likelihood_row(name: str, runs: list[dict]) -> dict:
    """A table row of a dataset's runs (likelihood_scores, one per seed): NLL, KL and the limit,
    means over seeds with standard errors; each seed's KL; W2 ratio / precision / recall."""
    mean, worst = _mean_and_worst(runs)
    row = {
        "dataset": name,
        "NLL": _plus_minus(runs, "nll"),
        "KL(data ‖ model)": _plus_minus(runs, "kl"),
    }
    row["KL per seed"] = ", ".join(f"{m['kl'][0]:.3f}" for m in runs)
    row["limit: true -log p"] = _plus_minus(runs, "limit")
    row |= {"W2 ratio / P / R, mean": mean, "worst": worst}
    return row | {"off-support": _off_support(runs) if "off_support_fraction" in runs[0] else ""}


def likelihood_table(exps_dir: Path, name: str = "defaults") -> str:
    """The run of every LIKELIHOOD_DATASETS at each seed of LIKELIHOOD_OPTIONS[name]: its NLL
    and KL(data || model) on fresh true points beside the limit (the true -log p of the same
    points: the entropy), with W2 ratio / precision / recall, so that likelihood bought with
    sharpness shows. Markdown, also in exps/ablations/likelihood_<name>.md."""
    rows, (extra, seeds) = [], LIKELIHOOD_OPTIONS[name]
    for name in LIKELIHOOD_DATASETS:
        spec = name
        if name in likelihood.TEST_DENSITIES:
            spec = str(likelihood.write_test_csv(name, exps_dir / "data"))
        runs = []
        for seed in seeds:
            run = ablate.run_once(["--dataset", spec, "--seed", seed, *extra], exps_dir)
            runs.append(likelihood_scores(run, _truth(name, int(seed))))
        rows.append(likelihood_row(name, runs))
    return ablate.write_table(rows, exps_dir / "ablations" / f"likelihood_{name}")


# The dino's runs of fourier_scale_table: (Fourier scale, P_mean, seeds), "auto" the default's
# number (40 on the dino) and 99.1 what the nearest gap alone gave it. The scale that fits its
# density best is not the one that draws its dots sharpest, and a higher P_mean (less training at
# the finest noise levels) buys KL with precision.
FOURIER_SEEDS = ["0", "1", "2"]
FOURIER_SCALES = [("25", "-1.75", ["0"])]
FOURIER_SCALES += [(scale, "-1.75", FOURIER_SEEDS) for scale in ("30", "auto", "50", "99.1", "200")]
FOURIER_SCALES += [("auto", "-2", FOURIER_SEEDS), ("99.1", "-2", FOURIER_SEEDS)]
FOURIER_SCALES += [("auto", "-1.5", FOURIER_SEEDS)]


def fourier_scale_table(exps_dir: Path) -> str:
    """likelihood_table's row of the dino's runs at each FOURIER_SCALES scale and P_mean.
    Markdown, also in exps/ablations/fourier_scale.md."""
    rows = []
    for scale, P_mean, seeds in FOURIER_SCALES:
        runs = []
        for seed in seeds:
            args = ["--input_scale", scale, "--P_mean", P_mean, "--seed", seed]
            run = ablate.run_once(args, exps_dir)
            runs.append(likelihood_scores(run, _truth("dino", int(seed))))
        scale = json.loads((run / "config.json").read_text())["input_scale"]  # auto's number
        row = likelihood_row("dino", runs)
        del row["dataset"], row["limit: true -log p"], row["off-support"]
        rows.append({"Fourier scale": f"{scale:g}", "P_mean": P_mean} | row)
    return ablate.write_table(rows, exps_dir / "ablations" / "fourier_scale")


def draw_headline(dino: Path) -> None:
    """The default dino run's pictures in static/: samples, processes, animation, loss."""
    draw_process_figures(dino, STATIC_DIR)
    samples = np.load(dino / "frames.npy")[-1]
    m = json.loads((dino / "metrics.json").read_text())
    title = (
        f"{len(samples)} samples: W2 ratio {m['w2_ratio']:.2f}, "
        f"precision {m['precision']:.2f}, recall {m['recall']:.2f}"
    )
    data = datasets.load("dino").draw(len(samples), seed=1)[0]
    plots.save_samples(data, samples, STATIC_DIR / "dino_samples.png", title)
    config = json.loads((dino / "config.json").read_text())
    plots.save_loss(np.load(dino / "loss.npy"), STATIC_DIR / "loss.png", config)


# The conditional model: three Datasaurus shapes, each a class, at the defaults trained 4x as long
GUIDED = ["--dataset", "dino,star,bullseye", "--num_epochs", "600", "--save_images_step", "100"]
# A row per (guidance scale, guidance interval): guidance on every step, then only on the last
# fifth of the chain.
GUIDANCE = [
    ("1", "0 1"),
    ("1.5", "0 1"),
    ("2", "0 1"),
    ("3", "0 1"),
    ("2", "0 0.2"),
    ("3", "0 0.2"),
]
SAMPLE_SEEDS = [
    "0",
    "1",
    "2",
]  # one draw of 1000 points is noisy: the W2 ratio moves by up to 0.5 between seeds (RESULTS.md)


def guidance_sweep(exps_dir: Path) -> str:
    """The conditional model sampled one class at a time, 1000 points per class and seed, for
    each row of GUIDANCE: static/guidance.png (a row per setting, a column per class, seed 0) and
    its table (mean and worst over SAMPLE_SEEDS)."""

    model_dir = ablate.run_once(GUIDED, exps_dir)
    classes = checkpoints.load(model_dir / "model.pth", torch.device("cpu"))["classes"]
    cells, labels, rows = [], [], []
    for scale, interval in GUIDANCE:
        row = []
        for name in classes:
            ratios, leaks, precisions, recalls = [], [], [], []
            for seed in SAMPLE_SEEDS:
                args = [
                    "--checkpoint",
                    str(model_dir / "model.pth"),
                    "--num_epochs",
                    "0",
                    "--class_label",
                    name,
                    "--guidance_scale",
                    scale,
                    "--guidance_interval",
                    *interval.split(),
                    "--seed",
                    seed,
                ]
                out = ablate.run_once(args, exps_dir)
                metrics = ablate.score(out)
                ratios.append(metrics["w2_ratio"])
                leaks.append(metrics["class_leakage"])
                precisions.append(metrics["precision"])
                recalls.append(metrics["recall"])
                if seed == SAMPLE_SEEDS[0]:
                    row.append(np.load(out / "frames.npy")[-1])
            rows.append(
                {
                    "guidance_scale": scale,
                    "guidance_interval": interval,
                    "class": name,
                    "w2_ratio": float(np.mean(ratios)),
                    "w2_ratio_worst": max(ratios),
                    "precision": float(np.mean(precisions)),
                    "recall": float(np.mean(recalls)),
                    "class_leakage": float(np.mean(leaks)),
                    "class_leakage_worst": max(leaks),
                }
            )
        cells.append(row)
        labels.append(
            f"s = {scale}"
            + ("" if interval == "0 1" else f", steps in ({interval.replace(' ', ', ')}]")
        )
    plots.save_grid(
        cells,
        STATIC_DIR / "guidance.png",
        row_labels=labels,
        col_labels=classes,
        title="guidance scale",
        classes=[[np.full(len(points), k) for k, points in enumerate(row)] for row in cells],
    )
    return ablate.write_table(rows, exps_dir / "ablations" / "guidance")


# The defaults on every dataset and seed, and the sampler study on the same checkpoints.
DEFAULT_DATASETS, DEFAULT_SEEDS = ["dino", "moons", "line", "circle"], ["0", "1", "2"]
SAMPLER_SETTINGS = {  # row label: the options that sample each default checkpoint again
    "Heun 12, sigma_max eps (23)": [*HEUN_12, "--init_noise", "scaled", "--s_churn", "0"],
    "Heun 12, data start (23)": [*HEUN_12, "--s_churn", "0"],
    "Heun 12, data start, churn 2 (23)": HEUN_12,
    "SDE 25, data start, churn 2 (25)": ["--num_inference_steps", "25"],
    "SDE 50, sigma_max eps, churn 2 (50)": ["--init_noise", "scaled"],
    "SDE 50, data start (50)": ["--s_churn", "0"],
    "**SDE 50, data start, churn 2 (50): the default**": None,  # the run's own samples
    "SDE 100, data start, churn 2 (100)": ["--num_inference_steps", "100"],
}


def defaults_tables(exps_dir: Path) -> str:
    """The default run of each dataset and seed beside the exact denoiser through the same
    sampler; then every SAMPLER_SETTINGS row on the same checkpoints (mean W2 ratio, worst
    precision and recall, and the circle's worst off-support). Markdown, also in
    exps/ablations/defaults.md."""
    table = ["| dataset | | seed 0 | seed 1 | seed 2 | mean W2 ratio | off-support |"]
    table.append("|---|---|---|---|---|---|---|")
    study = {label: {} for label in SAMPLER_SETTINGS}
    for dataset in DEFAULT_DATASETS:
        for kind, extra in (("**network**", []), ("limit", ["--denoiser", "exact"])):
            scores = []
            for seed in DEFAULT_SEEDS:
                run = ablate.run_once(["--dataset", dataset, "--seed", seed, *extra], exps_dir)
                scores.append(ablate.score(run))
                for label, sampling in SAMPLER_SETTINGS.items() if kind != "limit" else []:
                    again = ["--checkpoint", str(run / "model.pth"), "--num_epochs", "0"]
                    out = (
                        run
                        if sampling is None
                        else ablate.run_once([*again, "--seed", seed, *sampling], exps_dir)
                    )
                    study[label].setdefault(dataset, []).append(ablate.score(out))
            cells = [_triple(*(m[key] for key in METRICS)) for m in scores]
            mean = np.mean([m["w2_ratio"] for m in scores])
            support = _off_support(scores) if "off_support_fraction" in scores[0] else ""
            name = dataset if kind == "**network**" else ""
            table.append(f"| {name} | {kind} | {' | '.join(cells)} | {mean:.2f} | {support} |")
    samplers = [f"| sampler (NFE) | {' | '.join(DEFAULT_DATASETS)} |"]
    samplers.append("|---|" + "---|" * len(DEFAULT_DATASETS))
    for label, by_dataset in study.items():
        cells = []
        for dataset in DEFAULT_DATASETS:
            scores = by_dataset[dataset]
            cell = _triple(
                np.mean([m["w2_ratio"] for m in scores]),
                min(m["precision"] for m in scores),
                min(m["recall"] for m in scores),
            )
            if "off_support_fraction" in scores[0] and dataset == "circle":
                cell += f", {100 * max(m['off_support_fraction'] for m in scores):.1f}%"
            cells.append(cell)
        samplers.append(f"| {label} | {' | '.join(cells)} |")
    text = "\n".join(table) + "\n\n" + "\n".join(samplers) + "\n"
    (exps_dir / "ablations").mkdir(parents=True, exist_ok=True)
    (exps_dir / "ablations" / "defaults.md").write_text(text)
    return text


# Reflow (ddpm.py, section 10): a flow, its 2- and 3-rectified flows, sampled in 1-8 Euler steps,
# beside the default method at its own sampler and the exact denoiser's flow at the same steps.
REFLOW_DATASETS, REFLOW_STEPS, REFLOW_SEEDS = ["dino", "moons"], [1, 2, 4, 8], ["0", "1", "2"]


def reflow_chain(dataset: str, seed: str, exps_dir: Path) -> dict[str, Path]:
    """The runs of one dataset and seed, trained or reused: the flow teacher, its 2- and
    3-rectified flows, the default run (edm) and the flow reflowed from it."""
    flow = ["--dataset", dataset, "--method", "flow", "--seed", seed]
    runs = {"flow": ablate.run_once(flow, exps_dir)}
    for name, teacher in (("2-rectified", "flow"), ("3-rectified", "2-rectified")):
        runs[name] = ablate.run_once(
            [*flow, "--reflow", str(runs[teacher] / "model.pth")], exps_dir
        )
    runs["edm (default)"] = ablate.run_once(["--dataset", dataset, "--seed", seed], exps_dir)
    edm = str(runs["edm (default)"] / "model.pth")
    runs["2-rectified, of edm"] = ablate.run_once([*flow, "--reflow", edm], exps_dir)
    return runs


def _seconds(run: Path) -> float:
    """A run's training time, the drawing of its pairs included."""
    seconds = json.loads((run / "metrics.json").read_text())["seconds"]
    return seconds["train"] + seconds.get("pairs", 0.0)


def _few_steps(run: Path, steps: int, seed: str, exps_dir: Path) -> Path:
    args = ["--checkpoint", str(run / "model.pth"), "--num_epochs", "0", "--seed", seed]
    args += ["--sampler", "euler", "--num_inference_steps", str(steps)]
    return ablate.run_once(args, exps_dir)


def _exact_flow(dataset: str, steps: int, seed: str, exps_dir: Path) -> Path:
    args = ["--dataset", dataset, "--method", "flow", "--denoiser", "exact", "--seed", seed]
    return ablate.run_once(
        [*args, "--sampler", "euler", "--num_inference_steps", str(steps)], exps_dir
    )


def reflow_table(exps_dir: Path) -> str:
    """W2 ratio / precision / recall at 1, 2, 4 and 8 Euler steps of each stage, mean and worst
    over REFLOW_SEEDS, with its straightness and training time: exps/ablations/reflow.md."""
    scores = {}  # (dataset, model, nfe) -> [metrics of each seed]
    for dataset, seed in ((d, s) for d in REFLOW_DATASETS for s in REFLOW_SEEDS):
        runs = reflow_chain(dataset, seed, exps_dir)
        sampled = [
            (name, runs[name], _few_steps(runs[name], n, seed, exps_dir))
            for name in ("flow", "2-rectified", "3-rectified", "2-rectified, of edm")
            for n in REFLOW_STEPS
        ]
        sampled += [("edm (default)", runs["edm (default)"], runs["edm (default)"])]
        sampled += [
            ("exact flow (limit)", None, _exact_flow(dataset, n, seed, exps_dir))
            for n in REFLOW_STEPS
        ]
        for name, trained, out in sampled:
            metrics = ablate.score(out) | {"seconds": _seconds(trained) if trained else 0.0}
            scores.setdefault((dataset, name, metrics["nfe"]), []).append(metrics)
    rows = []
    for (dataset, model, nfe), seeds in scores.items():
        mean = lambda key: float(np.mean([m[key] for m in seeds]))  # noqa: E731
        summary = dict(zip(("W2 ratio / P / R, mean", "worst"), _mean_and_worst(seeds)))
        rows.append(
            {"dataset": dataset, "model": model, "NFE": nfe}
            | summary
            | {"straightness": mean("straightness"), "train s": mean("seconds")}
        )
    return ablate.write_table(rows, exps_dir / "ablations" / "reflow")


def reflow_figure(exps_dir: Path, dataset: str, path: Path, n: int = 1000) -> None:
    """static/reflow.png: for the flow and its 2- and 3-rectified flows (seed 0), paths from the
    same noise (100 Euler steps, in flow's coordinates x_t = x / (1 + sigma)), then 1, 2 and 4
    Euler steps' samples."""
    runs = reflow_chain(dataset, REFLOW_SEEDS[0], exps_dir)
    names = ["flow", "2-rectified", "3-rectified"]
    cells, paths, classes = [], [], []
    for name in names:
        run, _ = likelihood.load_run(runs[name] / "model.pth")
        start = {"c": run.frame_classes, "start_moments": run.moments}
        row, lines = [], []
        for steps in (100, 1, 2, 4):
            sampling = ddpm.sampling_options(run.config) | {
                "sampler": "euler",
                "num_inference_steps": steps,
            }
            generator = torch.Generator().manual_seed(int(REFLOW_SEEDS[0]))
            chain = ddpm.reverse_process(
                run.ema.module.eval(), run.method, n, generator, **start, **sampling
            )
            xs = [x / (1 + sigma) for sigma, x in chain]
            row.append(xs[-1].numpy())
            lines.append(torch.stack(xs)[:, ::10].numpy() if steps == 100 else None)  # 1 in 10
        cells.append(row)
        paths.append(lines)
        labels = None if run.frame_classes is None else run.frame_classes.numpy()
        classes.append([labels] * len(row))
    columns = ["paths (100 steps)", "1 step", "2 steps", "4 steps"]
    classes = None if classes[0][0] is None else classes
    plots.save_grid(cells, path, row_labels=names, col_labels=columns, paths=paths, classes=classes)


# Discrete diffusion (discrete.py): its runs beside the default (continuous) run of each seed.
DISCRETE_DATASETS, DISCRETE_SEEDS = ["dino", "moons", "line", "circle"], ["0", "1", "2"]
DISCRETE_BINS = ["64", "128", "256", "576", "1024"]  # V: the dino trained, every dataset's limit


def discrete_run(args: list[str], exps_dir: Path) -> Path:
    """A discrete.py run with args in exps_dir/discrete_<args>, trained unless it finished."""
    shown = [Path(arg).parent.name if arg.endswith(".pth") else arg.lstrip("-") for arg in args]
    out = exps_dir / "_".join(["discrete", *shown])  # a checkpoint by its run's folder
    if not (out / "metrics.json").is_file():
        command = [*args, "--exps_dir", str(exps_dir), "--experiment_name", out.name]
        discrete.main([*command, "--overwrite"])
    return out


def _scores(out: Path) -> dict:
    """A run's metrics.json, with its training seconds as "train s"."""
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics | {"train s": metrics["seconds"]["train"]}


def _edm_nll(out: Path, dataset: datasets.Dataset, seed: int) -> float:
    """likelihood.py's NLL of a continuous run, on the held-out points discrete.py scores."""
    run, _ = likelihood.load_run(out / "model.pth")
    points = dataset.unseen(likelihood.NLL_POINTS, likelihood.NLL_SEED + seed)[0]
    return likelihood.run_nll(run)(torch.from_numpy(points)).mean().item()


def _row(runs: list[dict]) -> dict:
    """Runs over seeds: each one's W2 ratio / precision / recall, the means, NLLs, seconds."""
    mean = lambda key: float(np.mean([m[key] for m in runs]))  # noqa: E731
    row = {f"seed {i}": _triple(*(m[key] for key in METRICS)) for i, m in enumerate(runs)}
    row["mean"] = _mean_and_worst(runs)[0]
    if "off_support_fraction" in runs[0]:
        row["off-support"] = _off_support(runs)
    return row | {key: mean(key) for key in ("nll", "nll_sampler", "train s") if key in runs[0]}


def quantised(dataset: datasets.Dataset, bins: int, seed: int) -> dict:
    """The scores of 1000 fresh true points put in their V bins and decoded: a perfect model's."""
    points = torch.from_numpy(dataset.draw(1000, 7000 + seed)[0])
    shift, scale = discrete.box(torch.from_numpy(dataset.train_set()[0]))
    z = discrete.tokenize((points - shift) / scale, bins, 1)
    u = discrete.detokenize(z, bins, 1, torch.Generator().manual_seed(seed))
    return evaluate.evaluate((u * scale + shift).float().numpy(), dataset, seed)


# The dino's other samplings and --digits 2: (name, training args, sampling args of its model).
DISCRETE_VARIANTS = [
    ("1 step (x, y together)", ["--dataset", "dino"], ["--num_inference_steps", "1"]),
    ("L = 4, coarse block first", ["--digits", "2"], []),
    ("L = 4, any order", ["--digits", "2"], ["--order", "any"]),
    ("L = 4, a block a step (2 steps)", ["--digits", "2"], ["--num_inference_steps", "2"]),
]


def discrete_table(exps_dir: Path) -> str:
    """The discrete runs of each dataset and seed, each beside the default continuous run (so
    both meet the same load), with NLLs on the same held-out points; on the dino the variants
    above; then V: the dino and moons trained (seed 0), every dataset's true points in V bins.
    Markdown, also in exps/ablations/discrete.md and discrete_bins.md."""
    rows = []
    for name in DISCRETE_DATASETS:
        dataset, found = datasets.load(name), {"discrete": [], "continuous (edm)": []}
        for seed in DISCRETE_SEEDS:
            found["discrete"].append(
                _scores(discrete_run(["--dataset", name, "--seed", seed], exps_dir))
            )
            edm = ablate.run_once(["--dataset", name, "--seed", seed], exps_dir)
            found["continuous (edm)"].append(
                _scores(edm) | {"nll": _edm_nll(edm, dataset, int(seed))}
            )
        for label, args, sampling in DISCRETE_VARIANTS if name == "dino" else []:
            found[label] = []
            for seed in DISCRETE_SEEDS:
                trained = discrete_run([*args, "--seed", seed], exps_dir)
                again = [
                    "--checkpoint",
                    str(trained / "model.pth"),
                    "--num_epochs",
                    "0",
                    "--seed",
                    seed,
                ]
                out = discrete_run([*again, *sampling], exps_dir) if sampling else trained
                found[label].append(_scores(out) | {"train s": _scores(trained)["train s"]})
        rows += [{"dataset": name, "model": label} | _row(runs) for label, runs in found.items()]
    sweep = []
    for bins in DISCRETE_BINS:
        row = {"V": bins}
        for name in ("dino", "moons"):  # trained, seed 0
            args = ["--dataset", name, "--seed", "0"] + (["--bins", bins] if bins != "576" else [])
            trained = _scores(discrete_run(args, exps_dir))
            row[f"{name}: trained"] = _triple(*(trained[k] for k in METRICS))
            row[f"{name}: NLL"], row[f"{name}: train s"] = trained["nll"], trained["train s"]
        for name in DISCRETE_DATASETS:  # true points in V bins, mean of seeds 0-2
            limit = [quantised(datasets.load(name), int(bins), seed) for seed in range(3)]
            mean = lambda key: float(np.mean([m[key] for m in limit]))  # noqa: E731
            row[f"{name}: true points"] = _triple(*map(mean, METRICS))
            if "off_support_fraction" in limit[0]:
                row[f"{name}: true points"] += f", {100 * mean('off_support_fraction'):.1f}%"
        sweep.append(row)
    tables = [(rows, "discrete"), (sweep, "discrete_bins")]
    return "\n".join(ablate.write_table(t, exps_dir / "ablations" / stem) for t, stem in tables)


def revealed_boxes(z: torch.Tensor, model, shift, scale) -> np.ndarray:
    """(5, n, 2): the outline of the box the revealed tokens z (n, L) of each point allow, in the
    data's units (a masked coordinate spans the whole box; the coarse digit comes first)."""
    K, L = model.vocab, model.length
    low, size = (
        torch.zeros(len(z), 2, dtype=torch.float64),
        torch.ones(len(z), 2, dtype=torch.float64),
    )
    for i in range(L):  # digit i // 2 of coordinate i % 2
        known = z[:, i] < K
        size[known, i % 2] /= K
        low[known, i % 2] += z[known, i] * size[known, i % 2]
    corners = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
    return np.stack([((low + size * torch.tensor(c)) * scale + shift).numpy() for c in corners])


def discrete_figure(exps_dir: Path, path: Path, n: int = 1000) -> None:
    """static/discrete.png: the dino's discrete run (seed 0) unmasked from all-MASK one token a
    step, then with x and y drawn together, beside the default continuous run; below, --digits 2
    (L = 4), the coarse block first. Until a point is whole it is drawn as the box its revealed
    tokens allow."""
    cells, boxes, titles, labels = [], [], [], []
    steps = {
        2: ["x or y", "x and y"],
        4: ["coarse x or y", "coarse cell", "+ fine x or y", "whole"],
    }
    for args in (["--dataset", "dino"], ["--digits", "2"]):  # the table's runs of seed 0
        run = discrete.load_run(discrete_run([*args, "--seed", "0"], exps_dir) / "model.pth")
        model, generator = run.ema.module.eval(), torch.Generator().manual_seed(0)
        chain = [z for _, z in discrete.unmasking(model, n, generator)]
        x = discrete.detokenize(chain[-1], model.bins, model.digits, generator)
        cells.append([np.zeros((0, 2))] * (len(chain) - 1) + [(x * run.scale + run.shift).numpy()])
        # one point in 8 while a coordinate is still all MASK: the bands stay apart
        shown = [z[::8] if i < 2 else z for i, z in enumerate(chain[:-1])]
        boxes.append([revealed_boxes(z, model, run.shift, run.scale) for z in shown] + [None])
        titles.append(
            ["all MASK"] + [f"step {i + 1}: {s}" for i, s in enumerate(steps[model.length])]
        )
        labels.append(f"L = {model.length}, V = {model.bins}")
        if model.length == 2:  # in one step: x and y drawn together; the continuous default
            together = discrete.sample(model, n, generator, num_steps=1)
            cells[0] += [(together * run.scale + run.shift).numpy()]
            cells[0] += [np.load(ablate.run_once([], exps_dir) / "frames.npy")[-1]]
            boxes[0] += [None, None]
            titles[0] += ["1 step: x, y together", "continuous (edm)"]
    plots.save_grid(cells, path, row_labels=labels, paths=boxes, titles=titles)


# Consistency models (ddpm.py, section 11): each default run fine-tuned by --consistency, sampled
# at 1-8 NFE on its stored levels, beside its teacher's own (Heun) sampler with fewer steps.
CONSISTENCY_DATASETS, CONSISTENCY_SEEDS = ["dino", "moons", "line", "circle"], ["0", "1", "2"]
CONSISTENCY_NFE, TEACHER_STEPS = [1, 2, 4, 8], [1, 2, 4]  # Heun: 1, 3 and 7 NFE


def consistency_runs(dataset: str, seed: str, exps_dir: Path) -> dict[str, Path]:
    """The default run (the teacher) of a dataset and seed and its consistency model, trained or
    reused, and their samples at fewer steps (dino and moons): "teacher", "consistency",
    ("consistency", NFE) and ("teacher", steps)."""
    base = ["--dataset", dataset, "--seed", seed]
    runs = {"teacher": ablate.run_once(base, exps_dir)}
    runs["consistency"] = ablate.run_once(
        [*base, "--consistency", str(runs["teacher"] / "model.pth")], exps_dir
    )
    few = (("consistency", CONSISTENCY_NFE, []), ("teacher", TEACHER_STEPS, ["--sampler", "heun"]))
    for name, counts, sampler in few:  # the teacher's fewest by its ODE, not its default SDE
        for n in counts if dataset in ("dino", "moons") else []:
            args = ["--checkpoint", str(runs[name] / "model.pth"), "--num_epochs", "0"]
            runs[name, n] = ablate.run_once(
                [*args, *sampler, "--seed", seed, "--num_inference_steps", str(n)], exps_dir
            )
    return runs


def consistency_table(exps_dir: Path) -> str:
    """W2 ratio / precision / recall of the consistency models and their teachers at each NFE,
    mean and worst over CONSISTENCY_SEEDS, with the training seconds of the model sampled (the
    fine-tuning's alone for a consistency model): exps/ablations/consistency.md."""
    scores = {}  # (dataset, model, nfe) -> [(metrics, train seconds) of each seed]
    for dataset, seed in ((d, s) for d in CONSISTENCY_DATASETS for s in CONSISTENCY_SEEDS):
        runs = consistency_runs(dataset, seed, exps_dir)
        for key, out in runs.items():
            if key == "consistency" and ("consistency", 2) in runs:  # the same samples
                continue
            trained = runs[key[0] if isinstance(key, tuple) else key]
            metrics = ablate.score(out)
            sampler = "heun" if isinstance(key, tuple) else ddpm.EDM.sampler  # the few-step rows
            name = "consistency" if "consistency" in key else f"edm (teacher), {sampler}"
            seconds = json.loads((trained / "metrics.json").read_text())["seconds"]["train"]
            scores.setdefault((dataset, name, metrics["nfe"]), []).append(metrics | {"s": seconds})
    rows = [
        {"dataset": dataset, "model": model, "NFE": nfe}
        | dict(zip(("W2 ratio / P / R, mean", "worst"), _mean_and_worst(seeds)))
        | {"train s": float(np.mean([m["s"] for m in seeds]))}
        for (dataset, model, nfe), seeds in sorted(scores.items())
    ]
    return ablate.write_table(rows, exps_dir / "ablations" / "consistency")


def consistency_figure(exps_dir: Path, path: Path) -> None:
    """static/consistency.png: seed 0's consistency model of the dino and moons at 1, 2 and 4
    NFE, beside its teacher's samples (each run's last frame), with their scores."""
    cells, classes, titles = [], [], []
    for dataset in ("dino", "moons"):
        runs = consistency_runs(dataset, CONSISTENCY_SEEDS[0], exps_dir)
        outs = [runs["consistency", n] for n in (1, 2, 4)] + [runs["teacher"]]
        cells.append([np.load(out / "frames.npy")[-1] for out in outs])
        titles.append([_triple(*(ablate.score(out)[key] for key in METRICS)) for out in outs])
        labels = [out / "frame_labels.npy" for out in outs]
        classes.append([np.load(f) if f.is_file() else None for f in labels])
    teacher = f"teacher (edm), {ddpm.nfe(ddpm.EDM.sampler, ddpm.EDM.steps)} NFE"
    columns = ["consistency, 1 NFE", "2 NFE", "4 NFE", teacher]
    labels = {"row_labels": ["dino", "moons"], "col_labels": columns, "titles": titles}
    plots.save_grid(cells, path, classes=classes, **labels)


def consistency_part(exps_dir: Path) -> str:
    consistency_figure(exps_dir, STATIC_DIR / "consistency.png")
    return consistency_table(exps_dir)


def discrete_part(exps_dir: Path) -> str:
    discrete_figure(exps_dir, STATIC_DIR / "discrete.png")
    return discrete_table(exps_dir)


def ablations(exps_dir: Path) -> str:
    """The grids static/ablation_<param>.png of ABLATIONS and their tables."""
    tables = []
    for param, values in ABLATIONS:
        rows = ablate.sweep(param, values, [], exps_dir, STATIC_DIR / f"ablation_{param}.png")
        tables.append(f"### {param}\n\n" + ablate.write_table(rows, exps_dir / "ablations" / param))
    return "\n\n".join(tables)


def reflow(exps_dir: Path) -> str:
    reflow_figure(exps_dir, "moons", STATIC_DIR / "reflow.png")
    return reflow_table(exps_dir)


# Every part: (what it draws, how it draws it from exps_dir); `python figures.py --NAME` draws one.
PARTS = {
    "headline": (
        "the default dino run's pictures: samples, the process figure, the GIF, the loss",
        lambda exps_dir: draw_headline(ablate.run_once([], exps_dir)),
    ),
    "field": (
        "the denoiser's field, network and exact, at 4 noise levels (field.png)",
        lambda exps_dir: field_figure(exps_dir, STATIC_DIR / "field.png"),
    ),
    "paths": (
        "the same noise carried to data by 4 samplers, with NFE and straightness (paths.png)",
        lambda exps_dir: paths_figure(exps_dir, STATIC_DIR / "paths.png"),
    ),
    "noise_levels": (
        "where each method trains, times its loss weight in D's units (noise_levels.png)",
        lambda exps_dir: noise_levels_figure(exps_dir, STATIC_DIR / "noise_levels.png"),
    ),
    "targets": (
        "what EDM trains D towards: x_0 and the stable target of one batch (targets.png)",
        lambda exps_dir: targets_figure(exps_dir, STATIC_DIR / "targets.png"),
    ),
    "methods_nfe": (
        "DDPM, flow, EDM and 2-rectified flow at 1-50 NFE (methods_nfe.png; table: seeds 0-2)",
        lambda exps_dir: methods_nfe(exps_dir, STATIC_DIR / "methods_nfe.png"),
    ),
    "ablations": (
        "the ablation grids on the default network: " + ", ".join(p for p, _ in ABLATIONS),
        ablations,
    ),
    "density": (
        "the density figure of each method and its NLL / KL table (density.png)",
        lambda exps_dir: density_figure(exps_dir, STATIC_DIR / "density.png"),
    ),
    "reflow": (
        "the reflow figure (moons) and the table of flow, 2- and 3-rectified flow at 1-8 steps "
        "(dino and moons, seeds 0-2)",
        reflow,
    ),
    "defaults": (
        "the tables of the default run on every dataset and seed beside the exact denoiser, and "
        "of the sampler settings on the same checkpoints",
        defaults_tables,
    ),
    "likelihood": (
        "the tables of NLL and KL(data || model) on every dataset, beside the limit, with W2 "
        "ratio / precision / recall: the defaults (seeds 0-2), --input_scale 200 (seed 0) and "
        "--no_stable_target (seeds 0-2)",
        lambda exps_dir: "\n\n".join(
            likelihood_table(exps_dir, name) for name in LIKELIHOOD_OPTIONS
        ),
    ),
    "fourier_scale": (
        "the table of the dino's NLL and KL(data || model) against the Fourier scale and P_mean",
        fourier_scale_table,
    ),
    "guidance": ("the guidance figure and table (a conditional model)", guidance_sweep),
    "consistency": (
        "the consistency figure (1, 2 and 4 NFE) and the table of consistency models and their "
        "teachers at 1-8 NFE (dino and moons, seeds 0-2; line and circle at 2)",
        consistency_part,
    ),
    "discrete": (
        "the discrete figure (masked diffusion of tokens, discrete.py) and its tables",
        discrete_part,
    ),
}


def main(argv=None) -> None:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exps_dir", type=Path, default=PROJECT_DIR / "exps")
    for name, (help_text, _) in PARTS.items():
        parser.add_argument(f"--{name}", action="store_true", help=f"only {help_text}")
    args = parser.parse_args(argv)
    options.use_run_threads()  # as ddpm.py and likelihood.py: one thread on a shared machine
    try:
        run_folder.check_writable(args.exps_dir)
    except options.UsageError as err:
        parser.error(str(err))
    chosen = [name for name in PARTS if getattr(args, name)] or list(PARTS)
    tables, seconds = [], {}
    for name in chosen:
        tic = time.perf_counter()
        table = PARTS[name][1](args.exps_dir)
        seconds[name] = time.perf_counter() - tic
        if table:
            tables.append(f"## {name}\n\n{table}")
            print(tables[-1] + "\n")
    timing = "\n".join(f"{name}: {s:.0f} s" for name, s in seconds.items())
    print(f"{timing}\ntotal: {sum(seconds.values()):.0f} s")
    if len(chosen) == len(PARTS):
        (args.exps_dir / "ablations" / "tables.md").write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
