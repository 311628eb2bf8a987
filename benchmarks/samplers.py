"""The samplers on weights/cpu-long (issue 31): KID against network calls for each solver, step grid and step count.

    .venv/bin/python benchmarks/samplers.py lambda-min           # 1. where to start the truncated lambda grid
    .venv/bin/python benchmarks/samplers.py sweep                # 2. solver x grid x steps, at guidance 2
    .venv/bin/python benchmarks/samplers.py interval             # 3. guidance in an interval, on the best settings
    .venv/bin/python benchmarks/samplers.py confirm --seed 1     # 4. the chosen settings again, on fresh seeds
    .venv/bin/python benchmarks/samplers.py reference            # DDPM's 1000 steps (2000 calls: over an hour)
    .venv/bin/python benchmarks/samplers.py time                 # seconds for 32 images (a quiet machine only)
    .venv/bin/python benchmarks/samplers.py table | figure       # the rows as Markdown, KID against calls as a PNG

Protocol: the shipped EMA weights, labels drawn with the data's label frequencies, 1024 generated images against all
8189 real flowers at 32 px, KID (mean ± std over 100 subsets of 1000) and FID; the floor (1024 held-out real flowers
against the other 7165) beside them. Settings are chosen on seed 0 and reported on seed 1. Each row also counts the
network calls an image as they were made (a guided step runs the batch twice). Rows are appended to
benchmarks/samplers/scores.jsonl (tracked) and a setting already scored at a seed is skipped, so each command
resumes. Scoring needs the cores: never run it beside a training run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import display_path, resolve_path  # noqa: E402
from ddpm.files import append_json_line, read_json_lines  # noqa: E402
from ddpm.weights import LONG_RUN_WEIGHTS  # noqa: E402

STORE = Path(__file__).resolve().parent / "samplers"
SCORES = STORE / "scores.jsonl"
NUM_GENERATED, NUM_HELD_OUT, GUIDANCE = 1024, 1024, 2.0
SOLVERS = ("ddim", "dpmpp2m", "dpmpp3m")
STEPS = (5, 8, 10, 15, 20, 50)
LAMBDA_MINS = (-7.0, -6.0, -5.0, -4.0, -3.0, -2.0)  # stage 1, on DPM-Solver++(2M) with 10 steps
EDM_LAMBDA_MIN = -math.log(80.0)  # EDM's grid runs from its sigma_max = 80 down
INTERVALS = ((0.28, 5.42), (0.1, 5.42), (0.28, 20.0), (0.5, 3.0))  # in sigma; the first is EDM2's (Kynkaanniemi)
INTERVAL_SCALES = (2.0, 3.0, 4.0)


def key(row: dict) -> tuple:
    return (row["sampler"], row["steps"], row["grid"], row["lambda_min"], row["guidance_scale"],
            tuple(row["guidance_interval"] or ()), row["seed"])


def setting(sampler, steps, grid=None, lambda_min=None, scale=GUIDANCE, interval=None) -> dict:
    return {"sampler": sampler, "steps": steps, "grid": grid, "lambda_min": lambda_min, "guidance_scale": scale,
            "guidance_interval": list(interval) if interval else None}


def score(settings: list[dict], *, seed: int, num: int, progress: bool) -> list[dict]:
    """Score each setting not yet scored at this seed, appending its row to SCORES."""
    from ddpm.metrics import InceptionFeatures
    from ddpm.evaluate import evaluate_run, real_floor

    done = {key(row) for row in read_json_lines(SCORES)}
    todo = list({key({**s, "seed": seed}): s for s in settings if key({**s, "seed": seed}) not in done}.values())
    if not todo:
        print("every setting is scored", flush=True)
        return []
    feature, rows = InceptionFeatures(), []
    floor = real_floor("flowers102", 32, num_held_out=NUM_HELD_OUT, num_real=None, feature=feature, device="cpu",
                       progress=progress)
    for s in todo:
        start = time.perf_counter()
        interval = tuple(s["guidance_interval"]) if s["guidance_interval"] else None
        result = evaluate_run(LONG_RUN_WEIGHTS, num_samples=num, sampler=s["sampler"], steps=s["steps"], seed=seed,
                              grid=s["grid"], lambda_min=s["lambda_min"], guidance_interval=interval,
                              guidance_scale=s["guidance_scale"], batch_size=128, device="cpu", feature=feature,
                              progress=progress)
        row = {**s, "seed": seed, "steps": result["steps"], "network_calls": result["network_calls"],
               "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "fid": result["fid"],
               "num_generated": result["num_generated"], "num_real": result["num_real"],
               "floor_kid_mean": floor["kid_mean"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
               "sampling_seconds": result["sampling_seconds"], "seconds": round(time.perf_counter() - start, 1)}
        append_json_line(SCORES, row)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def best(rows: list[dict], **where) -> dict:
    """The lowest-KID row among those matching `where` (seed 0 unless given)."""
    where.setdefault("seed", 0)
    mine = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    if not mine:
        raise SystemExit(f"no scored rows with {where}: run the earlier stages first")
    return min(mine, key=lambda r: r["kid_mean"])


def chosen_lambda_min() -> float:
    return best(read_json_lines(SCORES), sampler="dpmpp2m", steps=10, grid="lambda",
                guidance_interval=None)["lambda_min"] or -math.inf


def sweep_settings() -> list[dict]:
    lambda_min = chosen_lambda_min()
    grids = [("lambda", None), ("lambda", lambda_min), ("time", None), ("edm", EDM_LAMBDA_MIN)]
    out = [setting(sampler, n, grid, None if low == -math.inf else low)
           for sampler in SOLVERS for grid, low in grids for n in STEPS]
    return sorted(out, key=lambda s: s["steps"])  # the few-step settings first: they are what is sought


def interval_settings() -> list[dict]:
    """The three best (solver, grid, lambda_min) of the sweep at 10 steps or fewer, each with every interval."""
    rows = [r for r in read_json_lines(SCORES) if r["seed"] == 0 and r["guidance_interval"] is None
            and r["sampler"] != "ddpm" and r["steps"] <= 10 and r["guidance_scale"] == GUIDANCE]
    top = sorted(rows, key=lambda r: r["kid_mean"])[:3]
    return [setting(r["sampler"], r["steps"], r["grid"], r["lambda_min"], scale, interval)
            for r in top for interval in INTERVALS for scale in INTERVAL_SCALES]


def cmd_score(args) -> int:
    if args.action == "lambda-min":
        settings = [setting("dpmpp2m", 10, "lambda", low) for low in (None, *LAMBDA_MINS)]
    elif args.action == "sweep":
        settings = sweep_settings()
    elif args.action == "interval":
        settings = interval_settings()
    elif args.action == "reference":
        settings = [setting("ddpm", 1000)]
    else:  # confirm: the seed-0 choice at each budget of calls, and today's default, on args.seed
        rows = [r for r in read_json_lines(SCORES) if r["seed"] == 0]
        settings = [setting("dpmpp2m", 20, "lambda")]
        for calls in (8, 10, 12, 16, 20):
            fits = [r for r in rows if r["network_calls"] and r["network_calls"] <= calls]
            if fits:
                r = min(fits, key=lambda r: r["kid_mean"])
                settings.append(setting(r["sampler"], r["steps"], r["grid"], r["lambda_min"], r["guidance_scale"],
                                        r["guidance_interval"]))
    score(settings, seed=args.seed, num=args.num, progress=args.progress)
    return 0


def cmd_time(args) -> int:
    """Seconds for 32 images (after one warm-up batch), and the calls counted, per setting given."""
    from ddpm.sample import generate
    from ddpm.solvers import counted_calls
    from ddpm.runfolder import load_run

    run = load_run(LONG_RUN_WEIGHTS)
    for spec in args.settings:  # sampler:steps[:grid[:lambda_min[:low,high]]]
        parts = spec.split(":") + [""] * 4
        interval = tuple(float(v) for v in parts[4].split(",")) if parts[4] else None
        options = dict(sampler=parts[0], steps=int(parts[1]), grid=parts[2] or None,
                       lambda_min=float(parts[3]) if parts[3] else None, guidance_interval=interval,
                       batch_size=32, progress=False, **run.guidance(32, seed=0))
        generate(run.ema_model, run.diffusion, 32, **options)  # warm-up
        with counted_calls(run.ema_model) as calls:
            start = time.perf_counter()
            generate(run.ema_model, run.diffusion, 32, **options)
            seconds = time.perf_counter() - start
        print(json.dumps({"setting": spec, "seconds_32": round(seconds, 2), "network_calls": calls["images"] / 32,
                          "threads": __import__("torch").get_num_threads()}), flush=True)
    return 0


def cmd_table(args) -> int:
    from ddpm.show import markdown_table

    rows = sorted(read_json_lines(SCORES), key=lambda r: (r["seed"], r["network_calls"] or 0, r["kid_mean"]))
    print(markdown_table([{"seed": r["seed"], "sampler": r["sampler"], "grid": r["grid"] or "default",
                           "lambda_min": "" if r["lambda_min"] is None else f"{r['lambda_min']:.2f}",
                           "steps": r["steps"], "guidance": r["guidance_scale"],
                           "interval": "" if not r["guidance_interval"] else "({:g}, {:g}]".format(*r["guidance_interval"]),
                           "calls": r["network_calls"], "KID x 1e3": f"{1e3 * r['kid_mean']:.1f} ± {1e3 * r['kid_std']:.1f}",
                           "FID": f"{r['fid']:.1f}"} for r in rows]))
    return 0


def cmd_figure(args) -> int:
    from matplotlib.figure import Figure

    rows = [r for r in read_json_lines(SCORES) if r["seed"] == args.seed and r["guidance_interval"] is None]
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for sampler in SOLVERS:
        for grid in sorted({(r["grid"], r["lambda_min"]) for r in rows if r["sampler"] == sampler}, key=str):
            line = sorted((r for r in rows if (r["sampler"], r["grid"], r["lambda_min"]) == (sampler, *grid)),
                          key=lambda r: r["network_calls"])
            label = f"{sampler}, {grid[0]}" + ("" if grid[1] is None else f" from lambda {grid[1]:.1f}")
            ax.errorbar([r["network_calls"] for r in line], [1e3 * r["kid_mean"] for r in line],
                        yerr=[1e3 * r["kid_std"] for r in line], marker="o", capsize=2, label=label)
    if rows:
        ax.axhline(1e3 * rows[-1]["floor_kid_mean"], color="grey", linestyle="--", label="real vs real floor")
    ax.set(xscale="log", yscale="symlog", xlabel="network calls an image (guidance counted)", ylabel="KID x 1e3",
           title=f"weights/cpu-long, guidance {GUIDANCE:g}, 1024 generated vs 8189 real, seed {args.seed}")
    ax.legend(fontsize=6, ncol=2)
    out = resolve_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(display_path(out))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("lambda-min", "sweep", "interval", "confirm", "reference"):
        p = sub.add_parser(name)
        p.add_argument("--seed", type=int, default=1 if name == "confirm" else 0)
        p.add_argument("--num", type=int, default=NUM_GENERATED)
        p.add_argument("--progress", action="store_true")
        p.set_defaults(func=cmd_score)
    p = sub.add_parser("time")
    p.add_argument("settings", nargs="+", help="sampler:steps[:grid[:lambda_min[:low,high]]], e.g. dpmpp2m:10:lambda:-4")
    p.set_defaults(func=cmd_time)
    p = sub.add_parser("table")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/samplers/kid-vs-calls.png")
    p.set_defaults(func=cmd_figure)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
