"""How fast is tiny-diffusion here? Training and sampling throughput, the training step's
share of this machine's matmul throughput, and the default run's wall time.

python bench.py                          # the defaults
python bench.py --train_batch_size 32    # throughput at the original's batch size
python bench.py --against ../tiny-diffusion   # the default run beside another checkout's

The step's FLOPs are those of its matmuls, counted from the Linear layers' shapes; the same
matmuls timed alone give the machine's throughput on the model's own shapes. Their ratio, the
share, says how close a step comes to pure arithmetic on any machine. Everything is timed with
the threads a run uses: one, unless OMP_NUM_THREADS says otherwise.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

import datasets
import ddpm
import options
from positional_embeddings import DirectionalEmbedding

ROUNDS = 10  # of training steps, then the matmuls alone
SIDE_BY_SIDE = 3  # runs of each command, alternating: a median of 3 on a machine whose speed drifts


def time_it(fn, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def step_matmuls(run: ddpm.Run, x_0: torch.Tensor) -> list[tuple[int, partial]]:
    """The matmuls of a training step on x_0 (B, 2), as (FLOPs, call) on the same shapes.

    Each nn.Linear does x W^T + b forward, g^T x for its weight gradient and, when its input
    needs one, g W for the input gradient (not the first layer's: the embeddings have no
    parameters); each is 2 B in out FLOPs. The directional embedding adds (x, y) K, K (2, size),
    and EDM's stable target two (B, B) products of the batch: x x_0^T and its weights times x_0."""
    seen = []
    kinds = (nn.Linear, DirectionalEmbedding)
    layers = [layer for layer in run.model.modules() if isinstance(layer, kinds)]
    hooks = [
        layer.register_forward_hook(lambda layer, args, _: seen.append((layer, args[0])))
        for layer in layers
    ]
    ddpm.loss_fn(run.model, run.method, x_0)
    for hook in hooks:
        hook.remove()
    matmuls = []
    for layer, x in seen:
        if isinstance(layer, DirectionalEmbedding):
            K = layer.wave_vectors  # (2, size)
            matmuls += [(2 * K.numel() * len(x), partial(torch.mm, x.detach(), K))]
            continue
        W, b = layer.weight.detach(), layer.bias.detach()  # (out, in), (out,)
        g = torch.randn(len(x), len(W))  # (B, out): a gradient of the layer's output
        flops = 2 * W.numel() * len(x)
        matmuls += [(flops, partial(torch.addmm, b, x.detach(), W.t()))]
        matmuls += [(flops, partial(torch.mm, g.t(), x.detach()))]
        if x.requires_grad:
            matmuls += [(flops, partial(torch.mm, g, W))]
    if getattr(run.method, "stable_target", False):  # ddpm.stable_target's, 2 B B 2 FLOPs each
        B = len(x_0)
        weights = torch.rand(B, B).softmax(1)  # (B, B)
        matmuls += [(4 * B * B, partial(torch.mm, x_0, x_0.t()))]
        matmuls += [(4 * B * B, partial(torch.nn.functional.linear, weights, x_0.t()))]
    return matmuls


