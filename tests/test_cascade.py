"""64 px from a 32 px model (issue 30): the shifted schedule, a network grown from a smaller one, and the cascade's
super-resolution stage (its conditioning, its augmentation level, its sampler and its base)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddpm.cascade import Cascade, Conditioned, stage_batch, upsample
from ddpm.config import get_config
from ddpm.data import to_model_input
from ddpm.diffusion import GaussianDiffusion
from ddpm.sample import generate
from ddpm.train import TrainLoop, load_run, train
from ddpm.unet import UNet
from ddpm.weights import export_weights


def small(tmp_path, name, **overrides):
    """A smoke config without attention (the same network at any size), conditional, in tmp_path."""
    values = dict(runs_dir=str(tmp_path), run_name=name, base_channels=8, attention_resolutions=(), num_classes=102,
                  limit_images=16, batch_size=4, train_steps=2, log_every=1, checkpoint_every=1000,
                  sample_every=10_000, progress=False, aug_max_t=40, aug_t=10)
    return get_config("smoke", use_env=False, **{**values, **overrides})


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A shipped 16 px base (a few steps of the smoke network)."""
    tmp = tmp_path_factory.mktemp("base")
    train(small(tmp, "base", resolution=16), verbose=False)
    return export_weights(tmp / "base", tmp / "base-weights")


@pytest.fixture(scope="module")
def stage_folder(base_folder, tmp_path_factory):
    """A 16 -> 32 px stage after base_folder, trained on 16 px crops, shipped."""
    tmp = tmp_path_factory.mktemp("stage")
    config = small(tmp, "stage", resolution=32, lowres=16, crop=16, base=str(base_folder), mid_attention=False,
                   aug_max_t=40, aug_t=10)
    train(config, verbose=False)
    return export_weights(tmp / "stage", tmp / "stage-weights")


# ----------------------------------------------------------------------------------------------------------------------
# The shifted schedule
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_shift_multiplies_every_steps_snr_by_exp_shift(schedule):
    plain = GaussianDiffusion(1000, schedule)
    shifted = GaussianDiffusion(1000, schedule, log_snr_shift=-2 * math.log(2))
    snr = lambda d: d.alpha_bar_f64 / (1 - d.alpha_bar_f64)  # noqa: E731
    torch.testing.assert_close(snr(shifted), snr(plain) / 4, rtol=1e-9, atol=0)
    assert ((shifted.betas > 0) & (shifted.betas < 1)).all()


def test_a_2x2_average_of_a_shifted_x_t_is_the_half_size_x_t_of_the_same_step():
    """Why the shift: averaging 2x2 pixels quarters the noise's variance, so at the shifted step a 64 px image's
    average has the SNR the 32 px image had; rescaled, it is distributed as the 32 px x_t of the same t."""
    plain, shifted = GaussianDiffusion(1000, "cosine"), GaussianDiffusion(1000, "cosine", log_snr_shift=-2 * math.log(2))
    t = torch.full((4000,), 300)
    x0 = torch.zeros(4000, 3, 2, 2)
    pooled = F.avg_pool2d(shifted.q_sample(x0, t), 2)
    scale = (plain.sqrt_alpha_bar[300] / shifted.sqrt_alpha_bar[300]).item()
    assert abs((scale * pooled).std().item() - plain.sqrt_one_minus_alpha_bar[300].item()) < 0.01


# ----------------------------------------------------------------------------------------------------------------------
# Grown from a smaller network
def test_the_grown_network_starts_as_the_small_one_and_trains_at_the_new_size(base_folder, tmp_path):
    config = small(tmp_path, "grown", resolution=32, grow_from=str(base_folder), log_snr_shift=-2 * math.log(2))
    loop = TrainLoop(config, verbose=False)
    small_net = load_run(base_folder).ema_model
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor([3, 70]), torch.tensor([0, 5])
    torch.testing.assert_close(loop.model(x, t, labels), small_net(x, t, labels), rtol=0, atol=1e-6)
    torch.testing.assert_close(loop.ema.module(x, t, labels), small_net(x, t, labels), rtol=0, atol=1e-6)
    assert loop.step == 0
    result = loop.run()
    assert result.finished and load_run(tmp_path / "grown").ema_model.image_size == 32
    assert "grown from the EMA weights" in (tmp_path / "grown" / "log.txt").read_text()


