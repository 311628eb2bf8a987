"""The long CPU run (issue 23): score its EMA snapshots and its guidance, check it for copies, and draw the curves.

    .venv/bin/python -m ddpm train --profile cpu-long             # writes a snapshot every 100k images
    .venv/bin/python benchmarks/long_run.py score                 # every snapshot not yet scored: pause training first
    .venv/bin/python benchmarks/long_run.py score --kimg 200 400 800 --half-life 10   # only these
    .venv/bin/python benchmarks/long_run.py score --kimg 200 400 800 1600 --half-life 10 --guidance-scale 2
    .venv/bin/python benchmarks/guidance.py --run weights/cpu-long --scales 0 1 2 3 4 --num 1024 \
        --out benchmarks/long-run/guidance.jsonl                  # the shipped weights against the guidance scale
    .venv/bin/python benchmarks/long_run.py nearest               # the memorisation check of the shipped weights
    .venv/bin/python benchmarks/long_run.py curve                 # both curves, as a PNG
    .venv/bin/python benchmarks/long_run.py score --profile cpu64 --num 512   # the 64 px run (scores-64px.jsonl)
    .venv/bin/python benchmarks/long_run.py curve --resolution 64

Protocol: the snapshot's EMA weights (both half-lives of the run), DPM-Solver++(2M) with 20 steps at the run's
guidance scale (or --guidance-scale), labels drawn with the data's label frequencies, 1024 generated images against
all 8189 real flowers at 32 px, KID (mean ± std over subsets) and FID; the floor: 1024 real flowers held out of the
reference, scored the same way. guidance.py scores the shipped weights by the same protocol at each scale. Everything
lands in benchmarks/long-run/ (tracked), which the notebook reads, so the curves outlive the run folder. Scoring
shares the cores with training: on two cores, never run both at once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import display_path, get_config, resolve_path  # noqa: E402
from ddpm.files import append_json_line, read_json_lines  # noqa: E402
from ddpm.weights import LONG_RUN_RESULTS, LONG_RUN_WEIGHTS  # noqa: E402

STORE = resolve_path(LONG_RUN_RESULTS)
SCORES, GUIDANCE, NEAREST = STORE / "scores.jsonl", STORE / "guidance.jsonl", STORE / "nearest.json"
NUM_GENERATED, NUM_REAL = 1024, None  # None: every real image
NUM_HELD_OUT = 1024  # the floor's held-out real images, whatever --num is


def scores_file(resolution: int) -> Path:
    """Where a run's snapshot scores go: the 32 px long run's scores.jsonl, another resolution's beside it."""
    return SCORES if resolution == 32 else STORE / f"scores-{resolution}px.jsonl"
SAMPLER, STEPS = "dpmpp2m", 20
CACHE_DIR = None  # where the real images' features are cached (None: data/.cache/fid)


def snapshots(run_dir: Path, every_kimg: float | None = None, kimg: list[float] | None = None,
              half_life: float | None = None) -> list:
    """The run's snapshots (both EMAs) as loaded runs, oldest first; with every_kimg, only those at its multiples;
    with kimg, only those at these thousands of images; with half_life, only that EMA's."""
    from ddpm.runfolder import load_run

    chosen = []
    for folder in sorted((run_dir / "snapshots").glob("*kimg*")):
        run = load_run(folder)
        seen = run.images_seen / 1000
        if ((not every_kimg or seen % every_kimg == 0) and (not kimg or seen in kimg)
                and (half_life is None or run.config.ema_half_life_kimg == half_life)):
            chosen.append(run)
    return chosen


def read_scores(resolution: int = 32) -> list[dict]:
    return read_json_lines(scores_file(resolution))


