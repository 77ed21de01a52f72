"""The model's log-likelihood of a point, through the probability-flow ODE.

Every method of ddpm.py is a denoiser D(x; sigma) of x = x_0 + sigma eps (its section 3). Its
probability-flow ODE (Karras et al. 2022, eq. 4 with s = 1; Song et al. 2021, eq. 13)

    dx/dsigma = (x - D(x; sigma)) / sigma

carries the density of x_0 + sigma_min eps to that of x_0 + sigma_max eps, and the
instantaneous change of variables (Chen et al. 2018, theorem 1) says how a point's log-density
changes along its path: d log p / dsigma = -div (x - D) / sigma = -(2 - tr dD/dx) / sigma. So

    log p_{sigma_min}(x_0) = log p_{sigma_max}(x(sigma_max)) + int (2 - tr dD/dx) / sigma dsigma

(Song et al. 2021, appendix D.2). In 2D the trace is exact: two backward passes give the two
rows of the Jacobian, where image models must estimate it (Hutchinson's trick).

- Solver: fixed-step RK4 in s = log sigma, where the rates x - D and 2 - tr dD/dx stay of order
  1 at every noise level. STEPS = 128 steps from 1e-3 to 10 (512 evaluations of D): for the
  default dino run 32, 64, 128 and 256 steps give -0.591, -0.582, -0.581 and -0.581 nats, so
  doubling them from 128 moves it by less than 0.001; the sharper the model, the more steps it
  needs (the exact denoiser moves by < 0.01 from 32 to 64 steps).
- sigma_min = 1e-3 > 0: the density is that of x_0 + 1e-3 eps, which differs from p(x_0) only
  on detail finer than ~1e-3 (the dino's jitter is 0.011).
- The prior at sigma_max: the Gaussian with the data's mean and per-axis variance, plus
  sigma_max^2. It has the first two moments of x_0 + sigma_max eps right; what it misses is the
  data's non-Gaussian shape, shrunk by the noise: its error, the KL between the two, falls as
  (var / sigma_max^2)^2 (1e-4 nats for the dino at sigma_max = 10, against its exact density).
- Classes: the likelihood is the unconditional one, p(x) of the null class.
- Test densities (TEST_DENSITIES): a correlated Gaussian, 8 Gaussians on a ring and a swiss
  roll, with their log densities, written as .csv files to train on like a user's own:
  figures.py --likelihood measures KL(data || model) on them and on the built-in shapes.

    python likelihood.py exps/base                  # the NLL of a run's model
    python likelihood.py --exact --dataset dino     # the same ODE with the exact denoiser
    python likelihood.py exps/base --points my.csv --out logp.csv   # log p of your points
    python likelihood.py exps/base --plot logp.png  # log p over the plane, the data on top
"""

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoints
import datasets
import ddpm
import exact
import options
import plots
import run_folder

SIGMA_MIN = 1e-3
STEPS = 128


def moment_gaussian(points: torch.Tensor) -> exact.GaussianMixture:
    """The Gaussian with the mean and per-axis variance of points (m, 2); its log_prob(x,
    sigma_max) is the prior, log p(x; sigma_max)."""
    points = points.double()
    return exact.GaussianMixture([1.0], points.mean(0, keepdim=True), points.std(0))


def rates(D, state: torch.Tensor, s: float) -> torch.Tensor:
    """d/ds of state (n, 3) = (x, y, log-density change), s = log sigma: the velocity x - D(x;
    sigma) of the probability-flow ODE and its divergence 2 - tr dD/dx."""
    with torch.enable_grad():
        x = state[:, :2].detach().requires_grad_()
        x_0 = D(x, math.exp(s))  # (n, 2)
        # D of a point depends on that point alone: the gradient of column i's sum is row i of
        # every point's 2x2 Jacobian, so two backward passes give each trace exactly
        rows = [torch.autograd.grad(x_0[:, i].sum(), x, retain_graph=i == 0)[0] for i in (0, 1)]
    trace = rows[0][:, 0] + rows[1][:, 1]  # (n,)
    return torch.cat((x - x_0, 2 - trace[:, None]), dim=1).detach()  # (n, 3)


