"""What a run's model.pth holds, and how a run continues (--resume) or starts from another run's
model (--checkpoint, e.g. with --num_epochs 0 to sample it again).

A checkpoint is a plain dict of tensors, numbers and the run's config, loaded with
torch.load(weights_only=True); its config fields that say what model it is (MODEL_FIELDS) win
over the command line's defaults, and a typed value that differs is refused.
"""

from pathlib import Path

import torch

import datasets
import options
import run_folder

# What the model is: taken from a checkpoint's config when sampling it again.
MODEL_FIELDS = (
    "dataset",
    "held_out",
    "method",
    "sigma_data",
    "num_timesteps",
    "beta_schedule",
    "embedding_size",
    "hidden_size",
    "hidden_layers",
    "activation",
    "block_norm",
    "time_embedding",
    "input_embedding",
    "input_scale",
    "reflow",
    "reflow_pairs",
    "consistency",
    "consistency_sigmas",
)
# Where and how, not what, is trained: never taken from a resumed run's config.
RUN_FIELDS = (
    "experiment_name",
    "exps_dir",
    "data_dir",
    "device",
    "checkpoint",
    "resume",
    "overwrite",
)
CHECKPOINT_KEYS = {
    "config",
    "epoch",
    "model",
    "ema",
    "optimizer",
    "rng",
    "clip_range",
    "losses",
    "frames",
    "frame_epochs",
    "classes",
    "shift",
    "scale",
}
# What a config saved before these options existed meant, whatever their defaults are now.
LEGACY_CONFIG = {"method": "ddpm", "sigma_data": None, "input_scale": 25.0, "activation": "gelu"}
LEGACY_CONFIG |= {"denoiser": "mlp", "held_out": 0.0}  # a file's runs trained on every row
LEGACY_CONFIG |= {"block_norm": "none"}  # before the blocks were normalised
LEGACY_CONFIG |= {"reflow": None, "reflow_pairs": None}  # no teacher
LEGACY_CONFIG |= {"consistency": None, "consistency_sigmas": None}
LEGACY_CONFIG |= {"stable_target": False}  # before the stable target


def state_of(run) -> dict:
    """The checkpoint of a ddpm.Run: everything it needs to continue where it is."""
    steps = run.epoch * run.batches_per_epoch
    return (
        {
            "config": run.config,
            "epoch": run.epoch,
            "model": run.model.state_dict(),
            "ema": run.ema.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "clip_range": run.clip_range.cpu(),
            "losses": run.losses[:steps].cpu(),
            "frames": torch.stack(run.frames)
            if run.frames
            else torch.zeros(0, run.config["eval_batch_size"], 2),
            "frame_epochs": run.frame_epochs,
            "classes": run.classes,
            "shift": run.shift,
            "scale": run.scale,
            "sigma_data": run.sigma_data,
        }
        | ({"pairs": _on_cpu(run.pairs)} if run.pairs else {})
        | _teacher(run)
        | ({"trajectories": _on_cpu(run.trajectories)} if run.trajectories else {})
    )


def _teacher(run) -> dict:
    """A consistency run's teacher's config (restore keeps it), as reflow's pairs keep theirs."""
    teacher = getattr(run, "teacher", None)
    return {"teacher": teacher} if teacher else {}


def _on_cpu(part: dict) -> dict:
    """reflow's pairs or a consistency run's chains, their tensors on the CPU."""
    return {key: value.cpu() if torch.is_tensor(value) else value for key, value in part.items()}


def teacher_config(config: dict, checkpoint: dict) -> dict:
    """The config a --reflow teacher is rebuilt with: its own, on this run's device and data."""
    here = {field: config[field] for field in ("device", "data_dir")}
    return checkpoint["config"] | here | {"resume": False}


def with_teacher(config: dict, explicit: dict, device: torch.device) -> dict:
    """The config of a reflow run (--reflow): a flow on the teacher's dataset, the teacher's
    model.pth checked to load."""
    teacher = load(Path(config["reflow"]), device)
    if explicit.get("method", "flow") != "flow" or config["denoiser"] == "exact":
        raise options.UsageError(
            "--reflow trains a flow on the teacher's pairs: drop --method and --denoiser"
        )
    fields = ("dataset", "held_out")
    return merge_config(config, explicit, teacher["config"], fields) | {"method": "flow"}


def consistency_start(config: dict, explicit: dict, device: torch.device) -> tuple[dict, dict]:
    """(config, checkpoint) of a consistency fine-tune (--consistency RUN): RUN's model and units,
    an edm on RUN's dataset."""
    teacher = load(Path(config["consistency"]), device)
    method = teacher["config"]["method"]
    if method != "edm" or explicit.get("method", "edm") != "edm" or config["denoiser"] == "exact":
        why = f"RUN is a {method} run" if method != "edm" else "drop --method and --denoiser"
        raise options.UsageError(f"--consistency fine-tunes an edm run's denoiser: {why}")
    if teacher["config"]["consistency"]:  # its D jumps to the data: it has no ODE to distil
        raise options.UsageError("--consistency RUN: RUN is a consistency model; give its teacher")
    fields = [field for field in MODEL_FIELDS if field != "consistency"]
    return merge_config(config, explicit, teacher["config"], fields), teacher | {
        "teacher": teacher["config"]
    }


