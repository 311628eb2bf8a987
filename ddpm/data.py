"""Image datasets for DDPM training: bundled 64x64 archives, user folders/zips and torchvision sets.

Every source goes through the same preprocessing as the bundled archives were built with
(RGB, centre-crop to the largest square, PIL bicubic resize, which is antialiased), and ends as one
uint8 tensor [N, 3, R, R] held in memory: the datasets are small, so no DataLoader is needed.

Dataset names (one spelling everywhere: CLI, config, notebook):
    flowers102 | pets | craters      bundled archives in data/<name>/<name>-64.zip
    folder:PATH                      a folder (searched recursively) or a .zip of images
    torchvision:flowers102 | torchvision:oxfordiiitpet | torchvision:cifar10   (online users, download=True)
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpm.files import atomic_save, sha256

T = TypeVar("T")

# Where the bundled archives live: the repository's data/, or DDPM_DATA_DIR (a copy elsewhere, e.g. outside a working
# tree that something else rewrites: tools/gpu/start.sh)
DATA_DIR: Path = Path(os.environ.get("DDPM_DATA_DIR") or Path(__file__).resolve().parents[1] / "data")

BUNDLED: dict[str, str] = {  # name -> archive path relative to data_dir
    "flowers102": "flowers102/flowers102-64.zip",
    "pets": "pets/pets-64.zip",
    "craters": "craters/craters-64.zip",
}
BUNDLED_RESOLUTION = 64
FOLDER_PREFIX = "folder:"
TORCHVISION_PREFIX = "torchvision:"
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
LABELS_CSV = "labels.csv"
# Bump when the preprocessing changes so that old cache files are rebuilt instead of reused.
_CACHE_FORMAT = 1


class DatasetError(ValueError):
    """A dataset name, path, option or file is not what was expected (the message says which and why)."""


@dataclass
class ImageData:
    """A whole dataset decoded in memory."""

    images: torch.Tensor  # uint8 [N, 3, R, R], RGB
    labels: list[str]  # one per image ("" if unknown)
    name: str  # dataset name as given ("flowers102", "folder:/x", ...)
    source: str  # path of the archive/folder or "torchvision:..."
    sha256: str | None  # of the archive when the source is one file
    files: list[str] = field(default_factory=list)  # file name (or index) of each image, same order

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


def dataset_names() -> list[str]:
    """Every valid dataset name or name pattern, for help texts and error messages."""
    return [*BUNDLED, f"{FOLDER_PREFIX}PATH", *(TORCHVISION_PREFIX + n for n in _TORCHVISION)]


def load_images(
    name: str = "flowers102",
    resolution: int = 64,
    *,
    data_dir: Path | str | None = None,
    download: bool = False,
    limit: int | None = None,
    split: str | None = None,
    cache: bool = True,
) -> ImageData:
    """Load a dataset as uint8 [N, 3, resolution, resolution] tensor plus labels.

    data_dir: where bundled archives live (default DATA_DIR); also holds `.cache/` and `torchvision/`.
    download: allow torchvision datasets to be downloaded (CLI `--download`); never needed otherwise.
    limit: keep only the first `limit` images (sorted file names; torchvision: dataset order).
    split: keep one split only (bundled: the `split` column of labels.csv; torchvision: the dataset's splits).
    cache: keep the decoded tensor in `data_dir/.cache/` so the next load takes a fraction of a second.
    """
    _check_resolution(resolution)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {name!r}; valid: {', '.join(dataset_names())}")

    if name in BUNDLED:
        return _load_bundled(name, resolution, data_dir, limit, split, cache)
    if name.startswith(FOLDER_PREFIX):
        if split is not None:
            raise DatasetError(f"split={split!r} is not supported for {name!r}: folders have no splits")
        return _load_folder(name, resolution, data_dir, limit, cache)
    if name.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(name, resolution, data_dir, download, limit, split, cache)
    raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")


def to_model_input(
    images_uint8: torch.Tensor, *, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [-1, 1], each image flipped left-right with probability 1/2.

    The work happens on the images' device (move the uint8 batch to the GPU first: 4x less to copy).
    The coin flips are drawn with `generator` on its own device, so a seeded generator gives the same flips anywhere.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise DatasetError(
            f"to_model_input expects a uint8 tensor [N, C, H, W], got {images_uint8.dtype} "
            f"with shape {tuple(images_uint8.shape)}"
        )
    x = images_uint8
    if flip:
        coin_device = generator.device if generator is not None else x.device
        do_flip = torch.rand(x.shape[0], generator=generator, device=coin_device) < 0.5
        x = torch.where(do_flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of to_model_input: float in [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def class_counts(data: ImageData) -> Counter:
    """Number of images per label (a Counter, most_common() sorts it)."""
    return Counter(data.labels)


# --------------------------------------------------------------------------- checks


def _check_resolution(resolution: object) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DatasetError(f"resolution must be a positive integer (e.g. 32 or 64), got {resolution!r}")


def _check_no_upsampling(name: str, resolution: int, native: int) -> None:
    if resolution > native:
        raise DatasetError(
            f"resolution {resolution} is larger than the {native}x{native} images of dataset {name!r}: "
            f"upsampling would only blur them and the model would learn the blur. Use resolution <= {native}, "
            f"or give your own larger images with folder:PATH."
        )


# --------------------------------------------------------------------------- decoding


def _to_square_rgb(img: Image.Image, resolution: int) -> np.ndarray:
    """The preprocessing used to build the bundled archives: RGB, centre square crop, bicubic resize."""
    if img.getexif().get(0x0112, 1) != 1:  # phone photos: honour the EXIF orientation tag
        img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels hold arbitrary colours; show them on white as image viewers do.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        # Pillow's resize filters the whole source (antialiased), as used to build the bundled archives.
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class _UnreadableImage(DatasetError):
    """One image file that could not be read or decoded; `_decode_all` gathers them into one DatasetError."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"cannot read image {file}: {reason}")
        self.file, self.reason = file, reason


_OBJECT_REPR = re.compile(r"<[^<>]*? object at 0x[0-9a-fA-F]+>")


def one_line(text: str) -> str:
    """A message on one line, without Python object reprs such as <_io.BytesIO object at 0x...>."""
    return " ".join(_OBJECT_REPR.sub("the file", text).split())


def _decode_failure(data: bytes, err: Exception) -> str:
    """Why PIL could not decode `data`, in words a user can act on."""
    if not data:
        return "empty file"
    if isinstance(err, UnidentifiedImageError):  # its message names an io.BytesIO, not the file
        return "not an image PIL can read"
    message = one_line(str(err))
    if message.startswith("image file is truncated"):
        return "truncated" + message[len("image file is truncated"):]
    if isinstance(err, OSError) and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _decode_bytes(data: bytes, resolution: int, file: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force the full decode here so truncated files fail inside the try
            return _to_square_rgb(img, resolution)
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise _UnreadableImage(file, _decode_failure(data, err)) from err


def _run_all(loaders: Sequence[Callable[[], T]]) -> list[T]:
    """Call every loader, in threads when there are many (PIL releases the GIL while decoding); keeps order."""
    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(loaders) > 256:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda load: load(), loaders, chunksize=64))
    return [load() for load in loaders]


