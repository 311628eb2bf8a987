"""torchrun's path on CPU: 2 gloo processes sharing one global batch train the same weights as 1 process."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddpm.train import TrainLoop, load_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, port: int, config, stops=(None,)) -> None:
    """Train `config` with torchrun's environment; with stops=(4, None): stop at step 4, then resume in a new
    TrainLoop (as a restarted job would) and finish."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        for until_step in stops:
            loop = TrainLoop(config, verbose=False)
            assert loop.local_batch == config.batch_size // world_size
            loop.run(until_step)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(config, stops=(None,)) -> None:
    mp.start_processes(worker, args=(2, free_port(), config, stops), nprocs=2, join=True, start_method="spawn")


@pytest.mark.timeout(300)
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_config, tmp_path):
    config = tiny_config.replace(dropout=0.0, train_steps=3, checkpoint_every=3)  # dropout streams differ per rank
    spawn(config.replace(runs_dir=str(tmp_path / "ddp")))
    TrainLoop(config.replace(runs_dir=str(tmp_path / "single")), verbose=False).run()

    ddp = load_run(config.replace(runs_dir=str(tmp_path / "ddp")).run_dir)
    single = load_run(config.replace(runs_dir=str(tmp_path / "single")).run_dir)
    assert ddp.step == single.step == 3
    # Gradients are averaged in another order (two half-batch means, then their mean): equal to float32 rounding.
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp.model.state_dict()[name], value, atol=1e-5, rtol=1e-4, msg=name)
    for name, value in single.ema_model.state_dict().items():
        torch.testing.assert_close(ddp.ema_model.state_dict()[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_a_global_batch_that_does_not_divide_is_refused(tiny_config, monkeypatch):
    monkeypatch.setattr("ddpm.train.init_distributed", lambda device: (__import__("ddpm.distributed").distributed.DistInfo(0, 3, 0), torch.device("cpu")))
    with pytest.raises(ValueError, match="batch_size=4 is the global batch and must divide by the 3 processes"):
        TrainLoop(tiny_config, verbose=False)


@pytest.mark.timeout(300)
def test_a_resumed_ddp_run_equals_the_uninterrupted_one_with_dropout(tiny_config, tmp_path):
    # Each rank draws its own dropout masks: a checkpoint must keep every rank's RNG streams, and each rank must take
    # back its own (not rank 0's, and not a fresh seed).
    config = tiny_config.replace(dropout=0.3, train_steps=8, checkpoint_every=4)
    spawn(config.replace(runs_dir=str(tmp_path / "resumed")), stops=(4, None))
    spawn(config.replace(runs_dir=str(tmp_path / "straight")))
    resumed = load_run(config.replace(runs_dir=str(tmp_path / "resumed")).run_dir)
    straight = load_run(config.replace(runs_dir=str(tmp_path / "straight")).run_dir)
    assert resumed.step == straight.step == 8
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    saved = torch.load(config.replace(runs_dir=str(tmp_path / "resumed")).run_dir / "checkpoint.pt", weights_only=True)
    per_rank = saved["rng"]["per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
