"""Every mistake a user can make ends in a one-line message, and no run is lost or half-written."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR, needs_datasaurus

import ddpm

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
    "--num_timesteps",
    "10",
    "--eval_batch_size",
    "100",
    "--save_images_step",
    "2",
]


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
        (["--learning_rate", "fast"], "expected a float"),
        (["--num_timesteps", "0"], "--num_timesteps: must be positive"),
        (["--hidden_size", "-5"], "--hidden_size: must be positive"),
        (["--hidden_layers", "0"], "--hidden_layers: must be positive"),
        (["--embedding_size", "0"], "--embedding_size: must be positive"),
        (["--embedding_size", "15"], "--embedding_size must be even"),
        (["--eval_batch_size", "0"], "--eval_batch_size: must be positive"),
        (["--save_images_step", "0"], "--save_images_step: must be positive"),
        (
            ["--sampler", "ddim", "--num_inference_steps", "500"],
            "more than the 50 training timesteps",
        ),
        (["--beta_schedule", "exponential"], "invalid choice: 'exponential'"),
        (["--sampler", "euler"], "invalid choice: 'euler'"),
        (["--time_embedding", "fourier"], "invalid choice: 'fourier'"),
        (["--input_embedding", "zero"], "invalid choice: 'zero'"),
        (["--experiment_name", "runs/a"], "plain folder name"),
        (["--experiment_name", ".."], "plain folder name"),
        (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
        (["--eta", "2"], "--eta must be in [0, 1]"),
        (["--cond_drop_prob", "1.5"], "--cond_drop_prob must be in [0, 1]"),
        (["--guidance_scale", "-1"], "--guidance_scale must be at least 0"),
        (
            ["--guidance_interval", "0.5", "0.2"],
            "--guidance_interval LO HI needs 0 <= LO < HI <= 1, got 0.5 0.2",
        ),
        (
            ["--dataset", "moons", "--class_label", "left"],
            "is not a class of moons: its classes are upper, lower",
        ),
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


@needs_datasaurus
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


def test_a_checkpoint_with_another_model_config_names_the_fields_that_differ(capsys, trained):
    code, err = cli(
        capsys,
        "--checkpoint",
        str(trained / "tiny" / "model.pth"),
        "--num_epochs",
        "0",
        "--hidden_size",
        "64",
        "--num_timesteps",
        "10",
        "--exps_dir",
        str(trained),
        "--experiment_name",
        "mismatch",
    )
    assert_one_line_error(code, err, "hidden_size=16", "hidden_size=64")
    assert "num_timesteps" not in err  # asked for the value the checkpoint has


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
    code, err = cli(capsys, *TINY, "--learning_rate", "1.0", "--exps_dir", str(tmp_path))
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
        ddpm.write_atomically(path, crash)
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
    assert "alpha_bar_T" in interrupted.stdout.readline()  # training has started
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
