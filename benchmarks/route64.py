"""64 px from two CPU cores (issue 30): the routes screened at equal training FLOPs, then scored at 64 px.

    .venv/bin/python benchmarks/route64.py lengths                # each route's images at the screen's FLOPs
    .venv/bin/python benchmarks/route64.py train scratch          # train one route (resumes; runs/screen64-<route>)
    .venv/bin/python benchmarks/route64.py score                  # every trained route not yet scored

Routes (profiles in ddpm/config.py): scratch (the control), grown (weights/cpu-long fine-tuned at 64 px on a
shifted schedule), sr (a 32 -> 64 super-resolution stage after weights/cpu-long: a cascade). Each trains for
SCREEN_FLOPS of training compute, counted by ddpm/budget.py on its own network at its training size (the cascade's
stage on 32 px crops); the base of the cascade and the 32 px network the grown route starts from are already paid
for (weights/cpu-long) and not counted.

Protocol of the screen: NUM_GENERATED images at 64 px against all 8189 real flowers at 64 px, KID (mean ± std over
subsets) and FID, DPM-Solver++(2M) with 20 steps at guidance 2 (the cascade: the base at guidance 2, the stage at 1),
seed 0; beside them the floor, 1024 real flowers held out of the reference and scored the same way. Rows go to
benchmarks/route64/screen.jsonl and each route's 4x8 grid to benchmarks/route64/<route>.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import get_config, resolve_path  # noqa: E402

ROUTES = {"scratch": "cpu64-scratch", "grown": "cpu64-grown", "sr": "cpu64-sr"}
SCREEN_FLOPS = 4e14  # about 28 min of the dearest route (grown: 8.6 GFLOP an image) on the 2 cores
STORE = resolve_path("benchmarks/route64")
NUM_GENERATED, SAMPLER, STEPS, GUIDANCE = 512, "dpmpp2m", 20, 2.0


def route_config(route: str):
    from ddpm.budget import training_flops

    config = get_config(ROUTES[route], use_env=False, run_name=f"screen64-{route}")
    kimg = round(SCREEN_FLOPS / training_flops(config) / 1000, 1)
    return config.replace(train_kimg=kimg)


def cmd_lengths(args) -> int:
    from ddpm.budget import training_flops

    for route in ROUTES:
        config = route_config(route)
        print(f"{route:8s} {training_flops(config) / 1e9:6.2f} GFLOP an image at {config.train_resolution} px -> "
              f"{config.train_kimg:g} kimg ({config.total_steps} steps of {config.batch_size})")
    return 0


def cmd_train(args) -> int:
    config = route_config(args.route)
    command = [sys.executable, "-m", "ddpm", "train", "--profile", config.profile, "--run-name", config.run_name,
               "--train-kimg", str(config.train_kimg), "--no-progress"]
    print(" ".join(command), flush=True)
    return subprocess.call(command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lengths").set_defaults(func=cmd_lengths)
    p = sub.add_parser("train")
    p.add_argument("route", choices=sorted(ROUTES))
    p.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
