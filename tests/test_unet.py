import pytest
import torch

from ddpm.unet import BaselineUNet, ResBlock, UNet, count_parameters, timestep_embedding


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_both_networks_keep_the_input_shape(size, batch):
    torch.manual_seed(0)
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    for net in (
        BaselineUNet(size, base_channels=8, channel_mult=(1, 2, 2, 2)),
        UNet(size, base_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,)),
    ):
        assert net(x, t).shape == x.shape


def test_default_improved_unet_is_ddpm_sized():
    # Ho et al.'s CIFAR-10 network (35.7M) is the reference: same widths, 4 levels, attention at 16x16.
    assert 30e6 < count_parameters(UNet(64)) < 40e6


def test_improved_unet_starts_as_zero_and_depends_on_t():
    net = UNet(32, base_channels=16, channel_mult=(1, 2))
    x = torch.randn(2, 3, 32, 32)
    assert torch.count_nonzero(net(x, torch.tensor([1, 2]))) == 0  # zero-initialised output conv
    # Zero-initialised branches ignore t at first; give every zeroed weight some value, as training would.
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and torch.count_nonzero(p) == 0:
                p.normal_(std=0.1)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([900, 900]))
    assert not torch.allclose(a, b)


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(emb[1, :4] ** 2 + emb[1, 4:] ** 2, torch.ones(4))


@pytest.mark.parametrize("cls", [UNet, BaselineUNet])
def test_image_size_that_cannot_be_halved_gives_a_clear_error(cls):
    with pytest.raises(ValueError, match="image_size=36 cannot be halved 3 times.*multiple of 8"):
        cls(36, channel_mult=(1, 2, 2, 2))


def test_attention_resolution_that_never_occurs_is_refused():
    with pytest.raises(ValueError, match=r"attention_resolutions \[7\] never occur"):
        UNet(32, channel_mult=(1, 2), attention_resolutions=(7,))


def test_time_projection_is_not_affine_in_the_time_mlp_output():
    # Ho et al. / improved-diffusion: SiLU before each block's projection. Without it, the time MLP's last Linear and
    # the block's projection are one linear map, f(e) + f(-e) = 2 f(0) for every e.
    torch.manual_seed(0)
    net = UNet(32, base_channels=16, channel_mult=(1, 2), attention_resolutions=())
    e = torch.randn(3, 4 * 16) * 3
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 2 + 2 + 3 * 2
    for block in blocks:
        zero = block.time_proj(torch.zeros_like(e))
        assert not torch.allclose(block.time_proj(e) + block.time_proj(-e), 2 * zero, atol=1e-4)


def test_scale_shift_norm_lets_t_scale_the_normalised_features():
    # AdaGN: h = norm(h) * (1 + scale) + shift. With scale = -1 and shift = 0 the residual branch sees zeros, so the
    # block returns its skip path exactly, whatever conv1 and conv2 hold.
    torch.manual_seed(0)
    block = ResBlock(8, 8, time_dim=32, dropout=0.0, scale_shift=True)
    with torch.no_grad():
        block.conv2.weight.normal_()
        block.conv2.bias.zero_()
        linear = block.time_proj[-1]
        assert linear.out_features == 16  # a scale and a shift per channel
        linear.weight.zero_()
        linear.bias.copy_(torch.cat([-torch.ones(8), torch.zeros(8)]))
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 32)
    torch.testing.assert_close(block(x, emb), x)
    with torch.no_grad():
        linear.bias.zero_()  # scale 0: the branch is back
    assert not torch.allclose(block(x, emb), x)


def test_scale_shift_norm_is_a_unet_option():
    plain = UNet(32, base_channels=16, channel_mult=(1, 2), attention_resolutions=())
    adagn = UNet(32, base_channels=16, channel_mult=(1, 2), attention_resolutions=(), scale_shift_norm=True)
    extra = sum(b.time_proj[-1].weight.shape[1] * b.time_proj[-1].weight.shape[0] // 2 + b.time_proj[-1].bias.numel() // 2
                for b in adagn.modules() if isinstance(b, ResBlock))
    assert count_parameters(adagn) == count_parameters(plain) + extra
    x = torch.randn(2, 3, 32, 32)
    assert adagn(x, torch.tensor([3, 700])).shape == x.shape
