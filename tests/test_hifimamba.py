"""HiFi-Mamba: shapes, gradients, data consistency, checkpointing, W-Laplacian split, scan causality,
parameter counts, and a short train.py run (L1 recipe) whose loss goes down."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.hifimamba import HiFiMamba, HiFiMambaConfig
from models.hifimamba_blocks import DualStreamBlock, binomial_kernel, laplacian_split
from utils import physics

REPO = Path(__file__).resolve().parents[1]


def _mask(batch: int, width: int, acs: int = 5, acc: int = 3) -> torch.Tensor:
    """(B, W) float mask: ``acs`` centred lines plus every ``acc``-th line (offset per element)."""
    mask = torch.zeros(batch, width)
    start = (width - acs + 1) // 2
    mask[:, start:start + acs] = 1
    for b in range(batch):
        mask[b, b % acc::acc] = 1
    return mask


def _kspace(batch, slices, coils, h, w, mask, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    image = torch.view_as_complex(torch.randn(batch, slices, coils, h, w, 2, generator=gen))
    return physics.fft2c(image) * (mask[:, None, None, None, :] != 0)


def _model(seed=0, **overrides) -> HiFiMamba:
    torch.manual_seed(seed)
    return HiFiMamba(HiFiMambaConfig.from_dict(overrides, preset="tiny"))


def _count(preset: str, backbone_only: bool = False) -> int:
    with torch.device("meta"):
        model = HiFiMamba(HiFiMambaConfig.from_dict({}, preset=preset))
    total = sum(p.numel() for p in model.parameters())
    return total - sum(p.numel() for p in model.sens_net.parameters()) if backbone_only else total


# ----------------------------------------------------------------------------------------- config


def test_preset_parameter_counts():
    counts = {p: (_count(p), _count(p, backbone_only=True)) for p in ("p2", "p1", "demo", "tiny")}
    for preset, (total, backbone) in counts.items():
        print(f"hifimamba {preset}: {total} parameters ({backbone} without the sensitivity net)")
    # P2: 16 dual-stream blocks of width 128 (64 per stream), ~0.21 M each, 8 feature DCs
    assert 3.3e6 < counts["p2"][1] < 3.4e6
    # P1 differs from P2 only in the patch (un)embeddings (2 p^2 channels)
    assert counts["p2"][1] - counts["p1"][1] == 9 * (2 * 128 * 3 + 128 * 2 * 3)
    assert counts["p2"][0] > counts["demo"][0] > counts["tiny"][0] > 0


def test_no_zero_dim_parameters():
    assert all(p.dim() >= 1 for p in _model().parameters())


@pytest.mark.parametrize("values, message", [
    ({"embed_dim": 15}, "even"), ({"bc_kernel": 6}, "odd"), ({"num_adj_slices": 2}, "odd"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"), ({"scan_backend": "x"}, "scan_backend"), ({"bogus": 1}, "unknown"),
])
def test_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        HiFiMambaConfig.from_dict(values, preset="tiny")


# ---------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("coils", [1, 3])
def test_forward_backward_odd_sizes(coils):
    model = _model()
    mask = _mask(2, 23)
    k = _kspace(2, 1, coils, 19, 23, mask)
    out = model(k, mask)
    assert out.shape == (2, 384, 384) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.mean().backward()
    grads = [p.grad for p in model.groups.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.groups[0].blocks[0].ssm.x_proj_low.weight.grad.abs().sum() > 0  # guidance path is live
    assert (model.sens_net.norm_unet.unet.head.weight.grad is not None) == (coils > 1)


def test_final_data_consistency_keeps_measured_lines():
    model = _model()
    mask = _mask(2, 21)
    k = _kspace(2, 1, 3, 17, 21, mask, seed=3)
    with torch.no_grad():
        final = model.final_kspace(k, mask)
        out = model(k, mask)
    sampled = mask[:, None, None, :].bool().expand_as(final)
    centre = k[:, 0]
    assert torch.allclose(final[sampled], centre[sampled], rtol=1e-5, atol=1e-6 * centre.abs().max())
    # the output is the RSS of the final coil images (checked with an independent numpy FFT)
    images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(final.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    expected = physics.center_crop_or_pad(torch.from_numpy(np.sqrt((np.abs(images) ** 2).sum(1))), (384, 384))
    assert torch.allclose(out, expected.float(), rtol=1e-4, atol=1e-6 * float(expected.max()))
    # unsampled lines are predicted by the network, not left at zero
    assert final[~sampled].abs().max() > 0


def test_single_coil_uses_unit_maps_and_is_scale_equivariant():
    model = _model()
    mask = _mask(1, 20)
    k = _kspace(1, 1, 1, 16, 20, mask, seed=1)
    sampled = mask.bool()
    assert torch.equal(model.coil_maps(k[:, 0], sampled), torch.ones_like(k[:, 0]))
    with torch.no_grad():
        out, scaled = model(k, mask), model(k * 1e-4, mask)
    assert torch.allclose(scaled, out * 1e-4, rtol=1e-4, atol=1e-9)


def test_adjacent_slices_feed_the_first_embedding():
    model = _model(num_adj_slices=3)
    assert model.patch_embed.proj.in_channels == 6
    mask = _mask(1, 20)
    k = _kspace(1, 5, 2, 16, 20, mask)
    with torch.no_grad():
        out = model(k, mask)
        changed = k.clone()
        changed[:, 0] *= 7  # outside the 3 centre slices: ignored
        same = model(changed, mask)
        changed[:, 1] *= 7  # an adjacent slice: used
        other = model(changed, mask)
    assert torch.equal(out, same) and not torch.allclose(out, other)


def test_bad_inputs_raise_clear_errors():
    model = _model()
    mask = _mask(1, 20)
    with pytest.raises(ValueError, match="complex"):
        model(torch.zeros(1, 1, 2, 16, 20), mask)
    with pytest.raises(ValueError, match="token grid"):
        model(torch.zeros(1, 1, 2, 4, 20, dtype=torch.complex64), mask)
    with pytest.raises(ValueError, match="mask"):
        model(torch.zeros(1, 1, 2, 16, 20, dtype=torch.complex64), torch.ones(1, 19))


def test_checkpointing_gives_same_outputs_and_grads():
    mask = _mask(1, 22)
    k = _kspace(1, 1, 2, 18, 22, mask)
    results = []
    for use_checkpoint in (False, True):
        model = _model(seed=5, use_checkpoint=use_checkpoint, drop_path_rate=0.2, attn_drop_rate=0.1)
        torch.manual_seed(11)  # same stochastic depth / dropout draws
        out = model(k, mask)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7), name


# ---------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("shape", [(2, 3, 9, 12), (1, 2, 7, 5)])
def test_w_laplacian_split_reconstructs_and_separates(shape):
    k = binomial_kernel()
    assert torch.allclose(k, torch.tensor([1, 4, 6, 4, 1.0]) / 16)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    low, high = laplacian_split(x, k)
    assert low.shape == high.shape == x.shape
    assert torch.allclose(low + high, x, atol=1e-6)
    const = torch.full(shape, 2.5)
    low_c, high_c = laplacian_split(const, k)
    assert torch.allclose(low_c, const, atol=1e-6) and high_c.abs().max() < 1e-6
    rows, cols = torch.meshgrid(torch.arange(shape[-2]), torch.arange(shape[-1]), indexing="ij")
    checker = ((-1.0) ** (rows + cols)).expand(shape)  # Nyquist: removed by the binomial low-pass
    low_n, high_n = laplacian_split(checker, k)
    assert low_n.abs().max() < 1e-6 and torch.allclose(high_n, checker, atol=1e-6)


def test_dual_stream_block_has_one_causal_scan():
    """Perturbing one token of the low-frequency stream (or the guidance) changes no output token that
    precedes it by more than the local window (3x3 conv: w + 1 tokens; dilated conv: 6 tokens), but does
    change tokens far after it: one unidirectional scan over the row-major sequence."""
    torch.manual_seed(0)
    block = DualStreamBlock(8, d_state=4, bottleneck_expansion=2, gate_expansion=2).eval()
    with torch.no_grad():  # long memory (decay ~ 1 per step) so the carried state is clearly visible
        block.ssm.A_log.fill_(-4.0)
        block.ssm.dt_proj.bias.fill_(0.5)
    h, w = 10, 8
    gen = torch.Generator().manual_seed(1)
    low, guide = torch.randn(2, 4, h, w, generator=gen), torch.randn(2, 4, h, w, generator=gen)
    r0, c0 = 4, 3
    t0 = r0 * w + c0
    with torch.no_grad():
        base = block.scan_low(low, guide).flatten(2)
        for which, reach in (("low", w + 1 + 6), ("guide", 6)):
            low2, guide2 = low.clone(), guide.clone()
            (low2 if which == "low" else guide2)[:, :, r0, c0] += torch.tensor([3.0, -1.0, 0.5, 2.0])  # not a constant (LayerNorm)
            out = block.scan_low(low2, guide2).flatten(2)
            diff = (out - base).abs().amax(dim=(0, 1))  # per token
            assert diff[: t0 - reach].max() == 0, which
            assert diff[t0 + reach + 1:].min() > 1e-5, which  # carried past the local window to the end


def test_scan_is_the_inherited_mamba_scan():
    block = DualStreamBlock(8, d_state=4, bottleneck_expansion=2, gate_expansion=2)
    from models.mamba import Mamba

    assert isinstance(block.ssm, Mamba) and type(block.ssm).scan is Mamba.scan
    assert not hasattr(block.ssm, "conv1d")


# ------------------------------------------------------------------------------------- train.py

def test_train_l1_recipe_loss_goes_down(tmp_path, micro_data):
    data = micro_data(tmp_path / "Data", volumes=2, slices=3, coils=2, height=384, width=48)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONHASHSEED": "0"}
    args = ["--net_name", "hm", "--model", "hifimamba", "--preset", "tiny", "--task", "brain", "--loss", "l1",
            "--data_path_train", str(data / "train"), "--result_path", str(tmp_path / "result"),
            "--num_epochs", "3", "--warmup_epochs", "0", "--num_workers", "0", "--max_lr", "1e-3",
            "--gradient_accumulation_steps", "1", "--gradient_clipping", "1.0", "--log_every", "1"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = np.load(tmp_path / "result" / "hm" / "loss_log" / "step1" / "loss_log.npy")
    print("hifimamba tiny L1 loss per epoch:", log[:, 1].round(4).tolist())
    assert log.shape == (3, 2) and np.isfinite(log[:, 1]).all()
    assert (np.diff(log[:, 1]) < 0).all() and log[-1, 1] < 0.9 * log[0, 1]