def test_growing_from_another_network_or_no_folder_is_one_clear_error(base_folder, tmp_path):
    with pytest.raises(ValueError, match="grow_from .*its network is not this run's"):
        TrainLoop(small(tmp_path, "wide", resolution=32, base_channels=16, grow_from=str(base_folder)), verbose=False)
    with pytest.raises(FileNotFoundError, match="grow_from: .*does not exist"):
        TrainLoop(small(tmp_path, "none", resolution=32, grow_from=str(tmp_path / "nowhere")), verbose=False)


# ----------------------------------------------------------------------------------------------------------------------
# The super-resolution stage
def test_the_stage_network_sees_its_low_resolution_image_and_its_level():
    net = UNet(64, 8, (1, 2), num_res_blocks=1, attention_resolutions=(), mid_attention=False, cond_channels=3)
    for p in net.parameters():  # the zero-initialised output layers would hide every input
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 500])
    cond, level = torch.randn(2, 3, 64, 64), torch.tensor([0, 100])
    out = net(x, t, cond=cond, cond_t=level)
    assert out.shape == (2, 3, 64, 64)
    assert not torch.allclose(out, net(x, t, cond=cond + 0.5, cond_t=level))
    assert not torch.allclose(out, net(x, t, cond=cond, cond_t=level + 50))
    with pytest.raises(ValueError, match="super-resolution stage: give cond"):
        net(x, t)
    with pytest.raises(ValueError, match="not a super-resolution stage"):
        UNet(64, 8, (1, 2), num_res_blocks=1, attention_resolutions=())(x, t, cond=cond)


def test_a_stage_batch_crops_and_flips_both_resolutions_alike():
    generator = torch.Generator().manual_seed(0)
    high = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    low = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    x0, low_up = stage_batch(high, low, flip=True, crop=8, generator=generator)
    assert x0.shape == low_up.shape == (16, 3, 8, 8)
    flips = 0
    for b in range(16):
        for flipped in (False, True):
            full = to_model_input(high[b:b + 1].flip(-1) if flipped else high[b:b + 1], flip=False)[0]
            windows = full.unfold(1, 8, 1).unfold(2, 8, 1)  # [3, 25, 25, 8, 8]
            match = (windows == x0[b][:, None, None]).flatten(3).all(-1).all(0).nonzero()
            if len(match):
                (oy, ox), = match.tolist()
                small_image = low[b:b + 1].flip(-1) if flipped else low[b:b + 1]
                expected = upsample(to_model_input(small_image, flip=False), 32)[0, :, oy:oy + 8, ox:ox + 8]
                torch.testing.assert_close(low_up[b], expected)
                flips += flipped
                break
        else:
            pytest.fail(f"image {b}'s crop is nowhere in its image")
    assert 0 < flips < 16  # both kinds were drawn


def test_training_feeds_the_stage_the_noised_low_resolution_image_at_a_drawn_level(base_folder, tmp_path, monkeypatch):
    config = small(tmp_path, "stage", resolution=32, lowres=16, crop=16, mid_attention=False, aug_max_t=40,
                   batch_size=64, limit_images=16)
    loop = TrainLoop(config, verbose=False)
    x0, t, noise, labels, stage = loop.draw_batch()
    assert x0.shape == stage["cond"].shape == (64, 3, 16, 16)
    assert 0 <= stage["cond_t"].min() and stage["cond_t"].max() <= 40 and len(set(stage["cond_t"].tolist())) > 10
    seen = {}
    forward = type(loop.model).forward

    def spy(self, x, t, labels=None, cond=None, cond_t=None):
        seen.update(cond=cond, cond_t=cond_t)
        return forward(self, x, t, labels, cond=cond, cond_t=cond_t)

    monkeypatch.setattr(type(loop.model), "forward", spy)
    loop.train_step()
    assert seen["cond"].shape[1] == 3 and seen["cond_t"].shape == (64,)


def test_a_stage_learns_overfitting_a_few_flowers(tmp_path):
    config = small(tmp_path, "fit", resolution=32, lowres=16, crop=16, mid_attention=False, num_classes=0,
                   limit_images=4, batch_size=8, train_steps=120, log_every=20, lr=2e-3, warmup_steps=10)
    losses = [loss for _, loss in train(config, verbose=False).losses]
    assert losses[-1] * 2 <= losses[0], losses


