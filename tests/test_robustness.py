"""Every mistake a user can make ends in a one-line message, and no run is lost or half-written."""

import errno
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR, parsed_config

import checkpoints
import ddpm
import options
import run_folder

TINY = [
    "--dataset",
    "line",
    "--num_epochs",
    "3",
    "--train_batch_size",
    "1000",
    "--hidden_size",
    "16",
    "--hidden_layers",
    "1",
    "--embedding_size",
    "8",
    "--eval_batch_size",
    "100",
    "--save_images_step",
    "2",
]
# the MLP without normalisation blows up at this rate (LayerNorm keeps it finite)
BLOWS_UP = ["--learning_rate", "1.0", "--block_norm", "none"]


def cli(capsys, *args):
    """Run ddpm.main in-process; return (exit code, stderr)."""
    try:
        code = ddpm.main(list(args))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, *phrases, exit_code=2):
    assert code == exit_code, err
    messages = [
        line for line in err.splitlines() if line.strip() and "%|" not in line
    ]  # all but the progress bar
    assert len(messages) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--num_epochs", "-1"], "--num_epochs must be positive"),
        (["--num_epochs", "0"], "--num_epochs must be positive (or 0 with --checkpoint"),
        (["--train_batch_size", "0"], "--train_batch_size: must be positive"),
        (["--learning_rate", "0"], "--learning_rate: must be positive"),
        (["--learning_rate", "-0.001"], "--learning_rate: must be positive"),
        (["--learning_rate", "fast"], "--learning_rate: expected a number, got 'fast'"),
        (["--hidden_size", "wide"], "--hidden_size: expected an integer, got 'wide'"),
        (["--hidden_size", "2.5"], "--hidden_size: expected an integer, got '2.5'"),
        (["--num_timesteps", "0"], "--num_timesteps: must be positive"),
        (["--hidden_size", "-5"], "--hidden_size: must be positive"),
        (["--hidden_layers", "0"], "--hidden_layers: must be positive"),
        (["--embedding_size", "0"], "--embedding_size: must be positive"),
        (["--embedding_size", "15"], "--embedding_size must be even"),
        (["--eval_batch_size", "0"], "--eval_batch_size: must be positive"),
        (["--save_images_step", "0"], "--save_images_step: must be positive"),
        (
            ["--method", "ddpm", "--sampler", "ddim", "--num_inference_steps", "500"],
            "more than the 50 training timesteps",
        ),
        (["--beta_schedule", "exponential"], "invalid choice: 'exponential'"),
        (["--sampler", "rk45"], "invalid choice: 'rk45'"),
        (["--time_embedding", "fourier"], "invalid choice: 'fourier'"),
        (["--input_embedding", "zero"], "invalid choice: 'zero'"),
        (["--experiment_name", "runs/a"], "plain folder name"),
        (["--experiment_name", ".."], "plain folder name"),
        (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
        (["--eta", "2"], "--eta must be in [0, 1]"),
        (["--cond_drop_prob", "1.5"], "--cond_drop_prob must be in [0, 1]"),
        (["--guidance_scale", "-1"], "--guidance_scale must be at least 0"),
        (["--method", "ddpm", "--num_timesteps", "1"], "--num_timesteps must be at least 2"),
        (["--sampler", "euler", "--eta", "0.1"], "--eta is DDIM's: add --sampler ddim"),
        (["--guidance_interval", "0.2", "0.8"], "--guidance_interval needs classes"),
        (["--cond_drop_prob", "0.3"], "--cond_drop_prob needs classes"),
        (["--held_out", "0.3"], "--held_out is for your own file: dino is scored on fresh"),
        (["--guidance_scale", "nan"], "--guidance_scale: must be a finite number, got nan"),
        (["--guidance_scale", "inf"], "--guidance_scale: must be a finite number, got inf"),
        (["--learning_rate", "inf"], "--learning_rate: must be a finite number, got inf"),
        (["--eta=-inf"], "--eta: must be a finite number, got -inf"),
        (["--guidance_interval", "0", "nan"], "--guidance_interval: must be a finite number"),
        (["--hidden_size", str(10**11)], "--hidden_size: must be at most 2147483647"),
        (["--train_batch_size", str(10**20)], "--train_batch_size: must be at most 2147483647"),
        (["--eval_batch_size", str(2**31 - 1)], "GiB at once and the machine has"),
        (["--num_epochs", str(2**31 - 1)], "GiB at once and the machine has"),
        (["--method", "ddpm", "--num_timesteps", str(2**31 - 1)], "lower --num_timesteps"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--seed", str(2**64)], "--seed must be in [0, 2**32)"),
        (
            ["--guidance_interval", "0.5", "0.2"],
            "--guidance_interval LO HI needs 0 <= LO < HI <= 1, got 0.5 0.2",
        ),
        (
            ["--dataset", "moons", "--class_label", "left"],
            "is not a class of moons: its classes are upper, lower",
        ),
        (
            ["--dataset", "line", "--guidance_scale", "2"],
            "--guidance_scale needs classes to guide towards, and line has none",
        ),
        # another method's option would be ignored
        (["--num_timesteps", "10"], "--num_timesteps is an option of --method ddpm"),
        (["--method", "flow", "--P_mean", "-1"], "--P_mean is an option of --method edm, and"),
        (["--method", "ddpm", "--no_stable_target"], "this run's method is ddpm: drop it"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_code_2(capsys, tmp_path, args, phrase):
    assert_one_line_error(*cli(capsys, "--exps_dir", str(tmp_path), *args), phrase)


def test_the_real_cli_reports_bad_arguments_in_one_line():
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "ddpm.py"), "--hidden_layers", "0"],
        capture_output=True,
        text=True,
    )
    assert_one_line_error(result.returncode, result.stderr, "--hidden_layers: must be positive")


