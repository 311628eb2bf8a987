"""Tests for ddpm.data: bundled archives, folder: sources, torchvision (faked, never downloads), cache, transforms."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ddpm.data as data_module
from ddpm.files import sha256
from ddpm.data import (
    DATA_DIR,
    DatasetError,
    ImageData,
    class_counts,
    load_images,
    to_model_input,
    to_uint8,
)

FLOWERS_ZIP = DATA_DIR / "flowers102" / "flowers102-64.zip"


@pytest.fixture(scope="module")
def flowers() -> ImageData:
    return load_images("flowers102", cache=False)  # all 8189, decoded once for the module (~2 s)


@pytest.fixture(scope="module")
def craters() -> ImageData:
    return load_images("craters", cache=False)


def _save(img: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


@pytest.fixture
def odd_images(tmp_path: Path) -> Path:
    """A folder of images of odd sizes, modes and formats, in sub-folders, plus a file that is not an image."""
    root = tmp_path / "imgs"
    gray = Image.new("L", (100, 37), 0)
    gray.paste(255, (31, 0, 68, 37))  # exactly the centre 37x37 square is white
    _save(gray, root / "a_gray_wide.png")
    _save(Image.new("RGBA", (37, 100), (255, 0, 0, 0)), root / "b_transparent_tall.png")
    palette = Image.new("P", (50, 50), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    _save(palette, root / "cats" / "c_palette.gif")
    _save(Image.new("RGB", (200, 120), (10, 20, 30)), root / "cats" / "d_photo.jpg", quality=95)
    _save(Image.new("1", (9, 13), 1), root / "dogs" / "e_bilevel.bmp")
    _save(Image.new("LA", (64, 64), (128, 255)), root / "dogs" / "f_gray_alpha.webp", lossless=True)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored: dot files are skipped")
    return root


def _zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return zip_path


# ---------------------------------------------------------------- bundled archives


def test_flowers_archive_is_complete_and_matches_provenance(flowers: ImageData) -> None:
    assert flowers.images.shape == (8189, 3, 64, 64)
    assert flowers.images.dtype == torch.uint8
    assert set(flowers.labels) == {str(i) for i in range(1, 103)}
    assert flowers.files == sorted(flowers.files) and flowers.files[0] == "image_00001.jpg"
    assert flowers.labels[0] == "77"  # PROVENANCE: image_00001 -> 77
    provenance = (DATA_DIR / "flowers102" / "PROVENANCE.md").read_text()
    written_sha = re.search(r"sha256 `([0-9a-f]{64})`", provenance).group(1)
    assert sha256(FLOWERS_ZIP) == written_sha == flowers.sha256
    with zipfile.ZipFile(FLOWERS_ZIP) as zf:  # headers only: every stored image really is 64x64 RGB
        jpgs = [n for n in zf.namelist() if n.endswith(".jpg")]
        assert len(jpgs) == 8189
        for n in jpgs:
            with Image.open(io.BytesIO(zf.read(n))) as img:
                assert (img.mode, img.size) == ("RGB", (64, 64)), n


def test_every_bundled_archive_matches_its_provenance_sha() -> None:
    for name in ("flowers102", "pets", "craters"):
        provenance = (DATA_DIR / name / "PROVENANCE.md").read_text()
        assert re.search(r"sha256 `([0-9a-f]{64})`", provenance).group(1) == sha256(
            DATA_DIR / name / f"{name}-64.zip"
        )


def test_pets_and_craters_counts(craters: ImageData) -> None:
    pets = load_images("pets", cache=False)
    assert pets.images.shape == (975, 3, 64, 64)
    counts = class_counts(pets)
    assert len(counts) == 37 and counts["Abyssinian"] == 200
    assert craters.images.shape == (143, 3, 64, 64)
    assert class_counts(craters) == {"crater": 143}


def test_split_and_limit(flowers: ImageData) -> None:
    train = load_images("flowers102", split="train", limit=5, cache=False)
    assert len(train) == 5
    first = load_images("flowers102", limit=7, cache=False)
    assert first.files == flowers.files[:7]
    assert torch.equal(first.images, flowers.images[:7])
    valid = load_images("craters", split="valid", cache=False)
    assert len(valid) == 26


def test_resolution_32_is_an_antialiased_downscale(craters: ImageData) -> None:
    small = load_images("craters", 32, cache=False)
    assert small.images.shape == (143, 3, 32, 32) and small.images.dtype == torch.uint8
    pooled = F.avg_pool2d(craters.images.float(), 2)
    assert (small.images.float() - pooled).abs().mean() < 6  # close to a box-filtered 64 -> 32


# ---------------------------------------------------------------- folder: and zips


def test_folder_of_odd_images(odd_images: Path) -> None:
    loaded = load_images(f"folder:{odd_images}", 37, cache=False)
    assert loaded.images.shape == (6, 3, 37, 37) and loaded.images.dtype == torch.uint8
    assert loaded.files[0] == "a_gray_wide.png" and "notes.txt" not in loaded.files
    assert loaded.labels == ["", "", "cats", "cats", "dogs", "dogs"]
    assert loaded.sha256 is None
    assert (loaded.images[0] == 255).all()  # centre crop kept exactly the white middle square
    assert (loaded.images[1] == 255).all()  # fully transparent pixels are shown on white
    assert torch.equal(loaded.images[2, :, 0, 0], torch.tensor([0, 255, 0], dtype=torch.uint8))  # palette
    assert load_images(f"folder:{odd_images}", 8, cache=False).images.shape == (6, 3, 8, 8)
    assert load_images(f"folder:{odd_images}", 128, cache=False).images.shape == (6, 3, 128, 128)


def test_zip_of_odd_images(odd_images: Path, tmp_path: Path) -> None:
    zip_path = _zip_folder(odd_images, tmp_path / "odd.zip")
    from_zip = load_images(f"folder:{zip_path}", 16, cache=False)
    from_folder = load_images(f"folder:{odd_images}", 16, cache=False)
    assert from_zip.images.shape == (6, 3, 16, 16)
    assert torch.equal(from_zip.images, from_folder.images)
    assert from_zip.labels == from_folder.labels
    assert from_zip.sha256 == sha256(zip_path)


def test_bundled_zip_through_folder_equals_bundled(craters: ImageData) -> None:
    via_folder = load_images(f"folder:{DATA_DIR / 'craters' / 'craters-64.zip'}", cache=False)
    assert torch.equal(via_folder.images, craters.images) and via_folder.labels == craters.labels


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("resolution", [0, -32, 32.0, "64", True, None])
def test_bad_resolution(resolution) -> None:
    with pytest.raises(DatasetError, match="resolution must be a positive integer"):
        load_images("craters", resolution)


def test_error_messages(tmp_path: Path, odd_images: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'flower'.*flowers102.*pets.*craters.*folder:PATH"):
        load_images("flower")
    with pytest.raises(DatasetError, match=r"unknown dataset 'torchvision:mnist'.*torchvision:cifar10"):
        load_images("torchvision:mnist")
    with pytest.raises(DatasetError, match=r"resolution 128 is larger than the 64x64.*upsampling.*folder:PATH"):
        load_images("flowers102", 128)
    with pytest.raises(DatasetError, match=r"resolution 64 is larger than the 32x32 .*cifar10"):
        load_images("torchvision:cifar10", 64)
    with pytest.raises(DatasetError, match=r"bundled archive for 'pets' not found: expected .*pets-64\.zip"):
        load_images("pets", data_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"does not exist"):
        load_images(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError, match=r"give a folder or \.zip after 'folder:'"):
        load_images("folder:")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"no images found in folder .*empty"):
        load_images(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "notazip.bin").write_bytes(b"12345")
    with pytest.raises(DatasetError, match=r"notazip\.bin is a file but not a \.zip"):
        load_images(f"folder:{tmp_path / 'notazip.bin'}")
    with pytest.raises(DatasetError, match=r"split='validation' not found .*\['test', 'train', 'valid'\]"):
        load_images("craters", split="validation")
    with pytest.raises(DatasetError, match=r"split='train' is not supported for 'folder:"):
        load_images(f"folder:{odd_images}", split="train")
    with pytest.raises(DatasetError, match=r"limit must be a positive integer"):
        load_images("craters", limit=0)


def test_corrupt_image_is_named(odd_images: Path, tmp_path: Path) -> None:
    (odd_images / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(DatasetError, match=r"1 unreadable image in .*imgs: dogs/broken\.png \(not an image PIL can"):
        load_images(f"folder:{odd_images}", 16, cache=False)
    zip_path = _zip_folder(odd_images, tmp_path / "with_broken.zip")
    with pytest.raises(DatasetError, match=r"1 unreadable image in .*with_broken\.zip: dogs/broken\.png \(not an"):
        load_images(f"folder:{zip_path}", 16, cache=False)


def _folder_with_three_broken_images(root: Path) -> Path:
    """Two good PNGs and three broken files: garbage bytes, a truncated PNG, an empty .jpg."""
    root.mkdir(parents=True)
    noise = Image.frombytes("RGB", (48, 48), bytes(range(256)) * 27)  # incompressible enough to truncate
    for name in ("good_a.png", "good_b.png"):
        noise.save(root / name)
    (root / "garbage.png").write_bytes(b"these bytes are no image at all")
    png = (root / "good_a.png").read_bytes()
    (root / "sub").mkdir()
    (root / "sub" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_every_unreadable_image_is_named_in_one_error(tmp_path: Path) -> None:
    root = _folder_with_three_broken_images(tmp_path / "imgs")
    with pytest.raises(DatasetError) as info:
        load_images(f"folder:{root}", 16, data_dir=tmp_path, cache=False)
    message = str(info.value)
    assert "\n" not in message and "object at 0x" not in message and "BytesIO" not in message
    assert message.startswith(f"folder:{root}: 3 unreadable images in {root}: ")
    assert "empty.jpg (empty file)" in message
    assert "garbage.png (not an image PIL can read)" in message
    assert "sub/truncated.png (truncated" in message
    assert "good_" not in message
    # A zip of the same files: the same list, and nothing was cached for the refused folder.
    zip_path = _zip_folder(root, tmp_path / "imgs.zip")
    with pytest.raises(DatasetError, match=r"3 unreadable images in .*imgs\.zip: empty\.jpg \(empty file\), "
                                           r"garbage\.png \(not an image PIL can read\), sub/truncated\.png \("):
        load_images(f"folder:{zip_path}", 16, data_dir=tmp_path)
    assert not list(tmp_path.glob(".cache/*"))


def test_many_unreadable_images_are_all_named(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(300):  # above the threaded-decoding threshold
        (root / f"bad_{i:03d}.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="300 unreadable images") as info:
        load_images(f"folder:{root}", 16, cache=False)
    assert all(f"bad_{i:03d}.png (not an image PIL can read)" in str(info.value) for i in range(300))


# ---------------------------------------------------------------- torchvision (faked: tests never download)


class FakeFlowers102:
    """Stands in for torchvision.datasets.Flowers102 as if already on disk: PIL images of odd sizes."""

    calls: list[dict] = []

    def __init__(self, root, split="train", download=False, **kwargs) -> None:
        FakeFlowers102.calls.append({"root": root, "split": split, "download": download})
        self.sizes = {"train": [(80, 60), (60, 80)], "val": [(33, 33)], "test": [(500, 375), (64, 64)]}[split]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        image = Image.new("RGB", self.sizes[i], (200, 200, 200)) if i % 2 == 0 else Image.new("L", self.sizes[i], 200)
        return image, i  # target 0-based, like torchvision


def test_torchvision_present_on_disk(monkeypatch, tmp_path: Path) -> None:
    import torchvision.datasets

    FakeFlowers102.calls.clear()
    monkeypatch.setattr(torchvision.datasets, "Flowers102", FakeFlowers102)
    loaded = load_images("torchvision:flowers102", 32, data_dir=tmp_path, cache=False)
    assert loaded.images.shape == (5, 3, 32, 32) and loaded.images.dtype == torch.uint8
    assert (loaded.images == 200).all()
    assert loaded.labels == ["1", "2", "1", "1", "2"]  # 1-based like the bundled archive
    assert loaded.files[:3] == ["train/0", "train/1", "val/0"]
    assert [c["split"] for c in FakeFlowers102.calls] == ["train", "val", "test"]
    assert all(c["download"] is False for c in FakeFlowers102.calls)
    assert Path(FakeFlowers102.calls[0]["root"]) == tmp_path / "torchvision" / "flowers102"
    test_only = load_images("torchvision:flowers102", 16, data_dir=tmp_path, split="test", cache=False)
    assert test_only.files == ["test/0", "test/1"]


def test_torchvision_missing_asks_for_download(monkeypatch, tmp_path: Path) -> None:
    import torchvision.datasets

    def not_on_disk(root, download=False, **kwargs):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", not_on_disk)
    with pytest.raises(DatasetError, match=r"torchvision:oxfordiiitpet is not in .*download=True.*--download"):
        load_images("torchvision:oxfordiiitpet", data_dir=tmp_path)


@pytest.mark.parametrize("error", [URLError("[Errno -3] Temporary failure in name resolution"), OSError("no route")])
def test_torchvision_offline(monkeypatch, tmp_path: Path, error: Exception) -> None:
    import torchvision.datasets

    def offline(root, download=False, **kwargs):
        raise error

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetError, match=r"downloading torchvision:cifar10 .*seems offline.*bundled.*folder:PATH"):
        load_images("torchvision:cifar10", 32, data_dir=tmp_path, download=True)


# ---------------------------------------------------------------- model input transforms


def test_to_model_input_range_flip_and_inverse(craters: ImageData) -> None:
    x = craters.images[:32]
    scaled = to_model_input(x, flip=False)
    assert scaled.dtype == torch.float32 and scaled.min() >= -1 and scaled.max() <= 1
    assert scaled.min() == -1 or scaled.max() == 1
    assert torch.equal(to_uint8(scaled), x)

    flipped = to_model_input(x, generator=torch.Generator().manual_seed(0))
    again = to_model_input(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)  # reproducible with a seeded generator
    back = to_uint8(flipped)
    was_flipped = [torch.equal(back[i], torch.flip(x[i], dims=[-1])) for i in range(len(x))]
    kept = [torch.equal(back[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(was_flipped, kept))
    assert 0 < sum(was_flipped) < len(x)  # about half of them, not none or all
    assert not torch.equal(to_model_input(x, generator=torch.Generator().manual_seed(1)), flipped)


def test_to_uint8_clamps_and_rounds() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]
    with pytest.raises(DatasetError, match="uint8"):
        to_model_input(torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------- cache


def test_cache_roundtrip_and_corrupt_file_rebuilt(tmp_path: Path, craters: ImageData, monkeypatch) -> None:
    (tmp_path / "craters").mkdir()
    shutil.copy(DATA_DIR / "craters" / "craters-64.zip", tmp_path / "craters")
    first = load_images("craters", 32, data_dir=tmp_path)
    cache_files = list((tmp_path / ".cache").glob("*.pt"))
    assert [p.name for p in cache_files] == [f"craters-32-{first.sha256[:12]}.pt"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load must come from the cache")

    with monkeypatch.context() as m:
        m.setattr(data_module, "_decode_bytes", no_decoding)
        second = load_images("craters", 32, data_dir=tmp_path)
    assert torch.equal(second.images, first.images) and second.labels == first.labels
    assert second.files == first.files and second.sha256 == first.sha256

    cache_files[0].write_bytes(b"garbage, as if the disk filled up mid-write")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        rebuilt = load_images("craters", 32, data_dir=tmp_path)
    assert torch.equal(rebuilt.images, first.images)
    assert torch.load(cache_files[0], weights_only=True)["images"].shape == (143, 3, 32, 32)
    assert not list((tmp_path / ".cache").glob("*.tmp"))


def test_cache_key_follows_archive_content(tmp_path: Path, odd_images: Path) -> None:
    zip_path = _zip_folder(odd_images, tmp_path / "mine.zip")
    before = load_images(f"folder:{zip_path}", 16, data_dir=tmp_path)
    _save(Image.new("RGB", (20, 20), (1, 2, 3)), odd_images / "z_new.png")
    _zip_folder(odd_images, zip_path)
    after = load_images(f"folder:{zip_path}", 16, data_dir=tmp_path)
    assert len(before) == 6 and len(after) == 7 and before.sha256 != after.sha256
    assert len(list((tmp_path / ".cache").glob("*.pt"))) == 2
    folder_before = load_images(f"folder:{odd_images}", 16, data_dir=tmp_path)
    (odd_images / "z_new.png").unlink()
    assert len(folder_before) == 7 and len(load_images(f"folder:{odd_images}", 16, data_dir=tmp_path)) == 6


def test_ddpm_data_dir_moves_the_bundled_archives_elsewhere(tmp_path):
    # tools/gpu/start.sh keeps the archives outside a working tree that later device calls rewrite
    import shutil
    import subprocess
    import sys

    from ddpm.data import BUNDLED, DATA_DIR

    (tmp_path / "craters").mkdir()
    shutil.copy(DATA_DIR / BUNDLED["craters"], tmp_path / BUNDLED["craters"])
    code = ("import ddpm.data as d; data = d.load_images('craters', 32, split='train'); "
            "print(d.DATA_DIR, len(data), (d.DATA_DIR / '.cache').is_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "DDPM_DATA_DIR": str(tmp_path)}).stdout.split()
    assert out == [str(tmp_path), "98", "True"]
