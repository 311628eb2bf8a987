"""The training loop's promises: it learns, it resumes exactly, it keeps good checkpoints and refuses bad ones."""
import json

import pytest
import torch

from ddpm.files import atomic_save
from ddpm.runfolder import read_stats
from ddpm.train import TrainingDiverged, TrainLoop, load_run, train, train_or_load


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_overfit_eight_flowers_loss_falls_fivefold(tmp_path):
    from ddpm.config import get_config

    config = get_config(
        "smoke", runs_dir=str(tmp_path), limit_images=8, batch_size=8, train_steps=200, log_every=20,
        checkpoint_every=200, sample_every=10_000, warmup_steps=10, lr=2e-3, progress=False,
    )
    result = train(config, verbose=False)
    losses = [loss for _, loss in result.losses]
    assert losses[-1] * 5 <= losses[0], losses
    assert [r["step"] for r in read_stats(result.run_dir)] == list(range(20, 201, 20))


def test_resume_equals_an_uninterrupted_run(tiny_config, tmp_path):
    config = tiny_config.replace(dropout=0.1)  # dropout draws from the global RNG: its state must be restored too
    first = TrainLoop(config.replace(runs_dir=str(tmp_path / "a")), verbose=False).run(until_step=4)
    assert first.step == 4 and not first.finished
    resumed_loop = TrainLoop(config.replace(runs_dir=str(tmp_path / "a")), verbose=False)
    assert resumed_loop.step == 4
    second = resumed_loop.run()

    straight_loop = TrainLoop(config.replace(runs_dir=str(tmp_path / "b")), verbose=False)
    straight = straight_loop.run()
    assert first.losses + second.losses == straight.losses
    for mine, theirs in [(resumed_loop.model, straight_loop.model), (resumed_loop.ema, straight_loop.ema)]:
        a, b = weights(mine), weights(theirs)
        assert all(torch.equal(a[k], b[k]) for k in a)
    stats_a = [r["loss"] for r in read_stats(second.run_dir)]
    assert stats_a == [loss for _, loss in straight.losses]


