"""The reference plan of each profile (ddpm/plan.py) and its cost (ddpm/budget.py)."""
import pytest

from ddpm import budget
from ddpm.cli import main
from ddpm.config import PROFILES, get_config
from ddpm.ema import ema_half_life
from ddpm.plan import build_plan


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_plans_the_notebooks_runs_and_evaluations(profile):
    cfg = get_config(profile, use_env=False)
    plan = build_plan(cfg)
    assert list(plan.runs) == ["baseline", "improved", "pets", "craters", "linear", "cosine"]
    assert plan.run_config("improved") == cfg  # the same run as `python -m ddpm train --profile P`
    baseline = plan.run_config("baseline")
    assert baseline.model == "baseline" and baseline.total_steps == cfg.total_steps
    assert (baseline.base_channels, baseline.channel_mult) == (cfg.base_channels, cfg.channel_mult)
    assert len({spec.config.run_dir for spec in plan.runs.values()}) == len(plan.runs)
    for e in plan.evaluations:
        assert e.run in plan.runs and e.num_real == cfg.fid_real
        expected = {True: cfg.fid_samples, False: cfg.fid_ddpm_samples if e.sampler == "ddpm" else cfg.fid_compare_samples}
        assert e.num_generated == expected[e.headline]
    assert len({(e.run, e.name) for e in plan.evaluations}) == len(plan.evaluations)
    # The narrative's comparisons: baseline vs improved on the headline protocol, then EMA vs raw, DDIM with and
    # without fresh noise at the same steps, and the two schedules, on one shared number of images
    headline = {(e.run, e.weights, e.sampler) for e in plan.evaluations if e.headline}
    assert headline == {("baseline", "ema", "dpmpp2m"), ("improved", "ema", "dpmpp2m")}
    compared = {(e.weights, e.sampler, e.steps, e.eta) for e in plan.evaluations_of("improved")
                if e.num_generated == cfg.fid_compare_samples and e.sampler != "ddpm"}
    assert compared == {("ema", "dpmpp2m", cfg.solver_steps, 0.0), ("raw", "dpmpp2m", cfg.solver_steps, 0.0),
                        ("ema", "ddim", cfg.solver_steps, 0.0), ("ema", "ddim", cfg.solver_steps, 1.0)}
    assert any(e.sampler == "ddpm" for e in plan.evaluations) == (cfg.fid_ddpm_samples > 0)
    assert {e.run for e in plan.evaluations} == set(plan.runs)
    # The schedules are compared on the small network, trained alike but for the schedule
    linear, cosine = plan.run_config("linear"), plan.run_config("cosine")
    assert (linear.schedule, cosine.schedule) == ("linear", "cosine")
    assert linear.replace(schedule="cosine", run_name=None) == cosine.replace(run_name=None)
    assert linear.model == "baseline"
    assert (plan.floor.num_generated, plan.floor.num_real) == (cfg.fid_compare_samples, cfg.fid_real)
    # The real sets it is scored against, each once: what tools/ship_features.py ships for a fresh clone
    assert plan.reference_sets() == [(cfg.dataset, cfg.resolution, cfg.split, cfg.fid_real),
                                     ("pets", cfg.resolution, None, cfg.fid_real),
                                     ("craters", cfg.resolution, "train", cfg.fid_real)]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_side_runs_are_short_with_enough_steps_and_a_working_ema(profile):
    cfg = get_config(profile, use_env=False)
    for key in ("pets", "craters"):
        side = build_plan(cfg).run_config(key)
        images = side.total_steps * side.batch_size
        assert abs(images - cfg.side_kimg * 1000) < side.batch_size
        assert side.batch_size <= 64 and side.warmup_steps <= max(side.total_steps // 10, 1)
        # the EMA's configured half-life is in force from half way on
        assert ema_half_life(images // 2, side.ema_half_life_kimg, side.ema_rampup) == side.ema_half_life_kimg * 1000


def test_the_gpu_plan_fits_11_minutes_of_one_h200_at_35_percent_mfu_mostly_training_the_improved_unet():
    plan = build_plan(get_config("gpu", use_env=False))
    costs = budget.plan_costs(plan, mfu=0.35, peak_tflops=790)
    total = sum(c.seconds for c in costs)
    train = [c for c in costs if c.phase == "train"]
    improved = next(c for c in train if c.item.startswith("improved:"))
    assert total <= 11 * 60, f"the gpu plan needs {total / 60:.1f} min"
    assert improved.seconds > sum(c.seconds for c in train) / 2  # most of the training minutes
    assert {c.phase for c in costs} == {"train", "evaluate", "notebook", "fixed"}
    assert plan.run_config("improved").train_minutes * 60 >= improved.seconds
    # A cap on every run bounds the training whatever the GPU does (plan.CAP_FRACTION). Compiling the training step
    # happens inside a run's capped seconds, so even with every cap reached and the evaluations at 25% MFU, the plan
    # still ends within 11 minutes.
    assert all(c.cap_s for c in train)
    slow = budget.plan_costs(plan, mfu=budget.EVAL_MFU, peak_tflops=790)
    others = sum(c.seconds for c in slow if c.phase in ("evaluate", "notebook"))
    fixed = sum(c.seconds for c in slow if c.phase == "fixed" and "compile of training" not in c.item)
    assert sum(c.cap_s for c in train) + others + fixed == pytest.approx(budget.worst_case_seconds(plan, 790))
    assert budget.worst_case_seconds(plan, 790) <= 11 * 60


def test_flop_counts_follow_closed_forms():
    cfg = get_config("gpu", use_env=False)
    baseline = cfg.replace(model="baseline", num_classes=0)
    forward, train = budget.network_flops(baseline), budget.network_flops(baseline, True)
    # backward costs twice the forward (weights and inputs), except the first layer's input gradient
    assert 2.9 < train / forward <= 3.0
    # convolutions scale with the pixels: 4x the FLOPs at twice the resolution (the time MLP is negligible)
    assert budget.network_flops(baseline.replace(resolution=32)) == pytest.approx(forward / 4, rel=0.01)
    # and with the square of the width
    assert budget.network_flops(baseline.replace(base_channels=32)) == pytest.approx(forward / 4, rel=0.02)
    # InceptionV3 at 299x299: 5.7 G multiply-adds (Szegedy et al. 2016)
    assert budget.inception_flops() == pytest.approx(2 * 5.7e9, rel=0.02)


def test_times_scale_with_the_mfu_and_the_caps_hold():
    plan = build_plan(get_config("gpu", use_env=False))
    fast = budget.plan_costs(plan, mfu=0.5)
    slow = budget.plan_costs(plan, mfu=0.05)
    evaluate = lambda costs: sum(c.seconds for c in costs if c.phase == "evaluate")  # noqa: E731
    assert evaluate(slow) == pytest.approx(10 * evaluate(fast))
    train = [c for c in slow if c.phase == "train"]
    for c in train:  # a run stops at its cap when its FLOPs would take longer
        assert c.seconds == pytest.approx(min(c.flops / (0.05 * budget.PEAK_TFLOPS * 1e12), c.cap_s))
    assert sum(c.seconds == c.cap_s for c in train) >= 4  # so slow that the four big runs stop at their caps


def test_plan_command_prints_each_phase_and_the_total(capsys):
    assert main(["plan", "--profile", "gpu", "--mfu", "0.35", "--peak-tflops", "790", "--list"]) == 0
    out = capsys.readouterr().out
    for needle in ["| train | improved | gpu-unet-flowers102-64px", "train     improved: unet", "evaluate  baseline ema",
                   "notebook  sampling", "fixed     torch.compile of training", "total", "(budget 11 min on one H200)",
                   "with the evaluations at 25% MFU"]:
        assert needle in out, needle


@pytest.mark.parametrize("flag", [["--mfu", "0"], ["--mfu", "1.5"], ["--peak-tflops", "-1"]])
def test_plan_command_bad_numbers_are_one_clear_line(flag, capsys):
    assert main(["plan", "--profile", "gpu", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --") and "\n" not in err


def test_guided_evaluations_count_two_network_passes_a_step():
    from dataclasses import replace

    plan = build_plan(get_config("smoke", use_env=False))
    spec = plan.evaluations[0]
    guided_spec = replace(spec, guidance_scale=3.0)
    assert guided_spec.name != spec.name and "guidance=3" in guided_spec.sampling

    def evaluation_flops(e):
        return next(c.flops for c in budget.plan_costs(replace(plan, evaluations=(e,))) if c.phase == "evaluate")

    network = spec.num_generated * spec.steps * budget.network_flops(plan.run_config(spec.run))
    assert evaluation_flops(guided_spec) - evaluation_flops(spec) == pytest.approx(network)
    assert evaluation_flops(replace(spec, guidance_scale=1.0)) == pytest.approx(evaluation_flops(spec))


def test_the_baseline_and_schedule_runs_stay_plain_whatever_the_profiles_recipe():
    cfg = get_config("cpu", use_env=False, prediction="v", schedule="cosine", noise_sampling="lognormal",
                     num_classes=102, ema2_half_life_kimg=10.0, grad_clip=0.0, weight_decay=1e-4, lr=1e-3)
    plan = build_plan(cfg)
    for key in ("baseline", "linear", "cosine"):
        run = plan.run_config(key)
        assert (run.model, run.prediction, run.noise_sampling, run.min_snr_gamma, run.num_classes) == (
            "baseline", "eps", "uniform", None, 0), key
        assert (run.grad_clip, run.weight_decay, run.lr) == (1.0, 0.0, 1e-3), key  # Ho et al.'s clipping; our lr
    assert plan.run_config("baseline").schedule == "linear" and plan.run_config("cosine").schedule == "cosine"
    assert plan.run_config("improved") == cfg
    assert plan.run_config("pets").num_classes == plan.run_config("craters").num_classes == 0


def test_a_conditional_improved_run_is_scored_at_its_guidance_scale_and_the_others_unguided():
    for scale, expected in ((None, 1.0), (4.0, 4.0)):
        plan = build_plan(get_config("cpu", use_env=False, num_classes=102, guidance_scale=scale))
        for spec in plan.evaluations:
            assert spec.guidance_scale == (expected if spec.run == "improved" else None), spec.label
        assert all(spec.name.endswith(f"-g{expected:g}-n{spec.num_generated}")
                   for spec in plan.evaluations_of("improved"))
    plain = build_plan(get_config("cpu", use_env=False, num_classes=0, guidance_scale=4.0))
    assert all(spec.guidance_scale is None for spec in plain.evaluations)
