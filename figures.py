"""Rebuild every figure and table of the README: python figures.py (about 45 minutes on 2 cores
from scratch).

Runs (or reuses) the default run of each dataset and every ablation sweep in exps/, then
draws into static/: the forward and reverse processes, their animation, the samples, the
loss curve and the ablation grids. The tables go to exps/ablations/.
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

import ablate
import checkpoints
import datasets
import ddpm
import discrete
import evaluate
import likelihood
import options
import plots
import run_folder
from options import PROJECT_DIR

STATIC_DIR = PROJECT_DIR / "static"
# (option, values): the original's ablations, on the dino, with the defaults elsewhere.
SWEEPS = [
    ("dataset", ["dino", "moons", "line", "circle"]),
    ("learning_rate", ["1e-2", "3e-3", "1e-3", "1e-4"]),
    ("num_timesteps", ["10", "50", "200"]),
    ("beta_schedule", ["linear", "quadratic", "cosine", "sigmoid"]),
    ("hidden_size", ["32", "64", "128", "256"]),
    ("hidden_layers", ["1", "3", "5"]),
    ("time_embedding", ["sinusoidal", "learnable", "linear", "zero"]),
    ("input_embedding", ["sinusoidal", "learnable", "linear", "identity"]),
]
SNAPSHOTS = 6  # panels in the forward and reverse figures
# The original's ablations, the DDIM sweeps and the guidance model are DDPM's: the defaults before
# EDM became the default (README, "Ablations").
DDPM = ["--method", "ddpm", "--input_scale", "25", "--lr_decay", "none", "--learning_rate", "3e-3"]
DDPM += ["--init_noise", "scaled"]
# ... and the network they were measured with: plain blocks, GELU, x and y embedded apart
PLAIN_NETWORK = ["--block_norm", "none", "--activation", "gelu", "--input_embedding", "sinusoidal"]
DDPM += PLAIN_NETWORK


def forward_process(config: dict, n: int = 1000, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """(t, x_t) for t = 0..T: the data, then ever noisier (Ho et al. 2020, eq. 4)."""
    betas = ddpm.BETA_SCHEDULES[config["beta_schedule"]](config["num_timesteps"])
    schedule = ddpm.NoiseSchedule(betas)
    x_0 = torch.from_numpy(
        datasets.get_dataset(config["dataset"], n, seed=seed, data_dir=config["data_dir"])
    )
    eps = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed))
    steps = [(0, x_0.numpy())]
    for t in range(schedule.num_timesteps):
        steps.append(
            (t + 1, schedule.add_noise(x_0, eps, torch.full((n,), t)).numpy())
        )  # paper's index t + 1
    return steps


def reverse_process(
    checkpoint_path: Path, n: int = 1000, seed: int = 0
) -> list[tuple[int, np.ndarray]]:
    """(sigma, x) from sigma_max down to 0 with the run's EMA model and sampler.

    x is shown as x / sqrt(1 + sigma^2), DDPM's x_t: the noise of every method stays in view."""
    run, _ = likelihood.load_run(checkpoint_path)
    generator = torch.Generator().manual_seed(seed)
    options = ddpm.sampling_options(run.config) | {"guidance_scale": 1.0}
    # unconditional: the clip range and the start (init_noise "data") of all the data
    options |= {
        "clip_range": run.clip_range,
        "start_moments": torch.var_mean(run.data, 0, correction=0)[::-1],
    }
    steps = ddpm.reverse_process(run.ema.module.eval(), run.method, n, generator, **options)
    return [(sigma, (x / math.sqrt(1 + sigma**2)).numpy()) for sigma, x in steps]


def _spaced(steps: list, count: int) -> list:
    return [steps[i] for i in np.linspace(0, len(steps) - 1, count).round().astype(int)]


