import os

import pytest
import torch

# Tests see only what they set: no DDPM_* variable of the caller's shell leaks into a config.
for key in [k for k in os.environ if k.startswith("DDPM_")]:
    del os.environ[key]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_config(tmp_path):
    """A few-second CPU config: the smoke profile, narrower, in a temporary runs folder."""
    from ddpm.config import get_config

    return get_config(
        "smoke", runs_dir=str(tmp_path / "runs"), base_channels=8, limit_images=16, batch_size=4, train_steps=8,
        log_every=1, checkpoint_every=4, sample_every=10_000, progress=False,
    )
