import pytest
import torch

from ddpm.ema import EMA, ema_decay


def test_ema_equals_the_closed_form_average():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, half_life_kimg=0.004, rampup=None)  # half-life 4 images, batch 1: decay 0.5 ** 0.25
    decay = 0.5 ** 0.25
    snapshots = []
    torch.manual_seed(0)
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        snapshots.append([p.detach().clone() for p in model.parameters()])
        assert ema.update(model, images_seen=step, batch_size=1) == pytest.approx(decay)
    # AveragedModel copies the first snapshot, then ema <- decay * ema + (1 - decay) * p
    for i, averaged in enumerate(ema.module.parameters()):
        expected = decay ** 6 * snapshots[0][i] + sum((1 - decay) * decay ** (7 - k) * snapshots[k - 1][i] for k in range(2, 8))
        assert torch.allclose(averaged, expected, atol=1e-6)


def test_half_life_is_in_images_whatever_the_batch():
    for batch in (1, 32, 256):
        per_step = ema_decay(10**9, batch, half_life_kimg=10, rampup=None)
        assert per_step ** (10_000 / batch) == pytest.approx(0.5)


def test_rampup_shortens_the_half_life_early():
    assert ema_decay(1000, 10, half_life_kimg=100, rampup=0.05) == pytest.approx(0.5 ** (10 / 50))
    assert ema_decay(10**8, 10, half_life_kimg=100, rampup=0.05) == pytest.approx(0.5 ** (10 / 100_000))
