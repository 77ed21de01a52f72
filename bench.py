"""How fast is tiny-diffusion here? Training and sampling throughput, and the default run's
wall time.

python bench.py                          # the defaults
python bench.py --train_batch_size 32    # throughput at the original's batch size
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import datasets
import ddpm


def time_it(fn, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train_batch_size", type=int, default=ddpm.build_parser().get_default("train_batch_size")
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps timed")
    parser.add_argument(
        "--run_args",
        default="",
        help="extra options for the timed `python ddpm.py --dataset dino` run",
    )
    parser.add_argument("--no_run", action="store_true", help="skip the default run")
    args = parser.parse_args(argv)

    config = vars(
        ddpm.build_parser().parse_args(
            ["--dataset", "line", "--train_batch_size", str(args.train_batch_size)]
        )
    )
    data = torch.from_numpy(datasets.get_dataset("line"))
    run = ddpm.Run(config, data)
    batches = [torch.randint(0, len(data), (args.train_batch_size,)) for _ in range(args.steps)]
    batch_iter = iter(batches * 2)
    seconds = time_it(lambda: run.step(data[next(batch_iter)]), args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    B = args.train_batch_size
    print(f"training:  {B / seconds:10,.0f} samples/s  (batch {B}, {seconds * 1e3:.2f} ms/step)")

    n, T = config["eval_batch_size"], config["num_timesteps"]

    def sample():
        generator = torch.Generator().manual_seed(0)
        return ddpm.sample(
            run.ema.module,
            run.method,
            n,
            generator,
            num_inference_steps=T,
            clip_range=run.clip_range,
        )

    seconds = time_it(sample, 3)
    rate = n * T / seconds
    print(f"sampling:  {rate:10,.0f} points x steps/s  ({n} points x {T} steps in {seconds:.3f} s)")

    if args.no_run:
        return
    with tempfile.TemporaryDirectory() as exps:
        command = [
            sys.executable,
            str(ddpm.PROJECT_DIR / "ddpm.py"),
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
        f"default dino run: {wall:.1f} s wall ({parts}; start-up {start_up:.1f} s)  "
        f"W2 ratio {metrics['w2_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