def _shown_name(file: str) -> str:
    """A file name as listed in an error message: quoted when it could break the line or the list."""
    return file if file.isprintable() and ", " not in file and "(" not in file else repr(file)


def _unreadable_error(name: str, source: Path, failures: Sequence[_UnreadableImage]) -> DatasetError:
    """One error naming every unreadable image (all of them: the user fixes or removes each one)."""
    listing = ", ".join(f"{_shown_name(f.file)} ({f.reason})" for f in failures)
    count = f"{len(failures)} unreadable image{'s' if len(failures) != 1 else ''}"
    return DatasetError(f"{name}: {count} in {source}: {listing}; fix or remove them, then run again")


def _stack(arrays: Sequence[np.ndarray], resolution: int) -> torch.Tensor:
    """[H, W, 3] uint8 arrays -> uint8 tensor [N, 3, R, R]."""
    if not arrays:
        return torch.empty(0, 3, resolution, resolution, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decode_all(
    loaders: Sequence[Callable[[], np.ndarray]],
    resolution: int,
    name: str,
    source: Path,
    failures: Sequence[_UnreadableImage] = (),
) -> torch.Tensor:
    """Decode every image; if any (or an earlier read in `failures`) fails, raise one error naming them all."""

    def attempt(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray | _UnreadableImage]:
        def run() -> np.ndarray | _UnreadableImage:
            try:
                return load()
            except _UnreadableImage as failure:
                return failure

        return run

    results = _run_all([attempt(load) for load in loaders])
    failed = [*failures, *(r for r in results if isinstance(r, _UnreadableImage))]
    if failed:
        raise _unreadable_error(name, source, sorted(failed, key=lambda f: f.file))
    return _stack(results, resolution)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"cannot open {path} as a zip archive: {err}") from err


