"""Sweep one hyperparameter: a run per value, a grid of samples over training, a table of W2 ratios,
precision and recall.

    python ablate.py learning_rate 1e-2 1e-3 1e-4 1e-5
    python ablate.py beta_schedule linear quadratic cosine sigmoid --dataset moons
    python ablate.py dataset dino moons line circle

Runs already in exps/ with the same options are reused. The grid has a row per value, labelled
with its W2 ratio / precision / recall, and a column per saved checkpoint from the second on
(static/ablation_<param>.png); the numbers go to exps/ablations/<param>.csv and .md.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import checkpoints
import datasets
import ddpm
import evaluate
import options
import plots
import run_folder
from options import PROJECT_DIR

STATIC_DIR = PROJECT_DIR / "static"
COLUMNS = 6  # saved epochs shown per row


def _shown(key: str, value) -> str:
    """An option's value as a folder name shows it: a checkpoint or a teacher (--reflow,
    --consistency) by its run's folder (past 40 characters by their digest: a chain of teachers
    stays a short name), a dataset file by its name, a list comma-joined."""
    if key == "dataset" and datasets.names_a_file(value):
        return Path(value).name
    if key in ("checkpoint", "reflow", "consistency"):
        name = Path(value).parent.name
        return name if len(name) <= 40 else hashlib.sha256(name.encode()).hexdigest()[:12]
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def run_name(args: list[str]) -> str:
    """A run is named by the options that differ from the defaults, so sweeps share their runs."""
    parser = ddpm.build_parser()
    defaults, config = vars(parser.parse_args([])), vars(parser.parse_args(args))
    changed = [
        f"{k}={_shown(k, v)}"
        for k, v in config.items()
        if v != defaults[k] and k not in ("experiment_name", "exps_dir", "data_dir", "device")
    ]
    return "ablate_" + ("_".join(changed) or "defaults")


def run_once(args: list[str], exps_dir: Path) -> Path:
    """Train with `args` into exps_dir/<run_name>, unless a finished run with these options is
    there."""
    name = run_name(args)
    out = exps_dir / name
    parser = ddpm.build_parser()
    # the config ddpm.py saves (a teacher's own defaults in), but for what it keeps of a run: a
    # checkpoint's model fields come from the checkpoint, its name already says which
    config = options.check_command_line(parser, args)[0]
    kept = (*checkpoints.RUN_FIELDS, *(checkpoints.MODEL_FIELDS if config["checkpoint"] else ()))
    defaults = vars(parser.parse_args([]))
    wanted = {k: v for k, v in config.items() if k not in (*kept, "consistency_sigmas")}
    done = (out / "metrics.json").is_file()
    if done and config["checkpoint"]:  # stale if its checkpoint was trained again since
        trained_at = Path(config["checkpoint"]).stat().st_mtime  # a model.pth (checkpoints.load)
        done = trained_at < (out / "metrics.json").stat().st_mtime
    if done:
        if wanted.get("input_scale") == "auto":  # the run saved the number auto stands for
            dataset = datasets.load(config["dataset"], config["data_dir"], config["held_out"])
            wanted = options.resolve_input_scale(wanted, dataset)
        saved = json.loads((out / "config.json").read_text())
        # a run from before an option existed had its default then
        saved = checkpoints.LEGACY_CONFIG | saved
        if all(saved.get(k, defaults[k]) == v for k, v in wanted.items()):
            return out
    if (
        ddpm.main([*args, "--exps_dir", str(exps_dir), "--experiment_name", name, "--overwrite"])
        != 0
    ):
        raise SystemExit(f"the run {name} failed")
    return out


# What a run's score depends on besides its samples: when one changed after the run was scored,
# the score is redone.
SCORED_BY = [Path(evaluate.__file__), Path(datasets.__file__)]


def score(out: Path) -> dict:
    """The run's metrics, with the evaluation redone on its last frame (and saved) if evaluate.py
    or datasets.py changed since the run was scored: tables follow evaluate.py."""
    metrics = json.loads((out / "metrics.json").read_text())
    scored_at = (out / "metrics.json").stat().st_mtime
    if scored_at > max(path.stat().st_mtime for path in SCORED_BY):
        return metrics
    config = json.loads((out / "config.json").read_text())
    labels = np.load(out / "frame_labels.npy") if (out / "frame_labels.npy").is_file() else None
    samples = np.load(out / "frames.npy")[-1]
    config = checkpoints.LEGACY_CONFIG | config  # a run from before an option existed
    dataset = datasets.load(config["dataset"], config["data_dir"], config["held_out"])
    metrics |= evaluate.evaluate(samples, dataset, seed=config["seed"], labels=labels)
    run_folder.write_json(out / "metrics.json", metrics)
    return metrics


def sweep(
    param: str, values: list[str], extra: list[str], exps_dir: Path, figure: Path
) -> list[dict]:
    """Run every value, draw the grid to `figure`, return one row of numbers per value.

    The grid's columns are COLUMNS of the saved frames, from the second on: the first is
    sampled after one epoch, from a model that has not yet learnt anything worth showing."""
    rows, cells, labels, col_labels = [], [], [], None
    for value in values:
        out = run_once([*extra, f"--{param}", *value.split()], exps_dir)  # the swept value wins
        metrics = score(out)
        config = json.loads((out / "config.json").read_text())
        frames = np.load(out / "frames.npy")  # (frames, N, 2)
        first = min(1, len(frames) - 1)
        shown = np.unique(np.linspace(first, len(frames) - 1, COLUMNS).round().astype(int))
        cells.append([frames[i] for i in shown])
        if config["num_epochs"] == 0:  # sampled from a checkpoint: one frame
            col_labels = ["samples"]
        else:
            frame_epochs = [
                e for e in range(config["num_epochs"]) if ddpm.is_frame_epoch(e, config)
            ]
            # frame e is sampled after e + 1 epochs of training
            col_labels = [f"{frame_epochs[i] + 1} epochs" for i in shown]
        labels.append(
            f"{value}\n{metrics['w2_ratio']:.2f} / {metrics['precision']:.2f} / "
            f"{metrics['recall']:.2f}"
        )
        row = {
            param: value,
            "dataset": config["dataset"],
            "w2": metrics["w2"],
            "w2_floor": metrics["w2_floor"],
            "w2_ratio": metrics["w2_ratio"],
            "precision": metrics["precision"],
            "recall": metrics["recall"],
        }
        if "off_support_fraction" in metrics:
            row["off_support_fraction"] = metrics["off_support_fraction"]
        rows.append(
            row | ({"train_seconds": metrics["seconds"]["train"]} if config["num_epochs"] else {})
        )
    title = f"{param}: a row per value (W2 ratio / precision / recall), a column per checkpoint"
    plots.save_grid(cells, figure, row_labels=labels, col_labels=col_labels, title=title)
    return rows


def write_table(rows: list[dict], stem: Path) -> str:
    """Write stem.csv and stem.md; return the markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    csv = [",".join(keys)] + [",".join(fmt(row.get(k, "")) for k in keys) for row in rows]
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows
    ]
    stem.with_suffix(".csv").write_text("\n".join(csv) + "\n")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    return "\n".join(md)


