"""Cine training samples (data/cine_datasets.py) and PromptMR+ over time frames (per-frame and 2-D masks).

Tiny CMRxRecon FullSample files (6 frames, 2 slices, 3 coils, 24 x 32) are written with data.cine's
writer; everything runs in a few seconds.
"""
import numpy as np
import pytest
import torch

from data.cine import write_cine_fullsample
from data.cine_datasets import (
    CineSliceDataset,
    CineTrainingTransform,
    circular_frame_table,
    circular_frames,
    from_model_layout,
    to_model_layout,
)
from data.cine_masks import CineMaskSampler
from data.datasets import collate_training
from models import build_model
from models.promptmr import model_mask
from utils.objectives import ReconstructionObjective
from utils.physics import fft2c, ifft2c, rss

T, S, C, KY, KX = 6, 2, 3, 24, 32


def _cine(seed: int) -> np.ndarray:
    """Fully sampled k-space (T, S, C, KY, KX) of a pulsing disc seen by smooth coils."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, KY), np.linspace(-1, 1, KX), indexing="ij")
    radius = 0.4 + 0.1 * np.cos(2 * np.pi * np.arange(T) / T)[:, None, None, None, None]
    obj = (yy ** 2 + xx ** 2 < radius ** 2) * (1.0 + 0.2 * np.arange(S)[None, :, None, None, None])
    coils = np.exp(1j * np.arange(C)[None, None, :, None, None] * (xx + 0.3 * yy)) * (1 + 0.2 * np.arange(C))[None, None, :, None, None]
    images = (obj * coils).astype(np.complex64)
    images += (rng.standard_normal(images.shape) * 1e-3).astype(np.complex64)
    return fft2c(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def cine_set(tmp_path_factory):
    set_dir = tmp_path_factory.mktemp("cine") / "MultiCoil" / "Cine" / "TrainingSet"
    write_cine_fullsample(set_dir, "P001", "sax", _cine(1))
    write_cine_fullsample(set_dir, "P002", "lax", _cine(2)[:, :1])
    return set_dir


def test_circular_frames_wrap_around_the_cycle():
    assert circular_frames(0, 6, 3).tolist() == [5, 0, 1]
    assert circular_frames(5, 6, 5).tolist() == [3, 4, 5, 0, 1]
    assert circular_frames(0, 2, 5).tolist() == [0, 1, 0, 1, 0]  # fewer frames than neighbours
    table = circular_frame_table(6, 3)
    assert table.shape == (6, 3) and all((table[t] == circular_frames(t, 6, 3)).all() for t in range(6))
    with pytest.raises(ValueError):
        circular_frames(0, 6, 4)


def test_model_layout_swaps_phase_encoding_last():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert to_model_layout(x).shape == (2, 4, 3)
    assert np.array_equal(from_model_layout(to_model_layout(x)), x)


def _dataset(cine_set, family="uniform", acc=4, seed=0):
    return CineSliceDataset([cine_set.parents[2]], 3, CineTrainingTransform(CineMaskSampler(family, acc, seed)))


def test_samples_cover_every_slice_and_frame_with_per_frame_masks(cine_set):
    ds = _dataset(cine_set, "kt_uniform", 4)
    assert len(ds) == T * S + T * 1
    ds.set_epoch(1)
    i = 3  # P001 slice 0, frame 3 (files sort by subject)
    sample = ds[i]
    assert sample.masked_kspace.shape == (3, C, KX, KY) and sample.masked_kspace.dtype == torch.complex64
    assert sample.mask.shape == (3, 1, KY)  # line masks keep one readout row
    assert not torch.equal(sample.mask[0], sample.mask[1]), "kt_uniform masks must differ from frame to frame"
    # zero off each frame's own mask, the measurement on it
    full = to_model_layout(torch.from_numpy(_cine(1)[circular_frames(3, T, 3), 0]))
    assert torch.equal(sample.masked_kspace, (full * sample.mask.unsqueeze(1)).to(torch.complex64))
    expected = rss(ifft2c(full[1]), dim=-3)
    assert torch.allclose(sample.target, expected, rtol=1e-5, atol=1e-6)
    assert sample.max_value == pytest.approx(float(expected.max()), rel=1e-6)
    assert sample.fname.endswith("P001/cine_sax.mat") and sample.slice_index == 3
    # a pure function of (seed, epoch, index)
    again = ds[i]
    assert torch.equal(again.mask, sample.mask)
    others = []
    for epoch in (2, 3, 4, 5):
        ds.set_epoch(epoch)
        others.append(ds[i].mask)
    assert any(not torch.equal(m, sample.mask) for m in others), "masks must change across epochs"


def test_radial_masks_are_2d_and_carry_the_acs_width(cine_set):
    ds = _dataset(cine_set, "kt_radial", 8)
    sample = ds[0]
    assert sample.mask.shape == (3, KX, KY) and sample.num_low_frequencies == 16
    assert _dataset(cine_set, "uniform", 8)[0].num_low_frequencies == 0


def test_model_mask_broadcasts_every_contract_form():
    shape = (2, 3, 4, 8, 10)
    line = torch.rand(2, 10) > 0.5
    assert model_mask(line, shape).shape == (2, 1, 1, 1, 10)
    per_frame = torch.rand(2, 3, 10) > 0.5
    assert torch.equal(model_mask(per_frame, shape), model_mask(per_frame.unsqueeze(2).expand(2, 3, 8, 10), shape)[:, :, :, :1])
    two_d = torch.rand(2, 8, 10) > 0.5
    assert model_mask(two_d, shape).shape == (2, 1, 1, 8, 10)
    assert model_mask(torch.ones(10), shape).shape == (2, 1, 1, 1, 10)
    with pytest.raises(ValueError, match="ambiguous"):
        model_mask(torch.ones(2, 3, 10), (2, 3, 4, 3, 10))
    with pytest.raises(ValueError, match="does not broadcast"):
        model_mask(torch.ones(2, 3, 9), shape)


@pytest.mark.parametrize("family", ["uniform", "kt_gaussian", "kt_radial"])
def test_promptmr_cine_trains_on_a_batch(cine_set, family):
    torch.manual_seed(0)
    ds = _dataset(cine_set, family, 4)
    batch = collate_training([ds[0], ds[7]])
    model = build_model("promptmr", "cine_tiny")
    out = model(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
    assert out.shape == (2, KX, KY)  # full image, no 384 crop
    loss = ReconstructionObjective("ssim")(model, batch, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.cascades[0].parameters() if p.requires_grad)


def test_per_frame_masks_reach_the_data_consistency(cine_set):
    """With one mask shared by all frames the model's output differs from per-frame masks."""
    ds = _dataset(cine_set, "kt_uniform", 4)
    batch = collate_training([ds[2]])
    model = build_model("promptmr", "cine_tiny").eval()
    with torch.no_grad():
        own = model(batch.masked_kspace, batch.mask)
        shared = model(batch.masked_kspace, batch.mask[:, 1:2])
    assert not torch.allclose(own, shared)