def restore(run, checkpoint: dict, resume: bool) -> None:
    """Load a checkpoint's weights into a new ddpm.Run; to resume, also its optimizer, random
    state, losses and frames, so that it goes on as if never stopped."""
    run.model.load_state_dict(checkpoint["model"])
    run.ema.load_state_dict(checkpoint["ema"])
    run.clip_range = checkpoint["clip_range"].to(run.data.device)
    run.teacher = checkpoint.get("teacher")  # a consistency run's (consistency_start)
    # a consistency run's own checkpoint (not its teacher's), to be trained on
    trains = resume or run.config["num_epochs"] > 0
    if checkpoint["config"]["consistency"] and len(checkpoint["losses"]) and trains:
        if "trajectories" not in checkpoint:  # ECT's, which drew none: not to be mixed
            raise options.UsageError(
                "that consistency run was trained by ECT, before --consistency distilled its "
                "teacher's chains: start it again from its teacher"
            )
        # its teacher's chains, drawn once (on the run's device, as load maps them, like reflow's
        # pairs): a run goes on from them, not from its own model
        run.trajectories = checkpoint["trajectories"]
    if not resume:
        return
    run.optimizer.load_state_dict(checkpoint["optimizer"])  # its step count sets the learning rate
    torch.set_rng_state(checkpoint["rng"].cpu())
    run.epoch = checkpoint["epoch"]
    run.losses[: len(checkpoint["losses"])] = checkpoint["losses"]
    run.frames, run.frame_epochs = (
        list(checkpoint["frames"].cpu()),
        list(checkpoint["frame_epochs"]),
    )


def load(path: Path, device: torch.device, program: str = "ddpm.py") -> dict:
    """The checkpoint at path, on device, of a run of program: one of the other program's is
    refused (discrete.py's runs are of the method "discrete", ddpm.py's of ddpm, flow or edm)."""
    if not path.is_file():
        raise options.UsageError(f"checkpoint {path} not found")
    try:
        # map_location: a CUDA checkpoint loads on a CPU
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise options.UsageError(
            f"{path} is not a tiny-diffusion checkpoint ({type(err).__name__}); "
            "give the model.pth of a run"
        ) from None
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
        raise options.UsageError(
            f"{path} is not a tiny-diffusion checkpoint (it lacks its keys); "
            "give the model.pth of a run"
        )
    checkpoint["config"] = LEGACY_CONFIG | checkpoint["config"]
    other = "ddpm.py" if program == "discrete.py" else "discrete.py"
    if (checkpoint["config"]["method"] == "discrete") != (program == "discrete.py"):
        raise options.UsageError(f"that checkpoint is a {other} run's: use it with {other}")
    return checkpoint


def merge_config(config: dict, explicit: dict, saved: dict, fields) -> dict:
    """Take `fields` from the checkpoint's config; refuse if the user asked for other values."""
    differ = [field for field in fields if field in explicit and explicit[field] != saved[field]]
    if differ:
        asked = ", ".join(f"{field}={explicit[field]}" for field in differ)
        had = ", ".join(f"{field}={saved[field]}" for field in differ)
        raise options.UsageError(
            f"the checkpoint has {had} but you asked for {asked}: drop those options or use "
            "another checkpoint"
        )
    return config | {field: saved[field] for field in fields}


def starting_point(config: dict, explicit: dict, device, program: str) -> tuple[dict, dict | None]:
    """(config, checkpoint) of a run of program: a fresh one (no checkpoint), --resume of the run
    in <exps_dir>/<experiment_name>, or a new run from --checkpoint's model."""
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    if config["resume"]:
        if config["checkpoint"]:
            raise options.UsageError(
                "--resume continues <experiment_name>; do not give --checkpoint with it"
            )
        checkpoint = load(out_dir / "model.pth", device, program)
        fields = [field for field in checkpoint["config"] if field not in RUN_FIELDS]
        config = merge_config(config, explicit, checkpoint["config"], fields)
        if checkpoint["epoch"] >= config["num_epochs"]:
            raise options.UsageError(
                f"{out_dir} finished all {config['num_epochs']} epochs: nothing to resume"
            )
        return config, checkpoint
    if not config["checkpoint"]:
        return config, None
    checkpoint = load(Path(config["checkpoint"]), device, program)
    return merge_config(config, explicit, checkpoint["config"], MODEL_FIELDS), checkpoint


def prepare(
    parser, argv, sampling_options, program="ddpm.py"
) -> tuple[dict, datasets.Dataset, dict | None]:
    """The checked config of a command line of program, its dataset and the checkpoint to start
    from (sampling_options: ddpm's, a config's sampler settings). The run it replaces stays
    until the new one writes its outputs (run_folder.clear)."""
    config, explicit = options.check_command_line(parser, argv)
    device = options.resolve_device(config["device"])
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    config, checkpoint = starting_point(config, explicit, device, program)
    if "consistency" in explicit and not config["resume"]:  # RUN's model, fine-tuned
        config, checkpoint = consistency_start(config, explicit, device)
    if config["reflow"] and "pairs" not in (checkpoint or {}):  # the pairs are still to draw
        config = with_teacher(config, explicit, device)
    options.check_method_options(parser, config, explicit)
    options.check_grid(config, sampling_options(config))
    # the checkpoint's, if any
    dataset = datasets.load(config["dataset"], config["data_dir"], config["held_out"])
    options.check_dataset(config, dataset, explicit)
    # a new run measures auto once: config.json and the checkpoint keep the number
    config = options.resolve_input_scale(config, dataset)
    taken = out_dir.is_dir() and any(out_dir.iterdir())
    if taken and not (config["resume"] or config["overwrite"]):  # last: typos are fixed first
        raise options.UsageError(
            f"{out_dir} already holds a run: pass --overwrite to replace it, --resume to "
            "continue it, or choose another --experiment_name"
        )
    run_folder.check_writable(out_dir)
    return config, dataset, checkpoint