def main(argv=None) -> None:
    parser = options.ArgumentParser(
        prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train_batch_size",
        type=options.positive(int),
        default=ddpm.build_parser().get_default("train_batch_size"),
    )
    parser.add_argument(
        "--steps", type=options.positive(int), default=300, help="training steps timed"
    )
    parser.add_argument(
        "--run_args",
        default="",
        help="extra options of ddpm.py for the timed steps and the timed `python ddpm.py "
        "--dataset dino` run, as in --run_args='--activation relu'",
    )
    parser.add_argument("--no_run", action="store_true", help="skip the default run")
    parser.add_argument(
        "--against",
        type=checkout,
        metavar="DIR",
        help=f"time the default run {SIDE_BY_SIDE} times, alternating with `python ddpm.py "
        "--dataset dino` in DIR (the original tiny-diffusion, say, which writes its outputs "
        "there), and print the medians and their ratio",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's top operators by self CPU time over 100 steps (the "
        "profiler's own cost per operator inflates the small ones)",
    )
    args = parser.parse_args(argv)
    if args.against and args.no_run:
        parser.error("--against times the default run: drop --no_run")
    options.use_run_threads()  # time the step as a run takes it
    B = args.train_batch_size
    run_args = ["--dataset", "line", "--train_batch_size", str(B), *args.run_args.split()]
    run_parser = ddpm.build_parser()  # the --run_args are ddpm.py's options
    run_parser.prog = "bench.py --run_args"  # its errors are ours
    try:  # checked as ddpm.py checks them, in one line
        config = options.check_command_line(run_parser, run_args)[0]
    except options.UsageError as err:
        parser.error(f"--run_args: {err}")
    dataset = datasets.load("line")
    run = ddpm.make_run(options.resolve_input_scale(config, dataset), dataset)
    data = run.data
    per_round = max(args.steps // ROUNDS, 1)
    batches = [torch.randint(0, len(data), (B,)) for _ in range(ROUNDS * (per_round + 1))]
    matmuls = step_matmuls(run, data[batches[0]])
    flops = sum(flops for flops, _ in matmuls)
    # Alternate the two timings in short rounds and keep the best of each: on a shared machine
    # the speed drifts, and the fastest round is the one least slowed by other jobs.
    seconds, matmul_seconds, batch_iter = math.inf, math.inf, iter(batches)
    for _ in range(ROUNDS):
        seconds = min(
            seconds, time_it(lambda: ddpm.train_step(run, data[next(batch_iter)]), per_round)
        )
        matmul_seconds = min(matmul_seconds, sum(time_it(call, 10) for _, call in matmuls))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"training:  {B / seconds:10,.0f} samples/s  (batch {B}, {seconds * 1e3:.2f} ms/step)")
    print(
        f"matmuls:   {flops / matmul_seconds / 1e9:10.1f} GFLOP/s alone, "
        f"{flops / seconds / 1e9:.1f} GFLOP/s in a step ({flops / 1e6:.0f} MFLOP/step): "
        f"{matmul_seconds / seconds:.0%} of their throughput"
    )

    n, sampling = config["eval_batch_size"], ddpm.sampling_options(config)
    nfe = ddpm.nfe(sampling["sampler"], sampling["num_inference_steps"])

    def sample():
        generator = torch.Generator().manual_seed(0)
        return ddpm.sample(
            run.ema.module, run.method, n, generator, **sampling, start_moments=run.moments
        )

    seconds = time_it(sample, 3)
    rate = n * nfe / seconds
    print(f"sampling:  {rate:10,.0f} points x NFE/s  ({n} points x {nfe} NFE in {seconds:.3f} s)")

    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for i in range(100):
                ddpm.train_step(run, data[batches[i % len(batches)]])
        averages = profile.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    if args.no_run:
        return
    runs, there = [], []  # (wall, metrics) of each run here; the wall times in args.against
    for _ in range(SIDE_BY_SIDE if args.against else 1):
        if args.against:
            command = [sys.executable, "ddpm.py", "--dataset", "dino"]
            there.append(wall_seconds(command, parser, cwd=args.against))
        runs.append(default_run(args.run_args, parser))
    wall, metrics = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median run
    parts = "  ".join(
        f"{name} {value:.1f} s" for name, value in metrics["seconds"].items() if name != "total"
    )
    start_up = wall - metrics["seconds"]["total"]
    print(
        f"default dino run: {wall:.1f} s wall (start-up {start_up:.1f} s  {parts})  "
        f"W2 ratio {metrics['w2_ratio']:.3f}"
    )
    if args.against:
        here = [wall for wall, _ in runs]
        print(
            f"side by side, alternating: here {', '.join(f'{t:.1f}' for t in here)} s, in "
            f"{args.against} {', '.join(f'{t:.1f}' for t in there)} s; medians "
            f"{statistics.median(here):.1f} s and {statistics.median(there):.1f} s: "
            f"a speed-up of {statistics.median(there) / statistics.median(here):.2f}x"
        )


def checkout(text: str) -> Path:
    """--against's folder: one with a ddpm.py to run."""
    folder = Path(text).expanduser().absolute()
    if not (folder / "ddpm.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} has no ddpm.py")
    return folder


def wall_seconds(command: list, parser, cwd=None) -> float:
    """Seconds that command took, its output discarded; a failure ends bench.py in one line."""
    tic = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:
        parser.exit(1, f"{parser.prog}: {' '.join(command)} failed (exit {done.returncode})\n")
    return time.perf_counter() - tic


def default_run(run_args: str, parser) -> tuple[float, dict]:
    """`python ddpm.py --dataset dino` with run_args, into a folder removed after: (its wall
    seconds, its metrics.json)."""
    with tempfile.TemporaryDirectory() as exps:
        command = [sys.executable, str(options.PROJECT_DIR / "ddpm.py"), "--dataset", "dino"]
        wall = wall_seconds([*command, "--exps_dir", exps, *run_args.split()], parser)
        return wall, json.loads((Path(exps) / "base" / "metrics.json").read_text())


if __name__ == "__main__":
    main()
