import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import pytest  # noqa: E402
import torch  # noqa: E402

import ddpm  # noqa: E402
import options  # noqa: E402
import run_folder  # noqa: E402

# Tests call training directly too: on the one thread every command uses (options.py says why).
options.use_run_threads()


def parsed_config(*args: str) -> dict:
    """A run's config as ddpm.py parses args, with a number for --input_scale: auto is measured
    from the training points by checkpoints.prepare, which a model or run built here skips."""
    return vars(ddpm.build_parser().parse_args(["--input_scale", "25", *args]))


def whole_and_resumed(args: list[str], teacher: Path, monkeypatch) -> tuple[dict, dict]:
    """The model.pth of ddpm.py `args` (with --exps_dir D) run whole into D/whole, and of the same
    run stopped by Ctrl-C in its first epoch and resumed into D/resumed, its teacher's model.pth
    (in the folder teacher) moved away meanwhile: resuming needs no teacher."""
    exps_dir = Path(args[args.index("--exps_dir") + 1])
    assert ddpm.main([*args, "--experiment_name", "whole"]) == 0
    monkeypatch.setattr(run_folder.StopOnCtrlC, "requested", True)  # Ctrl-C in the first epoch
    with pytest.raises(SystemExit) as stopped:
        ddpm.main([*args, "--experiment_name", "resumed"])
    assert stopped.value.code == 130
    monkeypatch.undo()
    (teacher / "model.pth").rename(exps_dir / "teacher.pth")
    assert ddpm.main([*args, "--experiment_name", "resumed", "--resume"]) == 0
    (exps_dir / "teacher.pth").rename(teacher / "model.pth")
    return tuple(torch.load(exps_dir / name / "model.pth") for name in ("whole", "resumed"))