def _is_image_name(relpath: str) -> bool:
    parts = relpath.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)  # macOS resource forks, dot files
    return not hidden and Path(relpath).suffix.lower() in IMAGE_EXTENSIONS


def _parse_labels_csv(text: str, where: str) -> dict[str, tuple[str, str]]:
    """labels.csv (file,label[,split]) -> {file: (label, split)}."""
    rows = csv.DictReader(io.StringIO(text))
    if rows.fieldnames is None or not {"file", "label"} <= set(rows.fieldnames):
        raise DatasetError(f"{where} must have a header with columns file,label[,split]; got {rows.fieldnames}")
    return {r["file"]: (r["label"] or "", r.get("split") or "") for r in rows}


# --------------------------------------------------------------------------- cache


@dataclass
class _Decoded:
    images: torch.Tensor
    files: list[str]
    labels: list[str]
    splits: list[str]


def _cache_path(data_dir: Path, name: str, resolution: int, key: str) -> Path:
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    return data_dir / ".cache" / f"{safe_name}-{resolution}-{key[:12]}.pt"


def _read_cache(path: Path, resolution: int) -> _Decoded | None:
    """The cached dataset, or None (and a warning) when the file is missing, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images = payload["images"]
        decoded = _Decoded(images, list(payload["files"]), list(payload["labels"]), list(payload["splits"]))
        n = images.shape[0]
        ok = (
            payload.get("format") == _CACHE_FORMAT
            and images.dtype == torch.uint8
            and tuple(images.shape[1:]) == (3, resolution, resolution)
            and len(decoded.files) == len(decoded.labels) == len(decoded.splits) == n
        )
    except Exception as err:  # truncated/corrupt pickle, wrong structure, ...
        warnings.warn(f"ignoring unreadable cache file {path} ({type(err).__name__}: {err}); rebuilding it")
        return None
    if not ok:
        warnings.warn(f"ignoring stale cache file {path}; rebuilding it")
        return None
    return decoded


def _write_cache(path: Path, decoded: _Decoded) -> None:
    """Atomic write, so that an interrupted run never leaves a half file behind."""
    payload = {
        "format": _CACHE_FORMAT,
        "images": decoded.images,
        "files": decoded.files,
        "labels": decoded.labels,
        "splits": decoded.splits,
    }
    try:
        atomic_save(payload, path)
    except OSError as err:  # read-only data dir (e.g. a container): work without a cache
        warnings.warn(f"could not write cache file {path} ({err}); continuing without a cache")


def _load_cached(
    name: str,
    resolution: int,
    key: str,
    data_dir: Path,
    use_cache: bool,
    subset: bool,
    decode: Callable[[bool], _Decoded],
) -> tuple[_Decoded, bool]:
    """Cache lookup around `decode(subset)`; returns (data, is_full_dataset).

    Only complete datasets are cached. On a cache miss a split/limit load decodes just the images it
    needs (`decode(True)`) and writes no cache; otherwise the full set is decoded and cached.
    """
    path = _cache_path(data_dir, name, resolution, key)
    if use_cache:
        cached = _read_cache(path, resolution)
        if cached is not None:
            return cached, True
    if subset:
        return decode(True), False
    decoded = decode(False)
    if use_cache:
        _write_cache(path, decoded)
    return decoded, True


def _select(decoded: _Decoded, split: str | None, limit: int | None, name: str) -> _Decoded:
    """Keep one split (if asked), then the first `limit` images."""
    keep = list(range(len(decoded.files)))
    if split is not None:
        valid = sorted(set(decoded.splits))
        if split not in valid:
            raise DatasetError(f"split={split!r} not found in dataset {name!r}; valid splits: {valid}")
        keep = [i for i in keep if decoded.splits[i] == split]
    if limit is not None:
        keep = keep[:limit]
    if len(keep) == len(decoded.files):
        return decoded
    index = torch.tensor(keep, dtype=torch.long)
    return _Decoded(
        decoded.images[index],
        [decoded.files[i] for i in keep],
        [decoded.labels[i] for i in keep],
        [decoded.splits[i] for i in keep],
    )


# --------------------------------------------------------------------------- bundled archives and folders


def _indices(splits: list[str], split: str | None, limit: int | None) -> list[int]:
    keep = [i for i, s in enumerate(splits) if split is None or s == split]
    return keep if limit is None else keep[:limit]


def _parent_label(relpath: str) -> str:
    """Folder datasets: the image's parent folder is its label (as in ImageFolder), "" at the top level."""
    return relpath.rsplit("/", 1)[0] if "/" in relpath else ""


