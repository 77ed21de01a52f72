"""tiny-diffusion: a denoising diffusion probabilistic model (Ho et al. 2020) on 2D points.

It reads top to bottom like the paper: noise schedule -> forward process q(x_t | x_0)
-> denoiser -> training loss -> reverse steps (DDPM, DDIM) -> training loop -> CLI.

Timesteps are 0-based in code: t = 0..T-1 here is the paper's t = 1..T.

    python ddpm.py --dataset dino
"""

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import datasets
import evaluate
import plots
from positional_embeddings import INPUT_EMBEDDINGS, TIME_EMBEDDINGS, make_embedding

PROJECT_DIR = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- 1. Noise schedule
# A schedule gives the variances beta_t of the T forward steps. What matters is where it
# ends: sampling starts from x_T ~ N(0, I), so alpha_bar_T = prod(1 - beta_t) must be ~0.
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: clip so no step destroys all signal at once


def linear_betas(T: int) -> torch.Tensor:
    # Ho et al.'s 1e-4..0.02 were tuned for T = 1000; scaling by 1000/T keeps alpha_bar_T ~ 0
    # for any T (as in Nichol & Dhariwal 2021's code).
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=MAX_BETA)


def quadratic_betas(T: int) -> torch.Tensor:
    scale = 1000 / T
    root = torch.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), T, dtype=torch.float64)
    return (root**2).clamp(max=MAX_BETA)


def _betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    # alpha_bar at t = 0, 1, ..., T (alpha_bar[0] = 1); beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: alpha_bar_t = f(t) / f(0),
    # f(t) = cos((t/T + s) / (1 + s) * pi/2)^2
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0])


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    # The sigmoid alpha_bar of Jabri et al. 2022 (Chen 2023, "On the importance of noise
    # scheduling", Alg. 1):
    # alpha_bar_t = (s(end) - s(start + (end - start) t/T)) / (s(end) - s(start)).
    v = torch.sigmoid((start + (end - start) * torch.arange(T + 1, dtype=torch.float64) / T) / tau)
    return _betas_from_alpha_bar((v[-1] - v) / (v[-1] - v[0]))


