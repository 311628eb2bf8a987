"""The CPU recipe, chosen by measurement: which training recipe makes the `cpu` network learn flowers fastest?

Each candidate is the `cpu` profile's improved UNet (32 px) with a few options changed, trained in its own run folder
(runs/recipe/<candidate>/) to a length in thousands of images, then scored by one protocol:

    EMA weights, DPM-Solver++(2M) with 20 steps, 512 generated images against 1024 real flowers at 32 px,
    KID (mean and std over subsets) and FID; beside them the floor: 512 held-out real flowers against the same 1024.

    .venv/bin/python benchmarks/recipe.py train today-s0 --kimg 50 --threads 1     # train (or resume, or extend)
    .venv/bin/python benchmarks/recipe.py score today-s0                           # score its current checkpoint
    .venv/bin/python benchmarks/recipe.py table                                    # every score so far, as markdown
    .venv/bin/python benchmarks/recipe.py sheet --out benchmarks/recipe.png        # 16 samples of each, one PNG

Training resumes exactly from the run folder, so `--kimg 100` later carries a 50k run on to 100k. Every score is
appended to benchmarks/recipe-scores.jsonl (tracked) with the images seen, and a 4x8 grid of its first samples is
written in the run folder (runs/recipe/<candidate>/recipe-grids/). The candidates pin every option they compare, so the table keeps its meaning
when the profile's defaults change.
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

RUNS_DIR = "runs/recipe"
SCORES = Path(__file__).resolve().parent / "recipe-scores.jsonl"  # tracked: the scores outlive the run folders
NUM_GENERATED, NUM_REAL = 512, 1024
SAMPLER, STEPS = "dpmpp2m", 20

# The cpu profile's recipe before this study: AdamW lr 5e-4, gradients clipped at 1, eps-prediction on the linear
# schedule, t uniform, plain MSE.
TODAY = dict(lr=5e-4, grad_clip=1.0, weight_decay=0.0, prediction="eps", schedule="linear", min_snr_gamma=None,
             noise_sampling="uniform", num_classes=0, ema_half_life_kimg=2.0)
# Runs started after the first two also track a second EMA of half-life 10 kimg (in force after 100k images: until
# then a tenth of the images seen), scored with `score --ema2`: two half-lives from one run.
EMA2 = dict(ema2_half_life_kimg=10.0)
CANDIDATES = {  # name -> (description, overrides of the cpu profile)
    "today-s0": ("today's recipe, seed 0", dict(TODAY, seed=0)),
    "today-s1": ("today's recipe, seed 1", dict(TODAY, seed=1)),
    "keras": ("lr 1e-3, no clipping, weight decay 1e-4 (the Keras DDIM example)",
              dict(TODAY, **EMA2, lr=1e-3, grad_clip=0.0, weight_decay=1e-4)),
    "v-cosine": ("v-prediction on the cosine schedule", dict(TODAY, **EMA2, prediction="v", schedule="cosine")),
    "v-minsnr5": ("v-prediction with Min-SNR-5 (linear schedule)",
                  dict(TODAY, **EMA2, prediction="v", min_snr_gamma=5.0)),
    "v-minsnr5-s1": ("v-prediction with Min-SNR-5 (linear schedule), seed 1",
                     dict(TODAY, **EMA2, prediction="v", min_snr_gamma=5.0, seed=1)),
    "keras-v-cosine": ("lr 1e-3, no clipping, weight decay 1e-4, v-prediction on the cosine schedule",
                       dict(TODAY, **EMA2, lr=1e-3, grad_clip=0.0, weight_decay=1e-4, prediction="v",
                            schedule="cosine")),
    "keras-v-cosine-s1": ("lr 1e-3, no clipping, weight decay 1e-4, v-prediction on the cosine schedule, seed 1",
                          dict(TODAY, **EMA2, lr=1e-3, grad_clip=0.0, weight_decay=1e-4, prediction="v",
                               schedule="cosine", seed=1)),
    "edm": ("EDM's log-normal noise levels and loss weight (eps, linear schedule)",
            dict(TODAY, **EMA2, noise_sampling="lognormal")),
    # class-conditional (102 species, null label 10% of the time): scored with --guidance-scale
    "cond": ("class-conditional, today's recipe", dict(TODAY, **EMA2, num_classes=102, label_dropout=0.1)),
    "cond-kvc": ("class-conditional, lr 1e-3, no clipping, weight decay 1e-4, v-prediction on the cosine schedule",
                 dict(TODAY, **EMA2, lr=1e-3, grad_clip=0.0, weight_decay=1e-4, prediction="v", schedule="cosine",
                      num_classes=102, label_dropout=0.1)),
}


def candidate_config(name: str, kimg: float | None = None):
    """The candidate's config, `kimg` long (the length may grow between calls: the same run goes on)."""
    _, overrides = CANDIDATES[name]
    return get_config("cpu", use_env=False, runs_dir=RUNS_DIR, run_name=name, train_steps=None, sample_every=625,
                      progress=False, train_kimg=kimg or 50.0, **overrides)


