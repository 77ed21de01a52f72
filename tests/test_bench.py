"""bench.py times the default run beside another checkout's, alternating."""

import re
import statistics

import pytest

import bench

QUICK = ["--steps", "10", "--train_batch_size", "32", "--run_args=--num_epochs 1"]


def fake_checkout(folder, body: str):
    """A folder whose ddpm.py runs body: a stand-in for the original tiny-diffusion."""
    folder.mkdir()
    (folder / "ddpm.py").write_text(f"import sys, time\n{body}\n")
    return folder


def test_the_side_by_side_alternates_three_runs_each_and_prints_the_medians_ratio(tmp_path, capsys):
    other = fake_checkout(tmp_path / "other", "time.sleep(1)  # a run of a second")
    bench.main([*QUICK, "--against", str(other)])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("side by side"))
    here, there = (
        [float(t) for t in re.search(rf"{where} ([\d., ]+) s", line)[1].split(", ")]
        for where in ("here", "in " + re.escape(str(other)))
    )
    assert len(here) == len(there) == bench.SIDE_BY_SIDE
    assert all(1 <= t < 6 for t in there)  # the sleep and python's start-up
    speed_up = float(re.search(r"a speed-up of ([\d.]+)x", line)[1])
    assert speed_up == pytest.approx(statistics.median(there) / statistics.median(here), rel=0.1)


def test_a_failed_run_in_the_other_checkout_ends_bench_in_one_line(tmp_path, capsys):
    other = fake_checkout(tmp_path / "other", "sys.exit(3)")
    with pytest.raises(SystemExit) as ended:
        bench.main([*QUICK, "--against", str(other)])
    assert ended.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed (exit 3)" in err
    with pytest.raises(SystemExit) as ended:
        bench.main(["--against", str(tmp_path)])  # no ddpm.py there
    assert ended.value.code == 2 and "has no ddpm.py" in capsys.readouterr().err


@pytest.mark.parametrize(
    "run_args, phrase",
    [
        ("--foo", "bench.py --run_args: error: unrecognized arguments: --foo"),
        ("--hidden_layers 0", "bench.py --run_args: error: argument --hidden_layers: must be"),
        ("--ema_decay 2", "bench.py: error: --run_args: --ema_decay must be in [0, 1)"),
    ],
)
def test_bad_run_args_are_one_line_errors_of_bench(capsys, run_args, phrase):
    with pytest.raises(SystemExit) as ended:
        bench.main([f"--run_args={run_args}"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(phrase), err