@pytest.mark.parametrize(
    "content, phrase",
    [
        (None, "not found"),
        ("dataset\tx\ty\ndino\t55.3\t97.1\ndino\t51.5\t96.0\n", "damaged"),
        ("dataset\tx\tz\ndino\t55.3\t97.1\n", "damaged"),
        ("dataset\tx\ty\ndino\tfifty\t97.1\n", "damaged"),
    ],
    ids=["missing", "truncated", "wrong-columns", "non-numeric"],
)
def test_a_bad_datasaurus_file_is_a_one_line_error(capsys, tmp_path, content, phrase):
    if content is not None:
        (tmp_path / "DatasaurusDozen.tsv").write_text(content)
    code, err = cli(
        capsys,
        "--dataset",
        "dino",
        "--data_dir",
        str(tmp_path),
        "--exps_dir",
        str(tmp_path / "exps"),
    )
    assert_one_line_error(code, err, phrase, "DatasaurusDozen.tsv")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    exps = tmp_path_factory.mktemp("exps")
    assert ddpm.main([*TINY, "--exps_dir", str(exps), "--experiment_name", "tiny"]) == 0
    return exps


def test_rerunning_an_experiment_is_refused_unless_overwrite(capsys, trained):
    code, err = cli(capsys, *TINY, "--exps_dir", str(trained), "--experiment_name", "tiny")
    assert_one_line_error(code, err, "already holds a run", "--overwrite")


def test_a_failed_overwrite_leaves_the_run_it_would_replace(trained, tmp_path, monkeypatch):
    shutil.copytree(trained / "tiny", tmp_path / "old")
    before = {path.name: path.read_bytes() for path in (tmp_path / "old").glob("*.*")}

    def failed_training(*args):
        raise RuntimeError("training failed")

    monkeypatch.setattr(ddpm, "train", failed_training)
    with pytest.raises(RuntimeError, match="training failed"):
        ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--experiment_name", "old", "--overwrite"])
    assert {path.name: path.read_bytes() for path in (tmp_path / "old").glob("*.*")} == before


def test_an_overwrite_leaves_nothing_of_the_run_it_replaced(tmp_path):
    moons = ["--dataset", "moons", *TINY[2:], "--exps_dir", str(tmp_path)]
    assert ddpm.main(moons) == 0
    assert (tmp_path / "base" / "frame_labels.npy").exists()  # the moons' two classes
    assert ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--overwrite"]) == 0
    assert not (tmp_path / "base" / "frame_labels.npy").exists()  # the line has none
    assert json.loads((tmp_path / "base" / "config.json").read_text())["dataset"] == "line"