def _read_member(zf: zipfile.ZipFile, member: str) -> bytes | _UnreadableImage:
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # bad CRC, truncated archive
        return _UnreadableImage(member, f"cannot read it from the archive: {one_line(str(err)) or type(err).__name__}")


def _load_zip(
    path: Path,
    name: str,
    resolution: int,
    data_dir: Path,
    limit: int | None,
    split: str | None,
    cache: bool,
    *,
    require_labels: bool,
) -> ImageData:
    """Images of a zip (sorted names), labels from its labels.csv if any, else from parent folders."""
    sha = sha256(path)
    with _open_zip(path) as zf:
        names = zf.namelist()
        members = sorted(m for m in names if _is_image_name(m))
        if not members:
            raise DatasetError(f"no images found in {path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        table: dict[str, tuple[str, str]] = {}
        if LABELS_CSV in names:
            table = _parse_labels_csv(zf.read(LABELS_CSV).decode("utf-8"), f"{path}:{LABELS_CSV}")
        elif require_labels:
            raise DatasetError(f"{path} has no {LABELS_CSV}; the bundled archive seems damaged")
        labels = [table.get(m, (_parent_label(m), ""))[0] for m in members]
        splits = [table.get(m, ("", ""))[1] for m in members]
        if split is not None and split not in splits:
            raise DatasetError(f"split={split!r} not found in dataset {name!r}; valid splits: {sorted(set(splits))}")

        def decode(subset: bool) -> _Decoded:
            keep = _indices(splits, split, limit) if subset else list(range(len(members)))
            # Read sequentially (ZipFile is not meant for concurrent reads), decode in threads.
            blobs = [(members[i], _read_member(zf, members[i])) for i in keep]
            unread = [b for _, b in blobs if isinstance(b, _UnreadableImage)]
            readable = [(m, b) for m, b in blobs if not isinstance(b, _UnreadableImage)]
            loaders = [lambda m=m, b=b: _decode_bytes(b, resolution, m) for m, b in readable]
            return _Decoded(
                _decode_all(loaders, resolution, name, path, unread),
                [members[i] for i in keep],
                [labels[i] for i in keep],
                [splits[i] for i in keep],
            )

        # A split alone still decodes (and caches) everything: the other splits cost little more.
        decoded, full = _load_cached(name, resolution, sha, data_dir, cache, limit is not None, decode)
    if full:
        decoded = _select(decoded, split, limit, name)
    return ImageData(decoded.images, decoded.labels, name, str(path), sha, decoded.files)


def _load_bundled(
    name: str, resolution: int, data_dir: Path, limit: int | None, split: str | None, cache: bool
) -> ImageData:
    _check_no_upsampling(name, resolution, BUNDLED_RESOLUTION)
    path = data_dir / BUNDLED[name]
    if not path.is_file():
        raise DatasetError(
            f"bundled archive for {name!r} not found: expected {path} (it ships with the repository in data/; "
            f"pass data_dir= if you keep the data elsewhere)"
        )
    return _load_zip(path, name, resolution, data_dir, limit, split, cache, require_labels=True)


def _load_folder(name: str, resolution: int, data_dir: Path, limit: int | None, cache: bool) -> ImageData:
    raw = name[len(FOLDER_PREFIX):].strip()
    if not raw:
        raise DatasetError(f"{name!r}: give a folder or .zip after 'folder:', e.g. folder:~/my_images")
    path = Path(raw).expanduser()
    if not path.exists():
        raise DatasetError(f"{name!r}: path {path} does not exist (expected a folder of images or a .zip)")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"{name!r}: {path} is a file but not a .zip archive (expected a folder or a .zip)")
        return _load_zip(path.resolve(), name, resolution, data_dir, limit, None, cache, require_labels=False)

    root = path.resolve()
    members = sorted(
        rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if _is_image_name(rel)
    )
    if not members:
        raise DatasetError(
            f"{name!r}: no images found in folder {path} (searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    table: dict[str, tuple[str, str]] = {}
    if (root / LABELS_CSV).is_file():
        table = _parse_labels_csv((root / LABELS_CSV).read_text("utf-8"), str(root / LABELS_CSV))
    labels = [table.get(m, (_parent_label(m), ""))[0] for m in members]
    # A folder has no single sha256: the cache key follows its path and file names, sizes and mtimes.
    listing = hashlib.sha256(str(root).encode())
    for m in members:
        st = (root / m).stat()
        listing.update(f"\n{m}\t{st.st_size}\t{st.st_mtime_ns}".encode())

    def read_and_decode(m: str) -> np.ndarray:
        try:
            data = (root / m).read_bytes()
        except OSError as err:  # permission denied, vanished since the listing, ...
            raise _UnreadableImage(m, f"cannot read the file: {err.strerror or type(err).__name__}") from err
        return _decode_bytes(data, resolution, m)

    def decode(subset: bool) -> _Decoded:
        chosen = members[:limit] if subset else members
        loaders = [lambda m=m: read_and_decode(m) for m in chosen]
        images = _decode_all(loaders, resolution, name, root)
        return _Decoded(images, chosen, labels[: len(chosen)], [""] * len(chosen))

    key = listing.hexdigest()
    decoded, full = _load_cached(f"folder-{root.name}", resolution, key, data_dir, cache, limit is not None, decode)
    if full:
        decoded = _select(decoded, None, limit, name)
    return ImageData(decoded.images, decoded.labels, name, str(root), None, decoded.files)


# --------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TorchvisionSpec:
    class_name: str  # attribute of torchvision.datasets, looked up at call time (tests monkeypatch it)
    split_kwargs: dict[str, dict]  # our split name -> constructor keywords, in load order
    native_resolution: int | None  # None: large photos, so any resolution is a downscale
    label: Callable[[object, int], str]  # (dataset, target) -> label


_TORCHVISION: dict[str, _TorchvisionSpec] = {
    # Oxford's official split (train/val 1020 each, test 6149); labels +1 to match the bundled 1..102 numbering.
    "flowers102": _TorchvisionSpec(
        "Flowers102",
        {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
        None,
        lambda ds, target: str(int(target) + 1),
    ),
    "oxfordiiitpet": _TorchvisionSpec(
        "OxfordIIITPet",
        {"trainval": {"split": "trainval"}, "test": {"split": "test"}},
        None,
        lambda ds, target: str(ds.classes[int(target)]),
    ),
    "cifar10": _TorchvisionSpec(
        "CIFAR10",
        {"train": {"train": True}, "test": {"train": False}},
        32,
        lambda ds, target: str(ds.classes[int(target)]),
    ),
}


def _open_torchvision(dataset_class: type, name: str, root: Path, download: bool, kwargs: dict) -> object:
    """Construct a torchvision dataset, turning its 'not found' and download failures into DatasetError."""
    if not download:
        try:
            return dataset_class(root=str(root), download=False, **kwargs)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True"
            raise DatasetError(
                f"{name} is not in {root}: pass download=True (CLI flag --download) to fetch it "
                f"({type(err).__name__}: {err})"
            ) from err
    try:
        return dataset_class(root=str(root), download=True, **kwargs)
    except (URLError, OSError, RuntimeError) as err:  # URLError is an OSError; checksum failures are RuntimeError
        raise DatasetError(
            f"downloading {name} into {root} failed ({type(err).__name__}: {err}); this machine seems offline: "
            f"use a bundled dataset ({', '.join(BUNDLED)}) or folder:PATH instead"
        ) from err


def _torchvision_item(dataset: object, index: int, resolution: int, spec: _TorchvisionSpec, what: str):
    try:
        image, target = dataset[index]
    except Exception as err:
        raise DatasetError(f"cannot read image {index} of {what}: {type(err).__name__}: {err}") from err
    if not isinstance(image, Image.Image):
        raise DatasetError(f"{what}[{index}] is a {type(image).__name__}, expected a PIL image (no transform set)")
    try:
        return _to_square_rgb(image, resolution), spec.label(dataset, target)
    except Exception as err:
        raise DatasetError(f"cannot convert image {index} of {what}: {type(err).__name__}: {err}") from err


def _load_torchvision(
    name: str,
    resolution: int,
    data_dir: Path,
    download: bool,
    limit: int | None,
    split: str | None,
    cache: bool,
) -> ImageData:
    short = name[len(TORCHVISION_PREFIX):]
    spec = _TORCHVISION.get(short)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    if spec.native_resolution is not None:
        _check_no_upsampling(name, resolution, spec.native_resolution)
    if split is not None and split not in spec.split_kwargs:
        raise DatasetError(f"split={split!r} not found in dataset {name!r}; valid splits: {list(spec.split_kwargs)}")
    root = data_dir / "torchvision" / short

    def decode(subset: bool) -> _Decoded:
        import torchvision.datasets  # imported here: slow to import and only needed for this source

        dataset_class = getattr(torchvision.datasets, spec.class_name)
        files: list[str] = []
        loaders: list[Callable[[], tuple[np.ndarray, str]]] = []
        for split_name, kwargs in spec.split_kwargs.items():
            if subset and split is not None and split_name != split:
                continue
            dataset = _open_torchvision(dataset_class, name, root, download, kwargs)
            n = len(dataset)
            if subset and limit is not None:
                n = min(n, limit - len(files))
            for i in range(n):
                files.append(f"{split_name}/{i}")
                what = f"{name} split {split_name!r}"
                loaders.append(lambda ds=dataset, i=i, what=what: _torchvision_item(ds, i, resolution, spec, what))
            if subset and limit is not None and len(files) >= limit:
                break
        pairs = _run_all(loaders)
        images = _stack([array for array, _ in pairs], resolution)
        return _Decoded(images, files, [label for _, label in pairs], [f.split("/")[0] for f in files])

    # The download is fixed and checksummed by torchvision, so its name identifies the content.
    key = hashlib.sha256(f"{name}|{_CACHE_FORMAT}".encode()).hexdigest()
    decoded, full = _load_cached(f"torchvision-{short}", resolution, key, data_dir, cache, limit is not None, decode)
    if full:
        decoded = _select(decoded, split, limit, name)
    return ImageData(decoded.images, decoded.labels, name, f"torchvision:{root}", None, decoded.files)
