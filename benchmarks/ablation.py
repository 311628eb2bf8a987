"""CPU ablation of the improved UNet's options: does each one buy quality at the same number of training steps?

Trains the `cpu` profile's improved UNet (1000 steps of 32 images at 32 px) once per variant, then scores each with
KID of 256 samples (EMA weights, DPM-Solver++(2M), 25 steps) against 1024 real flowers. The floor is the KID of 256
*real* flowers, disjoint from those 1024, under the same protocol: no model can be expected to beat it.

    .venv/bin/python benchmarks/ablation.py                       # all variants (about 55 min on 2 cores)
    .venv/bin/python benchmarks/ablation.py --variants silu-seed0 --json outputs/ablation.json

Runs go to runs/ablation/<variant>/ and are reused when finished; the real features are cached in data/.cache/fid/.
The variants pin the options they test, so the table keeps its meaning when the profile's defaults change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import get_config  # noqa: E402
from ddpm.data import load_images  # noqa: E402
from ddpm.evaluate import evaluate_run  # noqa: E402
from ddpm.metrics import (  # noqa: E402
    REFERENCE_SUBSET_SEED, InceptionFeatures, dataset_features, extract_features, kid_from_features,
)
from ddpm.train import train  # noqa: E402

NUM_GENERATED = 256
NUM_REAL = 1024
SAMPLER, STEPS = "dpmpp2m", 25
PLAIN = dict(scale_shift_norm=False, min_snr_gamma=None)
VARIANTS = {  # name -> (description, config overrides on top of the cpu profile)
    "silu-seed0": ("SiLU fix (today's settings), seed 0", dict(PLAIN, seed=0)),
    "silu-seed1": ("SiLU fix (today's settings), seed 1", dict(PLAIN, seed=1)),
    "adagn": ("+ AdaGN (scale-shift norm)", dict(PLAIN, scale_shift_norm=True)),
    "adagn-minsnr5": ("+ AdaGN + Min-SNR-5", dict(PLAIN, scale_shift_norm=True, min_snr_gamma=5.0)),
}


def floor(data, feature) -> dict:
    """KID of 256 real images (disjoint from the 1024 reference ones) against the 1024: the protocol's floor."""
    reference = dataset_features(data, feature=feature, num_images=NUM_REAL, batch_size=64)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(REFERENCE_SUBSET_SEED))
    held_out = order[NUM_REAL:NUM_REAL + NUM_GENERATED].sort().values
    features = extract_features(data.images[held_out], feature, batch_size=64, desc="held-out real")
    mean, std, size = kid_from_features(reference, features, subset_size=NUM_GENERATED)
    return {"variant": "floor", "description": f"{NUM_GENERATED} real flowers (held out)", "kid_mean": mean,
            "kid_std": std, "kid_subset_size": size}


def run_variant(name: str, description: str, overrides: dict, feature) -> dict:
    config = get_config("cpu", use_env=False, runs_dir="runs/ablation", run_name=name, **overrides)
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start
    scored = evaluate_run(config.run_dir, num_samples=NUM_GENERATED, sampler=SAMPLER, steps=STEPS, num_real=NUM_REAL,
                          batch_size=64, device="cpu", feature=feature, progress=False)
    losses = [loss for _, loss in result.losses[-8:]]  # the last 200 steps
    return {"variant": name, "description": description, "kid_mean": scored["kid_mean"], "kid_std": scored["kid_std"],
            "kid_subset_size": scored["kid_subset_size"], "fid": scored["fid"], "train_seconds": round(train_seconds),
            "final_loss": sum(losses) / len(losses) if losses else None, "overrides": overrides}


def table(rows: list[dict]) -> str:
    lines = ["| variant | KID x 1e3 (mean ± std over subsets) | FID (256 vs 1024) | final loss | train s |",
             "|---|---|---|---|---|"]
    for r in rows:
        fid = f"{r['fid']:.1f}" if "fid" in r else "-"
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
        lines.append(f"| {r['description']} | {1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | {fid} | {loss} | "
                     f"{r.get('train_seconds', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    feature = InceptionFeatures()
    data = load_images("flowers102", get_config("cpu", use_env=False).resolution)
    rows = [floor(data, feature)]
    print(table(rows), flush=True)
    for name in args.variants:
        description, overrides = VARIANTS[name]
        rows.append(run_variant(name, description, overrides, feature))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