def test_a_resumed_run_that_diverges_keeps_the_weights_it_resumed_from(tmp_path, monkeypatch):
    run = [*TINY, "--exps_dir", str(tmp_path)]
    monkeypatch.setattr(run_folder.StopOnCtrlC, "requested", True)  # Ctrl-C in the first epoch
    with pytest.raises(SystemExit):
        ddpm.main(run)
    monkeypatch.undo()
    saved = (tmp_path / "base" / "model.pth").read_bytes()
    monkeypatch.setattr(ddpm, "train", lambda run, *args: "diverged")  # at its first new step
    with pytest.raises(SystemExit):
        ddpm.main([*run, "--resume"])
    assert (tmp_path / "base" / "model.pth").read_bytes() == saved


def test_ctrl_c_after_training_scores_and_saves_the_run_first(capsys, tmp_path, monkeypatch):
    score = ddpm.evaluate.evaluate

    def interrupted_score(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the run is scored
        return score(*args, **kwargs)

    monkeypatch.setattr(ddpm.evaluate, "evaluate", interrupted_score)
    assert ddpm.main([*TINY, "--exps_dir", str(tmp_path)]) == 0
    assert "Ctrl-C: training is done: scoring and saving it first" in capsys.readouterr().out
    assert (tmp_path / "base" / "model.pth").exists()
    assert "w2_ratio" in json.loads((tmp_path / "base" / "metrics.json").read_text())


def test_a_mistyped_dataset_is_reported_before_the_run_in_the_way(capsys, trained):
    run = ["--exps_dir", str(trained), "--experiment_name", "tiny"]  # a run is there already
    code, err = cli(capsys, *TINY, "--dataset", "spiral", *run)
    assert_one_line_error(code, err, "unknown dataset 'spiral'")


def test_too_many_reflow_pairs_name_the_option_to_lower():
    config = parsed_config("--reflow", "exps/flow", "--reflow_pairs", str(2 * 10**9))
    with pytest.raises(options.UsageError, match="GiB at once .* lower --reflow_pairs"):
        options.check_memory(config)


def test_sampling_a_checkpoint_without_training(capsys, trained):
    code, _ = cli(
        capsys,
        "--checkpoint",
        str(trained / "tiny" / "model.pth"),
        "--num_epochs",
        "0",
        "--sampler",
        "ddim",
        "--num_inference_steps",
        "5",
        "--exps_dir",
        str(trained),
        "--experiment_name",
        "resampled",
    )
    assert code == 0
    assert np.load(trained / "resampled" / "frames.npy").shape == (
        1,
        1000,
        2,
    )  # eval_batch_size is not a model field: the default 1000
    assert (trained / "resampled" / "metrics.json").is_file()


def test_a_checkpoint_may_be_given_as_its_run_folder(capsys, trained):
    again = ["--checkpoint", str(trained / "tiny"), "--num_epochs", "0", "--exps_dir", str(trained)]
    assert cli(capsys, *again, "--experiment_name", "from_folder")[0] == 0
    config = json.loads((trained / "from_folder" / "config.json").read_text())
    assert config["checkpoint"] == str(trained / "tiny" / "model.pth")


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda path: None, "not found"),
        (lambda path: path.write_text("not a checkpoint"), "is not a tiny-diffusion checkpoint"),
        (
            lambda path: torch.save({"weights": torch.zeros(3)}, path),
            "is not a tiny-diffusion checkpoint",
        ),
    ],
    ids=["missing", "garbage", "other-torch-file"],
)
def test_a_bad_checkpoint_is_a_one_line_error(capsys, tmp_path, make, phrase):
    make(tmp_path / "model.pth")
    code, err = cli(
        capsys,
        "--checkpoint",
        str(tmp_path / "model.pth"),
        "--num_epochs",
        "0",
        "--exps_dir",
        str(tmp_path / "exps"),
    )
    assert_one_line_error(code, err, phrase)


def test_an_option_of_another_method_than_the_checkpoints_is_refused(capsys, trained):
    checkpoint = str(trained / "tiny" / "model.pth")  # an EDM run
    code, err = cli(capsys, "--checkpoint", checkpoint, "--num_epochs", "0", "--flow_t", "uniform")
    assert_one_line_error(code, err, "--flow_t is an option of --method flow", "method is edm")


