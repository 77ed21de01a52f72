"""The fast paths of a training step compute what the plain ones do."""

import copy
from concurrent.futures import Future

import pytest
import torch
from conftest import parsed_config
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.flop_counter import FlopCounterMode

import bench
import datasets
import ddpm

CONFIG = parsed_config("--hidden_size", "32", "--embedding_size", "16")


def train_steps(model, optimizer, steps=20):
    """Plain AdamW steps on L_simple; yields after each one."""
    method = ddpm.make_method(CONFIG | {"method": "ddpm"}, sigma_data=1.0)
    torch.manual_seed(1)
    for _ in range(steps):
        loss = ddpm.loss_fn(model, method, torch.randn(64, 2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield


def test_ema_equals_torchs_averaged_model_and_shares_its_state_dict():
    torch.manual_seed(0)
    model = ddpm.make_model(CONFIG)
    ema = ddpm.EMA(model, decay=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in train_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2)):
        ema.update()
        reference.update_parameters(model)
    assert ema.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert torch.equal(ema.state_dict()[name], value), name
    assert not torch.equal(ema.module.net[0].weight, model.net[0].weight)  # an average, not a copy
    plain = AveragedModel(ddpm.make_model(CONFIG))  # as figures.py loads a checkpoint's EMA
    plain.load_state_dict(ema.state_dict())


def test_fused_adamw_matches_the_per_tensor_loop_to_float_tolerance():
    torch.manual_seed(0)
    fused_model = ddpm.make_model(CONFIG)
    plain_model = copy.deepcopy(fused_model)
    fused = torch.optim.AdamW(fused_model.parameters(), lr=1e-2, fused=True)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, foreach=False)
    list(train_steps(fused_model, fused))
    list(train_steps(plain_model, plain))  # the same batches: train_steps seeds torch
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fused_model.net[0].weight, ddpm.make_model(CONFIG).net[0].weight)


@pytest.mark.parametrize("stable_target, count", [(False, 15), (True, 17)])
def test_bench_counts_the_flops_torch_counts_in_a_training_step(stable_target, count):
    torch.manual_seed(0)
    config = CONFIG | {"num_epochs": 1, "stable_target": stable_target}
    run = ddpm.make_run(config, datasets.load("line"))
    x_0 = torch.randn(64, 2)
    with FlopCounterMode(display=False) as counter:
        ddpm.loss_fn(run.model, run.method, x_0).backward()
    # 5 Linear layers forward and for the weight gradient, 4 for the input gradient; the
    # directional embedding's (x, y) K; the stable target's two products of the batch
    assert len(bench.step_matmuls(run, x_0)) == count
    assert sum(flops for flops, _ in bench.step_matmuls(run, x_0)) == counter.get_total_flops()


def test_frames_sampled_beside_training_are_those_of_the_ema_at_their_epoch():
    # sample_frame copies the frames' D and samples on the second thread while training goes on;
    # the same points, in the same order, as sampling then and there in line
    config = CONFIG | {"dataset": "line", "num_epochs": 4, "save_images_step": 1}
    config |= {"eval_batch_size": 200, "num_inference_steps": 4}
    run = ddpm.make_run(config, datasets.load("line"))
    in_line = []

    def frame(run):
        ddpm.sample_frame(run)
        in_line.append(ddpm.frame_points(run, config["seed"]) * run.scale + run.shift)

    torch.manual_seed(0)
    assert ddpm.train(run, frame=frame) == "done"
    assert run.frame_epochs == [0, 1, 2, 3] and not run.frames_started
    assert len(run.frames) == len(in_line) == 4
    for beside, then in zip(run.frames, in_line):
        assert torch.equal(beside, then)
    assert not torch.equal(run.frames[0], run.frames[-1])  # each from its own epoch's EMA


def test_an_error_in_training_is_reported_as_training_s_not_as_a_failed_frame_s():
    config = CONFIG | {"dataset": "line", "num_epochs": 3, "save_images_step": 1}
    run = ddpm.make_run(config, datasets.load("line"))

    def failed_frame(run):  # a frame whose sampling raised on the second thread
        frame = Future()
        frame.set_exception(RuntimeError("the frame failed"))
        run.frames_started.append(frame)

    def objective(*args):
        if run.epoch == 1:
            raise RuntimeError("training failed")
        return ddpm.loss_fn(*args)

    with pytest.raises(RuntimeError, match="training failed"):
        ddpm.train(run, objective, failed_frame)
    run.epoch = 2  # past the failing epoch: now the frame's error is the one to report
    with pytest.raises(RuntimeError, match="the frame failed"):
        ddpm.train(run, objective, failed_frame)
