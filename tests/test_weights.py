"""Shipped weights (ddpm/weights.py): export a run's EMA network, load it back checked, never write into it."""
import hashlib
import json

import pytest
import torch

from ddpm import weights
from ddpm.cli import main
from ddpm.config import Config
from ddpm.evaluate import evaluate_run
from ddpm.sample import generate
from ddpm.runfolder import read_stats
from ddpm.train import TrainLoop, load_run, train
from test_metrics import StandInFeatures


def folder_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def conditional_run(tiny_config):
    config = tiny_config.replace(num_classes=102, label_dropout=0.2)  # 16 flowers: all passion flowers
    train(config, verbose=False)
    return config.run_dir


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Derived outputs of shipped folders go to tmp_path/outputs/<name>/ instead of the repository's outputs/."""
    monkeypatch.setattr(weights, "OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def test_an_exported_folder_samples_as_the_run_does_and_keeps_only_the_ema(conditional_run, tmp_path):
    run = load_run(conditional_run)
    exact = weights.export_weights(conditional_run, tmp_path / "fp32", dtype=torch.float32)
    half = weights.export_weights(conditional_run, tmp_path / "fp16")
    assert weights.verify(half) == ["ema.pt", "config.json", "labels.json", "stats.jsonl", "log.txt"]
    assert Config.load(half / "config.json") == run.config
    state = torch.load(half / "ema.pt", weights_only=True)
    assert {v.dtype for v in state["ema"].values() if v.is_floating_point()} == {torch.float16}
    assert "model" not in state and "optimizer" not in state
    assert (half / "ema.pt").stat().st_size < 0.6 * (exact / "ema.pt").stat().st_size

    labels = torch.zeros(4, dtype=torch.long)
    reference = generate(run.ema_model, run.diffusion, 4, labels=labels, guidance_scale=2.0, steps=5, progress=False)
    for folder, tolerance in ((exact, 0), (half, 3)):
        shipped = load_run(folder)
        assert shipped.shipped and shipped.model is None and shipped.step == run.step
        assert shipped.config == run.config and shipped.classes == run.classes
        images = generate(shipped.ema_model, shipped.diffusion, 4, labels=labels, guidance_scale=2.0, steps=5,
                          progress=False)
        assert (images.int() - reference.int()).abs().max() <= tolerance, folder.name


def test_a_changed_or_incomplete_folder_is_refused_naming_the_file(conditional_run, tmp_path, capsys):
    folder = weights.export_weights(conditional_run, tmp_path / "shipped")
    with open(folder / "log.txt", "a") as f:
        f.write("one more line\n")
    with pytest.raises(weights.WeightsError, match="log.txt does not match its sha256"):
        load_run(folder)
    assert main(["sample", "--checkpoint", str(folder), "--num", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{folder / 'log.txt'} does not match its sha256" in err

    weights.export_weights(conditional_run, folder)  # written again: loads
    assert load_run(folder).shipped
    (folder / "labels.json").unlink()
    with pytest.raises(weights.WeightsError, match="labels.json is listed in .* but missing"):
        load_run(folder)
    (folder / weights.SUMS_NAME).unlink()
    with pytest.raises(weights.WeightsError, match="has no SHA256 file"):
        load_run(folder)


def test_export_refuses_weights_that_do_not_survive_fp16_and_the_run_folder_itself(conditional_run, tmp_path):
    path = conditional_run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    name = next(k for k in state["ema"] if k.startswith("module.") and state["ema"][k].is_floating_point())
    state["ema"][name] = state["ema"][name] + 1e6  # beyond fp16's largest number, 65504
    torch.save(state, path)
    with pytest.raises(ValueError, match="not finite in torch.float16"):
        weights.export_weights(conditional_run, tmp_path / "big")
    assert not (tmp_path / "big" / weights.SUMS_NAME).exists()
    assert weights.export_weights(conditional_run, tmp_path / "big", dtype=torch.float32)
    with pytest.raises(ValueError, match="that is the run folder itself"):
        weights.export_weights(conditional_run, conditional_run)


def test_sample_and_fid_read_a_shipped_folder_and_never_write_into_it(conditional_run, tmp_path, outputs, capsys,
                                                                     monkeypatch):
    folder = tmp_path / "shipped"
    assert main(["export", "--checkpoint", str(conditional_run), "--out", str(folder), "--check-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder}: ema.pt, config.json, labels.json, stats.jsonl, log.txt and SHA256" in out
    assert "4 samples (DPM-Solver++ 20 steps, same noise)" in out and "levels of 255 on average" in out
    before = folder_hashes(folder)

    assert main(["sample", "--checkpoint", str(folder), "--label", "passion flower", "--guidance-scale", "2",
                 "--num", "3", "--steps", "2"]) == 0
    assert "of 'passion flower' (label 77), guidance 2" in capsys.readouterr().out
    assert (outputs / "shipped" / "samples-ema-dpmpp2m2-g2-passion-flower.png").is_file()
    assert main(["sample", "--checkpoint", str(folder), "--num", "3", "--steps", "2", "--out-dir",
                 str(tmp_path / "each")]) == 0
    assert len(list((tmp_path / "each").glob("*.png"))) == 3
    capsys.readouterr()

    assert main(["sample", "--checkpoint", str(folder), "--raw", "--num", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--raw" in err and "EMA weights only" in err

    result = evaluate_run(folder, num_samples=4, num_real=8, steps=2, device="cpu", feature=StandInFeatures(),
                          cache_dir=tmp_path / "cache", progress=False, batch_size=4, guidance_scale=2.0)
    assert result["step"] == load_run(conditional_run).step
    assert (outputs / "shipped" / "metrics" / "ema-ddim-2-g2-n4.json").is_file()
    with pytest.raises(ValueError, match="EMA weights only"):
        evaluate_run(folder, num_samples=4, num_real=8, steps=2, use_ema=False, feature=StandInFeatures(),
                     cache_dir=tmp_path / "cache", progress=False)
    assert folder_hashes(folder) == before


def test_snapshots_hold_the_ema_of_their_step_and_load_as_shipped_folders(tiny_config):
    config = tiny_config.replace(snapshot_every_kimg=0.012, checkpoint_every=100,  # every 12 images: 3 steps of 4
                                 ema2_half_life_kimg=0.1)
    train(config, verbose=False)
    folders = sorted(f for f in (config.run_dir / "snapshots").iterdir() if not f.name.endswith("-ema2"))
    second = load_run(folders[1].with_name(folders[1].name + "-ema2"))  # the second EMA, shipped as the EMA
    assert second.config.ema_half_life_kimg == 0.1 and second.config.ema2_half_life_kimg is None
    assert [f.name for f in folders] == [f"{config.run_dir.name}-000000.{images:03d}kimg" for images in (12, 24)]
    assert [load_run(f).step for f in folders] == [3, 6]
    for folder in folders:
        weights.verify(folder)
    # the snapshot of step 6 is the EMA a run stopped at step 6 has, to fp16's precision
    stopped = config.replace(runs_dir=tiny_config.runs_dir + "-stopped", snapshot_every_kimg=None)
    train(stopped, until_step=6, verbose=False)
    ema = load_run(stopped.run_dir).ema_model.state_dict()
    for name, tensor in load_run(folders[1]).ema_model.state_dict().items():
        assert torch.allclose(tensor, ema[name], rtol=1e-3, atol=1e-4), name


def test_a_new_run_starts_from_a_shipped_folder_at_its_step(tiny_config, tmp_path, capsys):
    train(tiny_config, verbose=False)  # 8 steps
    folder = weights.export_weights(tiny_config.run_dir, tmp_path / "shipped", dtype=torch.float32)
    shipped = load_run(folder)
    again = tiny_config.replace(runs_dir=str(tmp_path / "again"), train_steps=12)
    loop = TrainLoop(again, verbose=False, init_from=folder)
    assert loop.step == 8 and loop.seconds == shipped.seconds
    for name, tensor in shipped.ema_model.state_dict().items():
        assert torch.equal(loop.model.state_dict()[name], tensor), name
    assert [s["step"] for s in read_stats(again.run_dir)] == [s["step"] for s in read_stats(tiny_config.run_dir)]
    assert "a new run, not an exact resume" in (again.run_dir / "log.txt").read_text()
    assert loop.run().step == 12
    # once the new run has a checkpoint, --init-from no longer matters: it resumes
    assert TrainLoop(again.replace(train_steps=14), verbose=False, init_from=folder).step == 12

    wider = ["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "wider"), "--base-channels", "16",
             "--train-steps", "2", "--init-from", str(folder), "--no-progress"]
    assert main(wider) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ema.pt: its EMA weights do not fit the network" in err


def test_export_can_set_the_folders_default_guidance_scale(conditional_run, tiny_config, tmp_path, capsys):
    folder = weights.export_weights(conditional_run, tmp_path / "g2", guidance_scale=2)
    shipped, run = load_run(folder), load_run(conditional_run)
    assert (shipped.guidance_scale, run.guidance_scale) == (2.0, run.config.sampling_guidance)
    assert json.loads((folder / "config.json").read_text())["guidance_scale"] == 2.0
    assert shipped.guidance(4)["guidance_scale"] == 2.0  # what sample, fid and the notebook default to
    assert weights.verify(folder)
    # an unconditional run has no scale to set: one line from the CLI, nothing written
    unconditional = tiny_config.replace(runs_dir=str(tmp_path / "plain"))
    train(unconditional, verbose=False)
    assert main(["export", "--checkpoint", str(unconditional.run_dir), "--out", str(tmp_path / "u"),
                 "--guidance-scale", "2"]) == 2
    assert "unconditional" in capsys.readouterr().err and not (tmp_path / "u" / weights.SUMS_NAME).exists()