def test_a_checkpoint_with_another_model_config_names_the_fields_that_differ(capsys, trained):
    code, err = cli(
        capsys,
        "--checkpoint",
        str(trained / "tiny" / "model.pth"),
        "--num_epochs",
        "0",
        "--hidden_size",
        "64",
        "--hidden_layers",
        "1",
        "--exps_dir",
        str(trained),
        "--experiment_name",
        "mismatch",
    )
    assert_one_line_error(code, err, "hidden_size=16", "hidden_size=64")
    assert "hidden_layers" not in err  # asked for the value the checkpoint has


def test_a_checkpoint_saved_on_cuda_loads_on_the_cpu(capsys, trained, tmp_path):
    # Re-save the checkpoint with every storage tagged "cuda:0", as torch.save does on a GPU.
    script = (
        "import sys, torch\n"
        "torch.serialization.register_package(\n"
        "    0, lambda storage: 'cuda:0', lambda storage, location: None)\n"
        "torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])\n"
    )
    cuda_file = tmp_path / "cuda.pth"
    subprocess.run(
        [sys.executable, "-c", script, str(trained / "tiny" / "model.pth"), str(cuda_file)],
        check=True,
    )
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)  # it really is a CUDA checkpoint
    code, err = cli(
        capsys,
        "--checkpoint",
        str(cuda_file),
        "--num_epochs",
        "0",
        "--device",
        "cpu",
        "--exps_dir",
        str(tmp_path / "exps"),
    )
    assert code == 0, err


def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(
        *cli(capsys, *TINY, "--device", "cuda", "--exps_dir", str(tmp_path)), "--device cpu"
    )


def test_a_diverging_run_stops_with_advice_and_keeps_its_losses(capsys, tmp_path):
    code, err = cli(capsys, *TINY, *BLOWS_UP, "--exps_dir", str(tmp_path))
    assert_one_line_error(code, err, "diverged", "lower --learning_rate", exit_code=1)
    losses = np.load(tmp_path / "base" / "loss.npy")
    assert losses[-1] > ddpm.DIVERGED_LOSS and (losses[:-1] <= ddpm.DIVERGED_LOSS).all()
    assert not (tmp_path / "base" / "model.pth").exists()  # no model with blown-up weights


def test_the_same_seed_gives_identical_losses_and_samples(tmp_path):
    for name in ["a", "b"]:
        assert (
            ddpm.main(
                [*TINY, "--seed", "7", "--exps_dir", str(tmp_path), "--experiment_name", name]
            )
            == 0
        )
    for output in ["loss.npy", "frames.npy"]:
        assert np.array_equal(np.load(tmp_path / "a" / output), np.load(tmp_path / "b" / output))
    assert (
        ddpm.main([*TINY, "--seed", "8", "--exps_dir", str(tmp_path), "--experiment_name", "c"])
        == 0
    )
    assert not np.array_equal(
        np.load(tmp_path / "a" / "frames.npy"), np.load(tmp_path / "c" / "frames.npy")
    )


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"the previous checkpoint")

    def crash(file):
        file.write(b"half of a new")
        raise OSError("disk full")

    with pytest.raises(OSError):
        run_folder.write_atomically(path, crash)
    assert path.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [path]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    long = [
        *TINY,
        "--num_epochs",
        "300",
        "--save_images_step",
        "50",
        "--lr_decay",
        "cosine",
        "--exps_dir",
        str(tmp_path),
    ]
    command = [sys.executable, str(PROJECT_DIR / "ddpm.py"), *long]
    interrupted = subprocess.Popen(
        [*command, "--experiment_name", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "NFE" in interrupted.stdout.readline()  # training has started
    time.sleep(1.0)
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    assert "--resume" in err and "interrupted after epoch" in err
    saved = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    assert 0 < saved["epoch"] < 300

    resumed = subprocess.run(
        [*command, "--experiment_name", "run", "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run(
        [*command, "--experiment_name", "whole"], capture_output=True, text=True
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for output in ["loss.npy", "frames.npy"]:
        assert np.array_equal(
            np.load(tmp_path / "run" / output), np.load(tmp_path / "whole" / output)
        ), output


def test_every_float_option_refuses_nan_and_inf(capsys, tmp_path):
    floats = [
        action
        for action in ddpm.build_parser()._actions
        if action.type is not None and "float" in action.type.__name__
    ]
    assert {"--learning_rate", "--ema_decay", "--eta", "--guidance_interval"} <= {
        action.option_strings[0] for action in floats
    }
    for action in floats:
        for value in ["nan", "inf", "1e999"]:  # -inf: the parametrized --eta=-inf above
            args = (
                [f"{action.option_strings[0]}={value}"]
                if action.nargs is None
                else ([action.option_strings[0], *[value] * action.nargs])
            )
            code, err = cli(capsys, "--exps_dir", str(tmp_path), *args)
            assert_one_line_error(code, err, "must be a finite number")


def test_no_option_is_a_bare_float(capsys):
    assert all(action.type is not float for action in ddpm.build_parser()._actions)


class Started(Exception):
    """Raised by the stub of ddpm.experiment: the checks let the run start."""


@pytest.fixture
def no_training(monkeypatch):
    """ddpm.experiment replaced by a stub that records the call and raises Started."""
    started = []

    def stub(*args):
        started.append(args)
        raise Started

    monkeypatch.setattr(ddpm, "experiment", stub)
    return started


def test_running_out_of_memory_is_one_line_and_other_errors_are_not_hidden(
    capsys, tmp_path, monkeypatch
):
    def allocate(message):
        def stub(*args):
            raise RuntimeError(message)

        return stub

    allocator = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
    monkeypatch.setattr(ddpm, "experiment", allocate(f"{allocator}\nframe #0: ..."))
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path))
    assert_one_line_error(code, err, "out of memory", "smaller --hidden_size", exit_code=1)
    monkeypatch.setattr(ddpm, "experiment", allocate("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--overwrite"])


def test_an_output_folder_under_a_file_is_refused_before_training(capsys, tmp_path, no_training):
    (tmp_path / "passwd").write_text("root:x:0:0")
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path / "passwd"))
    assert_one_line_error(code, err, f"cannot write outputs to {tmp_path}/passwd/base", "Not a")
    assert not no_training