BETA_SCHEDULES = {
    "linear": linear_betas,
    "quadratic": quadratic_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


class NoiseSchedule:
    """The per-timestep constants of Ho et al. 2020, as (T,) float32 tensors."""

    def __init__(self, betas: torch.Tensor):
        betas = betas.double()  # products of many (1 - beta) lose precision in float32
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # alpha_bar_t, Ho et al. 2020, eq. 4
        self.num_timesteps = len(betas)
        self.betas, self.alphas, self.alphas_cumprod = (
            betas.float(),
            alphas.float(),
            alphas_cumprod.float(),
        )
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()

    @classmethod
    def named(cls, name: str, num_timesteps: int) -> "NoiseSchedule":
        return cls(BETA_SCHEDULES[name](num_timesteps))

    def to(self, device) -> "NoiseSchedule":
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # ------------------------------------------------------------------------- 2. Forward process
    def add_noise(self, x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Ho et al. 2020, eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        return (
            self.sqrt_alphas_cumprod[t, None] * x_0
            + self.sqrt_one_minus_alphas_cumprod[t, None] * eps
        )


# ----------------------------------------------------------------------------- 3. Denoiser
class Block(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.linear = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.linear(x))


class MLP(nn.Module):
    """eps_theta(x_t, t[, c]): x and y each get a sinusoidal embedding (scale 25), then t gets one.

    With num_classes > 0 a learned class embedding joins them; class index num_classes is
    the null class, "no class given" (Ho & Salimans 2022, sec. 3.2).
    """

    def __init__(
        self,
        hidden_size=128,
        hidden_layers=3,
        embedding_size=128,
        time_embedding="sinusoidal",
        input_embedding="sinusoidal",
        num_classes=0,
    ):
        super().__init__()
        self.embed_x = make_embedding(input_embedding, embedding_size, scale=25.0)
        self.embed_y = make_embedding(input_embedding, embedding_size, scale=25.0)
        self.embed_t = make_embedding(time_embedding, embedding_size)
        self.num_classes = num_classes
        self.embed_class = nn.Embedding(num_classes + 1, embedding_size) if num_classes else None
        in_size = (
            self.embed_x.out_dim
            + self.embed_y.out_dim
            + self.embed_t.out_dim
            + (embedding_size if num_classes else 0)
        )
        layers = [nn.Linear(in_size, hidden_size), nn.GELU()]
        layers += [Block(hidden_size) for _ in range(hidden_layers)]
        layers += [nn.Linear(hidden_size, 2)]
        self.net = nn.Sequential(*layers)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = [self.embed_x(x_t[:, 0]), self.embed_y(x_t[:, 1]), self.embed_t(t)]
        if self.num_classes:
            c = torch.full_like(t, self.num_classes) if c is None else c  # (B,) class indices
            features.append(self.embed_class(c))
        return self.net(torch.cat(features, dim=-1))  # (B, in_size) -> (B, 2): the predicted eps


# ----------------------------------------------------------------------------- 4. Training loss
def loss_fn(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_0: torch.Tensor,
    c: torch.Tensor | None = None,
    cond_drop_prob: float = 0.0,
) -> torch.Tensor:
    eps = torch.randn_like(x_0)
    t = torch.randint(0, schedule.num_timesteps, (len(x_0),), device=x_0.device)
    x_t = schedule.add_noise(x_0, eps, t)
    if (
        c is not None
    ):  # classifier-free guidance: the same model also learns p(x) (Ho & Salimans 2022, Alg. 1)
        c = torch.where(torch.rand(len(c), device=c.device) < cond_drop_prob, model.num_classes, c)
    return F.mse_loss(model(x_t, t, c), eps)  # Ho et al. 2020, eq. 14: L_simple


# ----------------------------------------------------------------------------- 5. Reverse process
# Each step goes from timestep t to an earlier one, t_prev: the next timestep in training,
# or a jump when sampling with fewer steps. It needs only alpha_bar at both ends
# (alpha_bar_prev = 1 at the end of the chain).
def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    # Ho et al. 2020, eq. 15: eq. 4 solved for x_0
    return (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()


def posterior(
    x_0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor
):
    """Mean and variance of q(x_prev | x_t, x_0), Ho et al. 2020, eqs. 6-7."""
    # one step's beta, or a whole jump's (Nichol & Dhariwal 2021, sec. 4)
    beta_t = 1 - alpha_bar_t / alpha_bar_prev
    mean = (alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t)) * x_0 + (
        (1 - beta_t).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    ) * x_t
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t  # beta-tilde, eq. 7
    return mean, variance


def clip_x0(x_0: torch.Tensor, clip_range: torch.Tensor | None) -> torch.Tensor:
    # At high noise eq. 15 divides by a tiny sqrt(alpha_bar_t), so a small error in eps
    # throws x_0 far outside the data; clipping to the data's box (2, 2) keeps each step sane.
    return x_0 if clip_range is None else x_0.clamp(clip_range[0], clip_range[1])


def ddpm_step(x_t, eps, alpha_bar_t, alpha_bar_prev, z, clip_range=None):
    """Ancestral sampling: x_prev ~ N(posterior mean, beta-tilde).

    Ho et al. 2020, Alg. 2, via eqs. 15 and 7."""
    x_0 = clip_x0(predict_x0(x_t, eps, alpha_bar_t), clip_range)
    mean, variance = posterior(x_0, x_t, alpha_bar_t, alpha_bar_prev)
    return mean + variance.sqrt() * z


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, z, eta=0.0, clip_range=None):
    """Song et al. 2021, eq. 12; eta = 0 is deterministic, eta = 1 is the DDPM posterior."""
    x_0 = clip_x0(predict_x0(x_t, eps, alpha_bar_t), clip_range)
    # the eps consistent with the clipped x_0
    eps = (x_t - alpha_bar_t.sqrt() * x_0) / (1 - alpha_bar_t).sqrt()
    beta_t = 1 - alpha_bar_t / alpha_bar_prev
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t).sqrt()  # eq. 16
    return alpha_bar_prev.sqrt() * x_0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps + sigma * z


