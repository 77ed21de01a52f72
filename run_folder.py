"""exps/<name>/, written whole or not at all: every file is written to a temporary name and then
renamed, a run stopped by Ctrl-C or a diverged loss keeps what it did, and when the folder
refuses a write at the end (disk full, folder removed) the trained model is saved elsewhere and
the one-line error says where.

Its functions take a run's state as a plain dict, the checkpoint of checkpoints.state_of.
"""

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import plots
from options import TrainingError, UsageError

OUTPUT_FILES = (
    "config.json",
    "model.pth",
    "loss.npy",
    "loss.png",
    "frames.npy",
    "frame_labels.npy",
    "metrics.json",
)


# what a Ctrl-C does once training is over (ddpm.py's and discrete.py's runs)
AFTER_TRAINING = "training is done: scoring and saving it first"


class StopOnCtrlC:
    """The first Ctrl-C asks training to stop after this epoch, so the saved state is whole; after
    training (doing: what is left to do), it lets the run be scored and saved first."""

    requested = False

    def __init__(self, doing="stopping after this epoch and saving"):
        self.doing = doing

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"Ctrl-C: {self.doing} (press again to quit without saving)")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def write_atomically(path: Path, write) -> None:
    """write(file) to a temporary file, then rename: a crash never leaves a half-written `path`."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, content: dict) -> None:
    write_atomically(path, lambda f: f.write((json.dumps(content, indent=2) + "\n").encode()))


def describe(err: Exception) -> str:
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


def check_writable(out_dir: Path) -> None:
    """Create out_dir and write a file in it: a folder that refuses is found before training."""
    probe = out_dir / ".write-test"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(probe, lambda f: f.write(b"tiny-diffusion"))
        probe.unlink()
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise UsageError(f"cannot write outputs to {out_dir}: {describe(err)}") from None


def clear(out_dir: Path) -> None:
    """Remove a replaced run's outputs, as the new run's are written: nothing of the old may be
    mistaken for the new, and a new run that fails before it writes leaves the old whole."""
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "images", ignore_errors=True)


def save_outputs(out_dir: Path, state: dict, frame_labels, plot_limits, with_checkpoint=True):
    """config.json, loss.npy and .png, frames.npy (frame_labels.npy), images/ and model.pth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not state["config"]["resume"]:  # a run it replaces; a resumed run's outputs are its own
        clear(out_dir)
    losses, frames = state["losses"].cpu().numpy(), state["frames"].numpy()
    write_json(out_dir / "config.json", state["config"])
    write_atomically(out_dir / "loss.npy", lambda f: np.save(f, losses))
    plots.save_loss(losses, out_dir / "loss.png", state["config"])
    write_atomically(out_dir / "frames.npy", lambda f: np.save(f, frames))
    if frame_labels is not None:
        write_atomically(out_dir / "frame_labels.npy", lambda f: np.save(f, frame_labels))
    shutil.rmtree(out_dir / "images", ignore_errors=True)  # a resumed run's frames, drawn again
    if len(frames):
        plots.save_frames(
            frames, state["frame_epochs"], out_dir / "images", frame_labels, plot_limits
        )
    if with_checkpoint:
        write_atomically(out_dir / "model.pth", lambda f: torch.save(state, f))


def rescue(out_dir: Path, state: dict, err: OSError, with_checkpoint: bool = True) -> str:
    """After writing to out_dir failed, save the weights where the disk takes them; say where.

    A write error at the end (disk full, folder removed) must not lose a long run."""
    failed = f"could not write outputs to {out_dir} ({describe(err)})"
    if not with_checkpoint:
        return failed
    name = f"tiny-diffusion-{state['config']['experiment_name']}-{os.getpid()}.pth"
    for folder in (Path(tempfile.gettempdir()), Path()):
        try:
            path = (folder / name).absolute()
            write_atomically(path, lambda f: torch.save(state, f))
        except OSError:
            continue
        return (
            f"{failed}; the trained model is saved at {path}: sample it with --checkpoint "
            f"{path} --num_epochs 0"
        )
    return f"{failed}, nor to {tempfile.gettempdir()} or the current folder: the model is lost"


def save_run(out_dir: Path, state: dict, frame_labels, plot_limits, metrics, seconds, started):
    """Write a finished run, then metrics.json, to which it adds "seconds": the seconds of each
    part so far, of the writing, and in total since `started` (a time.perf_counter()).

    Returns the line that says what is where."""
    tic = time.perf_counter()
    with_checkpoint = state["config"]["denoiser"] == "mlp"  # an exact denoiser has no weights
    try:
        save_outputs(out_dir, state, frame_labels, plot_limits, with_checkpoint)
        seconds |= {"write": time.perf_counter() - tic, "total": time.perf_counter() - started}
        metrics["seconds"] = seconds
        write_json(out_dir / "metrics.json", metrics)
    except OSError as err:
        raise TrainingError(rescue(out_dir, state, err, with_checkpoint)) from None
    files = "config.json loss.npy loss.png frames.npy images/ metrics.json"
    return f"outputs in {out_dir}/: " + ("model.pth " if with_checkpoint else "") + files


def stop_early(
    out_dir: Path, state: dict, frame_labels, plot_limits, diverged_at=None, program="ddpm.py"
):
    """Save what a diverged (at step diverged_at, with the losses up to it) or interrupted run
    has done, and raise, saying where it is and how to continue (python <program> --resume)."""
    config = state["config"]
    if diverged_at is not None:
        try:  # no blown-up weights
            save_outputs(out_dir, state, frame_labels, plot_limits, with_checkpoint=False)
            saved = f"losses and frames so far are in {out_dir}"
        except OSError as err:
            saved = rescue(out_dir, state, err, with_checkpoint=False)
        raise TrainingError(
            f"training diverged: the loss was {state['losses'][-1].item():.3g} at step "
            f"{diverged_at} (epoch {state['epoch']}); try a lower --learning_rate than "
            f"{config['learning_rate']:g}; {saved}"
        )
    try:
        save_outputs(out_dir, state, frame_labels, plot_limits)
        saved = (
            f"saved in {out_dir}. Continue with: python {program} --experiment_name "
            f"{config['experiment_name']} --exps_dir {config['exps_dir']} --resume"
        )
    except OSError as err:
        saved = rescue(out_dir, state, err)
    raise KeyboardInterrupt(
        f"interrupted after epoch {state['epoch']} of {config['num_epochs']}; {saved}"
    )
