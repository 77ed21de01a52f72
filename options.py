"""Every option of `python ddpm.py`: its help, type and range, and the checks a command line
must pass before a run starts (the device, the machine's memory), so that bad input ends in one
line. ddpm.py passes in the names it defines (methods, schedules, samplers, grids): this module
never imports it.
"""

import argparse
import gc
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

import datasets
from positional_embeddings import (
    INPUT_EMBEDDINGS,
    TIME_EMBEDDINGS,
    WAVELENGTH_GAPS,
    fourier_scale,
)

PROJECT_DIR = Path(__file__).resolve().parent


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class TrainingError(Exception):
    """Training stopped early; what was done so far is saved."""


def one_line(message: str) -> str:
    """The message with its line breaks escaped: a typed name may hold a newline."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


NOUNS = {int: "an integer", float: "a number"}


def finite(kind):
    """An argparse type: a number of this kind (int or float), never nan or inf."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {NOUNS[kind]}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


# Counts and sizes above this are typos, and some would overflow torch's 64-bit sizes unchecked.
LARGEST_INT = 2**31 - 1


def positive(kind):
    number = finite(kind)

    def parse(text: str):
        value = number(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if kind is int and value > LARGEST_INT:
            raise argparse.ArgumentTypeError(f"must be at most {LARGEST_INT}, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def auto_or(kind):
    """An argparse type: the word auto, or a number that `kind` accepts."""

    def parse(text: str):
        try:
            return "auto" if text == "auto" else kind(text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} (or auto)") from None

    parse.__name__ = f"auto or {kind.__name__}"
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed, a whole number in [0, 2**32)."""
    value = finite(int)(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default shown once: not for flags, nor where the help says what the default is."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in help:
            return help
        return super()._get_help_string(action)


# --consistency RUN's own defaults: less time than RUN trained (a step is one forward and
# backward, as RUN's; the teacher's chains take ~1.2 s and the levels' search ~2 s: 100 epochs
# trained 11.8-12.2 s on moons against RUN's 12.6-12.8 s, side by side, and the dino 10.3-10.6 s
# against 10.6-11.7 s), a gentler rate and a longer EMA for the fine-tuning
CONSISTENCY_DEFAULTS = {"num_epochs": 100, "learning_rate": 1e-3, "ema_decay": 0.999}
CONSISTENCY_STEPS = (1, 2, 4, 8)  # the step counts whose levels a consistency run searches, keeps


def one_of(items) -> str:
    """The items as a list in words: 1, 2, 4 or 8."""
    *rest, last = map(str, items)
    return f"{', '.join(rest)} or {last}" if rest else last


def build_parser(choices: dict) -> ArgumentParser:
    """The parser of `python ddpm.py`, its options in groups. choices: the names ddpm.py defines
    for --method, --beta_schedule, --flow_t, --activation, --block_norm, --sampler and --grid,
    keyed by option."""
    parser = ArgumentParser(
        prog="ddpm.py",
        description="Train a diffusion model (EDM by default; DDPM or flow matching with "
        "--method) on a 2D point cloud, sample it, and score the samples.",
        formatter_class=HelpFormatter,
    )
    run = parser.add_argument_group("data and run")
    training = parser.add_argument_group("training")
    ddpm = parser.add_argument_group("method ddpm")
    flow = parser.add_argument_group("method flow")
    edm = parser.add_argument_group("method edm")
    network = parser.add_argument_group("network")
    sampling = parser.add_argument_group("sampling")
    guidance = parser.add_argument_group("classes and guidance")
    reflow = parser.add_argument_group("reflow (Liu et al. 2023)")
    consistency = parser.add_argument_group("consistency (Song et al. 2023)")
    advanced = parser.add_argument_group("advanced")
    # Added in the order of config.json and of ablate.run_name's folder names; the groups only
    # shape -h.
    run.add_argument(
        "--experiment_name",
        default="base",
        help="outputs go to <exps_dir>/<experiment_name>/; an existing run is never replaced "
        "without --overwrite",
    )
    run.add_argument(
        "--exps_dir", default=str(PROJECT_DIR / "exps"), help="folder holding all experiments"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run <experiment_name> where it stopped",
    )
    run.add_argument(
        "--dataset",
        default="dino",
        help="the point cloud to learn: a built-in name (`--dataset list` prints them: dino, "
        "moons, line, circle and the other Datasaurus shapes); several names joined by commas, "
        "each one a class (dino,star,bullseye); or your own .csv/.tsv/.npy file with columns "
        "x,y (else its first two numeric columns) and an optional label (or class) column",
    )
    run.add_argument(
        "--data_dir",
        default=None,
        help=f"folder holding {datasets.DATASAURUS_FILE} (or set {datasets.DATA_DIR_ENV}); "
        "default: static/, where it ships",
    )
    run.add_argument(
        "--held_out",
        type=finite(float),
        default=datasets.HELD_OUT,
        help="for your own file: the share of its rows (of each class, at most "
        f"{datasets.HELD_OUT_MAX} in all) kept out of training, to score the samples and the NLL "
        "against; 0 keeps none, and scores against the training rows",
    )
    training.add_argument(
        "--train_batch_size", type=positive(int), default=256, help="points per optimisation step"
    )
    sampling.add_argument(
        "--eval_batch_size",
        type=positive(int),
        default=1000,
        help="points sampled for each frame and for the evaluation",
    )
    training.add_argument(
        "--num_epochs",
        type=int,
        default=125,
        help="passes over the training points (0: only sample --checkpoint)",
    )
    training.add_argument(
        "--learning_rate", type=positive(float), default=2e-3, help="AdamW learning rate"
    )
    training.add_argument(
        "--lr_decay",
        default="cosine",
        choices=("none", "cosine"),
        help="learning-rate schedule over the run",
    )
    training.add_argument(
        "--method",
        default="edm",
        choices=choices["method"],
        help="training objective: ddpm (Ho et al. 2020, predicts eps), flow (flow matching, "
        "predicts eps - x_0) or edm (Karras et al. 2022, preconditioned denoiser)",
    )
    ddpm.add_argument(
        "--num_timesteps",
        type=positive(int),
        default=50,
        help="T, the number of diffusion steps; also ddpm's number of sampling steps",
    )
    ddpm.add_argument(
        "--beta_schedule",
        default="cosine",
        choices=choices["beta_schedule"],
        help="how beta_t grows with t",
    )
    flow.add_argument(
        "--flow_t",
        default="uniform",
        choices=choices["flow_t"],
        help="how training draws t in (0, 1), uniform or logit-normal (Esser et al. 2024)",
    )
    edm.add_argument(
        "--P_mean",
        type=finite(float),
        default=-1.75,
        help="mean of ln sigma in training (Karras et al. use -1.2 for images; lower puts "
        "more training on the fine detail of these shapes, higher fits their density better)",
    )
    edm.add_argument(
        "--P_std", type=positive(float), default=1.5, help="std of ln sigma in training"
    )
    edm.add_argument(
        "--no_stable_target",
        dest="stable_target",
        action="store_false",
        help="train D towards the one x_0 that made each noisy point, not the batch's posterior "
        "mean of x_0 given it (Xu et al. 2023's stable target field, the default: less "
        "variance at high noise, a better fitted density; RESULTS.md)",
    )
    edm.add_argument(
        "--sigma_data",
        type=positive(float),
        default=None,
        help="the data's standard deviation in the preconditioning (default: measured from the "
        "training data)",
    )
    network.add_argument(
        "--embedding_size",
        type=positive(int),
        default=64,
        help="width of each embedding (even, at least 4, for sinusoidal and directional; 64: "
        "64 wave vectors of the point, 32 frequencies of t); 128 fits the dino's and the ring's "
        "density a little better, for more time a step (RESULTS.md)",
    )
    network.add_argument("--hidden_size", type=positive(int), default=128, help="width of the MLP")
    network.add_argument(
        "--hidden_layers", type=positive(int), default=3, help="residual blocks in the MLP"
    )
    network.add_argument(
        "--activation", default="silu", choices=choices["activation"], help="the MLP's nonlinearity"
    )
    advanced.add_argument(
        "--block_norm",
        default="layer",
        choices=choices["block_norm"],
        help="the normalisation at the start of each residual block and before the output layer",
    )
    network.add_argument(
        "--time_embedding", default="sinusoidal", choices=TIME_EMBEDDINGS, help="how the MLP sees t"
    )
    network.add_argument(
        "--input_embedding",
        default="directional",
        choices=INPUT_EMBEDDINGS,
        help="how the MLP sees x and y: sin and cos of waves across the plane in many directions "
        "(directional), or of x and y apart (sinusoidal), or learned, linear or as they are",
    )
    advanced.add_argument(
        "--input_scale",
        type=auto_or(positive(float)),
        default="auto",
        help="the highest frequency of the embedding of x and y, in radians per unit of the "
        "network's input (Tancik et al. 2020's Fourier-feature scale): higher lets the MLP draw "
        "finer detail, and roughens a smooth density. auto: from the training points' spacing, "
        f"2 pi over {WAVELENGTH_GAPS:g} times the points' typical gap in stds (the units EDM's "
        "network sees): the geometric mean over k = 1, 2, 4, ..., 512 of the median distance to "
        "the k-th nearest neighbour over sqrt(k). About 40 for the dino's dots, 10 for a smooth "
        "Gaussian of 8000 points (positional_embeddings.fourier_scale); config.json keeps the "
        "number",
    )
    guidance.add_argument(
        "--cond_drop_prob",
        type=finite(float),
        default=0.1,
        help="how often training hides the class, so the model also learns p(x) for guidance",
    )
    guidance.add_argument(
        "--class_label",
        default=None,
        help="sample only this class (default: every class in its share of the data)",
    )
    guidance.add_argument(
        "--guidance_scale",
        type=finite(float),
        default=1.0,
        help="classifier-free guidance scale s: 1 plain conditional, >1 sharper classes, "
        "0 unconditional",
    )
    guidance.add_argument(
        "--guidance_interval",
        type=finite(float),
        nargs=2,
        default=[0.0, 1.0],
        metavar=("LO", "HI"),
        help=(
            "guide only the steps from x_t with LO < t/T <= HI, s = 1 elsewhere "
            "(Kynkäänniemi et al. 2024); t/T runs from 1/T, nearly clean, to 1, pure noise"
        ),
    )
    training.add_argument(
        "--ema_decay",
        type=finite(float),
        default=0.995,
        help="decay of the moving average of the weights used for sampling, in [0, 1)",
    )
    sampling.add_argument(
        "--denoiser",
        default="mlp",
        choices=("mlp", "exact"),
        help="exact: no training; sample with the true distribution's E[x_0 | x_t] (exact.py), "
        "the limit any network can reach with these sampler options",
    )
    sampling.add_argument(
        "--sampler",
        default=None,
        choices=choices["sampler"],
        help="ancestral DDPM steps, DDIM steps (--eta), or EDM's Euler or Heun steps of the "
        "probability-flow ODE (Heun: 2 network evaluations per step but the last), or "
        "Euler-Maruyama steps of the reverse-time SDE (sde), or a consistency model's jumps "
        "(consistency) (default: the method's own: ddpm for ddpm, heun for flow, sde for edm, "
        "consistency for a --consistency run)",
    )
    advanced.add_argument(
        "--grid",
        default=None,
        choices=choices["grid"],
        help="the noise levels of the sampling steps: DDPM's trained timesteps (ddpm only), "
        "the rho = 7 grid between --sigma_max and --sigma_min, even steps in flow's t, or the "
        "levels a --consistency run stored (default: the method's own: timesteps, uniform_t, "
        "karras, stored)",
    )
    sampling.add_argument(
        "--num_inference_steps",
        type=positive(int),
        default=None,
        help="sampling steps, on the timesteps grid a subset of the T timesteps (default: the "
        "method's own: all T for ddpm, 12 for flow, 50 for edm)",
    )
    advanced.add_argument(
        "--sigma_min",
        type=positive(float),
        default=0.002,
        help="flow and edm: the last noise level > 0 of the karras grid (below the dino's "
        "jitter, 0.011)",
    )
    advanced.add_argument(
        "--sigma_max",
        type=positive(float),
        default=10.0,
        help="flow and edm: the first noise level of a chain (ddpm: its own sigma_T)",
    )
    advanced.add_argument(
        "--s_churn",
        type=finite(float),
        default=None,
        help="stochastic churn of Karras et al. 2022, Alg. 2: noise added back before each "
        "step (0: none; default: the method's own, 2 for edm, 0 for ddpm and flow)",
    )
    advanced.add_argument(
        "--init_noise",
        default="data",
        choices=("data", "scaled", "unscaled"),
        help="start from the Gaussian with the noisy data's mean and variance, of each sample's "
        "class (data), from sigma_max * eps (scaled), or from eps (unscaled, Diamond's sampler)",
    )
    sampling.add_argument(
        "--eta",
        type=finite(float),
        default=0.7,
        help="DDIM's eta in [0, 1]: 0 deterministic, 1 as noisy as DDPM",
    )
    advanced.add_argument(
        "--no_clip_x0",
        dest="clip_x0",
        action="store_false",
        help="do not clip the predicted x_0 to the data's range",
    )
    run.add_argument(
        "--checkpoint",
        default=None,
        help="start from this model.pth, or a run folder's (with --num_epochs 0: only sample "
        "and evaluate)",
    )
    reflow.add_argument(
        "--reflow",
        default=None,
        metavar="RUN",
        help="train a flow on pairs (noise, point) of this run's ODE (a run folder or its "
        "model.pth; any method), for straighter paths and few-step sampling; a reflow of a "
        "reflow gives the 3-rectified flow",
    )
    reflow.add_argument(
        "--reflow_pairs",
        type=positive(int),
        default=None,
        help="the pairs drawn from the teacher, by 12 heun steps each (default: as many as its "
        "training points, so that --num_epochs trains as long as the teacher)",
    )
    consistency.add_argument(
        "--consistency",
        default=None,
        metavar="RUN",
        help="fine-tune this edm run's denoiser (a run folder or its model.pth) into a "
        "consistency model, distilled from the run's own ODE (chains from sigma_max, their ends "
        "the targets at fixed levels), for sampling in "
        + one_of(CONSISTENCY_STEPS)
        + " network evaluations (--num_inference_steps, sampler consistency, on levels the run "
        "searches and keeps); its defaults: "
        + ", ".join(f"--{key} {value:g}" for key, value in CONSISTENCY_DEFAULTS.items()),
    )
    run.add_argument(
        "--save_images_step",
        type=positive(int),
        default=10,
        help="save a frame every this many epochs",
    )
    run.add_argument(
        "--seed", type=int, default=0, help="same seed and device give identical losses and samples"
    )
    run.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda when available",
    )
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv) -> dict:
    """The options the user typed, without the defaults, its options' or a script's own
    (set_defaults, as discrete.py's); the parser is left as it was."""
    defaults, own = [action.default for action in parser._actions], parser._defaults
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser._defaults = {}
    try:
        return vars(parser.parse_args(argv))
    finally:
        for action, default in zip(parser._actions, defaults):
            action.default = default
        parser._defaults = own


def check_config(config: dict) -> None:
    if config["num_epochs"] < 0 or (config["num_epochs"] == 0 and not config["checkpoint"]):
        raise UsageError("--num_epochs must be positive (or 0 with --checkpoint, to only sample)")
    embeddings = {config["time_embedding"], config["input_embedding"]}
    sinusoidal = {"sinusoidal", "directional"} & embeddings
    if sinusoidal and (config["embedding_size"] < 4 or config["embedding_size"] % 2):
        raise UsageError(
            "--embedding_size must be even and at least 4 for sinusoidal and directional "
            f"embeddings, got {config['embedding_size']}"
        )
    if not config["sigma_min"] < config["sigma_max"]:
        raise UsageError(
            "--sigma_min must be below --sigma_max, got "
            f"{config['sigma_min']:g} and {config['sigma_max']:g}"
        )
    if not 0 <= config["held_out"] < 1:
        raise UsageError(f"--held_out must be in [0, 1), got {config['held_out']}")
    if config["s_churn"] is not None and config["s_churn"] < 0:
        raise UsageError(f"--s_churn must be at least 0, got {config['s_churn']:g}")
    if not 0 <= config["ema_decay"] < 1:
        raise UsageError(f"--ema_decay must be in [0, 1), got {config['ema_decay']}")
    if config["num_timesteps"] < 2:  # one step: the schedule's ends are the same beta
        raise UsageError(f"--num_timesteps must be at least 2, got {config['num_timesteps']}")
    if not 0 <= config["eta"] <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {config['eta']}")
    if not 0 <= config["cond_drop_prob"] <= 1:
        raise UsageError(f"--cond_drop_prob must be in [0, 1], got {config['cond_drop_prob']}")
    if config["guidance_scale"] < 0:
        raise UsageError(f"--guidance_scale must be at least 0, got {config['guidance_scale']}")
    if not 0 <= config["seed"] < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {config['seed']}")
    lo, hi = config["guidance_interval"]
    if not 0 <= lo < hi <= 1:
        raise UsageError(f"--guidance_interval LO HI needs 0 <= LO < HI <= 1, got {lo:g} {hi:g}")
    name = config["experiment_name"]
    if not name or name in (".", "..") or any(sep in name for sep in "/\\") or name.startswith("."):
        raise UsageError(
            "--experiment_name must be a plain folder name (no path separators, no leading "
            f"dot), got {name!r}"
        )


def check_command_line(parser: argparse.ArgumentParser, argv) -> tuple[dict, dict]:
    """(config, the options typed) of a command line, checked on their own."""
    config, explicit = vars(parser.parse_args(argv)), explicit_options(parser, argv)
    check_config(config)
    if config["denoiser"] == "exact":  # nothing to train or load
        if {"num_epochs", "checkpoint", "resume"} & explicit.keys():
            raise UsageError(
                "--denoiser exact trains nothing: drop --num_epochs/--checkpoint/--resume"
            )
        config["num_epochs"] = 0
    if config["reflow_pairs"] and not config["reflow"]:
        raise UsageError("--reflow_pairs is the number of pairs of --reflow RUN: give both")
    if config["reflow"] and config["consistency"]:
        raise UsageError("--reflow and --consistency train two different students: give one")
    if config["consistency"] and config["checkpoint"]:
        raise UsageError("--consistency RUN starts from RUN's model: drop --checkpoint")
    for start in ("checkpoint", "reflow", "consistency"):  # a run folder means its model.pth
        if config[start]:
            path = Path(config[start])
            config[start] = explicit[start] = str(path / "model.pth" if path.is_dir() else path)
    # a file's path and --data_dir absolute: config.json keeps them so, and evaluate.py,
    # likelihood.py, --resume and ablate.py's reuse of a run find them from any working folder
    paths = ["dataset"] if datasets.names_a_file(config["dataset"]) else []
    paths += ["data_dir"] if config["data_dir"] else []
    for name in paths:
        config[name] = os.path.abspath(os.path.expanduser(config[name]))
        if name in explicit:
            explicit[name] = config[name]
    if config["consistency"]:  # its own defaults where none was typed
        config |= {key: value for key, value in CONSISTENCY_DEFAULTS.items() if key not in explicit}
    config["consistency_sigmas"] = None  # a consistency run's levels, stored when it ends
    return config, explicit


def check_method_options(parser: argparse.ArgumentParser, config: dict, explicit: dict) -> None:
    """An option of another method's group ("method ddpm", "method flow", "method edm") would be
    ignored: refuse it, once a checkpoint's or teacher's config has said the run's method; and so
    would DDIM's --eta with another sampler, and EDM's training levels and target in a
    consistency run."""
    for group in parser._action_groups:
        method = group.title.removeprefix("method ")
        if method == group.title or method == config["method"]:
            continue
        for action in group._group_actions:
            if action.dest in explicit:
                raise UsageError(
                    f"{action.option_strings[0]} is an option of --method {method}, and this "
                    f"run's method is {config['method']}: drop it"
                )
    if "eta" in explicit and config["sampler"] != "ddim":
        raise UsageError("--eta is DDIM's: add --sampler ddim")
    if config.get("consistency"):  # it trains on the teacher's chains, at fixed levels
        for action in parser._actions:
            if action.dest in ("P_mean", "P_std", "stable_target") and action.dest in explicit:
                option = action.option_strings[0]
                raise UsageError(f"{option} sets how RUN trained; --consistency distils RUN's ODE")


def check_grid(config: dict, sampling: dict) -> None:
    """The sampler's grid (sampling: ddpm.sampling_options) against the model: checked once a
    checkpoint's config is merged."""
    grid, steps = sampling["grid"], sampling["num_inference_steps"]
    if grid == "stored" and not config["consistency"]:
        raise UsageError("--grid stored is a consistency run's: give --consistency RUN")
    kept = list(config["consistency_sigmas"] or CONSISTENCY_STEPS)  # what it keeps, or will
    if grid == "stored" and str(steps) not in map(str, kept):  # it learned only those levels
        raise UsageError(
            f"--num_inference_steps {steps}: a consistency run samples on the levels it "
            f"searched, for {one_of(kept)} steps; or give --grid karras"
        )
    if grid == "timesteps" and config["method"] != "ddpm":
        raise UsageError(f"--grid timesteps needs --method ddpm, got --method {config['method']}")
    if grid == "timesteps" and sampling["sampler"] == "heun":
        # Its first step spans sigma ~ 1e3-2e4 down to ~ 15, where Heun's average of the two
        # slopes overshoots; DDPM's and DDIM's steps are exact there.
        raise UsageError("--sampler heun needs a grid that starts lower: add --grid karras")
    if grid == "timesteps" and steps > config["num_timesteps"]:
        raise UsageError(
            f"--num_inference_steps {steps} is more than the {config['num_timesteps']} "
            "training timesteps"
        )


def check_dataset(config: dict, dataset: datasets.Dataset, explicit: dict) -> None:
    """What depends on the dataset and the machine: the class asked for, guidance (classes to
    guide towards), a file's held-out rows (one of each class at least), the memory needed; and
    options typed (explicit) that the run would ignore: guidance's without classes, --held_out
    without a file."""
    if config["class_label"] is not None and config["class_label"] not in dataset.classes:
        raise UsageError(
            f"--class_label {config['class_label']!r} is not a class of {dataset.name}: "
            f"its classes are {', '.join(dataset.classes) or 'none'}"
        )
    guidance = ("guidance_scale", "guidance_interval", "cond_drop_prob")
    given = next((name for name in guidance if name in explicit), None)
    if not dataset.classes and given:  # else silently unguided, or nothing hidden
        raise UsageError(
            f"--{given} needs classes to guide towards, and {dataset.name} has none (a file "
            "names them in a column called label or class; moons and dino,star,... have them)"
        )
    if "held_out" in explicit and not dataset.is_file:
        raise UsageError(
            f"--held_out is for your own file: {dataset.name} is scored on fresh draws"
        )
    held = dataset.unseen_counts
    if held is not None and not held.all():  # a class of one row: trained on, never held out
        name = dataset.classes[int((held == 0).argmax())] if dataset.classes else "its rows"
        raise UsageError(
            f"{dataset.name}: class {name!r} has no held-out row to score against (it has one "
            "row); give it more rows, or --held_out 0 to score against the training rows"
        )
    if resolve_device(config["device"]).type == "cpu" and hasattr(os, "sysconf"):
        check_memory(config)  # on a GPU torch raises its out-of-memory error in time


def resolve_input_scale(config: dict, dataset: datasets.Dataset) -> dict:
    """The config with --input_scale auto replaced by its number, from the training points."""
    if config["input_scale"] != "auto":
        return config
    return config | {"input_scale": round(fourier_scale(dataset.train_set()[0]), 1)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but this machine has no CUDA device: use --device cpu")
    return torch.device(name)


def check_memory(config: dict) -> None:
    """Refuse a CPU run whose largest tensors alone outgrow the machine's memory: past it the
    kernel kills the process part way, where torch cannot raise. A lower bound, in bytes."""
    hidden, eval_points = config["hidden_size"], config["eval_batch_size"]
    batch = max(config["train_batch_size"], eval_points)
    width = 3 * config["embedding_size"] + (config["hidden_layers"] + 1) * hidden
    frames = config["num_epochs"] // config["save_images_step"] + 1
    needed = {
        # the inputs and activations of one forward pass, float32
        "--train_batch_size or --eval_batch_size": 4 * batch * width,
        # weights, gradients, AdamW's two moments and the EMA
        "--hidden_size or --hidden_layers": 5 * 4 * config["hidden_layers"] * hidden**2,
        # the loss of every step (at least one an epoch) and every frame's points
        "--num_epochs": 4 * config["num_epochs"] + 8 * frames * eval_points,
        # DDPM's schedule: 3 float64 and 6 float32 tensors of T values
        "--num_timesteps": 48 * config["num_timesteps"] if config["method"] == "ddpm" else 0,
        # reflow's pairs: x_0 and eps, and the teacher's chain's x and D, (m, 2) float32 each
        "--reflow_pairs": 32 * (config["reflow_pairs"] or 0),
    }
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if sum(needed.values()) > available:
        largest = max(needed, key=needed.get)
        raise UsageError(
            f"this run needs at least {sum(needed.values()) / 2**30:.0f} GiB at once and the "
            f"machine has {available / 2**30:.0f} GiB: lower {largest}"
        )


def use_run_threads() -> None:
    """One torch thread, unless OMP_NUM_THREADS asks for more: on an idle 2-core machine a second
    thread shortens a step by only about a fifth, and on a busy one threads that wait for each
    other make a step up to 10x slower."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def is_out_of_memory(err: Exception) -> bool:
    """An allocation the machine cannot make: torch's CPU allocator raises a plain RuntimeError."""
    out_of_memory = (MemoryError, torch.OutOfMemoryError)
    return isinstance(err, out_of_memory) or "can't allocate memory" in str(err)


@contextmanager
def errors_in_one_line(parser: argparse.ArgumentParser):
    """End a run that cannot start or finish in one line: exit 2 for bad input, 1 for a failed
    run or a full memory, 130 for Ctrl-C; any other error is a bug and keeps its traceback."""
    try:
        yield
    except (UsageError, datasets.DatasetError) as err:
        parser.error(str(err))
    except TrainingError as err:
        parser.exit(1, f"{parser.prog}: {one_line(str(err))}\n")
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        parser.exit(
            1,
            f"{parser.prog}: out of memory ({one_line(str(err).splitlines()[0])}): choose a "
            "smaller --hidden_size, --embedding_size, --train_batch_size, --eval_batch_size, "
            "--num_timesteps or --num_epochs\n",
        )
    except KeyboardInterrupt as err:
        parser.exit(130, f"{parser.prog}: {one_line(str(err) or 'interrupted')}\n")


def run_command(parser: argparse.ArgumentParser, argv, prepare, experiment) -> tuple | None:
    """What `python ddpm.py` (and discrete.py) does with its parser: `--dataset list` prints the
    names (None); else, on one thread, prepare(parser, argv)'s (config, dataset, checkpoint) run
    by experiment, bad input and failed runs ended in one line. Returns (config, metrics)."""
    if parser.parse_args(argv).dataset == "list":
        print("\n".join(datasets.DATASETS))
        return None
    use_run_threads()
    # The garbage collector leaves alone the objects that exist now, the imported modules' 260 000:
    # a full collection skips them (0.1 s of a run), and so does the exit (0.5 s). Once: figures.py
    # makes hundreds of runs in one process, and frozen garbage is never collected.
    if not gc.get_freeze_count():
        gc.freeze()
    with errors_in_one_line(parser):
        config, dataset, checkpoint = prepare(parser, argv)
        return config, experiment(config, dataset, checkpoint)
