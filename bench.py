"""How fast is tiny-diffusion here? Training and sampling throughput, the training step's
share of this machine's matmul throughput, and the default run's wall time.

python bench.py                          # the defaults
python bench.py --train_batch_size 32    # throughput at the original's batch size

The step's FLOPs are those of its matmuls, counted from the Linear layers' shapes; the same
matmuls timed alone give the machine's throughput on the model's own shapes. Their ratio, the
share, says how close a step comes to pure arithmetic on any machine. Everything is timed with
the threads a run uses: one, unless OMP_NUM_THREADS says otherwise.
"""

import argparse
import json
import math
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
    parameters); each is 2 B in out FLOPs. The directional embedding adds (x, y) K, K (2, size)."""
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
    return matmuls


def main(argv=None) -> None:
    parser = options.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        "--profile",
        action="store_true",
        help="also print torch.profiler's top operators by self CPU time over 100 steps (the "
        "profiler's own cost per operator inflates the small ones)",
    )
    args = parser.parse_args(argv)
    options.use_run_threads()  # time the step as a run takes it
    B = args.train_batch_size
    run_args = ["--dataset", "line", "--train_batch_size", str(B), *args.run_args.split()]
    try:  # the --run_args are ddpm.py's options: checked as it checks them, in one line
        config = options.check_command_line(ddpm.build_parser(), run_args)[0]
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
    with tempfile.TemporaryDirectory() as exps:
        command = [
            sys.executable,
            str(options.PROJECT_DIR / "ddpm.py"),
            "--dataset",
            "dino",
            "--exps_dir",
            exps,
            *args.run_args.split(),
        ]
        tic = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - tic
        metrics = json.loads((Path(exps) / "base" / "metrics.json").read_text())
    parts = "  ".join(
        f"{name} {value:.1f} s" for name, value in metrics["seconds"].items() if name != "total"
    )
    start_up = wall - metrics["seconds"]["total"]
    print(
        f"default dino run: {wall:.1f} s wall (start-up {start_up:.1f} s  {parts})  "
        f"W2 ratio {metrics['w2_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
