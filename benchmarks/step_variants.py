"""One epoch of the default recipe with lesson 04's train_step and two faster ways to write it.

    python benchmarks/step_variants.py                  # 5 processes each way, ~5 minutes
    python benchmarks/step_variants.py --processes 2 --rounds 2 --examples 12800   # a quick look

The faster two are contenders.inplace_train_step_ and fused_train_step_. An epoch: the default
recipe's steps (55,000 examples in batches of 128, momentum 0.9, weight decay 1e-4, label
smoothing 0.1) on fixed random batches. In each process the three take turns epoch by epoch; the
ratio is taken within a process and its median over processes reported (it swings up to 1.8x
between processes on a shared machine). Half the processes call common.keep_freed_memory()
first, as lesson 04 does; half do not, as a user who copies train_step alone.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import contenders
import report
import torch

common, training = contenders.common, contenders.training
VARIANTS = ("pure", "inplace", "fused")


def make_batches(n, batch=128, seed=0):
    """-> [(xb (b, 784), yb (b,))]: one epoch of fixed random batches."""
    g = torch.Generator().manual_seed(seed)
    X, y = torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def epoch_seconds(name, params, velocity, batches):
    """Seconds for one epoch of the variant's steps over batches (params, velocity updated)."""
    config = training.PRESETS["default"]
    # A hundredth of the default's lr keeps the run on random labels far from diverging
    # (NaN and infinity can take other times than ordinary numbers).
    args = (config["lr"] / 100, config["momentum"], config["weight_decay"], config["smoothing"])
    begin = time.perf_counter()
    if name == "pure":
        p, v = params, velocity
        for xb, yb in batches:
            p, v, _ = training.train_step(p, v, xb, yb, *args)
    else:
        step = contenders.inplace_train_step_ if name == "inplace" else contenders.fused_train_step_
        for xb, yb in batches:
            step(params, velocity, xb, yb, *args)
    return time.perf_counter() - begin


def time_in_this_process(examples, rounds, seed=0):
    """Warm up, then rounds of one epoch per variant, in turn -> {variant: median seconds}."""
    batches = make_batches(examples, seed=seed)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(seed)
        params = contenders.forward.init_params([784, 512, 128, 10], g)
        velocity = training.init_velocity(params)
        for name in VARIANTS:
            epoch_seconds(name, params, velocity, batches[:50])
        times = {name: [] for name in VARIANTS}
        for r in range(rounds):
            for name in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
                times[name].append(epoch_seconds(name, params, velocity, batches))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=common.int_in(1, 100), default=5,
                        help="processes with keep_freed_memory(), and as many without (default 5)")
    parser.add_argument("--rounds", type=common.int_in(1, 100), default=3,
                        help="epochs per variant in each process (default 3)")
    parser.add_argument("--examples", type=common.int_in(128, 1_000_000), default=55_000)
    parser.add_argument("--child", choices=("keep", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measuring process: its times as one JSON line
        if args.child == "keep":
            common.keep_freed_memory()
        print(json.dumps(time_in_this_process(args.examples, args.rounds)))
        return 0
    runs = {"keep": [], "plain": []}  # for each process, {variant: median epoch seconds}
    for k in range(args.processes):
        for mode in (("keep", "plain") if k % 2 == 0 else ("plain", "keep")):
            command = [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds),
                       "--examples", str(args.examples)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise ValueError("a measuring process failed: "
                                 + (done.stderr.strip().splitlines() or ["no message"])[-1])
            runs[mode].append(json.loads(done.stdout.splitlines()[-1]))
            print(f"process {len(runs['keep']) + len(runs['plain'])}/{2 * args.processes} "
                  f"({mode}): {runs[mode][-1]}", flush=True)
    print(f"\nOne epoch of the default recipe's steps ({-(-args.examples // 128)} steps of batch "
          f"128), CPU: {common.device_description(torch.device('cpu'))}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; median over {args.processes} "
          f"processes each way (each the median of {args.rounds} interleaved epochs).\n")
    print("| glibc keeps freed memory | pure | inplace | fused | pure / inplace | pure / fastest "
          "in-place | target 1.15x |\n|---|---:|---:|---:|---:|---:|---|")
    for mode, label in (("keep", "yes (lesson 04 calls keep_freed_memory)"),
                        ("plain", "no (train_step copied alone)")):
        fastest = [m["pure"] / min(m["inplace"], m["fused"]) for m in runs[mode]]
        verdict = "met" if statistics.median(fastest) <= 1.15 else "not met"
        print(f"| {label} | " + " | ".join(f"{statistics.median(m[v] for m in runs[mode]):.2f} s"
                                          for v in VARIANTS)
              + f" | {report.spread([m['pure'] / m['inplace'] for m in runs[mode]])} | "
              f"{report.spread(fastest)} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
