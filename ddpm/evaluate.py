"""Evaluating a run: sample it, score the samples against its dataset (ddpm/metrics.py), and keep the result.

Owns the result files of a run folder (run_dir/metrics/<name>.json, run_dir/metrics.jsonl, and beside each result its
first SAVED_SAMPLES images), the markdown table of results, and the two references every score is read against: the
floor (held-out real images scored as samples are) and real-vs-real (two halves of a dataset).

    result = evaluate_run("runs/gpu-unet-flowers102-64px", num_samples=8189)   # writes run_dir/metrics/*.json
    print(results_table(load_results(["runs/gpu-unet-flowers102-64px"])))
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ddpm.files import atomic_save, atomic_write_text
from ddpm.metrics import (KID_SUBSET_SIZE, KID_SUBSETS, InceptionFeatures, dataset_features, default_cache_dir,
                          extract_features, feature_network_name, fid_from_features, kid_from_features,
                          reference_cache_path, reference_indices)
from ddpm.solvers import counted_calls

SAVED_SAMPLES = 64  # images (and their features) kept beside each evaluation's result


def result_name(result: dict) -> str:
    """`<weights>-<sampler>-<steps>[-eta<eta>][-g<scale>]-n<N>`: the file stem of one evaluation in run_dir/metrics/
    (eta only for stochastic DDIM, the guidance scale only for conditional runs, so earlier names still match)."""
    eta = f"-eta{result['eta']:g}" if result["sampler"] == "ddim" and result.get("eta") else ""
    guidance = f"-g{result['guidance_scale']:g}" if result.get("guidance_scale") is not None else ""
    aug = f"-aug{result['aug_t']}" if result.get("aug_t") is not None else ""  # a cascade's stage
    solver = "".join(f"-{tag}{result[key] if key == 'grid' else format_number(result[key])}" for key, tag in
                     (("grid", ""), ("lambda_min", "lmin"), ("guidance_interval", "gi")) if result.get(key) is not None)
    return (f"{result['weights']}-{result['sampler']}-{result['steps']}{eta}{guidance}{aug}{solver}"
            f"-n{result['num_generated']}")


def format_number(value) -> str:
    """A number or a pair of them for a file name: 2.5 -> '2.5', [0.28, 5.42] -> '0.28_5.42'."""
    return "_".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else f"{value:g}"


def samples_path(result_path: Path | str) -> Path:
    """Beside each result: the first SAVED_SAMPLES of its images and their features, for grids and the memorisation
    check without sampling again."""
    return Path(result_path).with_suffix(".samples.pt")


def _device(device: str | torch.device | None) -> torch.device:
    from ddpm.distributed import resolve_device

    return resolve_device("auto" if device is None else str(device))


def evaluate_run(
    run_dir: Path | str,
    *,
    num_samples: int | None = None,
    sampler: str = "ddim",
    steps: int = 100,
    eta: float = 0.0,
    use_ema: bool = True,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_subsets: int = KID_SUBSETS,
    num_real: int | None = None,
    feature: nn.Module | None = None,
    cache_dir: Path | str | None = None,
    data_dir: Path | str | None = None,
    progress: bool = True,
    guidance_scale: float | None = None,
    aug_t: int | None = None,
    grid: str | None = None,
    lambda_min: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> dict:
    """Sample `num_samples` images from a run (EMA weights unless use_ema=False) and score them with FID and KID
    against the run's dataset at the run's resolution (all images, or a fixed random subset of `num_real`).
    num_samples and batch_size default to the run's config (fid_samples, fid_batch_size: the profile's budget).
    On a CPU, pass num_real: the features of all 8189 flowers take ~30 min there (once; then they are cached).
    A class-conditional run draws its labels with the training data's label frequencies (seeded by `seed`), so that
    its scores compare with an unconditional run's, and samples them with guidance_scale (default: the run's
    config's guidance_scale, else 1), only in `guidance_interval` of sigma if given. `grid` and `lambda_min` place
    the sampler's steps (ddpm/solvers.py); the result counts the network calls an image that were made.

    Writes the result to run_dir/metrics/<weights>-<sampler>-<steps>-n<N>.json, appends it to run_dir/metrics.jsonl
    and returns it (a shipped weights folder: to outputs/<its name>/ instead)."""
    from ddpm.data import load_images
    from ddpm.sample import generate
    from ddpm.runfolder import load_run

    start = time.perf_counter()
    device = _device(device)
    feature = feature if feature is not None else InceptionFeatures()
    run = load_run(run_dir, device=device)
    config = run.config
    aug_t = run.set_aug_t(aug_t)  # a cascade: its stage's augmentation level (None otherwise)
    num_samples = config.fid_samples if num_samples is None else num_samples
    batch_size = config.fid_batch_size if batch_size is None else batch_size
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (FID needs a covariance), got {num_samples}")
    if sampler == "ddpm":
        steps = config.timesteps  # DDPM always walks all T steps: record what ran
    if run.classes is None and guidance_scale is not None:
        raise ValueError(f"guidance_scale: run {run.run_dir} is unconditional (num_classes=0)")
    if run.classes is not None and guidance_scale is None:
        guidance_scale = run.guidance_scale  # the config's, else 1
    labels = run.classes.draw(num_samples, seed=seed) if run.classes is not None else None

    data = load_images(config.dataset, config.resolution, data_dir=data_dir, split=config.split)
    real = dataset_features(data, feature=feature, num_images=num_real, cache_dir=cache_dir or default_cache_dir(data_dir),
                            batch_size=batch_size, device=device, progress=progress)

    sample_start = time.perf_counter()
    model = run.weights(raw=not use_ema)
    with counted_calls(model) as calls:  # a cascade counts no calls here: its two networks run inside it
        images = generate(model, run.diffusion, num_samples, batch_size=batch_size, sampler=sampler, steps=steps,
                          eta=eta, seed=seed, device=device, progress=progress,
                          compile=config.compile and device.type == "cuda", labels=labels,
                          guidance_scale=guidance_scale, grid=grid, lambda_min=lambda_min,
                          guidance_interval=guidance_interval)
    sampling_seconds = time.perf_counter() - sample_start
    fake = extract_features(images, feature, batch_size=batch_size, device=device, progress=progress,
                            desc="features of samples")

    kid_mean, kid_std, kid_size = kid_from_features(real, fake, subset_size=kid_subset_size, subsets=kid_subsets,
                                                    seed=seed)
    result = {
        "run": run.run_dir.name,
        "fid": fid_from_features(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "kid_subsets": kid_subsets,
        "num_generated": len(fake),
        "num_real": len(real),
        "num_real_requested": num_real,  # None: all of them
        "sampler": sampler,
        "steps": steps,
        "eta": eta if sampler == "ddim" else None,  # only DDIM has an eta
        "guidance_scale": guidance_scale,  # None: an unconditional run
        "aug_t": aug_t,  # a cascade's augmentation level of the low-resolution image (None: no cascade)
        "grid": grid,  # None: the sampler's default (time for DDIM, lambda for the solvers)
        "lambda_min": lambda_min,
        "guidance_interval": list(guidance_interval) if guidance_interval is not None else None,
        "network_calls": calls["images"] / (math.ceil(num_samples / min(batch_size, num_samples))
                                            * min(batch_size, num_samples)) if calls["images"] else None,
        "weights": "ema" if use_ema else "raw",
        "dataset": config.dataset,
        "split": config.split,
        "resolution": config.resolution,
        "step": run.step,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 2),
        "sampling_seconds": round(sampling_seconds, 2),
        "device": str(device),
        "feature_network": feature_network_name(feature),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = save_result(run.out_dir, result)  # a shipped weights folder is never written into: outputs/<name>/
    atomic_save({"images": images[:SAVED_SAMPLES].clone(), "features": fake[:SAVED_SAMPLES].clone()},
                samples_path(path))
    return result


def save_result(run_dir: Path | str, result: dict) -> Path:
    """Write one result to run_dir/metrics/<name>.json (atomically) and append it to run_dir/metrics.jsonl."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics" / f"{result_name(result)}.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    with open(run_dir / "metrics.jsonl", "a") as log:
        log.write(json.dumps(result) + "\n")
    return path


