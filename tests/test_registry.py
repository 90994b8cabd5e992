"""The model registry: every entry builds, runs forward and backward at tiny size, and is strict."""
import pytest
import torch

import models
from models import CINE_MODELS, CLASSIFIERS, MODEL_REGISTRY, OTHER_MODELS, build_config, build_model

RECONSTRUCTION = sorted(set(MODEL_REGISTRY) - set(CLASSIFIERS) - set(OTHER_MODELS))


def _kspace(B, S, C, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, S, C, H, W, dtype=torch.complex64, generator=g)
    mask = torch.zeros(B, W)
    mask[:, ::4] = 1
    mask[:, W // 2 - 3 : W // 2 + 3] = 1
    return k * mask[:, None, None, None, :], mask


@pytest.mark.parametrize("name", RECONSTRUCTION)
def test_reconstruction_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, preset="tiny")
    S = getattr(model.config, "num_adj_slices", 1)
    k, mask = _kspace(2, S, 3, 24, 22)
    out = model(k, mask)
    assert out.shape == ((2, 24, 22) if name in CINE_MODELS else (2, 384, 384)) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_forward_backward(name):
    model = build_model(name, preset="tiny")
    # 128 x 128 x 3 slices once crashed nnmamba_cls's backward (oneDNN on a channels-last-strided tensor)
    for shape in ((2, 3, 40, 36), (1, 3, 128, 128), (1, 3, 128, 128)):
        logits = model(torch.rand(*shape))
        assert logits.shape == (shape[0], 2)
        torch.nn.functional.cross_entropy(logits, torch.zeros(shape[0], dtype=torch.long)).backward()


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_every_entry_is_strict_and_round_trips(name):
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        build_model(name, preset="tiny", not_a_hyperparameter=1)
    with pytest.raises(ValueError, match="unknown preset"):
        build_model(name, preset="no_such_preset")
    config = build_config(name, preset="tiny")
    assert build_config(name, **config.to_dict()) == config
    model = build_model(name, preset="tiny")
    # DeepSpeed broadcasts parameters as bytes: 0-dim parameters cannot be broadcast
    assert not [n for n, p in model.named_parameters() if p.ndim == 0]


def test_segmentation_forward_backward():
    model = build_model("nnmamba_seg", preset="tiny")
    shape = (7, 20, 18)[-model.config.spatial_dims :]
    out = model(torch.rand(1, model.config.in_channels, *shape))
    assert out.shape == (1, model.config.num_classes, *shape)
    out.mean().backward()


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("unet3000")
    assert set(CLASSIFIERS) <= set(models.MODEL_REGISTRY)