def cmd_score(args) -> int:
    from ddpm.metrics import InceptionFeatures
    from ddpm.evaluate import evaluate_run, real_floor

    profile = get_config(args.profile, use_env=False)
    run_dir = Path(args.run_dir) if args.run_dir else profile.run_dir
    out = scores_file(profile.resolution)
    done = {(row["snapshot"], row["guidance_scale"]) for row in read_json_lines(out)}  # once at each scale
    todo = [run for run in snapshots(run_dir, args.every, args.kimg, args.half_life)  # at the run's scale by default
            if (run.run_dir.name, args.guidance_scale if args.guidance_scale is not None else run.guidance_scale)
            not in done]
    if not todo:
        print(f"every snapshot of {display_path(run_dir)} is scored", flush=True)
        return 0
    config = todo[0].config
    feature = InceptionFeatures()
    floor = real_floor(config.dataset, config.resolution, num_held_out=NUM_HELD_OUT, num_real=NUM_REAL,
                       feature=feature, device="cpu", progress=args.progress, cache_dir=CACHE_DIR)
    for run in todo:
        start = time.perf_counter()
        result = evaluate_run(run.run_dir, num_samples=args.num, sampler=SAMPLER, steps=STEPS, num_real=NUM_REAL,
                              batch_size=64, device="cpu", feature=feature, progress=args.progress,
                              cache_dir=CACHE_DIR, guidance_scale=args.guidance_scale)
        row = {"snapshot": run.run_dir.name, "kimg": run.images_seen / 1000,
               "ema_half_life_kimg": run.config.ema_half_life_kimg, "guidance_scale": result["guidance_scale"],
               "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "fid": result["fid"],
               "floor_kid_mean": floor["kid_mean"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
               "floor_num_generated": floor["num_generated"], "floor_num_real": floor["num_real"],
               "num_generated": result["num_generated"], "num_real": result["num_real"],
               "seconds": round(time.perf_counter() - start, 1)}
        append_json_line(out, row)
        print(json.dumps(row), flush=True)
    return 0


def cmd_curve(args) -> int:
    from ddpm.viz import plot_long_run_scores

    rows = read_scores(args.resolution)
    if not rows:
        raise SystemExit(f"no scores in {display_path(scores_file(args.resolution))}: run `score` first")
    guidance = read_json_lines(GUIDANCE) if args.resolution == 32 else []
    out = args.out or f"benchmarks/long-run/curves{'' if args.resolution == 32 else f'-{args.resolution}px'}.png"
    print(display_path(plot_long_run_scores(rows, guidance, resolve_path(out))))
    return 0


def cmd_nearest(args) -> int:
    """Each of `--num` samples of the shipped weights beside its nearest real flowers in Inception space, and the
    distances against those between real flowers: a model that copies shows samples far closer to a training image
    than real flowers are to each other."""
    from ddpm.data import load_images
    from ddpm.metrics import (InceptionFeatures, dataset_features, extract_features, nearest_neighbours,
                              reference_indices)
    from ddpm.sample import generate
    from ddpm.runfolder import load_run
    from ddpm.viz import plot_distance_histograms, save_grid

    run, feature = load_run(args.weights), InceptionFeatures()
    data = load_images(run.config.dataset, run.config.resolution, split=run.config.split)
    real = dataset_features(data, feature=feature, num_images=NUM_REAL, cache_dir=CACHE_DIR, progress=args.progress)
    images = generate(run.ema_model, run.diffusion, args.num, sampler=SAMPLER, steps=STEPS, seed=args.seed,
                      batch_size=64, progress=args.progress, **run.guidance(args.num, seed=args.seed))
    fake = extract_features(images, feature, batch_size=64, progress=args.progress, desc="features of samples")
    sample_distance, nearest = nearest_neighbours(fake, real)
    real_distance, _ = nearest_neighbours(real, real, exclude_self=True)
    order = sample_distance.argsort()  # the closest pairs first: copies, if any, would be there
    shown = order[:args.show]
    reference = reference_indices(len(data), NUM_REAL)  # feature row -> image index
    pairs = torch.cat([torch.cat([images[shown[i:i + 8]], data.images[reference[nearest[shown[i:i + 8]]]]])
                       for i in range(0, len(shown), 8)])
    STORE.mkdir(parents=True, exist_ok=True)
    save_grid(pairs, STORE / "nearest.png", nrow=8,
              title=f"the {len(shown)} samples closest to a real flower (rows 1, 3), each above its nearest real one")
    plot_distance_histograms({"sample to its nearest real flower": sample_distance,
                              "real flower to its nearest other real flower": real_distance},
                             STORE / "nearest-distances.png")
    low = torch.quantile(real_distance, 0.01).item()
    result = {"weights": display_path(resolve_path(args.weights)), "step": run.step, "num_samples": args.num,
              "num_real": len(real), "seed": args.seed, "guidance_scale": run.guidance_scale,
              "sampler": f"{SAMPLER}-{STEPS}",
              "sample_median": sample_distance.median().item(), "sample_min": sample_distance.min().item(),
              "real_median": real_distance.median().item(), "real_min": real_distance.min().item(),
              "real_1st_percentile": low,
              "samples_below_real_1st_percentile": int((sample_distance < low).sum())}
    NEAREST.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("score", help="score every snapshot not yet scored")
    p.add_argument("--profile", default="cpu-long")
    p.add_argument("--run-dir", default=None, help="the run folder (default: the profile's)")
    p.add_argument("--every", type=float, default=None, help="only snapshots at multiples of this many kimg")
    p.add_argument("--kimg", type=float, nargs="+", default=None, help="only snapshots at these thousands of images")
    p.add_argument("--half-life", type=float, default=None, help="only the EMA of this half-life (thousand images)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="sample at this scale (default: the run's); a snapshot is scored once at each scale")
    p.add_argument("--num", type=int, default=NUM_GENERATED, help="generated images per score (the floor stays 1024)")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("curve", help="KID and FID against images seen, as a PNG")
    p.add_argument("--resolution", type=int, default=32, help="whose scores: 32 (cpu-long) or 64 (cpu64)")
    p.add_argument("--out", default=None, help="default benchmarks/long-run/curves[-<res>px].png")
    p.set_defaults(func=cmd_curve)
    p = sub.add_parser("nearest", help="the memorisation check: samples beside their nearest real flowers")
    p.add_argument("--weights", default=LONG_RUN_WEIGHTS)
    p.add_argument("--num", type=int, default=1024, help="samples to check")
    p.add_argument("--show", type=int, default=16, help="closest pairs drawn (a multiple of 8)")
    p.add_argument("--seed", type=int, default=1, help="other noise than the scores' (seed 0)")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_nearest)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