def rk4_step(f, y: torch.Tensor, s: float, h: float) -> torch.Tensor:
    """The classical 4th-order Runge-Kutta step of dy/ds = f(y, s)."""
    k1 = f(y, s)
    k2 = f(y + h / 2 * k1, s + h / 2)
    k3 = f(y + h / 2 * k2, s + h / 2)
    k4 = f(y + h * k3, s + h)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def log_likelihood(D, x_0, prior, sigma_max, steps=STEPS, sigma_min=SIGMA_MIN) -> torch.Tensor:
    """(n,) log p(x_0 + sigma_min eps) of points x_0 (n, 2), in D's units, for the denoiser
    D(x, sigma: float) -> (n, 2); prior: the data's exact.GaussianMixture, noised to sigma_max."""
    s = torch.linspace(math.log(sigma_min), math.log(sigma_max), steps + 1, dtype=torch.float64)
    state = torch.cat((x_0, torch.zeros_like(x_0[:, :1])), dim=1)  # (n, 3)
    for s_cur, s_next in zip(s[:-1].tolist(), s[1:].tolist()):
        state = rk4_step(partial(rates, D), state, s_cur, s_next - s_cur)
    x, change = state[:, :2], state[:, 2]  # x(sigma_max) (n, 2), the integral (n,)
    return prior.log_prob(x, sigma_max).to(x) + change


def nll(model, method, x, prior, shift, scale, sigma_max, steps=STEPS) -> torch.Tensor:
    """(n,) -log p of points x (n, 2) in the data's own units, for a model (a network with its
    method, or exact.ExactDenoiser with method None) trained on (x - shift) / scale.

    The change of units adds log |det| of the map, sum(log scale)."""
    D = partial(ddpm.guided_D, model, method)  # unconditional, unclipped: a smooth D
    log_p = log_likelihood(D, (x - shift) / scale, prior, sigma_max, steps)
    return scale.log().sum() - log_p


def load_run(path: Path, data_dir: str | None = None) -> tuple:
    """(ddpm.Run, its datasets.Dataset): the run saved in model.pth at path, on the CPU."""
    checkpoint = checkpoints.load(path, torch.device("cpu"))
    config = checkpoint["config"] | {"resume": False, "device": "cpu"}
    dataset = datasets.load(config["dataset"], data_dir or config["data_dir"], config["held_out"])
    return ddpm.make_run(config, dataset, checkpoint), dataset


def run_nll(run: ddpm.Run, steps: int = STEPS):
    """points (n, 2) in the data's units -> (n,) -log p under a run's EMA model."""
    prior = moment_gaussian(run.data)
    model, method = run.ema.module.eval(), run.method
    return partial(
        nll,
        model,
        method,
        prior=prior,
        shift=run.shift,
        scale=run.scale,
        sigma_max=method.sigma_max,
        steps=steps,
    )


# held-out points for the likelihood, and fresh draws for the entropy: seeds no other draw uses
NLL_POINTS, NLL_SEED = 1000, 5000
ENTROPY_POINTS, ENTROPY_SEED = 100_000, 6000


def closed_form(dataset) -> exact.GaussianMixture | None:
    """The dataset's density when it is known in closed form (the built-in datasets), else None."""
    density = exact.class_mixtures(dataset)[-1]  # the whole dataset, all classes
    return density if density.has_density else None


# Smooth test data whose log density is known, as .csv files a run trains on like a user's own:
# on them KL(data || model) is measured against fresh draws of the generator itself.
TEST_ROWS, TEST_SEED = 8000, 31  # the file's rows; fresh draws use TEST_SEED + 1 + seed


class Gaussian:
    """N(mean, cov) in 2D with a full covariance (cov = L L^T), in float64."""

    def __init__(self, mean, cov):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)  # (2,)
        self.L = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))  # (2, 2)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.mean + torch.randn(n, 2, dtype=torch.float64, generator=generator) @ self.L.T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) log N(x; mean, L L^T): the Mahalanobis norm through a triangular solve."""
        z = torch.linalg.solve_triangular(self.L, (x.double() - self.mean).T, upper=False)
        return -0.5 * z.square().sum(0) - self.L.diagonal().log().sum() - math.log(2 * math.pi)


def correlated_gaussian() -> Gaussian:
    """Stds 2 and 1, correlation 0.8, off the origin."""
    return Gaussian([1.0, -2.0], [[4.0, 1.6], [1.6, 1.0]])


def gaussian_ring(k: int = 8, radius: float = 2.0, std: float = 0.25) -> exact.GaussianMixture:
    """k equal Gaussians of std `std` evenly around a circle (the GAN papers' "8 Gaussians")."""
    angle = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    centres = radius * torch.stack((angle.cos(), angle.sin()), 1)  # (k, 2)
    return exact.GaussianMixture(torch.ones(k), centres, torch.full((2,), std))