def cmd_train(args) -> int:
    from ddpm.train import train

    config = candidate_config(args.candidate, args.kimg)
    start = time.perf_counter()
    result = train(config)
    print(f"{args.candidate}: step {result.step} ({result.step * config.batch_size / 1000:g} kimg) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


def export_ema2(config) -> Path:
    """The run's second EMA as a run folder of its own (<run>-ema2/), so that evaluate_run scores it as it is."""
    from ddpm.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from ddpm.files import atomic_save

    state = load_checkpoint(config.run_dir / CHECKPOINT_NAME)
    if "ema2" not in state:
        raise SystemExit(f"{config.run_dir} tracks no second EMA (ema2_half_life_kimg)")
    half_life = state["config"]["ema2_half_life_kimg"]
    state = {**state, "ema": state.pop("ema2"),
             "config": {**state["config"], "ema_half_life_kimg": half_life, "ema2_half_life_kimg": None}}
    folder = config.run_dir.with_name(config.run_dir.name + "-ema2")
    atomic_save(state, folder / CHECKPOINT_NAME)
    return folder


def cmd_score(args) -> int:
    from ddpm.metrics import InceptionFeatures
    from ddpm.evaluate import evaluate_run, real_floor, result_name, samples_path
    from ddpm.viz import save_grid

    config = candidate_config(args.candidate)
    run_dir = export_ema2(config) if args.ema2 else config.run_dir
    feature = InceptionFeatures()
    floor = real_floor(config.dataset, config.resolution, num_held_out=NUM_GENERATED, num_real=NUM_REAL,
                       feature=feature, device="cpu", progress=False)
    result = evaluate_run(run_dir, num_samples=NUM_GENERATED, sampler=SAMPLER, steps=STEPS, num_real=NUM_REAL,
                          batch_size=64, device="cpu", feature=feature, seed=args.seed, progress=False,
                          guidance_scale=args.guidance_scale)
    kimg = result["step"] * config.batch_size / 1000
    saved = samples_path(run_dir / "metrics" / f"{result_name(result)}.json")  # the first samples, kept
    images = torch.load(saved, weights_only=True)["images"]
    guidance = "" if args.guidance_scale is None else f"-g{args.guidance_scale:g}"
    ema = "-ema2" if args.ema2 else ""
    grid = save_grid(images[:32], config.run_dir / "recipe-grids" / f"{kimg:05.0f}kimg{guidance}{ema}.png",
                     title=f"{args.candidate}{guidance}{ema}, {kimg:.0f}k images, EMA, DPM-Solver++ 20 steps")
    description = CANDIDATES[args.candidate][0] + ("" if args.guidance_scale is None
                                                   else f", guidance {args.guidance_scale:g}")
    if args.ema2:
        description += f", EMA half-life {config.ema2_half_life_kimg:g} kimg (not {config.ema_half_life_kimg:g})"
    row = {"candidate": args.candidate + guidance + ema, "description": description, "kimg": kimg,
           "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "fid": result["fid"],
           "floor_kid_mean": floor["kid_mean"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
           "num_generated": result["num_generated"], "num_real": result["num_real"], "seed": args.seed,
           "grid": display_path(grid), "overrides": CANDIDATES[args.candidate][1]}
    append_json_line(SCORES, row)
    print(json.dumps(row), flush=True)
    return 0


def cmd_table(args) -> int:
    rows = read_json_lines(SCORES)
    latest = {(r["candidate"], r["kimg"]): r for r in rows}  # the last score of each candidate and length
    print("| candidate | kimg | KID x 1e3 (± std) | FID | floor KID x 1e3 | floor FID |")
    print("|---|---|---|---|---|---|")
    for (name, kimg), r in sorted(latest.items(), key=lambda item: (item[0][1], item[1]["kid_mean"])):
        print(f"| {r['description']} | {kimg:g} | {1e3 * r['kid_mean']:.1f} ± {1e3 * r['kid_std']:.1f} | "
              f"{r['fid']:.1f} | {1e3 * r['floor_kid_mean']:.1f} ± {1e3 * r['floor_kid_std']:.1f} | "
              f"{r['floor_fid']:.1f} |")
    return 0


def latest_rows() -> list[dict]:
    """The last score of each candidate (and guidance scale, and EMA) at its longest length, best KID first."""
    rows = read_json_lines(SCORES)
    latest = {}
    for row in rows:
        if row["candidate"] not in latest or row["kimg"] >= latest[row["candidate"]]["kimg"]:
            latest[row["candidate"]] = row
    return sorted(latest.values(), key=lambda r: r["kid_mean"])


def cmd_sheet(args) -> int:
    """The first 16 samples of each candidate's latest score, under its name, KID and length: one PNG to look at."""
    from ddpm.evaluate import samples_path
    from ddpm.viz import save_grid_row

    grids = {}
    for row in latest_rows():
        name = row["candidate"]
        run_dir = resolve_path(RUNS_DIR) / (name.split("-g")[0] if "-g" in name else name)
        scale = name.rsplit("-g", 1)[1] if "-g" in name else None
        stem = f"ema-{SAMPLER}-{STEPS}{'' if scale is None else f'-g{scale}'}-n{NUM_GENERATED}"
        saved = samples_path(run_dir / "metrics" / f"{stem}.json")
        images = torch.load(saved, weights_only=True)["images"][:16]
        grids[f"{name}, {row['kimg']:.0f}k: KID {1e3 * row['kid_mean']:.0f}, FID {row['fid']:.0f}"] = images
    print(save_grid_row(grids, args.out, columns=3, scale=2, title=f"EMA, DPM-Solver++(2M) {STEPS} steps, 32 px "
                        f"(KID x 1e3 of {NUM_GENERATED} vs {NUM_REAL} real)"))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("train", help="train (or resume, or extend) a candidate to --kimg thousand images")
    p.add_argument("candidate", choices=sorted(CANDIDATES))
    p.add_argument("--kimg", type=float, required=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("score", help="score a candidate's current checkpoint by the protocol")
    p.add_argument("candidate", choices=sorted(CANDIDATES))
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--guidance-scale", type=float, default=None, help="conditional candidates: guidance scale")
    p.add_argument("--ema2", action="store_true", help="score the second EMA (ema2_half_life_kimg) instead")
    p.set_defaults(func=cmd_score)
    sub.add_parser("table", help="every score so far, as markdown").set_defaults(func=cmd_table)
    p = sub.add_parser("sheet", help="16 samples of each candidate's latest score in one PNG")
    p.add_argument("--out", default="outputs/recipe.png")
    p.set_defaults(func=cmd_sheet)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
