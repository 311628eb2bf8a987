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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.budget import training_flops  # noqa: E402
from ddpm.config import get_config, resolve_path  # noqa: E402

ROUTES = {"scratch": "cpu64-scratch", "grown": "cpu64-grown", "sr": "cpu64-sr"}
SCREEN_FLOPS = 3e14  # about 21 min of the dearest route (grown: 8.6 GFLOP an image) on the 2 cores
STORE = resolve_path("benchmarks/route64")
NUM_GENERATED, SAMPLER, STEPS, GUIDANCE = 512, "dpmpp2m", 20, 2.0
NUM_FLOOR, NUM_REAL = 1024, None  # held-out real flowers of the floor; the reference (None: every real flower)
CACHE_DIR = None  # where the real images' features are cached (None: data/.cache/fid)


def route_config(route: str):
    config = get_config(ROUTES[route], use_env=False, run_name=f"screen64-{route}")
    kimg = round(SCREEN_FLOPS / training_flops(config) / 1000, 1)
    return config.replace(train_kimg=kimg)


def cmd_lengths(args) -> int:
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


def read_rows() -> list[dict]:
    from ddpm.files import read_json_lines

    return read_json_lines(STORE / "screen.jsonl")


def score(run_dir: Path, route: str, *, num: int, guidance: float, seed: int, progress: bool, out: Path,
          aug_t: int | None = None) -> dict:
    """One row of the screen: a route's EMA scored by the protocol, beside the floor; its first 32 samples as a
    4x8 grid in benchmarks/route64/<grid>.png."""
    import torch

    from ddpm.metrics import InceptionFeatures
    from ddpm.evaluate import evaluate_run, real_floor, samples_path, result_name
    from ddpm.runfolder import load_run
    from ddpm.viz import save_grid

    start = time.perf_counter()
    feature = InceptionFeatures()
    run = load_run(run_dir)
    floor = real_floor(run.config.dataset, run.config.resolution, num_held_out=NUM_FLOOR, num_real=NUM_REAL,
                       feature=feature, device="cpu", progress=progress, cache_dir=CACHE_DIR)
    result = evaluate_run(run_dir, num_samples=num, sampler=SAMPLER, steps=STEPS, num_real=NUM_REAL, batch_size=64,
                          device="cpu", feature=feature, progress=progress, guidance_scale=guidance, seed=seed,
                          cache_dir=CACHE_DIR, aug_t=aug_t)
    row = {"route": route, "run": run.run_dir.name, "kimg": run.images_seen / 1000,
           "train_gflop_per_image": round(training_flops(run.config) / 1e9, 3),
           "train_pflop": round(training_flops(run.config) * run.images_seen / 1e15, 3),
           "guidance_scale": guidance, "sampler": f"{SAMPLER}-{STEPS}", "seed": seed, "aug_t": result["aug_t"],
           "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "fid": result["fid"],
           "num_generated": result["num_generated"], "num_real": result["num_real"],
           "floor_kid_mean": floor["kid_mean"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
           "floor_num_generated": floor["num_generated"], "floor_num_real": floor["num_real"],
           "sampling_seconds": result["sampling_seconds"], "seconds": round(time.perf_counter() - start, 1)}
    images = torch.load(samples_path(run.out_dir / "metrics" / f"{result_name(result)}.json"), weights_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images["images"][:32], out, title=f"{route}: {row['kimg']:g} kimg, guidance {guidance:g}, "
                                                f"KID {row['kid_mean'] * 1e3:.1f}e-3")
    with open(STORE / "screen.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def cmd_score(args) -> int:
    done = {(r["route"], r["guidance_scale"], r.get("aug_t")) for r in read_rows()}
    unknown = sorted(set(args.routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"score: unknown routes {unknown}; choose from {', '.join(ROUTES)}")
    for route in args.routes or ROUTES:
        config = route_config(route)
        if not (config.run_dir / "checkpoint.pt").is_file():
            print(f"{route}: not trained yet ({config.run_dir})", flush=True)
            continue
        aug_t = (args.aug_t if args.aug_t is not None else config.aug_t) if config.lowres else None
        if (route, args.guidance_scale, aug_t) in done:
            continue
        score(config.run_dir, route, num=args.num, guidance=args.guidance_scale, seed=args.seed,
              progress=args.progress, aug_t=aug_t,
              out=STORE / f"{route}{'' if args.aug_t is None else f'-aug{aug_t}'}.png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lengths").set_defaults(func=cmd_lengths)
    p = sub.add_parser("train")
    p.add_argument("route", choices=sorted(ROUTES))
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("score", help="score every trained route not yet scored at this guidance scale")
    p.add_argument("routes", nargs="*", help=f"some of {', '.join(ROUTES)} (default: all)")
    p.add_argument("--num", type=int, default=NUM_GENERATED)
    p.add_argument("--guidance-scale", type=float, default=GUIDANCE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aug-t", type=int, default=None, help="the cascade's augmentation level (default: its aug_t)")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_score)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