def test_the_cascade_samples_full_size_images_the_same_again_for_the_same_seed(stage_folder):
    run = load_run(stage_folder)
    assert isinstance(run.ema_model, Cascade) and run.ema_model.noise_size == 16
    labels = run.classes.draw(3, seed=0)
    kwargs = dict(labels=labels, guidance_scale=2.0, sampler="dpmpp2m", steps=4, progress=False, batch_size=2)
    images = generate(run.ema_model, run.diffusion, 3, seed=5, **kwargs)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, generate(run.ema_model, run.diffusion, 3, seed=5, **kwargs))
    assert not torch.equal(images, generate(run.ema_model, run.diffusion, 3, seed=6, **kwargs))


def test_the_stage_is_sampled_at_its_fixed_augmentation_level(stage_folder, monkeypatch):
    run = load_run(stage_folder)
    levels = []
    forward = Conditioned.forward

    def spy(self, x, t, labels=None):
        levels.extend(self.cond_t.tolist())
        return forward(self, x, t, labels)

    monkeypatch.setattr(Conditioned, "forward", spy)
    generate(run.ema_model, run.diffusion, 2, labels=run.classes.draw(2), sampler="ddim", steps=2, progress=False)
    assert levels and set(levels) == {run.config.aug_t}
    levels.clear()
    assert run.set_aug_t(3) == 3  # what `sample --aug-t` and `fid --aug-t` set
    generate(run.ema_model, run.diffusion, 2, labels=run.classes.draw(2), sampler="ddim", steps=2, progress=False)
    assert set(levels) == {3}
    with pytest.raises(ValueError, match="--aug-t must be in"):
        run.set_aug_t(run.config.timesteps)
    with pytest.raises(ValueError, match="is no cascade"):
        load_run(run.config.base).set_aug_t(3)


def test_a_stage_whose_base_is_missing_or_does_not_match_is_one_error_line(stage_folder, base_folder, tmp_path,
                                                                           capsys):
    import json
    import shutil

    from ddpm.cli import main
    from ddpm.files import sha256
    from ddpm.weights import SUMS_NAME, WEIGHTS_NAME

    def with_base(name, base):
        folder = tmp_path / name
        shutil.copytree(stage_folder, folder)
        state = torch.load(folder / WEIGHTS_NAME, weights_only=True)
        state["config"]["base"] = str(base)
        torch.save(state, folder / WEIGHTS_NAME)
        (folder / "config.json").write_text(json.dumps(state["config"]))
        (folder / SUMS_NAME).write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in
                                                (WEIGHTS_NAME, "config.json", "labels.json")))
        return folder

    missing = with_base("missing", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="its base .*gone does not exist"):
        load_run(missing)
    assert main(["sample", "--checkpoint", str(missing), "--num", "2", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="itself a stage"):
        load_run(with_base("chained", stage_folder))
    other = tmp_path / "base32"
    train(small(tmp_path, "b32", resolution=32), verbose=False)
    export_weights(tmp_path / "b32", other)
    with pytest.raises(ValueError, match="samples 32 px images, the stage upscales 16 px ones"):
        load_run(with_base("other", other))


def test_sample_writes_a_cascades_grid_by_label_and_its_gif_of_both_stages(stage_folder, tmp_path, capsys):
    from PIL import Image

    from ddpm.cli import main

    grid, gif = tmp_path / "grid.png", tmp_path / "both.gif"
    assert main(["sample", "--checkpoint", str(stage_folder), "--num", "4", "--steps", "3", "--label", "passion flower",
                 "--out", str(grid), "--gif", str(gif), "--aug-t", "5"]) == 0
    assert "'passion flower'" in capsys.readouterr().out
    assert Image.open(grid).size[0] > 4 * 32 and Image.open(gif).n_frames >= 4


@pytest.mark.parametrize("profile", ["cpu64-scratch", "cpu64-grown", "cpu64-sr"])
def test_the_64px_profiles_make_64px_predictions(profile):
    from ddpm.train import build_model

    config = get_config(profile, use_env=False)
    with torch.device("meta"):
        net = build_model(config)
        x, t = torch.zeros(2, 3, 64, 64), torch.zeros(2, dtype=torch.long)
        stage = dict(cond=torch.zeros_like(x), cond_t=t) if config.lowres else {}
        assert net(x, t, torch.zeros(2, dtype=torch.long), **stage).shape == (2, 3, 64, 64)
    assert config.resolution == 64 and config.sampling_guidance == 2.0
    if profile == "cpu64-grown":  # the network of the 32 px weights it grows from
        assert load_run(config.grow_from).config.channel_mult == config.channel_mult
