import pytest

from ddpm.config import PROFILES, Config, env_overrides, get_config


def test_every_profile_builds_and_names_its_run():
    for name in PROFILES:
        config = get_config(name)
        assert config.profile == name and config.total_steps > 0
        assert config.run_dir.name == f"{name}-unet-flowers102-{config.resolution}px"


def test_training_length_in_images():
    config = get_config("smoke", train_steps=None, train_kimg=1.0, batch_size=16)
    assert config.total_steps == 63  # ceil(1000 / 16)


def test_env_and_keyword_overrides(monkeypatch):
    monkeypatch.setenv("DDPM_BATCH_SIZE", "7")
    monkeypatch.setenv("DDPM_CHANNEL_MULT", "1,2,4")
    monkeypatch.setenv("DDPM_AMP", "false")
    config = get_config("smoke", lr="0.01")
    assert (config.batch_size, config.channel_mult, config.amp, config.lr) == (7, (1, 2, 4), False, 0.01)


def test_profile_from_env(monkeypatch):
    monkeypatch.setenv("DDPM_PROFILE", "smoke")
    assert get_config().profile == "smoke"


def test_bad_input_names_the_option(monkeypatch):
    with pytest.raises(ValueError, match="unknown profile 'laptop'; choose one of"):
        get_config("laptop")
    with pytest.raises(ValueError, match="config field 'batch_size': cannot read 'many'"):
        get_config("smoke", batch_size="many")
    with pytest.raises(ValueError, match="model must be one of"):
        get_config("smoke", model="transformer")
    with pytest.raises(ValueError, match="environment variable DDPM_BATCHSIZE names no config field"):
        env_overrides({"DDPM_BATCHSIZE": "3"})
    with pytest.raises(ValueError, match="unknown config fields"):
        Config.from_dict({"colour": "red"})


def test_config_round_trips_through_json(tmp_path):
    config = get_config("cpu", channel_mult="1,2")
    config.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == config


def test_the_baseline_is_unconditional_unless_asked_otherwise(monkeypatch):
    assert get_config("cpu", use_env=False).num_classes == 102  # the profile's improved UNet is conditional
    assert get_config("cpu", use_env=False, model="baseline").num_classes == 0
    monkeypatch.setenv("DDPM_MODEL", "baseline")
    assert get_config("cpu").num_classes == 0
    monkeypatch.setenv("DDPM_NUM_CLASSES", "5")  # asked for: refused in one line
    with pytest.raises(ValueError, match="the baseline UNet is unconditional"):
        get_config("cpu")