def inference_timesteps(num_timesteps: int, num_inference_steps: int | None = None) -> list[int]:
    """Evenly spaced timesteps from T-1 down to 0; all of them by default."""
    steps = num_inference_steps or num_timesteps
    return torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def guided_eps(model, x_t, t, c, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance, Ho & Salimans 2022, eq. 6 with w = guidance_scale - 1:
    eps_null + s (eps_c - eps_null). s = 1 is the plain conditional model, s > 1 sharpens the
    class."""
    if c is None or guidance_scale == 1.0:
        return model(x_t, t, c)
    null = torch.full_like(c, model.num_classes)
    # one batched call for both
    eps_c, eps_null = model(torch.cat((x_t, x_t)), torch.cat((t, t)), torch.cat((c, null))).chunk(2)
    return eps_null + guidance_scale * (eps_c - eps_null)


def guided_at(
    t: int, num_timesteps: int, guidance_scale: float, guidance_interval=(0.0, 1.0)
) -> float:
    """The scale for the step from timestep t (0-based, the paper's t + 1).

    guidance_scale while (t + 1) / T lies in the guidance interval (lo, hi], else 1, the plain
    conditional model. Kynkäänniemi et al. 2024 guide only in a limited interval of noise
    levels; (0, 1] guides every step."""
    lo, hi = guidance_interval
    return guidance_scale if lo < (t + 1) / num_timesteps <= hi else 1.0


@torch.inference_mode()
def reverse_process(
    model,
    schedule,
    n,
    generator,
    *,
    sampler="ddpm",
    num_inference_steps=None,
    eta=0.0,
    clip_range=None,
    c=None,
    guidance_scale=1.0,
    guidance_interval=(0.0, 1.0),
):
    """Start from x_T ~ N(0, I) and step down to x_0, yielding (t, x_t) after each step.

    (T, x_T) comes first.

    c: (n,) class of each point, for a conditional model (None: unconditional)."""
    device = schedule.alphas_cumprod.device
    timesteps = inference_timesteps(schedule.num_timesteps, num_inference_steps)
    x_t = torch.randn(n, 2, generator=generator, device=device)  # (n, 2)
    yield schedule.num_timesteps, x_t
    one = torch.ones((), device=device)
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        s = guided_at(t, schedule.num_timesteps, guidance_scale, guidance_interval)
        eps = guided_eps(model, x_t, torch.full((n,), t, device=device), c, s)
        alpha_bar_t = schedule.alphas_cumprod[t]
        alpha_bar_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else one
        z = torch.randn(n, 2, generator=generator, device=device)
        if sampler == "ddpm":
            x_t = ddpm_step(x_t, eps, alpha_bar_t, alpha_bar_prev, z, clip_range)
        else:
            x_t = ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, z, eta, clip_range)
        yield t_prev + 1, x_t  # the paper's index of the new x_t: 0 for the sample x_0


def sample(model, schedule, n, generator, **options) -> torch.Tensor:
    """Draw n points (n, 2): the end of the reverse process (options as for reverse_process)."""
    for _, x_t in reverse_process(model, schedule, n, generator, **options):
        pass
    return x_t


# ----------------------------------------------------------------------------- 6. Training loop
MODEL_FIELDS = (
    "dataset",
    "num_timesteps",
    "beta_schedule",
    "embedding_size",
    "hidden_size",
    "hidden_layers",
    "time_embedding",
    "input_embedding",
)
# where and how, not what, is trained
RUN_FIELDS = (
    "experiment_name",
    "exps_dir",
    "data_dir",
    "device",
    "checkpoint",
    "resume",
    "overwrite",
)

OUTPUT_FILES = (
    "config.json",
    "model.pth",
    "loss.npy",
    "loss.png",
    "frames.npy",
    "frame_labels.npy",
    "metrics.json",
)
CHECKPOINT_KEYS = {
    "config",
    "epoch",
    "model",
    "ema",
    "optimizer",
    "lr_schedule",
    "rng",
    "clip_range",
    "losses",
    "frames",
    "frame_epochs",
    "classes",
    "shift",
    "scale",
}


# Predicting eps = 0 scores 1; a loss this large (or NaN) means the optimisation has blown up.
DIVERGED_LOSS = 1e3


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class TrainingError(Exception):
    """Training stopped early; what was done so far is saved."""


def make_model(config: dict, num_classes: int = 0) -> MLP:
    return MLP(
        config["hidden_size"],
        config["hidden_layers"],
        config["embedding_size"],
        config["time_embedding"],
        config["input_embedding"],
        num_classes,
    )


def is_frame_epoch(epoch: int, config: dict) -> bool:
    """Frames are sampled every save_images_step epochs and after the last one."""
    return epoch % config["save_images_step"] == 0 or epoch == config["num_epochs"] - 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but this machine has no CUDA device: use --device cpu")
    return torch.device(name)


class StopOnCtrlC:
    """The first Ctrl-C asks training to stop after this epoch, so the saved state is whole."""

    requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "Ctrl-C: stopping after this epoch and saving (press again to quit without saving)"
        )

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


class EMA(AveragedModel):
    """theta_ema <- decay theta_ema + (1 - decay) theta after each step; sampling uses theta_ema.

    The numbers and state_dict of torch's AveragedModel with get_ema_multi_avg_fn (the first
    update copies theta), but the tensors of both models are listed once, here: its
    update_parameters(model) walks both module trees on every call, 0.8 ms a step here, 16x
    the lerp itself."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.averaged = [*self.module.parameters(), *self.module.buffers()]
        self.source = [*model.parameters(), *model.buffers()]  # updated in place by the optimizer

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - self.decay if self.n_averaged > 0 else 1.0  # lerp with weight 1 copies
        torch._foreach_lerp_(self.averaged, self.source, weight)
        self.n_averaged += 1


class Run:
    """Everything a run needs to continue: model, EMA, optimizer, losses and frames so far."""

    def __init__(
        self,
        config: dict,
        data: torch.Tensor,
        labels: torch.Tensor | None = None,
        classes=(),
        shift=None,
        scale=None,
        checkpoint: dict | None = None,
    ):
        """data: (m, 2) training points in training units, x = (x_data - shift) / scale;
        labels: (m,) classes or None."""
        self.config, self.data, self.labels = config, data, labels
        self.classes, device = list(classes), data.device
        self.schedule = NoiseSchedule.named(config["beta_schedule"], config["num_timesteps"]).to(
            device
        )
        self.model = make_model(config, len(self.classes)).to(device)
        self.ema = EMA(self.model, config["ema_decay"])
        # fused: one kernel for all tensors, 5x faster than the per-tensor loop on CPU
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config["learning_rate"], fused=True
        )
        self.batches_per_epoch = math.ceil(len(data) / config["train_batch_size"])
        total_steps = config["num_epochs"] * self.batches_per_epoch
        # Cosine decay of the learning rate to 0: the last steps refine instead of jumping around.
        self.lr_schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total_steps, 1))
            if config["lr_decay"] == "cosine"
            else None
        )
        # filled without a sync per step
        self.losses = torch.full((total_steps,), math.nan, device=device)
        # (2, 2): the data's box
        self.clip_range = torch.stack((data.min(0).values, data.max(0).values))
        self.shift = torch.zeros(2) if shift is None else shift
        self.scale = torch.ones(2) if scale is None else scale
        self.plot_limits = None
        self.frame_classes = self._frame_classes()
        self.epoch, self.frames, self.frame_epochs, self.frame_seconds = 0, [], [], 0.0
        if checkpoint:
            self.model.load_state_dict(checkpoint["model"])
            self.ema.load_state_dict(checkpoint["ema"])
            self.clip_range = checkpoint["clip_range"].to(device)
        if checkpoint and config["resume"]:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.lr_schedule:
                self.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
            torch.set_rng_state(checkpoint["rng"].cpu())
            self.epoch = checkpoint["epoch"]
            self.losses[: len(checkpoint["losses"])] = checkpoint["losses"]
            self.frames, self.frame_epochs = (
                list(checkpoint["frames"].cpu()),
                list(checkpoint["frame_epochs"]),
            )

    def sample_frame(self) -> None:
        tic = time.perf_counter()
        self.ema.module.eval()
        config = self.config
        # same x_T every frame: the animation follows the same points
        generator = torch.Generator(self.data.device).manual_seed(config["seed"])
        x_0 = sample(
            self.ema.module,
            self.schedule,
            config["eval_batch_size"],
            generator,
            sampler=config["sampler"],
            num_inference_steps=config["num_inference_steps"],
            eta=config["eta"],
            clip_range=self.clip_range if config["clip_x0"] else None,
            c=self.frame_classes,
            guidance_scale=config["guidance_scale"],
            guidance_interval=config["guidance_interval"],
        )
        self.frames.append(x_0.cpu() * self.scale + self.shift)  # in the data's own units
        self.frame_epochs.append(self.epoch)
        self.frame_seconds += time.perf_counter() - tic

    @property
    def frame_labels(self) -> np.ndarray | None:
        """The class of each frame point as (N,) numpy, or None without classes."""
        return None if self.frame_classes is None else self.frame_classes.cpu().numpy()

    def _frame_classes(self) -> torch.Tensor | None:
        """The class of each frame point: --class_label, else every class in its data share."""
        if not self.classes:
            return None
        n = self.config["eval_batch_size"]
        if self.config["class_label"] is not None:
            return torch.full(
                (n,), self.classes.index(self.config["class_label"]), device=self.data.device
            )
        shares = torch.bincount(self.labels, minlength=len(self.classes)).double() / len(
            self.labels
        )
        counts = torch.diff(
            torch.round(torch.cumsum(shares, 0) * n).long(),
            prepend=torch.zeros(1, dtype=torch.long, device=shares.device),
        )
        classes = torch.arange(len(self.classes), device=self.data.device)
        return torch.repeat_interleave(classes, counts)  # (n,)

    def step(self, x_0: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """One optimisation step on a batch (B, 2) of classes c (B,).

        Returns the loss without waiting for it."""
        loss = loss_fn(self.model, self.schedule, x_0, c, self.config["cond_drop_prob"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.optimizer.step()
        if self.lr_schedule:
            self.lr_schedule.step()
        self.ema.update()
        return loss.detach()

    def train(self) -> str:
        """AdamW on L_simple with an EMA of the weights.

        Returns "done", "interrupted" or "diverged"."""
        config, data, B = self.config, self.data, self.batches_per_epoch
        bar = tqdm(
            total=len(self.losses),
            initial=self.epoch * B,
            desc=f"training on {config['dataset']}",
            unit="step",
            mininterval=0.25,
            dynamic_ncols=True,
        )
        with bar, StopOnCtrlC() as ctrl_c:
            while self.epoch < config["num_epochs"]:
                self.model.train()
                step = self.epoch * B
                # Batches by indexing tensors: no DataLoader, no per-item collation.
                order = torch.randperm(len(data), device=data.device)
                for batch in order.split(config["train_batch_size"]):
                    c = None if self.labels is None else self.labels[batch]
                    self.losses[step] = self.step(data[batch], c)
                    step += 1
                epoch_losses = self.losses[step - B : step]
                # one sync per epoch
                epoch_loss, worst = torch.stack((epoch_losses.mean(), epoch_losses.max())).tolist()
                if not worst <= DIVERGED_LOSS:  # also catches NaN
                    return "diverged"
                bar.set_postfix(loss=f"{epoch_loss:.4f}", refresh=False)
                bar.update(B)
                if is_frame_epoch(self.epoch, config):
                    self.sample_frame()
                self.epoch += 1
                if ctrl_c.requested:
                    return "interrupted"
        return "done"

    def checkpoint(self) -> dict:
        steps = self.epoch * self.batches_per_epoch
        return {
            "config": self.config,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else None,
            "rng": torch.get_rng_state(),
            "clip_range": self.clip_range.cpu(),
            "losses": self.losses[:steps].cpu(),
            "frames": torch.stack(self.frames)
            if self.frames
            else torch.zeros(0, self.config["eval_batch_size"], 2),
            "frame_epochs": self.frame_epochs,
            "classes": self.classes,
            "shift": self.shift,
            "scale": self.scale,
        }


def write_atomically(path: Path, write) -> None:
    """write(file) to a temporary file, then rename: a crash never leaves a half-written `path`."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_outputs(
    out_dir: Path, run: Run, losses: torch.Tensor, with_checkpoint: bool = True
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = (
        torch.stack(run.frames).numpy()
        if run.frames
        else np.zeros((0, run.config["eval_batch_size"], 2), np.float32)
    )
    write_atomically(
        out_dir / "config.json",
        lambda f: f.write((json.dumps(run.config, indent=2) + "\n").encode()),
    )
    write_atomically(out_dir / "loss.npy", lambda f: np.save(f, losses.cpu().numpy()))
    plots.save_loss(losses.cpu().numpy(), out_dir / "loss.png")
    write_atomically(out_dir / "frames.npy", lambda f: np.save(f, frames))
    if run.frame_labels is not None:
        write_atomically(out_dir / "frame_labels.npy", lambda f: np.save(f, run.frame_labels))
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    if len(frames):
        plots.save_frames(
            frames, run.frame_epochs, out_dir / "images", run.frame_labels, run.plot_limits
        )
    if with_checkpoint:
        write_atomically(out_dir / "model.pth", lambda f: torch.save(run.checkpoint(), f))


def run(config: dict, dataset: datasets.Dataset, checkpoint: dict | None = None) -> dict:
    """Train (or continue, or load) a model, sample frames with its EMA weights, evaluate, and
    write exps/<name>/."""
    started = time.perf_counter()
    device = resolve_device(config["device"])
    torch.manual_seed(config["seed"])
    points, labels = (torch.from_numpy(array) for array in dataset.train_set())  # (m, 2), (m,)
    if checkpoint:
        shift, scale = checkpoint["shift"].cpu(), checkpoint["scale"].cpu()
    elif (
        dataset.is_file
    ):  # own data is standardised for training; frames and metrics stay in its units
        shift, scale = points.mean(0), points.std(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        shift, scale = torch.zeros(2), torch.ones(2)
    data = ((points - shift) / scale).to(device)
    state = Run(
        config,
        data,
        labels.to(device) if dataset.classes else None,
        dataset.classes,
        shift,
        scale,
        checkpoint,
    )
    if dataset.is_file:
        low, high = points.min(0).values, points.max(0).values
        state.plot_limits = (
            torch.stack((low - 0.2 * (high - low), high + 0.2 * (high - low))).T.flatten().tolist()
        )
    alpha_bar_T = state.schedule.alphas_cumprod[-1].item()
    tqdm.write(
        f"{config['beta_schedule']} schedule, T = {config['num_timesteps']}: "
        f"alpha_bar_T = {alpha_bar_T:.2e}"
    )
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]

    tic = time.perf_counter()
    status = state.train()
    train_seconds = time.perf_counter() - tic - state.frame_seconds
    if status == "diverged":
        first_bad = int((~(state.losses <= DIVERGED_LOSS)).nonzero()[0])  # NaN compares False
        # no blown-up weights
        save_outputs(out_dir, state, state.losses[: first_bad + 1], with_checkpoint=False)
        raise TrainingError(
            f"training diverged: the loss was {state.losses[first_bad].item():.3g} at step "
            f"{first_bad} (epoch {state.epoch}); try a lower --learning_rate than "
            f"{config['learning_rate']:g}. Losses and frames so far are in {out_dir}"
        )
    if status == "interrupted":
        save_outputs(out_dir, state, state.losses[: state.epoch * state.batches_per_epoch])
        raise KeyboardInterrupt(
            f"interrupted after epoch {state.epoch} of {config['num_epochs']}; saved in {out_dir}. "
            f"Continue with: python ddpm.py --experiment_name {config['experiment_name']} "
            f"--exps_dir {config['exps_dir']} --resume"
        )
    if not state.frames:  # --num_epochs 0: only sample the checkpoint
        state.sample_frame()

    tic = time.perf_counter()
    metrics = evaluate.evaluate(
        state.frames[-1].numpy(), dataset, seed=config["seed"], labels=state.frame_labels
    )
    evaluate_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    save_outputs(out_dir, state, state.losses)
    write_seconds = time.perf_counter() - tic
    metrics["seconds"] = {
        "train": train_seconds,
        "frames": state.frame_seconds,
        "evaluate": evaluate_seconds,
        "write": write_seconds,
        "total": time.perf_counter() - started,
    }
    write_atomically(
        out_dir / "metrics.json", lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode())
    )
    return metrics | {"out_dir": str(out_dir)}


# ----------------------------------------------------------------------------- 7. Command line
class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="ddpm.py",
        description="Train a DDPM on a 2D point cloud, sample it, and score the samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--experiment_name",
        default="base",
        help="outputs go to <exps_dir>/<experiment_name>/; an existing run is never replaced "
        "without --overwrite",
    )
    parser.add_argument(
        "--exps_dir", default=str(PROJECT_DIR / "exps"), help="folder holding all experiments"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run <experiment_name> where it stopped",
    )
    parser.add_argument(
        "--dataset",
        default="dino",
        help=(
            f"the point cloud to learn: one of {', '.join(datasets.DATASETS)}; several names "
            "joined by commas (each one a class, e.g. dino,star,bullseye); or your own "
            ".csv/.tsv/.npy file with columns x,y (else its first two numeric columns) and an "
            "optional label (or class) column. moons has two classes, its two moons. "
            "`--dataset list` prints the names"
        ),
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help=f"folder holding {datasets.DATASAURUS_FILE} (or set {datasets.DATA_DIR_ENV}); "
        "default: static/, downloaded once",
    )
    parser.add_argument(
        "--train_batch_size", type=positive(int), default=256, help="points per optimisation step"
    )
    parser.add_argument(
        "--eval_batch_size",
        type=positive(int),
        default=1000,
        help="points sampled for each frame and for the evaluation",
    )
    parser.add_argument(
        "--num_epochs",
        type=int,
        default=150,
        help="passes over the 8000 training points (0: only sample --checkpoint)",
    )
    parser.add_argument(
        "--learning_rate", type=positive(float), default=3e-3, help="AdamW learning rate"
    )
    parser.add_argument(
        "--lr_decay",
        default="none",
        choices=("none", "cosine"),
        help="learning-rate schedule over the run",
    )
    parser.add_argument(
        "--num_timesteps", type=positive(int), default=50, help="T, the number of diffusion steps"
    )
    parser.add_argument(
        "--beta_schedule",
        default="cosine",
        choices=list(BETA_SCHEDULES),
        help="how beta_t grows with t",
    )
    parser.add_argument(
        "--embedding_size",
        type=positive(int),
        default=128,
        help="width of each sinusoidal/learnable embedding (even, at least 4, for sinusoidal)",
    )
    parser.add_argument("--hidden_size", type=positive(int), default=128, help="width of the MLP")
    parser.add_argument(
        "--hidden_layers", type=positive(int), default=3, help="residual blocks in the MLP"
    )
    parser.add_argument(
        "--time_embedding", default="sinusoidal", choices=TIME_EMBEDDINGS, help="how the MLP sees t"
    )
    parser.add_argument(
        "--input_embedding",
        default="sinusoidal",
        choices=INPUT_EMBEDDINGS,
        help="how the MLP sees x and y",
    )
    parser.add_argument(
        "--cond_drop_prob",
        type=float,
        default=0.1,
        help="for datasets with classes: how often training hides the class, so the model also "
        "learns p(x) for guidance",
    )
    parser.add_argument(
        "--class_label",
        default=None,
        help="sample only this class (default: every class in its share of the data)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale s: 1 plain conditional, >1 sharper classes, "
        "0 unconditional",
    )
    parser.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        default=[0.0, 1.0],
        metavar=("LO", "HI"),
        help=(
            "guide only the steps from x_t with LO < t/T <= HI, s = 1 elsewhere "
            "(Kynkäänniemi et al. 2024); t/T runs from 1/T, nearly clean, to 1, pure noise"
        ),
    )
    parser.add_argument(
        "--ema_decay",
        type=float,
        default=0.995,
        help="decay of the moving average of the weights used for sampling, in [0, 1)",
    )
    parser.add_argument(
        "--sampler",
        default="ddpm",
        choices=("ddpm", "ddim"),
        help="ancestral DDPM steps, or DDIM steps",
    )
    parser.add_argument(
        "--num_inference_steps",
        type=positive(int),
        default=None,
        help="sampling steps, a subset of the T timesteps (default: all T)",
    )
    parser.add_argument(
        "--eta",
        type=float,
        default=0.7,
        help="DDIM's eta in [0, 1]: 0 deterministic, 1 as noisy as DDPM (0.7 measured best at "
        "20 steps, see README)",
    )
    parser.add_argument(
        "--no_clip_x0",
        dest="clip_x0",
        action="store_false",
        help="do not clip the predicted x_0 to the data's range",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="start from this model.pth (with --num_epochs 0: only sample and evaluate)",
    )
    parser.add_argument(
        "--save_images_step",
        type=positive(int),
        default=10,
        help="save a frame every this many epochs",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed and device give identical losses and samples"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda when available",
    )
    return parser


def explicit_options(argv) -> dict:
    """The options the user typed, without the defaults."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def check_config(config: dict) -> None:
    if config["num_epochs"] < 0 or (config["num_epochs"] == 0 and not config["checkpoint"]):
        raise UsageError("--num_epochs must be positive (or 0 with --checkpoint, to only sample)")
    sinusoidal = "sinusoidal" in (config["time_embedding"], config["input_embedding"])
    if sinusoidal and (config["embedding_size"] < 4 or config["embedding_size"] % 2):
        raise UsageError(
            "--embedding_size must be even and at least 4 for sinusoidal embeddings, "
            f"got {config['embedding_size']}"
        )
    if (config["num_inference_steps"] or 0) > config["num_timesteps"]:
        raise UsageError(
            f"--num_inference_steps {config['num_inference_steps']} is more than the "
            f"{config['num_timesteps']} training timesteps"
        )
    if not 0 <= config["ema_decay"] < 1:
        raise UsageError(f"--ema_decay must be in [0, 1), got {config['ema_decay']}")
    if not 0 <= config["eta"] <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {config['eta']}")
    if not 0 <= config["cond_drop_prob"] <= 1:
        raise UsageError(f"--cond_drop_prob must be in [0, 1], got {config['cond_drop_prob']}")
    if config["guidance_scale"] < 0:
        raise UsageError(f"--guidance_scale must be at least 0, got {config['guidance_scale']}")
    lo, hi = config["guidance_interval"]
    if not 0 <= lo < hi <= 1:
        raise UsageError(f"--guidance_interval LO HI needs 0 <= LO < HI <= 1, got {lo:g} {hi:g}")
    name = config["experiment_name"]
    if not name or name in (".", "..") or any(sep in name for sep in "/\\") or name.startswith("."):
        raise UsageError(
            "--experiment_name must be a plain folder name (no path separators, no leading "
            f"dot), got {name!r}"
        )


def load_checkpoint(path: Path, device: torch.device) -> dict:
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found")
    try:
        # map_location: a CUDA checkpoint loads on a CPU
        checkpoint = torch.load(path, map_location=device, weights_only=True)

    except Exception as err:
        raise UsageError(
            f"{path} is not a tiny-diffusion checkpoint ({type(err).__name__}); "
            "give the model.pth of a run"
        ) from None
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
        raise UsageError(
            f"{path} is not a tiny-diffusion checkpoint (it lacks its keys); "
            "give the model.pth of a run"
        )
    return checkpoint


def merge_checkpoint_config(config: dict, explicit: dict, saved: dict, fields) -> dict:
    """Take `fields` from the checkpoint's config; refuse if the user asked for other values."""
    differ = [field for field in fields if field in explicit and explicit[field] != saved[field]]
    if differ:
        asked = ", ".join(f"{field}={explicit[field]}" for field in differ)
        had = ", ".join(f"{field}={saved[field]}" for field in differ)
        raise UsageError(
            f"the checkpoint has {had} but you asked for {asked}: drop those options or use "
            "another checkpoint"
        )
    return config | {field: saved[field] for field in fields}


def prepare(argv) -> tuple[dict, datasets.Dataset, dict | None]:
    """Parse and check the command line; load the checkpoint and the dataset it names.

    Raises UsageError (or DatasetError) before anything of an existing run is removed."""
    config, explicit = vars(build_parser().parse_args(argv)), explicit_options(argv)
    check_config(config)
    out_dir = Path(config["exps_dir"]) / config["experiment_name"]
    device = resolve_device(config["device"])
    checkpoint, replacing = (
        None,
        not config["resume"] and out_dir.exists() and any(out_dir.iterdir()),
    )
    if config["resume"]:
        if config["checkpoint"]:
            raise UsageError(
                "--resume continues <experiment_name>; do not give --checkpoint with it"
            )
        checkpoint = load_checkpoint(out_dir / "model.pth", device)
        fields = [field for field in checkpoint["config"] if field not in RUN_FIELDS]
        config = merge_checkpoint_config(config, explicit, checkpoint["config"], fields)
        if checkpoint["epoch"] >= config["num_epochs"]:
            raise UsageError(
                f"{out_dir} finished all {config['num_epochs']} epochs: nothing to resume"
            )
    else:
        if replacing and not config["overwrite"]:
            raise UsageError(
                f"{out_dir} already holds a run: pass --overwrite to replace it, --resume to "
                "continue it, or choose another --experiment_name"
            )
        if config["checkpoint"]:
            checkpoint = load_checkpoint(Path(config["checkpoint"]), device)
            config = merge_checkpoint_config(config, explicit, checkpoint["config"], MODEL_FIELDS)
    # the checkpoint's dataset, when there is one
    dataset = datasets.load(config["dataset"], config["data_dir"])
    if config["class_label"] is not None and config["class_label"] not in dataset.classes:
        raise UsageError(
            f"--class_label {config['class_label']!r} is not a class of {dataset.name}: "
            f"its classes are {', '.join(dataset.classes) or 'none'}"
        )
    if replacing:
        # nothing of the replaced run may survive to be mistaken for the new one
        for name in OUTPUT_FILES:
            (out_dir / name).unlink(missing_ok=True)

        shutil.rmtree(out_dir / "images", ignore_errors=True)
    return config, dataset, checkpoint


def main(argv=None) -> int:
    parser = build_parser()
    if vars(parser.parse_args(argv))["dataset"] == "list":
        print("\n".join(datasets.DATASETS))
        return 0
    if "OMP_NUM_THREADS" not in os.environ:
        # The MLP is too small for a second thread to help (8.5 vs 8.7 ms a step on 2 cores),
        # and on a busy machine threads that wait for each other make a step 10x slower.
        torch.set_num_threads(1)
    try:
        config, dataset, checkpoint = prepare(argv)
        metrics = run(config, dataset, checkpoint)
    except (UsageError, datasets.DatasetError) as err:
        parser.error(str(err))
    except TrainingError as err:
        parser.exit(1, f"{parser.prog}: {err}\n")
    except KeyboardInterrupt as err:
        parser.exit(130, f"{parser.prog}: {err or 'interrupted'}\n")
    files = "model.pth config.json loss.npy frames.npy images/ metrics.json"
    print(f"outputs in {metrics['out_dir']}/: {files}")
    seconds = metrics["seconds"]["total"]
    print(f"{config['dataset']}: {evaluate.format_metrics(metrics)}  ({seconds:.1f} s)")

    return 0


if __name__ == "__main__":
    sys.exit(main())
