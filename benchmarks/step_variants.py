"""Lesson 04's three steps on the default recipe: one epoch of steps each, interleaved.

    python benchmarks/step_variants.py                 # 9 rounds, CPU, about 1-2 minutes
    python benchmarks/step_variants.py --rounds 15 --device cuda
    python benchmarks/step_variants.py --rounds 2 --examples 1280    # a quick look

train_step (pure: new tuples), train_step_ (the update in place; what every preset trains
with) and fused_train_step_ (each H^T delta fused into its update) compute the same math
(tests/test_train.py checks them equal in float64). This times what separates them: one epoch of the
default recipe's steps (55,000 examples in batches of 128, momentum 0.9, weight decay 1e-4,
label smoothing 0.1, 784-512-128-10), on fixed random batches (a step's time does not depend
on the pixel values), without augmentation or evaluation. The three take turns epoch by epoch,
the order rotating, and each ratio to the fused step is the median over rounds of the ratio
within a round, so a slow stretch of a shared machine touches all three alike.
"""

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # the lessons live at the repository root; contenders here
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from contenders import device_label, sync  # noqa: E402  (sync waits for queued GPU work)

training = importlib.import_module("04_train_mnist")
common = importlib.import_module("common")

VARIANTS = ("fused", "inplace", "pure")


def make_batches(device, n=55_000, batch=128, seed=0):
    """-> [(xb (b, 784), yb (b,))]: one epoch of fixed random batches on device."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(X[i:i + batch].to(device), y[i:i + batch].to(device)) for i in range(0, n, batch)]


def epoch_seconds(name, params, velocity, batches, device):
    """Seconds for one epoch of STEPS[name] over batches (params and velocity updated)."""
    step = training.STEPS[name]
    config = training.PRESETS["default"]
    # A hundredth of the default's lr: on random labels the run stays far from diverging
    # (NaN and infinity could time differently from ordinary numbers).
    args = (config["lr"] / 100, config["momentum"], config["weight_decay"], config["smoothing"])
    sync(device)
    begin = time.perf_counter()
    if name == "pure":
        p, v = params, velocity
        for xb, yb in batches:
            p, v, _ = step(p, v, xb, yb, *args)
    else:
        for xb, yb in batches:
            step(params, velocity, xb, yb, *args)
    sync(device)
    return time.perf_counter() - begin


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=common.int_in(1, 1000), default=9)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--examples", type=common.int_in(128, 10_000_000), default=55_000,
                        help="examples per epoch (default 55,000, the default recipe's)")
    args = common.parse_args(parser, argv)
    device = common.pick_device(args.device)
    batches = make_batches(device, n=args.examples)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(0)
        params = training.init_params([784, 512, 128, 10], g, device=device)
        velocity = training.init_velocity(params)
        for name in VARIANTS:  # warm-up: one epoch each, not timed
            epoch_seconds(name, params, velocity, batches, device)
        times = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            for name in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
                times[name].append(epoch_seconds(name, params, velocity, batches, device))
    print(f"one epoch of the default recipe's steps ({len(batches)} steps of batch 128) on "
          f"{device.type} ({device_label(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds")
    ratios = {}
    for name in VARIANTS:
        ratios[name] = statistics.median(t / f for t, f in zip(times[name], times["fused"]))
        print(f"  {name:<8} {training.STEPS[name].__name__:<18} median "
              f"{statistics.median(times[name]):6.3f} s   range {min(times[name]):.3f}-"
              f"{max(times[name]):.3f} s   / fused {ratios[name]:.2f}x")
    print(common.result_line(inplace_over_fused=ratios["inplace"],
                             pure_over_fused=ratios["pure"], rounds=args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