def test_an_experiment_name_that_is_a_file_is_refused_before_training(
    capsys, tmp_path, no_training
):
    (tmp_path / "notes.txt").write_text("my notes")
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path), "--experiment_name", "notes.txt")
    assert_one_line_error(code, err, "cannot write outputs to", "File exists")
    assert (tmp_path / "notes.txt").read_text() == "my notes" and not no_training


def full_disk(folder):
    """A write_atomically that fails as a full disk does for every file under `folder`."""
    write = run_folder.write_atomically

    def write_or_fail(path, content):
        if folder in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, content)

    return write_or_fail


def test_a_full_disk_is_found_before_training(capsys, tmp_path, monkeypatch, no_training):
    monkeypatch.setattr(run_folder, "write_atomically", full_disk(tmp_path))
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path / "exps"))
    assert_one_line_error(code, err, "cannot write outputs to", "No space left on device")
    assert not no_training


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_found_before_training(capsys, tmp_path, no_training):
    (tmp_path / "exps").mkdir(mode=0o500)
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path / "exps"))
    assert_one_line_error(code, err, "cannot write outputs to", "Permission denied")
    assert not no_training


def test_the_write_check_leaves_no_run_behind(capsys, tmp_path, no_training):
    with pytest.raises(Started):
        ddpm.main([*TINY, "--exps_dir", str(tmp_path)])
    assert list((tmp_path / "base").iterdir()) == []  # an empty folder is not a run
    with pytest.raises(Started):  # so the same command is not refused
        ddpm.main([*TINY, "--exps_dir", str(tmp_path)])


def test_a_class_of_one_row_is_refused_before_training_unless_nothing_is_held_out(
    capsys, tmp_path, no_training
):
    path = tmp_path / "pts.csv"
    rows = [f"{k},{k % 7},a" for k in range(30)] + ["5,5,lonely"]
    path.write_text("x,y,label\n" + "\n".join(rows) + "\n")
    code, err = cli(capsys, *TINY, "--dataset", str(path), "--exps_dir", str(tmp_path))
    assert_one_line_error(code, err, "class 'lonely' has no held-out row", "--held_out 0")
    assert not no_training
    with pytest.raises(Started):
        ddpm.main([*TINY, "--dataset", str(path), "--exps_dir", str(tmp_path), "--held_out", "0"])