def check_sweep(param: str, values: list[str], extra: list[str]) -> None:
    """Refuse a sweep before its first run if any of its command lines would be refused."""
    parser = ddpm.build_parser()
    parser.prog = "ablate.py"  # its errors are ours
    names = vars(parser.parse_args([])).keys() - {"experiment_name", "exps_dir", "overwrite"}
    if param not in names:
        raise options.UsageError(f"{param!r} is not an option of ddpm.py to sweep")
    flag = next(action for action in parser._actions if action.dest == param)
    if flag.nargs == 0:  # --no_stable_target, --no_clip_x0: on or off, no value
        raise options.UsageError(
            f"{param} is an on/off switch ({flag.option_strings[0]}), not a value to sweep: give "
            f"{flag.option_strings[0]} to ablate.py to sweep another option with it"
        )
    for value in values:  # a value of two numbers, as "0.2 1" for --guidance_interval
        options.check_command_line(parser, [*extra, f"--{param}", *value.split()])


def main(argv=None) -> None:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("param", help="a ddpm.py option, without its dashes (e.g. learning_rate)")
    parser.add_argument("values", nargs="+", help="the values to try")
    parser.add_argument("--exps_dir", type=Path, default=PROJECT_DIR / "exps")
    parser.add_argument(
        "--figure", type=Path, default=None, help="default: static/ablation_<param>.png"
    )
    # anything else goes to every ddpm.py run, e.g. --dataset moons
    args, extra = parser.parse_known_args(argv)
    figure = args.figure or STATIC_DIR / f"ablation_{args.param}.png"
    try:
        check_sweep(args.param, args.values, extra)
        run_folder.check_writable(args.exps_dir)
    except options.UsageError as err:
        parser.error(str(err))
    rows = sweep(args.param, args.values, extra, args.exps_dir, figure)
    print(write_table(rows, args.exps_dir / "ablations" / args.param))
    print(f"grid: {figure}")


if __name__ == "__main__":
    sys.exit(main())
