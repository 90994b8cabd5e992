"""Model registry: registry name -> (model class, config class).

``build_model(name, preset=None, **hparams)`` builds a model from a named preset overridden by
hyperparameters; an unknown name, preset or hyperparameter is a ``ValueError``. A checkpoint stores
``(name, config.to_dict())`` so ``build_model(name, **config)`` rebuilds it exactly.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

from torch import nn

from models.anatomy_cnn import AnatomyCNN, AnatomyCNNConfig
from models.config import ModelConfig
from models.dit import DiTConfig, TokenDiT
from models.hifimamba import HiFiMamba, HiFiMambaConfig
from models.kgmgt import KGMgT, KGMgTConfig
from models.nnmamba import NNMambaCls, NNMambaClsConfig, NNMambaSeg, NNMambaSegConfig
from models.promptmr import PromptMR, PromptMRConfig
from models.titok import TiTok, TiTokConfig
from models.varnet import VarNet, VarNetConfig

#: Reconstruction models follow ``forward(masked_kspace, mask, num_low_frequencies=None) -> (B, 384, 384)``
#: (cine models such as kgmgt: ``(B, H, W)``);
#: classifiers ``forward(images (B, S, H, W)) -> logits (B, 2)``; nnmamba_seg is a 2-D/3-D segmentation
#: network ``(B, C, *spatial) -> (B, classes, *spatial)`` (trained in 2-D on ACDC labels: train.py --task acdc);
#: titok / titok_dit are the TiTok-MRI codec's tokenizer and DiT decoder (models/titok.py, models/dit.py).
MODEL_REGISTRY: Dict[str, Tuple[Type[nn.Module], Type[ModelConfig]]] = {
    "promptmr": (PromptMR, PromptMRConfig),
    "varnet": (VarNet, VarNetConfig),
    "hifimamba": (HiFiMamba, HiFiMambaConfig),
    "kgmgt": (KGMgT, KGMgTConfig),
    "anatomy_cnn": (AnatomyCNN, AnatomyCNNConfig),
    "nnmamba_cls": (NNMambaCls, NNMambaClsConfig),
    "nnmamba_seg": (NNMambaSeg, NNMambaSegConfig),
    "titok": (TiTok, TiTokConfig),
    "titok_dit": (TokenDiT, DiTConfig),
}

#: Registry names of the brain/knee classifiers (trained with cross-entropy, used for routing).
CLASSIFIERS = ("anatomy_cnn", "nnmamba_cls")
#: Reconstruction models for cine only (frames τ-1, τ, τ+1 in, the full ``(B, H, W)`` image out).
CINE_MODELS = ("kgmgt",)
#: TiTok-MRI codec networks, trained on ACDC-style frames (``train.py --task acdc``): the tokenizer
#: ``titok`` (frames -> K token ids -> stage-1 frames), the DiT decoder ``titok_dit`` and the 2-D segmenter
#: (``nnmamba_seg`` with ``spatial_dims=2``, 4 classes) whose features guide it.
CODEC_MODELS = ("titok", "titok_dit")
ACDC_MODELS = CODEC_MODELS + ("nnmamba_seg",)
#: Registry names that are neither reconstruction models nor routing classifiers.
OTHER_MODELS = ("nnmamba_seg",) + CODEC_MODELS


def model_entry(name: str) -> Tuple[Type[nn.Module], Type[ModelConfig]]:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name]


def build_config(name: str, preset: Optional[str] = None, **hparams: Any) -> ModelConfig:
    """The config of registry entry ``name``: ``preset`` overridden by ``hparams`` (strict)."""
    _, config_cls = model_entry(name)
    return config_cls.from_dict(hparams, preset=preset)


def build_model(name: str, preset: Optional[str] = None, **hparams: Any) -> nn.Module:
    """Build registry entry ``name`` from ``preset`` overridden by ``hparams``."""
    model_cls, _ = model_entry(name)
    return model_cls(build_config(name, preset, **hparams))
