"""The motion-weighted pixel loss of the TiTok-MRI codec (train.py --motion_weight A): the weights
``1 + A s / mean(s)``, the loss against plain MSE/L1, the tokenizer's and the DiT's objectives, and the
ACDC dataset's motion map (the temporal std of the frame's slice, placed like the frame). Tiny scale."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.acdc_datasets import AcdcFrameDataset, Placement, cine_scale, collate_acdc, motion_map, place_frames
from data.cine import read_acdc_patient
from models import build_model
from models.titok_mri import TiTokMRI, neighbour_offsets
from utils.objectives import (CodecDiTObjective, TokenizerObjective, motion_weighted_pixel_loss, motion_weights)

CPU = torch.device("cpu")


def _pair(seed=0, shape=(3, 1, 8, 6)):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)


@pytest.mark.parametrize("kind, plain", [("l2", F.mse_loss), ("l1", F.l1_loss)])
def test_weighted_loss_is_the_plain_loss_at_a0_and_for_a_static_cine(kind, plain):
    recon, x = _pair()
    moving = torch.rand(3, 1, 8, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(motion_weighted_pixel_loss(recon, x, moving, 0.0, kind), plain(recon, x))
    assert torch.equal(motion_weighted_pixel_loss(recon, x, None, 0.0, kind), plain(recon, x))
    static = torch.zeros(3, 1, 8, 6)
    assert torch.equal(motion_weights(static, 20.0), torch.ones(3, 1, 8, 6))
    torch.testing.assert_close(motion_weighted_pixel_loss(recon, x, static, 20.0, kind), plain(recon, x), rtol=1e-6, atol=0)
    # the weights do not depend on the map's units, and A > 0 changes the loss of a moving cine
    torch.testing.assert_close(motion_weights(moving * 7.5, 5.0), motion_weights(moving, 5.0))
    assert not torch.allclose(motion_weighted_pixel_loss(recon, x, moving, 5.0, kind), plain(recon, x))
    with pytest.raises(ValueError, match="motion maps"):
        motion_weighted_pixel_loss(recon, x, None, 5.0, kind)


def test_moving_pixels_weigh_more():
    motion = torch.zeros(1, 1, 8, 8)
    motion[..., 2:4, 2:4] = 1.0  # the "heart": 4 of 64 pixels move
    w = motion_weights(motion, 5.0)
    assert torch.equal(w[..., 0, 0], torch.ones(1, 1)) and float(w[0, 0, 2, 2]) == pytest.approx(1 + 5.0 * 16)
    assert float(w.mean()) == pytest.approx(1 + 5.0)
    x = torch.zeros(1, 1, 8, 8)
    on_heart, on_body = x.clone(), x.clone()
    on_heart[..., 2, 2] = 1.0  # the same error, once on a moving pixel and once on a static one
    on_body[..., 6, 6] = 1.0
    plain_heart, plain_body = F.mse_loss(on_heart, x), F.mse_loss(on_body, x)
    assert torch.equal(plain_heart, plain_body)
    heart = motion_weighted_pixel_loss(on_heart, x, motion, 5.0)
    body = motion_weighted_pixel_loss(on_body, x, motion, 5.0)
    assert float(heart) == pytest.approx(float(body) * 81) and float(heart) > float(plain_heart) > float(body)


def test_motion_map_of_the_dataset_is_placed_like_the_frame(tiny_cine):
    root = tiny_cine / "ACDC" / "training"
    patient = read_acdc_patient(root / "patient001", load_cine=True)
    t, z, h, w = patient.cine.shape
    normalised = patient.cine / cine_scale(patient.cine)
    std = motion_map(normalised)
    assert std.shape == (z, h, w) and std.dtype == np.float32
    np.testing.assert_allclose(std, normalised.std(axis=0), rtol=1e-5, atol=1e-6)
    assert np.array_equal(motion_map(np.repeat(normalised[:1], 4, axis=0)), np.zeros((z, h, w), np.float32))
    for size in ((h, w), (h + 9, w + 6), (h // 2, w // 2)):  # fits, padded, shrunk
        data = AcdcFrameDataset([root], size, "frames")
        for i in (0, len(data) - 1):
            sample = data[i]
            s = int(sample.slice_index) // t
            assert sample.motion.shape == sample.frames.shape[1:] == (1, *size) and sample.motion.dtype == torch.float32
            expected = place_frames(torch.from_numpy(std[s]), size)[0]
            torch.testing.assert_close(sample.motion[0], expected, rtol=2e-3, atol=2e-4)  # float16 storage
            place = Placement.of((h, w), size)  # zero on the frame's padding, non-zero inside
            inside = torch.zeros(size, dtype=torch.bool)
            inside[place.top:place.top + place.shrunk[0], place.left:place.left + place.shrunk[1]] = True
            assert bool((sample.motion[0][~inside] == 0).all()) and bool((sample.frames[0, 0][~inside] == 0).all())
            assert float(sample.motion[0][inside].abs().sum()) > 0
        if size == (h, w):  # no resampling: the std over the dataset's own frames of the slice
            frames = torch.stack([data[s * t + f].frames[0, 0] for f in range(t)])
            torch.testing.assert_close(data[s * t].motion[0], frames.std(0, unbiased=False), rtol=5e-3, atol=1e-3)
    # the moving pixels are the heart: the labelled cavities move far more than the rest of the frame
    sample = AcdcFrameDataset([root], (h, w), "labelled")[0]
    heart = sample.label > 0
    assert float(sample.motion[0][heart].mean()) > 3 * float(sample.motion[0][~heart].mean())
    batch = collate_acdc([sample, sample])
    assert batch.motion.shape == (2, 1, h, w)
    context = AcdcFrameDataset([root], (h, w), "context", neighbour_offsets(2))
    assert context[0].motion.shape == (1, h, w)


def test_objectives_take_the_motion_weight(tiny_cine):
    root = tiny_cine / "ACDC" / "training"
    torch.manual_seed(0)
    tok = build_model("titok", "tiny")
    batch = collate_acdc([AcdcFrameDataset([root], (48, 48), "frames")[i] for i in range(2)])
    with torch.no_grad():
        out = tok.train()(batch.frames[:, 0])
    plain = F.mse_loss(out.reconstruction.float(), batch.frames[:, 0]) + out.quantizer_loss
    torch.manual_seed(0)
    tok = build_model("titok", "tiny")
    with torch.no_grad():
        assert torch.equal(TokenizerObjective("l2")(tok.train(), batch, CPU), plain)
    torch.manual_seed(0)
    tok = build_model("titok", "tiny")
    with torch.no_grad():
        assert not torch.allclose(TokenizerObjective("l2", motion_weight=5.0)(tok.train(), batch, CPU), plain)
    with pytest.raises(ValueError, match="motion_weight"):
        TokenizerObjective("l2", motion_weight=-1.0)

    torch.manual_seed(1)
    dit = build_model("titok_dit", "tiny", num_latent_tokens=tok.config.num_latent_tokens)
    conditioner = TiTokMRI(tok.eval(), None, build_model("nnmamba_seg", "acdc_tiny"), dit_config=dit.config)
    ctx = AcdcFrameDataset([root], (48, 48), "context", neighbour_offsets(dit.config.num_neighbours))
    cbatch = collate_acdc([ctx[i] for i in range(2)])
    losses = {}
    for a in (0.0, 5.0):
        objective = CodecDiTObjective(conditioner, dice_weight=0.0, volume_weight=0.0, seed=3, motion_weight=a)
        with torch.no_grad():
            losses[a] = (objective(dit, cbatch, CPU), objective.log_values["train/pixel"])
    with torch.no_grad():
        base = CodecDiTObjective(conditioner, dice_weight=0.0, volume_weight=0.0, seed=3)(dit, cbatch, CPU)
    assert torch.equal(losses[0.0][0], base) and losses[5.0][1] != losses[0.0][1]
    with pytest.raises(ValueError, match="motion_weight"):
        CodecDiTObjective(conditioner, motion_weight=-2.0)
