"""Classifier-free guidance against quality: score one conditional run at several guidance scales, by one protocol.

    python benchmarks/guidance.py --run runs/gpu-unet-flowers102-64px --scales 1 1.5 2 3 4 --num 1024
    python benchmarks/guidance.py --run weights/cpu-long --scales 0 1 2 4 --num 1024 --out benchmarks/guidance-cpu.jsonl

Protocol: the run's EMA weights, DPM-Solver++(2M) with the run's solver_steps, labels drawn with the data's label
frequencies (seed 0, the same labels and noise at every scale), `--num` generated images against `--num-real` real
ones (default: all), KID (mean ± std over subsets) and FID. Each scale's result is also stored like any evaluation
(run_dir/metrics/), so a plan row at the same scale and count reuses it. One JSON line per scale goes to --out, and the
last line printed is `best <scale>`: the lowest FID (the GPU script, tools/gpu/run.sh, samples the headline with it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import display_path, resolve_path  # noqa: E402


def sweep(run: str, scales: list[float], *, num: int, num_real: int | None, device=None, progress: bool = False,
          out: Path | None = None, say=print) -> list[dict]:
    from ddpm.metrics import InceptionFeatures
    from ddpm.evaluate import evaluate_run
    from ddpm.runfolder import load_run

    loaded = load_run(run)
    if loaded.classes is None:
        raise ValueError(f"--run: {run} is unconditional (num_classes=0); guidance needs a class-conditional run")
    config, feature, rows = loaded.config, InceptionFeatures(), []
    for scale in scales:
        start = time.perf_counter()
        result = evaluate_run(run, num_samples=num, num_real=num_real, sampler="dpmpp2m", steps=config.solver_steps,
                              guidance_scale=scale, batch_size=config.fid_batch_size, device=device, feature=feature,
                              progress=progress)
        row = {"run": result["run"], "step": result["step"], "guidance_scale": scale, "fid": round(result["fid"], 3),
               "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "num_generated": result["num_generated"],
               "num_real": result["num_real"], "steps": result["steps"], "device": result["device"],
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        say(f"guidance {scale:g}: FID {row['fid']:.2f}, KID {1e3 * row['kid_mean']:.2f} ± {1e3 * row['kid_std']:.2f} "
            f"x 1e-3 ({row['seconds']:.0f} s)")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder or a shipped weights folder (conditional)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--num", type=int, default=1024, help="generated images per scale")
    parser.add_argument("--num-real", type=int, default=None, help="real images (default: all)")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    parser.add_argument("--out", default=None, help="append one JSON line per scale to this file")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.scales):
        parser.error(f"--scales must be 0 or more, got {args.scales}")
    out = resolve_path(args.out) if args.out else None
    try:
        rows = sweep(args.run, args.scales, num=args.num, num_real=args.num_real, device=args.device,
                     progress=args.progress, out=out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"wrote {display_path(out)}")
    best = min(rows, key=lambda r: r["fid"])
    print(f"best {best['guidance_scale']:g}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