def draw_process_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    """forward.png, reverse.png and diffusion.gif of a finished run."""
    config = json.loads((run_dir / "config.json").read_text())
    forward, reverse = forward_process(config), reverse_process(run_dir / "model.pth")
    paths = [out_dir / "forward.png", out_dir / "reverse.png", out_dir / "diffusion.gif"]
    for steps, path in zip((forward, reverse), paths):
        shown = _spaced(steps, SNAPSHOTS)
        labels = [f"t = {t}" if steps is forward else f"sigma = {t:.3g}" for t, _ in shown]
        plots.save_grid([[x for _, x in shown]], path, col_labels=labels)
    both = [(f"forward: t = {t}", x) for t, x in forward] + [
        (f"reverse: sigma = {sigma:.3g}", x) for sigma, x in reverse
    ]
    plots.save_animation([x for _, x in both], [title for title, _ in both], paths[2])
    return paths


# Samplers at about 5, 10, 20 and 50 network evaluations: (sampler, grid, steps per NFE).
SAMPLER_STEPS = {"ddpm": [5, 10, 20, 50], "ddim": [5, 10, 20, 50], "euler": [5, 10, 20, 50]}
SAMPLER_STEPS["heun"] = [3, 5, 10, 25]  # 2 steps - 1 NFE: 5, 9, 19, 49
METHOD_DATASETS = ["dino", "moons", "line", "circle"]


def _sampled(checkpoint_or_exact: list[str], sampler: str, steps: int, exps_dir: Path) -> dict:
    """Score of one sampler setting, sampling a trained run's checkpoint or the exact denoiser."""
    args = [*checkpoint_or_exact, "--sampler", sampler, "--num_inference_steps", str(steps)]
    out = ablate.run_once(args, exps_dir)
    metrics = ablate.score(out)
    return {key: metrics[key] for key in ("nfe", "w2_ratio", "precision", "recall")}


def method_table(exps_dir: Path) -> str:
    """Every method trained at the default budget on the dino, sampled by every sampler at about
    5-50 NFE beside the exact denoiser's limit; and on moons, line and circle with the default
    sampler. Markdown, also in exps/ablations/methods.md."""
    rows = []
    for dataset in METHOD_DATASETS:
        for method in ddpm.METHODS:
            trained = ablate.run_once(["--dataset", dataset, "--method", method], exps_dir)
            train_seconds = json.loads((trained / "metrics.json").read_text())["seconds"]["train"]
            checkpoint = ["--checkpoint", str(trained / "model.pth"), "--num_epochs", "0"]
            limit = ["--dataset", dataset, "--method", method, "--denoiser", "exact"]
            settings = [(s, n) for s, steps in SAMPLER_STEPS.items() for n in steps]
            if dataset != "dino":  # the method's own sampler only
                options = ddpm.sampling_options(
                    vars(ddpm.build_parser().parse_args(["--method", method]))
                )
                settings = [(options["sampler"], options["num_inference_steps"])]
            for sampler, steps in settings:
                if method == "ddpm" and sampler == "heun":
                    continue  # its trained grid starts too high for Heun (options.py, check_grid)
                net = _sampled([*checkpoint, "--method", method], sampler, steps, exps_dir)
                exact = _sampled(limit, sampler, steps, exps_dir)
                rows.append(
                    {"dataset": dataset, "method": method, "train_seconds": train_seconds}
                    | {"sampler": sampler, "steps": steps, "nfe": net["nfe"]}
                    | {k: net[k] for k in ("w2_ratio", "precision", "recall")}
                    | {f"exact {k}": exact[k] for k in ("w2_ratio", "precision", "recall")}
                )
    return ablate.write_table(rows, exps_dir / "ablations" / "methods")


DENSITY_CELLS = 80  # the density figure's grid: 80 x 80 points over [-6, 6]^2


