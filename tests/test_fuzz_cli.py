"""Any command line either starts a run or ends in one line saying what is wrong, never a traceback.

Parsing and checking only: ddpm.experiment is replaced by a stub, so no example trains.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddpm

# every option but --exps_dir, which the test points at its own folder
OPTIONS = [
    option
    for action in ddpm.build_parser()._actions
    for option in action.option_strings
    if option != "--exps_dir"
]
JUNK = ["--", "-", "--no_such_option", "-x", "--seed=-1", "--eta=-inf", "list", "moons"]
PATHS = ["missing.csv", "missing.npy", "~nobody_here/points.csv", ".", "", "dino,star", "moons,"]
NUMBERS = st.one_of(
    st.floats(),  # nan, inf, -0.0, 1e308, 5e-324 among them
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
).map(str)
TOKENS = st.one_of(
    st.sampled_from(OPTIONS + JUNK), st.sampled_from(PATHS), NUMBERS, st.text(max_size=12)
)


class Started(Exception):
    """Raised by the stub of ddpm.experiment: the checks let the run start."""


def start(*args):
    raise Started


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=st.lists(TOKENS, max_size=8))
def test_any_command_line_starts_a_run_or_ends_in_one_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths typed by the fuzzer land here
    monkeypatch.setattr(ddpm, "experiment", start)
    try:
        code = ddpm.main(["--exps_dir", str(tmp_path / "exps"), *argv])
    except SystemExit as exit:
        code = exit.code
    except Started:
        code = 0
    out, err = capsys.readouterr()
    if code == 0:
        assert err == "", argv
    else:
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("ddpm.py: error: "), (argv, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--experiment_name", "a\nb", "--exps_dir", "file"],
        ["--dataset", "x\r\ny.csv"],
        ["--experiment_name", "nul\x00byte"],
        ["--dataset", "~nobody_here/points.csv"],
        ["--exps_dir", "a\u2028b", "--seed", "-1"],
    ],
    ids=["newline-in-name", "newline-in-file", "nul-byte", "unknown-home", "line-separator"],
)
def test_names_with_line_breaks_or_odd_characters_still_give_one_line(
    argv, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit:
        ddpm.main(["--exps_dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.splitlines()) == 1, err