def load_results(run_dirs: Iterable[Path | str] | Path | str) -> list[dict]:
    """Every result in run_dir/metrics/*.json of each run folder (latest evaluation per configuration), with
    "run" set to the folder name; folders without results are skipped."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    results = []
    for run_dir in map(Path, run_dirs):
        for path in sorted((run_dir / "metrics").glob("*.json")):
            try:
                result = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON ({error}): delete it or evaluate again") from None
            results.append({**result, "run": run_dir.name})
    return results


TABLE_COLUMNS = ("run", "weights", "sampler", "steps", "eta", "step", "num_generated", "num_real", "fid", "kid",
                 "seconds")


def _cell(result: dict, column: str) -> str:
    if column == "kid":
        if "kid_mean" not in result:
            return ""
        return f"{result['kid_mean']:.4f} ± {result.get('kid_std', float('nan')):.4f}"
    value = result.get(column, "")
    if column == "eta" and result.get("sampler") != "ddim":
        return "–"  # DDPM draws fresh noise at every step, the solver none: eta is DDIM's
    if isinstance(value, float):
        return f"{value:.2f}" if column in ("fid", "seconds", "eta") else f"{value:.4g}"
    return str(value)


def results_table(results: list[dict], columns: Iterable[str] = TABLE_COLUMNS) -> str:
    """A markdown table of results (from load_results / evaluate_run), one row each, in the order given."""
    columns = list(columns)
    rows = list(results)
    lines = ["| " + " | ".join("KID" if c == "kid" else "FID" if c == "fid" else c for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _real_features(dataset: str, resolution: int, *, split: str | None, num_images: int | None, feature: nn.Module,
                   batch_size: int, device: torch.device, cache_dir: Path | str | None, data_dir: Path | str | None,
                   progress: bool):
    """What the floor and real-vs-real share: the dataset, the features of its reference set (all images, or the
    fixed subset of num_images), that set's cache path, and whether the features were cached before."""
    from ddpm.data import load_images

    cache_dir = Path(cache_dir or default_cache_dir(data_dir))
    data = load_images(dataset, resolution, data_dir=data_dir, split=split)
    path = reference_cache_path(data, feature=feature, num_images=num_images, cache_dir=cache_dir)
    cached = path.is_file()
    features = dataset_features(data, feature=feature, num_images=num_images, cache_dir=cache_dir,
                                batch_size=batch_size, device=device, progress=progress)
    return data, features, path, cached