def density_figure(exps_dir: Path, path: Path) -> str:
    """static/density.png: log p_model of each method's default dino run (through the
    probability-flow ODE, likelihood.py) beside the exact density, above their samples; and the
    NLL / KL table of the same runs."""
    axis = torch.linspace(-plots.LIMIT, plots.LIMIT, DENSITY_CELLS)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)  # (N*N, 2)
    dino = datasets.load("dino")
    true = likelihood.closed_form(dino)
    images, samples, titles, rows = [true.log_prob(grid).numpy()], [dino.draw(1000, 1)[0]], [], []
    titles.append("the data (exact)")
    for method in ddpm.METHODS:
        out = ablate.run_once(["--method", method], exps_dir)
        run, _ = likelihood.load_run(out / "model.pth")
        model_nll = likelihood.run_nll(run)
        images.append(-model_nll(grid).numpy())
        samples.append(np.load(out / "frames.npy")[-1])
        titles.append(method)
        held_out = torch.from_numpy(dino.draw(likelihood.NLL_POINTS, likelihood.NLL_SEED)[0])
        nll = model_nll(held_out)
        kl = nll + true.log_prob(held_out)
        rows.append({"method": method, "nll": nll.mean().item(), "kl": kl.mean().item()})
    side = (DENSITY_CELLS, DENSITY_CELLS)
    plots.save_densities([image.reshape(side) for image in images], samples, titles, path)
    return ablate.write_table(rows, exps_dir / "ablations" / "likelihood")


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
    shutil.copy(dino / "loss.png", STATIC_DIR / "loss.png")


# The conditional model: three Datasaurus shapes, trained long with a decaying learning rate.
GUIDED = [
    *DDPM[:4],  # its own learning rate and decay below
    *PLAIN_NETWORK,
    "--dataset",
    "dino,star,bullseye",
    "--num_epochs",
    "10000",
    "--learning_rate",
    "1e-3",
    "--lr_decay",
    "cosine",
    "--save_images_step",
    "500",
]
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
]  # one draw of 1000 points is noisy: the W2 ratio moves by up to 0.5 between seeds (README)


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
                    "--init_noise",
                    "scaled",  # as the README's guidance table was measured
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
            f"s = {scale}" + ("" if interval == "0 1" else f", t/T <= {interval.split()[1]}")
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


# Reflow (ddpm.py, section 6): a flow, its 2- and 3-rectified flows, sampled in 1-8 Euler steps,
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


