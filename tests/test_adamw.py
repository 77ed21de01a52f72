"""adamw.AdamW is torch.optim.AdamW with CosineAnnealingLR, without torch's compiler."""

import copy
import subprocess
import sys

import torch
from conftest import parsed_config
from torch.optim.lr_scheduler import CosineAnnealingLR

import adamw
import ddpm
from options import PROJECT_DIR

CONFIG = parsed_config("--hidden_size", "32", "--embedding_size", "16")
STEPS = 30


def losses(model, optimizer, schedule=None, steps=STEPS, seed=1, clip=None):
    """AdamW steps on EDM's loss, the same batches for the same seed; the losses. clip: torch's
    clip_grad_norm_ to that norm before each step."""
    method = ddpm.make_method(CONFIG, sigma_data=1.0)
    torch.manual_seed(seed)
    seen = []
    for _ in range(steps):
        loss = ddpm.loss_fn(model, method, torch.randn(64, 2))
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        if schedule:
            schedule.step()
        seen.append(loss.item())
    return seen


def test_steps_match_torchs_adamw_with_cosine_annealing_to_the_bit():
    torch.manual_seed(0)
    model = ddpm.make_model(CONFIG)
    reference = copy.deepcopy(model)
    torch_adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, fused=True)
    schedule = CosineAnnealingLR(torch_adamw, STEPS)
    ours = adamw.AdamW(model.parameters(), 1e-2, total_steps=STEPS)
    assert losses(model, ours) == losses(reference, torch_adamw, schedule)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert ours.learning_rate() == 0.0  # decayed to 0 at the last step
    assert not torch.equal(model.net[0].weight, ddpm.make_model(CONFIG).net[0].weight)


def test_its_clipping_is_torchs_clip_grad_norm_to_the_bit():
    for max_norm in (1.0, 0.05):  # 1.0 clips most of these steps, 0.05 every one
        torch.manual_seed(0)
        model = ddpm.make_model(CONFIG)
        reference, unclipped = copy.deepcopy(model), copy.deepcopy(model)
        torch_adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, fused=True)
        ours = adamw.AdamW(model.parameters(), 1e-2, max_grad_norm=max_norm)
        assert losses(model, ours) == losses(reference, torch_adamw, clip=max_norm)
        for a, b in zip(model.parameters(), reference.parameters()):
            assert torch.equal(a, b)
        losses(unclipped, adamw.AdamW(unclipped.parameters(), 1e-2))
        assert not torch.equal(unclipped.net[0].weight, model.net[0].weight)


def test_the_learning_rate_follows_the_half_cosine():
    ours = adamw.AdamW([torch.zeros(1, requires_grad=True)], 0.2, total_steps=4)
    rates = []
    for _ in range(4):
        rates.append(ours.learning_rate())
        ours.params[0].grad = torch.ones(1)
        ours.step()
    torch.testing.assert_close(rates, [0.2, 0.1 + 0.1 / 2**0.5, 0.1, 0.1 - 0.1 / 2**0.5])
    assert adamw.AdamW([torch.zeros(1)], 0.2).learning_rate() == 0.2  # no decay


def test_a_torch_state_dict_resumes_here_and_ours_resumes_in_torch():
    torch.manual_seed(0)
    model = ddpm.make_model(CONFIG)
    torch_adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses(model, torch_adamw, steps=5)
    ours = adamw.AdamW(model.parameters(), 1e-2, total_steps=10)
    ours.load_state_dict(torch_adamw.state_dict())
    assert ours.k == 5
    back = torch.optim.AdamW(model.parameters(), lr=1e-2)
    back.load_state_dict(torch_adamw.state_dict() | ours.state_dict())
    for i, state in back.state_dict()["state"].items():
        for name, value in torch_adamw.state_dict()["state"][i].items():
            assert torch.equal(state[name], value)


def test_a_run_never_imports_torchs_compiler(tmp_path):
    code = (
        "import sys, ddpm; "
        "ddpm.main(['--dataset', 'line', '--num_epochs', '1', '--exps_dir', sys.argv[1]]); "
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
