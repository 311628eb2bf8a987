"""The long CPU run (issue 23): score its EMA snapshots by one protocol, and draw KID and FID against images seen.

    .venv/bin/python -m ddpm train --profile cpu-long             # writes a snapshot every 100k images
    .venv/bin/python benchmarks/long_run.py score                 # every snapshot not yet scored: pause training first
    .venv/bin/python benchmarks/long_run.py score --every 200     # only those at multiples of 200k images
    .venv/bin/python benchmarks/long_run.py curve --out figures/cpu-long/kid-against-images.png

Protocol: the snapshot's EMA weights (both half-lives of the run), DPM-Solver++(2M) with 20 steps at the run's guidance
scale, labels drawn with the data's label frequencies, 1024 generated images against all 8189 real flowers at 32 px,
KID (mean ± std over subsets) and FID; the floor: 1024 real flowers held out of the reference, scored the same way.
Each score is appended to benchmarks/long-run-scores.jsonl (tracked), so the curve outlives the run folder. Scoring
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

SCORES = Path(__file__).resolve().parent / "long-run-scores.jsonl"
NUM_GENERATED, NUM_REAL = 1024, None  # None: every real image
SAMPLER, STEPS = "dpmpp2m", 20
CACHE_DIR = None  # where the real images' features are cached (None: data/.cache/fid)


def snapshots(run_dir: Path, every_kimg: float | None) -> list[Path]:
    """The run's snapshot folders (both EMAs), oldest first; with every_kimg, only those at its multiples."""
    from ddpm.train import load_run

    folders = sorted((run_dir / "snapshots").glob("*kimg*"))
    if every_kimg:
        folders = [f for f in folders if (load_run(f).images_seen / 1000) % every_kimg == 0]
    return folders


def read_scores() -> list[dict]:
    return [json.loads(line) for line in SCORES.read_text().splitlines() if line.strip()] if SCORES.exists() else []


def cmd_score(args) -> int:
    from ddpm.metrics import InceptionFeatures, evaluate_run, real_floor
    from ddpm.train import load_run

    run_dir = Path(args.run_dir) if args.run_dir else get_config(args.profile, use_env=False).run_dir
    done = {row["snapshot"] for row in read_scores()}
    todo = [f for f in snapshots(run_dir, args.every) if f.name not in done]
    if not todo:
        print(f"every snapshot of {display_path(run_dir)} is scored", flush=True)
        return 0
    config = load_run(todo[0]).config
    feature = InceptionFeatures()
    floor = real_floor(config.dataset, config.resolution, num_held_out=NUM_GENERATED, num_real=NUM_REAL,
                       feature=feature, device="cpu", progress=args.progress, cache_dir=CACHE_DIR)
    for folder in todo:
        start = time.perf_counter()
        run = load_run(folder)
        result = evaluate_run(folder, num_samples=NUM_GENERATED, sampler=SAMPLER, steps=STEPS, num_real=NUM_REAL,
                              batch_size=64, device="cpu", feature=feature, progress=args.progress,
                              cache_dir=CACHE_DIR)
        row = {"snapshot": folder.name, "kimg": run.images_seen / 1000,
               "ema_half_life_kimg": run.config.ema_half_life_kimg, "guidance_scale": result["guidance_scale"],
               "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "fid": result["fid"],
               "floor_kid_mean": floor["kid_mean"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
               "num_generated": result["num_generated"], "num_real": result["num_real"],
               "seconds": round(time.perf_counter() - start, 1)}
        with open(SCORES, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


def cmd_curve(args) -> int:
    from matplotlib.figure import Figure

    rows = read_scores()
    if not rows:
        raise SystemExit(f"no scores in {SCORES}: run `score` first")
    fig = Figure(figsize=(10, 4), dpi=100)
    kid_ax, fid_ax = fig.subplots(1, 2)
    for half_life in sorted({r["ema_half_life_kimg"] for r in rows}):
        mine = sorted((r for r in rows if r["ema_half_life_kimg"] == half_life), key=lambda r: r["kimg"])
        kimg = [r["kimg"] for r in mine]
        label = f"EMA half-life {half_life:g}k images"
        kid_ax.errorbar(kimg, [1e3 * r["kid_mean"] for r in mine], yerr=[1e3 * r["kid_std"] for r in mine],
                        marker="o", capsize=3, label=label)
        fid_ax.plot(kimg, [r["fid"] for r in mine], marker="o", label=label)
    kid_ax.axhline(1e3 * rows[-1]["floor_kid_mean"], color="grey", linestyle="--", label="real vs real (floor)")
    fid_ax.axhline(rows[-1]["floor_fid"], color="grey", linestyle="--", label="real vs real (floor)")
    for ax, what in ((kid_ax, "KID x 1e3"), (fid_ax, "FID")):
        ax.set_xlabel("thousands of images seen")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    scale = rows[-1]["guidance_scale"]
    fig.suptitle(f"{rows[-1]['num_generated']} samples (DPM-Solver++ {STEPS} steps"
                 f"{'' if scale is None else f', guidance {scale:g}'}) vs {rows[-1]['num_real']} real images")
    fig.tight_layout()
    out = resolve_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(display_path(out))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("score", help="score every snapshot not yet scored")
    p.add_argument("--profile", default="cpu-long")
    p.add_argument("--run-dir", default=None, help="the run folder (default: the profile's)")
    p.add_argument("--every", type=float, default=None, help="only snapshots at multiples of this many kimg")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("curve", help="KID and FID against images seen, as a PNG")
    p.add_argument("--out", default="figures/cpu-long/kid-against-images.png")
    p.set_defaults(func=cmd_curve)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