def _triple(w2_ratio: float, precision: float, recall: float) -> str:
    return f"{w2_ratio:.2f} / {precision:.2f} / {recall:.2f}"


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
        mean = lambda key: np.mean([m[key] for m in seeds])  # noqa: E731
        worst = lambda key, pick: pick(m[key] for m in seeds)  # noqa: E731
        rows.append(
            {"dataset": dataset, "model": model, "NFE": nfe}
            | {
                "W2 ratio / P / R, mean": _triple(
                    mean("w2_ratio"), mean("precision"), mean("recall")
                )
            }
            | {
                "worst": _triple(
                    worst("w2_ratio", max), worst("precision", min), worst("recall", min)
                )
            }
            | {"straightness": float(mean("straightness")), "train s": float(mean("seconds"))}
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
SCORES = ("w2_ratio", "precision", "recall")


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
    row = {f"seed {i}": _triple(*(m[key] for key in SCORES)) for i, m in enumerate(runs)}
    row["mean"] = _triple(*map(mean, SCORES))
    if "off_support_fraction" in runs[0]:
        row["off-support"] = ", ".join(f"{100 * m['off_support_fraction']:.1f}%" for m in runs)
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
            row[f"{name}: trained"] = _triple(*(trained[k] for k in SCORES))
            row[f"{name}: NLL"], row[f"{name}: train s"] = trained["nll"], trained["train s"]
        for name in DISCRETE_DATASETS:  # true points in V bins, mean of seeds 0-2
            limit = [quantised(datasets.load(name), int(bins), seed) for seed in range(3)]
            mean = lambda key: float(np.mean([m[key] for m in limit]))  # noqa: E731
            row[f"{name}: true points"] = _triple(*map(mean, SCORES))
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


def main(argv=None) -> None:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exps_dir", type=Path, default=PROJECT_DIR / "exps")
    parser.add_argument(
        "--headline",
        action="store_true",
        help="only the default dino run's pictures (samples, processes, animation, loss)",
    )
    parser.add_argument(
        "--density",
        action="store_true",
        help="only the density figure of each method and its NLL / KL table",
    )
    parser.add_argument(
        "--reflow",
        action="store_true",
        help="only the reflow figure (moons) and the table of flow, 2- and 3-rectified flow at "
        "1-8 steps (dino and moons, seeds 0-2)",
    )
    parser.add_argument(
        "--discrete",
        action="store_true",
        help="only the discrete figure (masked diffusion of tokens, discrete.py) and its table",
    )
    parser.add_argument(
        "--methods",
        action="store_true",
        help="only the table of methods x samplers x NFE with the exact denoiser's limits",
    )
    args = parser.parse_args(argv)
    options.use_run_threads()  # as ddpm.py and likelihood.py: one thread on a shared machine
    try:
        run_folder.check_writable(args.exps_dir)
    except options.UsageError as err:
        parser.error(str(err))
    if args.headline:
        draw_headline(ablate.run_once([], args.exps_dir))
        return
    if args.methods:
        print(method_table(args.exps_dir))
        return
    if args.discrete:
        discrete_figure(args.exps_dir, STATIC_DIR / "discrete.png")
        print(discrete_table(args.exps_dir))
        return
    if args.reflow:
        reflow_figure(args.exps_dir, "moons", STATIC_DIR / "reflow.png")
        print(reflow_table(args.exps_dir))
        return
    if args.density:
        print(density_figure(args.exps_dir, STATIC_DIR / "density.png"))
        return
    tables = []
    for param, values in SWEEPS:
        figure = STATIC_DIR / f"ablation_{param}.png"
        rows = ablate.sweep(param, values, DDPM, args.exps_dir, figure)
        tables.append(
            f"### {param}\n\n" + ablate.write_table(rows, args.exps_dir / "ablations" / param)
        )

    draw_headline(args.exps_dir / ablate.run_name([]))

    # DDIM from each default checkpoint: fewer steps, same model.
    for dataset in ["dino", "moons", "line", "circle"]:
        checkpoint = args.exps_dir / ablate.run_name(["--dataset", dataset, *DDPM]) / "model.pth"
        steps = ["5", "10", "20", "50"] if dataset == "dino" else ["20"]
        extra = ["--checkpoint", str(checkpoint), "--num_epochs", "0", "--sampler", "ddim"]
        rows = ablate.sweep(
            "num_inference_steps",
            steps,
            extra,
            args.exps_dir,
            args.exps_dir / "ablations" / f"ddim_{dataset}.png",
        )
        tables.append(
            f"### DDIM steps, {dataset}\n\n"
            + ablate.write_table(rows, args.exps_dir / "ablations" / f"ddim_{dataset}")
        )
    extra = [
        "--checkpoint",
        str(args.exps_dir / ablate.run_name(DDPM) / "model.pth"),
        "--num_epochs",
        "0",
        "--sampler",
        "ddim",
        "--num_inference_steps",
        "20",
    ]
    rows = ablate.sweep(
        "eta",
        ["0", "0.3", "0.5", "0.7", "1"],
        extra,
        args.exps_dir,
        args.exps_dir / "ablations" / "ddim_eta.png",
    )
    tables.append(
        "### DDIM eta at 20 steps, dino\n\n"
        + ablate.write_table(rows, args.exps_dir / "ablations" / "ddim_eta")
    )
    tables.append("### Methods and samplers\n\n" + method_table(args.exps_dir))
    tables.append(
        "### Log-likelihood\n\n" + density_figure(args.exps_dir, STATIC_DIR / "density.png")
    )
    reflow_figure(args.exps_dir, "moons", STATIC_DIR / "reflow.png")
    tables.append("### Reflow\n\n" + reflow_table(args.exps_dir))
    tables.append(
        "### Classifier-free guidance, dino,star,bullseye\n\n" + guidance_sweep(args.exps_dir)
    )
    text = "\n\n".join(tables) + "\n"
    (args.exps_dir / "ablations" / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