def _compare(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int, kid_subsets: int, seed: int) -> dict:
    """FID and KID of one feature set against another, as a result's fields."""
    kid_mean, kid_std, kid_size = kid_from_features(real, fake, subset_size=kid_subset_size, subsets=kid_subsets,
                                                    seed=seed)
    return {"fid": fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std,
            "kid_subset_size": kid_size}


def real_vs_real(
    dataset: str = "flowers102",
    resolution: int = 64,
    *,
    num_images: int | None = None,
    seed: int = 0,
    feature: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_subsets: int = KID_SUBSETS,
    cache_dir: Path | str | None = None,
    data_dir: Path | str | None = None,
    progress: bool = True,
) -> dict:
    """Sanity check of the metric: FID/KID between two disjoint random halves of a dataset (all images, or a fixed
    random subset of `num_images`), and FID of the set against itself (should be ~0)."""
    start = time.perf_counter()
    device = _device(device)
    feature = feature if feature is not None else InceptionFeatures()
    _, features, _, cached = _real_features(dataset, resolution, split=None, num_images=num_images, feature=feature,
                                            batch_size=batch_size, device=device, cache_dir=cache_dir,
                                            data_dir=data_dir, progress=progress)
    extract_seconds = time.perf_counter() - start
    if len(features) < 4:
        raise ValueError(f"real_vs_real needs at least 4 images, {dataset!r} at {resolution}px gave {len(features)}")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    half = len(features) // 2
    first, second = features[order[:half]], features[order[half:2 * half]]
    scores = _compare(first, second, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed)
    return {
        "dataset": dataset,
        "resolution": resolution,
        "num_per_half": half,
        "fid_halves": scores["fid"],
        "kid_mean": scores["kid_mean"],
        "kid_std": scores["kid_std"],
        "kid_subset_size": scores["kid_subset_size"],
        "fid_same": fid_from_features(features, features),
        "seed": seed,
        "feature_network": feature_network_name(feature),
        "device": str(device),
        "features_cached": cached,
        "feature_images_per_s": None if cached else round(len(features) / extract_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }


def real_floor(
    dataset: str,
    resolution: int,
    *,
    num_held_out: int,
    num_real: int | None,
    split: str | None = None,
    seed: int = 0,
    feature: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_subsets: int = KID_SUBSETS,
    cache_dir: Path | str | None = None,
    data_dir: Path | str | None = None,
    progress: bool = True,
) -> dict:
    """The floor of an evaluation protocol: `num_held_out` real images that are not in the `num_real` reference set,
    scored against it exactly as `num_held_out` generated images are. A model that matched the data would score about
    this, so it is the best value the protocol can give, and differences far below it are noise. When the reference
    holds every image (num_real=None), the held-out images are taken out of it. Cached (JSON) beside the reference
    features."""
    from ddpm.data import load_images

    start = time.perf_counter()
    feature = feature if feature is not None else InceptionFeatures()
    cache_dir = Path(cache_dir or default_cache_dir(data_dir))
    data = load_images(dataset, resolution, data_dir=data_dir, split=split)
    reference_path = reference_cache_path(data, feature=feature, num_images=num_real, cache_dir=cache_dir)
    path = reference_path.with_name(f"{reference_path.stem}-floor-n{num_held_out}-seed{seed}.json")
    if path.is_file():
        return json.loads(path.read_text())
    device = _device(device)
    _, real, _, _ = _real_features(dataset, resolution, split=split, num_images=num_real, feature=feature,
                                   batch_size=batch_size, device=device, cache_dir=cache_dir, data_dir=data_dir,
                                   progress=progress)
    reference = reference_indices(len(data), num_real)
    outside = torch.ones(len(data), dtype=torch.bool)
    outside[reference] = False
    outside = outside.nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    if len(outside) >= num_held_out:  # images the reference set lacks: featurise them
        held_out = outside[torch.randperm(len(outside), generator=generator)[:num_held_out]]
        fake = extract_features(data.images[held_out], feature, batch_size=batch_size, device=device,
                                progress=progress, desc="features of held-out real images")
    else:  # the reference holds (nearly) every image: take some out of it, features and all
        if len(reference) < num_held_out + 2:
            raise ValueError(f"{dataset} at {resolution}px has {len(data)} images, too few to hold out "
                             f"{num_held_out} and keep a reference set")
        held = torch.zeros(len(real), dtype=torch.bool)
        held[torch.randperm(len(real), generator=generator)[:num_held_out]] = True
        real, fake = real[~held], real[held]
    result = {"run": f"real {dataset} images, held out", "weights": "", "sampler": "real", "steps": "", "step": "",
              **_compare(real, fake, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed),
              "kid_subsets": kid_subsets, "num_generated": len(fake),
              "num_real": len(real), "num_real_requested": num_real, "dataset": dataset, "resolution": resolution,
              "seed": seed, "feature_network": feature_network_name(feature),
              "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result
