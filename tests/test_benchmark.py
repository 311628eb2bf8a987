"""benchmarks/throughput.py times and counts the trainer's own step (TrainLoop.train_step), not a copy of it."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import get_config
from ddpm.train import TrainLoop

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_throughput_times_and_counts_trainloop_step(throughput, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_BASE_CHANNELS", "8")  # main reads DDPM_* overrides like every entry point
    out = tmp_path / "throughput.json"
    args = ["--profile", "smoke", "--device", "cpu", "--batch-size", "4", "--steps", "1", "--warmup", "0",
            "--sample-batch", "2", "--sample-steps", "1", "--models", "unet", "--json", str(out)]
    assert throughput.main(args) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["model"] == "unet" and result["train_steps"] == 1
    assert result["train_images_per_s"] > 0 and result["sample_images_per_s_ddim50"] > 0

    # The same step of a TrainLoop built here, counted the same way: the benchmark counted TrainLoop.train_step.
    config = get_config("smoke", device="cpu", base_channels=8, batch_size=4, runs_dir=str(tmp_path / "runs"),
                        progress=False)
    loop = TrainLoop(config, data=throughput.synthetic_data(config.resolution), verbose=False)
    with FlopCounterMode(display=False, custom_mapping=throughput.attention_flop_formulas()) as counter:
        loop.train_step()
    assert loop.step == 1
    assert result["flops_per_train_step"] > 0
    assert result["flops_per_train_step"] == counter.get_total_flops()


def test_diffusers_network_is_trained_by_trainloop(throughput, tmp_path):
    pytest.importorskip("diffusers")
    config = get_config("smoke", device="cpu", base_channels=8, batch_size=2, progress=False)
    match = throughput.match_diffusers(config)
    loop = throughput.build_loop("diffusers", config, tmp_path, match)
    assert isinstance(loop, TrainLoop) and isinstance(loop.model, throughput.DiffusersAdapter)
    assert sum(p.numel() for p in loop.model.parameters()) == match.params
    assert loop.optimizer.defaults["fused"] and loop.ema.module.net is not loop.model.net
    loop.train_step()
    assert loop.step == 1 and loop.ema.n_averaged.item() == 1
    assert (tmp_path / "throughput-diffusers" / "config.json").exists()  # the run folder went where it was told


def test_recipe_candidates_pin_what_they_compare_and_the_second_ema_exports_as_a_run(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe", SCRIPT.parent / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for name, (_, overrides) in recipe.CANDIDATES.items():
        assert set(recipe.TODAY) <= set(overrides), name  # the profile's later defaults cannot change a candidate
        config = recipe.candidate_config(name, 50)
        assert config.total_steps * config.batch_size >= 50_000 and config.run_dir.name == name

    from ddpm.train import load_run, train

    config = get_config("smoke", base_channels=8, limit_images=8, batch_size=4, train_steps=6, progress=False,
                        runs_dir=str(tmp_path), ema_half_life_kimg=0.004, ema2_half_life_kimg=0.1, ema_rampup=None)
    train(config, verbose=False)
    folder = recipe.export_ema2(config)
    exported, original = load_run(folder), load_run(config.run_dir)
    assert exported.config.ema_half_life_kimg == 0.1 and exported.config.ema2_half_life_kimg is None
    ema2 = torch.load(config.run_dir / "checkpoint.pt", weights_only=True)["ema2"]
    for key, value in exported.ema_model.state_dict().items():
        assert torch.equal(value, ema2["module." + key])
    assert not all(torch.equal(a, b) for a, b in zip(exported.ema_model.parameters(), original.ema_model.parameters()))


def test_long_run_scores_each_snapshot_once_and_draws_the_curve(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("long_run", SCRIPT.parent / "long_run.py")
    long_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_run)
    from test_metrics import StandInFeatures

    import ddpm.metrics
    from ddpm.train import train

    monkeypatch.setattr(ddpm.metrics, "InceptionFeatures", StandInFeatures)
    store = tmp_path / "long-run"
    for name, value in (("STORE", store), ("SCORES", store / "scores.jsonl"), ("GUIDANCE", store / "guidance.jsonl"),
                        ("NEAREST", store / "nearest.json"), ("NUM_GENERATED", 8), ("NUM_REAL", 32), ("STEPS", 2),
                        ("NUM_HELD_OUT", 8),
                        ("CACHE_DIR", tmp_path / "cache")):
        monkeypatch.setattr(long_run, name, value)
    config = get_config("smoke", use_env=False, base_channels=8, limit_images=16, batch_size=4, train_steps=6,
                        progress=False, runs_dir=str(tmp_path / "runs"), snapshot_every_kimg=0.012,
                        ema2_half_life_kimg=0.1, num_classes=102, guidance_scale=4.0)
    train(config, verbose=False)
    args = ["score", "--run-dir", str(config.run_dir)]
    assert long_run.main([*args, "--every", "0.024"]) == 0  # only the snapshot at 24 images, both EMAs
    rows = long_run.read_scores()
    assert [(r["kimg"], r["ema_half_life_kimg"]) for r in rows] == [(0.024, 0.05), (0.024, 0.1)]
    assert long_run.main(args) == 0  # then the one at 12 images; nothing twice
    rows = long_run.read_scores()
    assert sorted((r["kimg"], r["ema_half_life_kimg"]) for r in rows) == [(0.012, 0.05), (0.012, 0.1), (0.024, 0.05),
                                                                          (0.024, 0.1)]
    assert all(r["num_generated"] == 8 and r["num_real"] == 32 and r["kid_std"] > 0 for r in rows)
    assert long_run.main([*args, "--kimg", "0.012", "0.024", "--half-life", "0.05"]) == 0  # all scored already
    assert len(long_run.read_scores()) == 4
    assert {r["guidance_scale"] for r in rows} == {4.0}  # the run's own scale
    # At another scale each snapshot is new once: the same weights, sampled otherwise, score otherwise
    assert long_run.main([*args, "--every", "0.024", "--half-life", "0.05", "--guidance-scale", "2"]) == 0
    assert long_run.main([*args, "--every", "0.024", "--half-life", "0.05", "--guidance-scale", "2"]) == 0
    rows = long_run.read_scores()
    assert [(r["kimg"], r["guidance_scale"]) for r in rows[4:]] == [(0.024, 2.0)]
    at_4 = next(r for r in rows if (r["kimg"], r["ema_half_life_kimg"], r["guidance_scale"]) == (0.024, 0.05, 4.0))
    assert rows[4]["snapshot"] == at_4["snapshot"] and rows[4]["fid"] != at_4["fid"]
    (store / "guidance.jsonl").write_text("".join(json.dumps({**rows[0], "guidance_scale": g}) + "\n" for g in (0, 1)))
    assert long_run.main(["curve", "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 10_000

    # The memorisation check: samples beside their nearest real images, distances against the real ones' own
    snapshot = sorted((config.run_dir / "snapshots").iterdir())[-1]
    assert long_run.main(["nearest", "--weights", str(snapshot), "--num", "8", "--show", "8"]) == 0
    result = json.loads((store / "nearest.json").read_text())
    assert result["num_samples"] == 8 and result["num_real"] == 32
    assert 0 < result["real_min"] <= result["real_1st_percentile"] <= result["real_median"]
    assert 0 <= result["sample_min"] <= result["sample_median"]
    assert (store / "nearest.png").stat().st_size > 1000 and (store / "nearest-distances.png").stat().st_size > 1000


def test_route64_counts_each_routes_flops_and_scores_a_cascade_beside_the_floor(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("route64", SCRIPT.parent / "route64.py")
    route64 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(route64)
    from test_metrics import StandInFeatures

    import ddpm.metrics
    from ddpm.budget import training_flops
    from ddpm.train import train
    from ddpm.weights import export_weights

    # equal FLOPs: each route's images times its counted cost per image is the screen's budget
    for route in route64.ROUTES:
        config = route64.route_config(route)
        assert abs(config.train_kimg * 1000 * training_flops(config) / route64.SCREEN_FLOPS - 1) < 0.01
    assert route64.route_config("sr").train_resolution == 32  # the stage trains on 32 px crops

    monkeypatch.setattr(ddpm.metrics, "InceptionFeatures", StandInFeatures)
    for name, value in (("STORE", tmp_path / "store"), ("NUM_FLOOR", 8), ("NUM_REAL", 32), ("STEPS", 2),
                        ("CACHE_DIR", tmp_path / "cache")):
        monkeypatch.setattr(route64, name, value)
    small = dict(use_env=False, base_channels=8, attention_resolutions=(), num_classes=102, limit_images=16,
                 batch_size=4, train_steps=2, progress=False, runs_dir=str(tmp_path / "runs"), sample_every=10_000)
    train(get_config("smoke", run_name="base", resolution=16, **small), verbose=False)
    base = export_weights(tmp_path / "runs" / "base", tmp_path / "base")
    stage = get_config("smoke", run_name="stage", resolution=32, lowres=16, crop=16, base=str(base),
                       mid_attention=False, aug_max_t=20, aug_t=5, **small)
    train(stage, verbose=False)
    row = route64.score(stage.run_dir, "sr", num=8, guidance=2.0, seed=0, progress=False,
                        out=tmp_path / "store" / "sr.png")
    assert row["num_generated"] == 8 and row["num_real"] == 32 and row["floor_num_generated"] == 8
    assert row["train_pflop"] == round(training_flops(stage) * 8 / 1e15, 3) and row["kid_std"] > 0
    assert route64.read_rows() == [row] and (tmp_path / "store" / "sr.png").stat().st_size > 1000


def test_sampler_benchmark_scores_each_setting_once_and_counts_its_calls(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("samplers", SCRIPT.parent / "samplers.py")
    samplers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samplers)
    from test_metrics import StandInFeatures

    import ddpm.metrics
    from ddpm.solvers import calls_per_image, sigma_interval, step_grid
    from ddpm.train import load_run, train

    monkeypatch.setattr(ddpm.metrics, "InceptionFeatures", StandInFeatures)
    config = get_config("smoke", use_env=False, base_channels=8, limit_images=16, batch_size=4, train_steps=2,
                        progress=False, runs_dir=str(tmp_path / "runs"), num_classes=102, guidance_scale=4.0)
    train(config, verbose=False)
    for name, value in (("STORE", tmp_path / "s"), ("SCORES", tmp_path / "s" / "scores.jsonl"), ("NUM_HELD_OUT", 8),
                        ("LONG_RUN_WEIGHTS", str(config.run_dir)), ("LAMBDA_MINS", (-4.0,)), ("STEPS", (3,)),
                        ("SOLVERS", ("dpmpp3m",)), ("INTERVALS", ((0.5, 3.0),)), ("INTERVAL_SCALES", (3.0,))):
        monkeypatch.setattr(samplers, name, value)
    diffusion = load_run(config.run_dir).diffusion
    for action in ("lambda-min", "lambda-min", "sweep", "interval", "confirm"):  # the second does nothing
        assert samplers.main([action, "--num", "8"]) == 0
    rows = samplers.read_json_lines(samplers.SCORES)
    assert [(r["sampler"], r["lambda_min"]) for r in rows[:2]] == [("dpmpp2m", None), ("dpmpp2m", -4.0)]
    assert len({samplers.key(r) for r in rows}) == len(rows)  # nothing scored twice
    assert {r["grid"] for r in rows if r["sampler"] == "dpmpp3m"} == {"lambda", "time", "edm"}
    for r in rows:  # every row's counted calls are its grid's, guidance counted where it applied
        interval = sigma_interval(diffusion, *r["guidance_interval"]) if r["guidance_interval"] else None
        grid = step_grid(diffusion, r["steps"], r["grid"], lambda_min=r["lambda_min"])
        assert r["network_calls"] == calls_per_image(grid, r["guidance_scale"], interval), r
        assert r["num_generated"] == 8 and r["kid_std"] > 0
    assert any(r["guidance_interval"] == [0.5, 3.0] and r["guidance_scale"] == 3.0 for r in rows)
    assert {r["seed"] for r in rows} == {0, 1}  # confirm scores on fresh seeds
    assert samplers.main(["figure", "--out", str(tmp_path / "kid.png")]) == 0
    assert (tmp_path / "kid.png").stat().st_size > 10_000
