"""Every command beside ddpm.py either starts its work or ends in one line, never a traceback.

Parsing and checking only: each command's work is replaced by a stub that raises Started.
"""

import io
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_methods import TINY

import ablate
import bench
import ddpm
import evaluate
import figures
import likelihood


class Started(Exception):
    """Raised by a stub: the command's checks let its work start."""


def start(*args, **kwargs):
    raise Started


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of a few epochs, and a points file: real paths for the fuzzer to use."""
    exps = tmp_path_factory.mktemp("exps")
    assert ddpm.main([*TINY, "--exps_dir", str(exps), "--experiment_name", "tiny"]) == 0
    np.savetxt(exps / "points.csv", np.ones((12, 2)) * np.arange(12)[:, None], delimiter=",")
    return exps


# (module, its own options, the work stubbed out)
COMMANDS = {
    "evaluate": (evaluate, ["--dataset", "--frame", "--seed", "--data_dir"], ["evaluate"]),
    "likelihood": (
        likelihood,
        ["--exact", "--dataset", "--points", "--out", "--plot", "--seed", "--steps", "--data_dir"],
        ["nll_lines", "write_log_p", "plot_log_p"],
    ),
    "figures": (figures, ["--exps_dir", "--headline", "--density", "--methods"], []),
    "ablate": (ablate, ["--exps_dir", "--figure", "--num_epochs", "--dataset", "--eta"], ["sweep"]),
    "bench": (
        bench,
        ["--train_batch_size", "--steps", "--run_args", "--no_run", "--profile", "--against"],
        [],
    ),
}
WORDS = ["-1", "0", "3", "999", "1e9", "nan", "dino", "moons", "spiral", "learning_rate", "-x"]


def tokens(command: str, run_dir) -> st.SearchStrategy:
    paths = [
        str(run_dir / "tiny"),
        str(run_dir / "tiny" / "frames.npy"),
        str(run_dir / "points.csv"),
    ]
    paths += [str(run_dir / "tiny" / "model.pth"), str(run_dir / "missing"), str(run_dir), ""]
    return st.one_of(
        st.sampled_from(COMMANDS[command][1] + WORDS + paths),
        st.integers(min_value=-(2**40), max_value=2**40).map(str),
        st.text(max_size=8),
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_any_command_line_of_every_command_starts_its_work_or_ends_in_one_line(
    command, tiny_run, tmp_path_factory, monkeypatch
):
    module, _, work = COMMANDS[command]
    for name in work:
        monkeypatch.setattr(module, name, start)
    # figures' and bench's work: every run they would start, and bench's timed run
    monkeypatch.setattr(ablate, "run_once", start)
    monkeypatch.setattr(figures, "draw_headline", start)
    monkeypatch.setattr(ddpm, "make_run", start)
    scratch = tmp_path_factory.mktemp(command)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(argv=st.lists(tokens(command, tiny_run), max_size=5))
    def one_line_or_started(argv):
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(scratch)  # relative paths the fuzzer types land here
            capture = _Capture(patch)
            try:
                code = module.main(argv)
            except SystemExit as exit:
                code = exit.code
            except Started:
                code = 0
        err = capture.err()
        if code in (0, None):
            assert "Traceback" not in err, (argv, err)
        else:
            assert code == 2, (argv, err)
            assert len(err.strip().splitlines()) == 1 and ": error: " in err, (argv, err)

    one_line_or_started()


class _Capture:
    """stderr of one call, as capsys would give it (capsys is not per hypothesis example)."""

    def __init__(self, patch):
        self.buffer = io.StringIO()
        patch.setattr(sys, "stderr", self.buffer)
        patch.setattr(sys, "stdout", io.StringIO())

    def err(self) -> str:
        return self.buffer.getvalue()