def test_interrupted_run_saves_and_resumes_where_it_stopped(tiny_config, monkeypatch):
    loop = TrainLoop(tiny_config, verbose=False)
    original = TrainLoop.train_step

    def interrupt_at_step_6(self):
        if self.step == 6:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(TrainLoop, "train_step", interrupt_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    monkeypatch.setattr(TrainLoop, "train_step", original)
    resumed = TrainLoop(tiny_config, verbose=False)
    assert resumed.step == 6
    assert resumed.run().finished


def test_nan_losses_are_skipped_then_stop_with_a_clear_message_and_the_last_good_checkpoint(tiny_config):
    loop = TrainLoop(tiny_config.replace(max_skipped_steps=3), verbose=False)
    loop.run(until_step=4)  # checkpoint_every=4: a good checkpoint at step 4
    good = torch.load(loop.checkpoint_path, weights_only=True)["model"]

    class PoisonedModel(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            return self.inner(x, t) * float("nan")

    loop.train_model = PoisonedModel(loop.train_model)
    with pytest.raises(TrainingDiverged, match=r"last 3 steps had non-finite gradients and were skipped \(step 7\).* "
                                               r"last good checkpoint is .*checkpoint.pt"):
        loop.run()
    kept = torch.load(loop.checkpoint_path, weights_only=True)
    assert kept["step"] == 4 and all(torch.equal(kept["model"][k], good[k]) for k in good)
    assert all(torch.equal(loop.model.state_dict()[k], good[k]) for k in good)  # the skipped steps changed nothing
    assert "diverged" in (tiny_config.run_dir / "log.txt").read_text()
    assert [r["skipped_steps"] for r in read_stats(tiny_config.run_dir)][-3:] == [1, 2, 3]


def test_resuming_with_another_config_is_refused(tiny_config):
    TrainLoop(tiny_config, verbose=False).run(until_step=2)
    with pytest.raises(ValueError, match=r"trained with another config \(lr: saved 0.001 vs now 0.5\)"):
        TrainLoop(tiny_config.replace(lr=0.5), verbose=False)
    # length and bookkeeping may change: train a finished run for longer
    assert TrainLoop(tiny_config.replace(train_steps=10, log_every=2), verbose=False).step == 2


def test_run_folder_and_loading(tiny_config):
    result = train(tiny_config.replace(sample_every=8), verbose=False)
    run_dir = result.run_dir
    assert json.loads((run_dir / "config.json").read_text())["base_channels"] == 8
    assert (run_dir / "samples" / "step-0000008.png").exists()
    assert "reached step 8" in (run_dir / "log.txt").read_text()
    run = load_run(run_dir)
    assert run.finished and run.step == 8 and len(run.stats) == 8
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(run.ema_model.state_dict()[k], ema[k]) for k in ema)
    assert not all(torch.equal(run.ema_model.state_dict()[k], run.model.state_dict()[k]) for k in ema)


def test_train_or_load_reuses_a_finished_run(tiny_config, monkeypatch, capsys):
    train(tiny_config, verbose=False)
    monkeypatch.setattr("ddpm.train.train", lambda *a, **k: pytest.fail("must not train again"))
    run = train_or_load(tiny_config, device="cpu")
    assert run.step == 8 and "reusing the finished run" in capsys.readouterr().out


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_corrupt_checkpoint_is_named_in_the_error(tmp_path):
    from ddpm.checkpoint import CheckpointError

    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is not a ddpm checkpoint \(expected a torch file"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_run(tmp_path / "missing")


def test_a_step_with_nan_gradients_is_skipped_and_never_reaches_a_checkpoint(tiny_config):
    # The review's reproduction: finite loss, one parameter's gradient NaN at step 5; checkpoints every step, the loss
    # read every 3 steps. Without the guard AdamW writes NaN into the weights and the EMA, and the checkpoint of step 5
    # holds them before the loss is ever read.
    config = tiny_config.replace(checkpoint_every=1, log_every=3)
    loop = TrainLoop(config, verbose=False)
    reference = TrainLoop(config.replace(runs_dir=str(config.run_dir.parent / "reference")), verbose=False)
    reference.run(until_step=4)
    parameter = next(loop.model.parameters())
    parameter.register_hook(lambda grad: grad * float("nan") if loop.step == 4 else grad)
    loop.run(until_step=5)
    assert loop.step == 5
    kept = torch.load(loop.checkpoint_path, weights_only=True)
    assert kept["step"] == 5
    for k, v in kept["model"].items():  # skipped: the weights of step 4, and finite
        assert torch.isfinite(v).all() and torch.equal(v, reference.model.state_dict()[k]), k
    assert all(torch.isfinite(v).all() for v in kept["ema"].values() if v.is_floating_point())
    result = loop.run()  # then training goes on
    assert result.finished and all(torch.isfinite(p).all() for p in loop.model.parameters())
    assert read_stats(config.run_dir)[-1]["skipped_steps"] == 1


def test_a_checkpoint_with_non_finite_weights_is_never_written(tiny_config):
    loop = TrainLoop(tiny_config, verbose=False)
    loop.run(until_step=4)
    good = torch.load(loop.checkpoint_path, weights_only=True)
    with torch.no_grad():
        next(loop.ema.parameters()).view(-1)[0] = float("inf")  # however it happened
    with pytest.raises(TrainingDiverged, match="weights are no longer finite at step 4, so no checkpoint was written"):
        loop.save_checkpoint()
    kept = torch.load(loop.checkpoint_path, weights_only=True)
    assert all(torch.equal(kept["ema"][k], v) for k, v in good["ema"].items())


def test_ctrl_c_inside_a_step_finishes_the_step_before_the_checkpoint(tiny_config, tmp_path):
    # SIGINT lands between the optimiser step and the EMA update of step 5: the run must still stop on a whole step,
    # so that resuming gives exactly the uninterrupted run.
    import signal

    config = tiny_config.replace(dropout=0.1)
    loop = TrainLoop(config, verbose=False)

    def ctrl_c_after_the_optimizer_step(optimizer, args, kwargs):
        if loop.step == 4:
            signal.raise_signal(signal.SIGINT)

    handle = loop.optimizer.register_step_post_hook(ctrl_c_after_the_optimizer_step)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    handle.remove()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    saved = torch.load(loop.checkpoint_path, weights_only=True)
    assert saved["step"] == 5 and saved["ema"]["n_averaged"].item() == 5
    resumed = TrainLoop(config, verbose=False)
    resumed.run()
    straight = TrainLoop(config.replace(runs_dir=str(tmp_path / "straight")), verbose=False)
    straight.run()
    for mine, theirs in [(resumed.model, straight.model), (resumed.ema, straight.ema)]:
        a, b = weights(mine), weights(theirs)
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu", "gpu-long"])
def test_every_profile_reaches_its_configured_ema_half_life(profile):
    from ddpm.config import get_config
    from ddpm.ema import ema_half_life

    config = get_config(profile, use_env=False)
    images = config.total_steps * config.batch_size
    assert ema_half_life(images, config.ema_half_life_kimg, config.ema_rampup) == config.ema_half_life_kimg * 1000
    assert config.ema_full_after_kimg * 1000 <= 0.75 * images  # and holds it for the last quarter of the run at least


def test_the_effective_ema_half_life_is_logged(tiny_config):
    config = tiny_config.replace(ema_half_life_kimg=0.02, ema_rampup=0.5, log_every=2)
    result = train(config, verbose=False)
    logged = [r["ema_half_life_kimg"] for r in read_stats(result.run_dir)]
    assert logged == [min(0.02, step * 4 * 0.5 / 1000) for step in (2, 4, 6, 8)]
    assert "EMA half-life 0.02 kimg" in (result.run_dir / "log.txt").read_text()


def test_time_cap_stops_cleanly_checkpoints_and_counts_as_finished(tiny_config, monkeypatch):
    from ddpm import train as train_module
    from ddpm.train import load_run, run_is_finished, train_or_load

    config = tiny_config.replace(train_steps=40, log_every=3, checkpoint_every=1000, train_minutes=1e-9)
    result = train(config, verbose=False)
    # Stops at the first log step (where the clock is read), with a checkpoint of that step
    assert result.step == 3 and result.finished
    assert torch.load(config.run_dir / "checkpoint.pt", weights_only=True)["step"] == 3
    stats = read_stats(config.run_dir)
    assert stats[-1]["step"] == 3 and stats[-1]["images_seen"] == 3 * config.batch_size
    assert "stopped at the time cap (train_minutes=1e-09) at step 3 of 40, after 12 images" in (
        config.run_dir / "log.txt").read_text()
    # The run counts as finished at that length: nothing trains again under the same config ...
    assert run_is_finished(config) and load_run(config.run_dir).finished
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert train_or_load(config, device="cpu", verbose=False).step == 3
    monkeypatch.undo()
    # ... and lifting the cap resumes it to its full length
    uncapped = config.replace(train_minutes=None)
    assert not run_is_finished(uncapped)
    assert train(uncapped, verbose=False).step == 40


def test_time_cap_is_checked_against_the_training_seconds_of_earlier_sessions(tiny_config):
    config = tiny_config.replace(train_steps=12, log_every=2)
    first = train(config, until_step=6, verbose=False)
    # a cap the first session already used up (just under its seconds: x / 60 * 60 need not give x back exactly)
    capped = config.replace(train_minutes=0.999 * first.seconds / 60)
    again = train(capped, verbose=False)
    assert again.step == 6 and again.finished  # nothing more to train


def test_atomic_writes_give_the_files_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    from ddpm.files import atomic_save, atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.md", "| a |\n")
        atomic_save({"x": torch.zeros(1)}, tmp_path / "checkpoint.pt")
    finally:
        os.umask(umask)
    for name in ("results.md", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_second_ema_leaves_training_alone_and_resumes_exactly(tiny_config, tmp_path):
    plain = TrainLoop(tiny_config.replace(runs_dir=str(tmp_path / "plain")), verbose=False)
    plain.run()
    config = tiny_config.replace(ema2_half_life_kimg=0.5, ema_half_life_kimg=0.01, ema_rampup=None)
    TrainLoop(config, verbose=False).run(until_step=4)
    resumed = TrainLoop(config, verbose=False)
    resumed.run()
    straight = TrainLoop(config.replace(runs_dir=str(tmp_path / "straight")), verbose=False)
    straight.run()
    for a, b in [(resumed.model, plain.model), (resumed.ema2, straight.ema2), (resumed.ema, straight.ema)]:
        assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    first, second = weights(resumed.ema), weights(resumed.ema2)
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("module."))
    assert "ema2" in torch.load(config.run_dir / "checkpoint.pt", weights_only=True)