def swiss_roll(arc_points: int = 4000, noise: float = 0.4) -> exact.GaussianMixture:
    """A curved 1-D manifold with noise: scikit-learn's make_swiss_roll in the plane, (t cos t,
    t sin t) for t uniform in [1.5 pi, 4.5 pi], plus Gaussian noise. t takes arc_points midpoints,
    0.022 apart along the 89-long arc at most (1/18 of the noise): the mixture is the roll's
    density to a fine approximation, and its draws are the roll's."""
    t = 1.5 * math.pi * (1 + 2 * (torch.arange(arc_points, dtype=torch.float64) + 0.5) / arc_points)
    arc = torch.stack((t * t.cos(), t * t.sin()), 1)  # (K, 2)
    return exact.GaussianMixture(torch.ones(arc_points), arc, torch.full((2,), noise))


TEST_DENSITIES = {"gaussian": correlated_gaussian, "ring": gaussian_ring, "swiss_roll": swiss_roll}


def density_draws(name: str, n: int, seed: int) -> torch.Tensor:
    """(n, 2) float64 draws of a test density."""
    return TEST_DENSITIES[name]().sample(n, torch.Generator().manual_seed(seed))


def write_test_csv(name: str, folder: Path) -> Path:
    """folder/<name>.csv: TEST_ROWS draws (seed TEST_SEED) of a test density, columns x,y."""
    path = folder / f"{name}.csv"
    rows = [f"{x:.9g},{y:.9g}" for x, y in density_draws(name, TEST_ROWS, TEST_SEED).tolist()]
    text = "x,y\n" + "\n".join(rows) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    run_folder.write_atomically(path, lambda f: f.write(text.encode()))
    return path


def nll_lines(model_nll, dataset, seed: int, solver: str) -> list[str]:
    """The NLL of held-out true points (model_nll: points (n, 2) -> (n,) -log p) and, where the
    dataset's density is known, its entropy H and KL(data || model), as lines of text."""
    x = torch.from_numpy(dataset.unseen(NLL_POINTS, NLL_SEED + seed)[0])  # (n, 2)
    tic = time.perf_counter()
    nll = model_nll(x).double()  # (n,)
    seconds = time.perf_counter() - tic
    unseen = dataset.reference if dataset.is_file else "held-out"
    lines = [
        f"NLL {nll.mean():.3f} nats per point ({unseen}, n = {len(x)})",
        f"  +- {nll.std() / len(x) ** 0.5:.3f} (standard error); {solver}; {seconds:.1f} s",
    ]
    density = closed_form(dataset)
    if density is not None:
        fresh = torch.from_numpy(dataset.draw(ENTROPY_POINTS, ENTROPY_SEED + seed)[0])
        log_p = density.log_prob(fresh)  # (m,)
        H, H_error = -log_p.mean(), log_p.std() / len(fresh) ** 0.5
        # KL = E[log p - log q] on the held-out points: pairing cancels most of the noise
        kl = nll + density.log_prob(x)  # (n,)
        lines.append(f"  entropy H {H:.3f} +- {H_error:.3f} (Monte Carlo, n = {len(fresh)})")
        lines.append(
            f"  KL(data || model) {kl.mean():.3f} +- {kl.std() / len(x) ** 0.5:.3f}: NLL - H, "
            "both on the held-out points"
        )
    return lines


def exact_nll(dataset, data_dir: str | None = None, steps: int = STEPS):
    """points (n, 2) -> (n,) -log p through the same ODE with the dataset's exact denoiser, from a
    run's default sigma_max: the solver's floor, against which a run's NLL is measured."""
    shift, scale = torch.zeros(2), torch.ones(2)
    model = exact.denoiser_of(dataset, data_dir, shift, scale)
    prior = moment_gaussian(torch.from_numpy(dataset.train_set()[0]))
    sigma_max = ddpm.build_parser().get_default("sigma_max")  # as a run's default
    return partial(
        nll, model, None, prior=prior, shift=shift, scale=scale, sigma_max=sigma_max, steps=steps
    )


def report(args) -> list[str]:
    """nll_lines for the run at args.path, or for the exact denoiser of args.dataset."""
    steps = args.steps
    if args.exact:
        dataset = datasets.load(args.dataset, args.data_dir)
        if closed_form(dataset) is None:
            raise options.UsageError("--exact needs a dataset with a closed-form density: a shape")
        model_nll = exact_nll(dataset, args.data_dir, steps)
        sigma_max = model_nll.keywords["sigma_max"]  # a run's default, as exact_nll takes it
    else:
        path = args.path / "model.pth" if args.path.is_dir() else args.path
        run, dataset = load_run(path, args.data_dir)
        model_nll, sigma_max = run_nll(run, steps), run.method.sigma_max
    solver = f"RK4, {steps} steps in log sigma from {SIGMA_MIN:g} to {sigma_max:g}"
    return nll_lines(model_nll, dataset, args.seed, solver)


