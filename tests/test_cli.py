import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_DIR

import datasets
import evaluate
import positional_embeddings

TINY = [
    "--num_epochs",
    "8",
    "--train_batch_size",
    "256",
    "--hidden_size",
    "64",
    "--save_images_step",
    "4",
    "--eval_batch_size",
    "500",
]


def ddpm(*args, cwd=PROJECT_DIR):
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "ddpm.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_help_documents_every_option_with_its_default():
    out = " ".join(ddpm("-h").stdout.split())  # undo argparse's line wrapping
    for option in [
        "--dataset",
        "--train_batch_size",
        "--num_timesteps",
        "--beta_schedule",
        "--time_embedding",
        "--seed",
        "--device",
    ]:
        assert option in out
    assert "(default: dino)" in out


def test_help_groups_the_options_and_shows_each_default_once():
    text = ddpm("-h").stdout
    groups = re.findall(r"^(\S.*):$", text, re.MULTILINE)  # "training:", "network:", ...
    assert len(set(groups) - {"options"}) >= 6, groups
    options = re.split(r"\n  (?=--)", text)  # one chunk per option
    for chunk in options:
        assert " ".join(chunk.split()).count("default") <= 1, chunk
    assert "(default: None)" not in text and "(default: True)" not in text


@pytest.mark.parametrize(
    "args",
    [
        ["--dataset", "spiral"],
        ["--no_such_option"],
        ["--train_batch_size", "0"],
        ["--input_scale", "big"],
        ["--input_scale", "-3"],
    ],
)
def test_bad_input_is_a_one_line_error(args):
    result = ddpm(*args)
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1
        and "error:" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_a_tiny_run_writes_every_output_and_beats_pure_noise(tmp_path):
    result = ddpm(
        "--dataset",
        "line",
        "--exps_dir",
        str(tmp_path),
        "--experiment_name",
        "tiny",
        "--input_scale",
        "auto",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tiny"
    assert "NFE = 50" in result.stdout + result.stderr and str(out) in result.stdout
    for name in [
        "model.pth",
        "config.json",
        "loss.npy",
        "frames.npy",
        "metrics.json",
        "images/0000.png",
        "images/0002.png",
    ]:
        assert (out / name).is_file(), name
    frames, losses = np.load(out / "frames.npy"), np.load(out / "loss.npy")
    assert frames.shape == (3, 500, 2)  # epochs 0, 4 and the last, 7
    assert losses.shape == (8 * 32,) and losses[-32:].mean() < losses[:32].mean()
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "line"
    # --input_scale auto is kept as the number it stood for
    line = datasets.load("line").train_set()[0]
    assert config["input_scale"] == round(positional_embeddings.fourier_scale(line), 1)
    noise = evaluate.evaluate(np.random.default_rng(0).normal(size=(500, 2)), "line")
    assert metrics["w2_ratio"] < noise["w2_ratio"] / 2