@pytest.mark.parametrize(
    "rows, phrase",
    [
        ([[1.5, 2.0]] * 50, "all points have the same x and the same y (spread 0)"),
        ([[1.5, k] for k in range(50)], "all points have the same x (spread 0)"),
        ([[k, -3.0] for k in range(50)], "all points have the same y (spread 0)"),
        ([[1e9 + k * 1e-6, k] for k in range(50)], "all points have the same x (spread"),
    ],
    ids=["all-equal", "same-x", "same-y", "same-x-in-float32"],
)
def test_points_without_spread_are_refused_before_training(
    capsys, tmp_path, no_training, rows, phrase
):
    path = tmp_path / "pts.csv"
    np.savetxt(path, np.array(rows), delimiter=",", header="x,y", comments="")
    code, err = cli(capsys, *TINY, "--dataset", str(path), "--exps_dir", str(tmp_path))
    assert_one_line_error(code, err, f"{path}: {phrase}", "spread in both coordinates")
    assert not no_training


def break_after_training(monkeypatch, out_dir, how, status="done"):
    """Once training is over, make out_dir refuse writes: replaced by a file, or a full disk."""
    train = ddpm.train

    def train_then_break(run):
        train(run)
        if how == "replaced by a file":
            shutil.rmtree(out_dir)
            out_dir.write_text("")
        else:
            monkeypatch.setattr(run_folder, "write_atomically", full_disk(out_dir))
        return status

    monkeypatch.setattr(ddpm, "train", train_then_break)


@pytest.mark.parametrize(
    "status, exit_code, phrase",
    [("done", 1, "ddpm.py: could not write"), ("interrupted", 130, "interrupted after epoch 3")],
)
@pytest.mark.parametrize("how", ["replaced by a file", "full disk"])
def test_a_write_error_after_training_saves_the_model_elsewhere_and_says_where(
    capsys, tmp_path, monkeypatch, how, status, exit_code, phrase
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out_dir = tmp_path / "exps" / "base"
    break_after_training(monkeypatch, out_dir, how, status)
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path / "exps"))
    saved = tmp_path / f"tiny-diffusion-base-{os.getpid()}.pth"
    assert_one_line_error(
        code, err, phrase, f"could not write outputs to {out_dir}", exit_code=exit_code
    )
    assert f"the trained model is saved at {saved}: sample it with --checkpoint {saved}" in err
    assert checkpoints.load(saved, torch.device("cpu"))["epoch"] == 3
    monkeypatch.undo()
    code, err = cli(
        capsys,
        "--checkpoint",
        str(saved),
        "--num_epochs",
        "0",
        "--eval_batch_size",
        "100",
        "--exps_dir",
        str(tmp_path / "sampled"),
    )
    assert code == 0, err
    assert np.load(tmp_path / "sampled" / "base" / "frames.npy").shape == (1, 100, 2)


def test_without_a_writable_temp_folder_the_model_is_saved_in_the_current_one(
    capsys, tmp_path, monkeypatch
):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "not-a-folder"))
    monkeypatch.chdir(tmp_path)
    break_after_training(monkeypatch, tmp_path / "exps" / "base", "full disk")
    code, err = cli(capsys, *TINY, "--exps_dir", str(tmp_path / "exps"))
    saved = tmp_path / f"tiny-diffusion-base-{os.getpid()}.pth"
    assert_one_line_error(code, err, f"the trained model is saved at {saved}", exit_code=1)
    assert checkpoints.load(saved, torch.device("cpu"))["epoch"] == 3


def test_a_write_error_after_divergence_is_one_line(capsys, tmp_path, monkeypatch):
    break_after_training(monkeypatch, tmp_path / "base", "replaced by a file", "diverged")
    code, err = cli(capsys, *TINY, *BLOWS_UP, "--exps_dir", str(tmp_path))
    assert_one_line_error(code, err, "diverged", "could not write outputs to", exit_code=1)


def test_runs_in_one_process_freeze_the_garbage_collector_once(tmp_path):
    # figures.py makes hundreds of runs in one process: a freeze per run would keep each run's
    # garbage cycles forever (in this suite the first run in-process freezes what pytest holds)
    ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--experiment_name", "first"])
    frozen = gc.get_freeze_count()
    cycles = [[] for _ in range(1000)]
    for cycle in cycles:
        cycle.append(cycle)  # garbage once dropped, that only the collector frees
    del cycles, cycle
    ddpm.main([*TINY, "--exps_dir", str(tmp_path), "--experiment_name", "second"])
    assert frozen > 0 and gc.get_freeze_count() == frozen
