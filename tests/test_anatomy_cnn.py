"""Brain/knee classifier: shapes, normalisation invariances, config checks and a tiny training run."""
from __future__ import annotations

import math

import pytest
import torch

from models.anatomy_cnn import LABELS, AnatomyCNN, AnatomyCNNConfig


def _model(preset="tiny", seed=0) -> AnatomyCNN:
    torch.manual_seed(seed)
    return AnatomyCNN(AnatomyCNNConfig.from_dict({}, preset=preset))


def _grid(size: int):
    axis = torch.linspace(-1, 1, size)
    return torch.meshgrid(axis, axis, indexing="ij")


def _brain_like(gen: torch.Generator, slices: int, size: int) -> torch.Tensor:
    """Round head: a smooth bright ellipse with a dimmer core and mild noise, (S, size, size)."""
    y, x = _grid(size)
    out = []
    for _ in range(slices):
        cy, cx, ry, rx = (0.2 * torch.rand(4, generator=gen) - 0.1) + torch.tensor([0.0, 0.0, 0.75, 0.65])
        r = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        head = torch.sigmoid((1 - r) * 12) * (1 - 0.4 * torch.exp(-r * 3))
        out.append(head + 0.05 * torch.rand(size, size, generator=gen))
    return torch.stack(out) * (0.5 + torch.rand(1, generator=gen))


def _knee_like(gen: torch.Generator, slices: int, size: int) -> torch.Tensor:
    """Knee: rectangular bone/cartilage blocks with oriented stripe texture and noise, (S, size, size)."""
    y, x = _grid(size)
    out = []
    for _ in range(slices):
        angle = math.pi * float(torch.rand(1, generator=gen))
        freq = 10 + 8 * float(torch.rand(1, generator=gen))
        stripes = 0.5 + 0.5 * torch.sin(freq * (x * math.cos(angle) + y * math.sin(angle)))
        top = ((y > -0.9) & (y < -0.1) & (x.abs() < 0.5)).float()
        bottom = ((y > 0.1) & (y < 0.9) & (x.abs() < 0.4)).float()
        out.append((top + bottom) * (0.4 + 0.6 * stripes) + 0.05 * torch.rand(size, size, generator=gen))
    return torch.stack(out) * (0.5 + torch.rand(1, generator=gen))


def _dataset(volumes: int, slices: int = 2, size: int = 32, seed: int = 0):
    """``volumes`` brain-like then ``volumes`` knee-like volumes, (2V, S, size, size), labels (2V,)."""
    gen = torch.Generator().manual_seed(seed)
    brains = [_brain_like(gen, slices, size) for _ in range(volumes)]
    knees = [_knee_like(gen, slices, size) for _ in range(volumes)]
    labels = torch.tensor([0] * volumes + [1] * volumes)
    return torch.stack(brains + knees), labels


def test_labels_order():
    assert LABELS == ("brain", "knee")


@pytest.mark.parametrize("batch, slices, h, w", [(1, 1, 16, 16), (3, 4, 23, 17), (2, 2, 384, 384)])
def test_forward_shapes_and_predict(batch, slices, h, w):
    model = _model()
    images = torch.rand(batch, slices, h, w)
    logits = model(images)
    assert logits.shape == (batch, 2) and torch.isfinite(logits).all()
    labels, confidence = model.predict(images)
    assert labels.shape == confidence.shape == (batch,)
    assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1}
    assert ((confidence >= 0.5) & (confidence <= 1)).all()
    torch.testing.assert_close(labels, logits.argmax(dim=-1))


def test_volume_logits_are_mean_of_slice_logits_and_order_free():
    model = _model()
    images = torch.rand(2, 5, 20, 24)
    per_slice = torch.cat([model(images[:, i : i + 1]) for i in range(5)], dim=0).reshape(5, 2, 2)
    torch.testing.assert_close(model(images), per_slice.mean(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(images[:, [3, 0, 4, 1, 2]]), model(images), rtol=1e-5, atol=1e-6)


def test_invariant_to_intensity_scale_and_offset_per_slice():
    model = _model("default")
    images = torch.rand(2, 3, 32, 40) * 1e-4  # raw MRI magnitudes are ~1e-4
    scale = torch.tensor([1e4, 3.0, 0.02]).view(1, 3, 1, 1)
    torch.testing.assert_close(model((images + 3e-5) * scale), model(images), rtol=1e-4, atol=1e-4)
    constant = torch.full((1, 1, 16, 16), 7.0)
    assert torch.isfinite(model(constant)).all()


def test_backward_reaches_every_parameter():
    model = _model()
    model(torch.rand(2, 2, 17, 19)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "values, preset",
    [({"in_channels": 2}, None), ({"channels": ()}, None), ({"channels": (4, 0)}, None),
     ({"width": 3}, None), ({}, "huge")],
)
def test_bad_config_raises(values, preset):
    with pytest.raises(ValueError):
        AnatomyCNNConfig.from_dict(values, preset=preset)


def test_config_round_trip_and_presets():
    cfg = AnatomyCNNConfig.from_dict({}, preset="default")
    assert cfg.channels == (16, 32, 64) and cfg.in_channels == 1
    assert AnatomyCNNConfig.from_dict(cfg.to_dict()) == cfg
    assert AnatomyCNNConfig.from_dict({}, preset="tiny").channels == (4, 8, 8)


def test_bad_input_raises():
    model = _model()
    with pytest.raises(ValueError):
        model(torch.rand(3, 32, 32))  # no slice axis
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 4, 32))  # too small for three pools
    with pytest.raises(ValueError):
        model(torch.ones(1, 1, 32, 32, dtype=torch.long))


def test_tiny_training_separates_round_from_textured_volumes():
    images, labels = _dataset(volumes=8)
    model = _model(seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
    predicted, confidence = model.predict(images)
    assert (predicted == labels).all(), (predicted, labels)
    assert loss.item() < 0.1
    # it generalises to fresh volumes of the same kinds
    test_images, test_labels = _dataset(volumes=4, seed=1)
    assert (model.predict(test_images)[0] == test_labels).float().mean() >= 0.75