CHUNK = 1000  # points per batch of the ODE: a progress bar step, and memory bounded
PLOT_CELLS = 64  # --plot: log p on a 64 x 64 grid


def log_p_of(model_nll, points: torch.Tensor) -> torch.Tensor:
    """(n,) log p of points (n, 2) in the data's units, a chunk at a time."""
    chunks = points.split(CHUNK)
    return torch.cat(
        [-model_nll(chunk) for chunk in tqdm(chunks, "log p", disable=len(chunks) < 2)]
    )


def write_log_p(run, points_path: Path, out: Path | None, steps: int) -> None:
    """x, y, log p of each row of a points file, as a .csv to out (or printed)."""
    points = torch.tensor(
        datasets.read_points_file(points_path, to_train=False)[0], dtype=torch.float32
    )  # (n, 2)
    log_p = log_p_of(run_nll(run, steps), points)
    rows = [f"{x:.9g},{y:.9g},{v:.6f}" for (x, y), v in zip(points.tolist(), log_p.tolist())]
    text = "x,y,log_p\n" + "\n".join(rows) + "\n"
    if out is None:
        print(text, end="")
        return
    try:
        run_folder.write_atomically(out, lambda f: f.write(text.encode()))
    except (OSError, ValueError) as err:
        raise options.UsageError(f"cannot write {out}: {run_folder.describe(err)}") from None


def plot_log_p(run, dataset, path: Path, steps: int) -> None:
    """log p over the plane (the plot's box: the data's, or [-6, 6]^2), the training data on top."""
    points = dataset.train_set()[0]  # (m, 2)
    lo_x, hi_x, lo_y, hi_y = (
        plots.padded_limits(points) if dataset.is_file else [-plots.LIMIT, plots.LIMIT] * 2
    )
    xs, ys = torch.linspace(lo_x, hi_x, PLOT_CELLS), torch.linspace(lo_y, hi_y, PLOT_CELLS)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)  # (N*N, 2)
    log_p = log_p_of(run_nll(run, steps), grid).reshape(PLOT_CELLS, PLOT_CELLS).numpy()
    try:
        plots.save_log_density(log_p, (lo_x, hi_x, lo_y, hi_y), points, path, dataset.name)
    except (OSError, ValueError) as err:
        raise options.UsageError(f"cannot write {path}: {run_folder.describe(err)}") from None


def main(argv=None) -> int:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, nargs="?", help="an experiment folder or its model.pth")
    parser.add_argument(
        "--exact",
        action="store_true",
        help="with --dataset, no run: the exact denoiser's NLL, the solver's floor",
    )
    parser.add_argument("--dataset", help="the dataset of --exact: a Datasaurus shape")
    parser.add_argument(
        "--points",
        type=Path,
        help="instead of the NLL: log p (nats, in the data's units) of each row of this .csv, "
        ".tsv or .npy file (columns x,y, or its first two numeric ones)",
    )
    parser.add_argument(
        "--out", type=Path, help="with --points: the .csv to write x,y,log_p to (default: print)"
    )
    parser.add_argument(
        "--plot", type=Path, help="instead of the NLL: draw log p over the plane to this .png"
    )
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the held-out draw")
    parser.add_argument("--data_dir", help="folder holding DatasaurusDozen.tsv")
    parser.add_argument(
        "--steps",
        type=options.positive(int),
        default=STEPS,
        help=f"RK4 steps of the ODE (default: {STEPS})",
    )
    args = parser.parse_args(argv)
    if args.path is not None and (args.exact or args.dataset is not None):
        parser.error("a run's folder is scored on its own dataset: drop --exact and --dataset")
    if args.exact != (args.path is None) or args.exact != (args.dataset is not None):
        parser.error("give an experiment folder, or --exact --dataset NAME without one")
    # One thread, as a run trains: the ODE makes 512 calls of D and its two backward passes, each
    # ~90 ops on (1000, 128) tensors that two threads split and must meet after. With the other
    # core busy, every meeting waits for a descheduled thread: on a shared 2-core machine 1000
    # points took 3-190 s (median 22) on two threads, 5-8 s on one.
    options.use_run_threads()
    if (args.points or args.plot) and args.exact:
        parser.error("--points and --plot need a run's folder, not --exact")
    if args.out and not args.points:
        parser.error("--out goes with --points")
    with options.errors_in_one_line(parser):
        if args.points or args.plot:
            path = args.path / "model.pth" if args.path.is_dir() else args.path
            run, dataset = load_run(path, args.data_dir)
            if args.points:
                write_log_p(run, args.points, args.out, args.steps)
            if args.plot:
                plot_log_p(run, dataset, args.plot, args.steps)
        else:
            print("\n".join(report(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
