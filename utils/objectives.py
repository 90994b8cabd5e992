"""Training objectives: ``objective(model, batch, device) -> scalar loss``.

* :class:`ReconstructionObjective` — reconstruction models on a training batch (``masked_kspace``,
  ``mask``, ``target``, ``foreground``, ``max_value``): the leaderboard SSIM loss restricted to the
  leaderboard foreground mask with ``data_range`` = the volume's max (``loss="ssim"``), or the L1 loss on
  the magnitude normalised by the volume's max (``loss="l1"``, HiFi-Mamba's recipe), or their sum
  (``loss="l1_ssim"``). Optional extra terms (KGMgT's recipe):

  - perceptual: ``perceptual_weight * ||phi(x) - phi(y)||_F`` with ``phi`` VGG19 up to relu5_1
    (:class:`VGG19Features`, weights from a local file only; magnitude / max repeated to 3 channels,
    ImageNet normalisation);
  - adversarial (WGAN-GP): the critic is ``model.discriminator`` and trains in the same engine step. The
    objective returns ``L_recon + w_adv * (-D'(fake)) + [D(fake.detach()) - D(real) + w_gp * GP]`` where
    ``D'`` is the critic evaluated with detached parameters, so the generator term never reaches the
    critic and the critic term (on a detached output) never reaches the generator: one backward gives
    each its own gradient and one optimizer step updates both (simultaneous updates; the released code
    alternates a critic step and a generator step). The logged loss is then the sum of both objectives.
* :class:`ClassificationObjective` — classifiers on ``(images (B, S, H, W), labels (B,))``: cross-entropy.
* TiTok-MRI codec on ACDC frames (``train.py --task acdc``): :class:`TokenizerObjective` (pixel + VQ loss; the
  pixel loss optionally motion-weighted, :func:`motion_weighted_pixel_loss`, ``--motion_weight``),
  :class:`SegmentationObjective` (cross-entropy + Dice), :class:`CodecDiTObjective` (rectified flow + pixel
  + Dice of the decoded ED/ES frames' segmentation + cavity area preservation).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import load_weights_file
from utils.flow import flow_pair
from utils.metrics import SSIMLoss
from utils.seed import torch_generator

RECONSTRUCTION_LOSSES = ("ssim", "l1", "l1_ssim")

#: VGG19 ``features`` layers up to relu5_1 (index 29), torchvision's numbering: (index, in, out) per conv.
_VGG19_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
                (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), (28, 512, 512))
_VGG19_POOLS = (4, 9, 18, 27)


class VGG19Features(nn.Module):
    """VGG19 ``features[:30]`` (conv1_1 .. relu5_1), frozen, in torchvision's layer numbering so its
    state dict (``features.N.weight``; other keys ignored) loads from a local file: safetensors or a
    weights-only torch file (never unpickled beyond tensors). ``forward(x (B, 3, H, W)) -> (B, 512, H/16, W/16)``.
    Any problem with the file is one ``ValueError`` naming it."""

    def __init__(self, path):
        super().__init__()
        layers: Dict[int, nn.Module] = {}
        for index, cin, cout in _VGG19_CONVS:
            layers[index], layers[index + 1] = nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU()
        for index in _VGG19_POOLS:
            layers[index] = nn.MaxPool2d(2)
        self.features = nn.Sequential(*(layers[i] for i in range(30)))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self._load(Path(path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        state = load_weights_file(path, "VGG19 weights")  # --perceptual_vgg
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"{path}: not VGG19 features weights: missing {missing[:3]}")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, VGG19 needs {tuple(value.shape)}")
        self.load_state_dict({k: state[k].float() for k in own})

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # a fixed feature extractor: always in evaluation mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DeepSpeed engine (or the module itself)."""
    return getattr(model, "module", model)


def _batch_seed_keys(batch) -> tuple:
    """Integers that identify a training batch (file names, sample ids, the drawn mask), so the gradient
    penalty's random interpolation is a function of the data, not of how a run was interrupted."""
    names = getattr(batch, "fname", None) or []
    ids = getattr(batch, "slice_index", None)
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids or [])
    mask_sum = int(batch.mask.detach().float().sum().item() * 16) if isinstance(getattr(batch, "mask", None), torch.Tensor) else 0
    return (zlib.crc32("|".join(map(str, names)).encode()), sum(int(i) * 7919 ** k for k, i in enumerate(ids)) % 2**31, mask_sum)


class ReconstructionObjective:
    def __init__(self, loss: str = "ssim", perceptual_weight: float = 0.0, perceptual_vgg: Optional[str] = None,
                 adversarial_weight: float = 0.0, gradient_penalty_weight: float = 10.0, seed: int = 0):
        if loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"loss must be one of {RECONSTRUCTION_LOSSES}, got {loss!r}")
        for name, value in (("perceptual_weight", perceptual_weight), ("adversarial_weight", adversarial_weight),
                            ("gradient_penalty_weight", gradient_penalty_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.loss = loss
        self.ssim = SSIMLoss()
        self.perceptual_weight = float(perceptual_weight) if perceptual_vgg else 0.0
        self.vgg = VGG19Features(perceptual_vgg) if perceptual_vgg and perceptual_weight > 0 else None
        self.adversarial_weight = float(adversarial_weight)
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self.seed = int(seed)

    def reconstruction_loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        target = batch.target.float()
        scale = batch.max_value.view(-1, 1, 1)
        terms = []
        if self.loss in ("ssim", "l1_ssim"):
            terms.append(self.ssim(output, target, batch.max_value, batch.foreground))
        if self.loss in ("l1", "l1_ssim"):
            terms.append(F.l1_loss(output / scale, target / scale))
        return sum(terms)

    def perceptual_loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        """``||phi(output / max) - phi(target / max)||_F`` (the released code's 'fro' criterion)."""
        self.vgg.to(output.device)
        scale = batch.max_value.view(-1, 1, 1, 1)
        x = (output.unsqueeze(1) / scale).expand(-1, 3, -1, -1)
        y = (batch.target.float().unsqueeze(1) / scale).expand(-1, 3, -1, -1)
        return torch.linalg.vector_norm(self.vgg(x) - self.vgg(y).detach())

    def adversarial_terms(self, model: nn.Module, output: torch.Tensor, batch) -> torch.Tensor:
        """``w_adv * (-D'(fake)) + D(fake.detach()) - D(real) + w_gp * GP`` (module docstring)."""
        critic = getattr(_unwrap(model), "discriminator", None)
        if critic is None:
            raise ValueError("the adversarial loss needs a model with a discriminator (e.g. kgmgt --discriminator_width 32)")
        scale = batch.max_value.view(-1, 1, 1, 1)
        real = batch.target.float().unsqueeze(1) / scale
        fake = output.unsqueeze(1) / scale
        detached = fake.detach()
        gen = torch_generator(self.seed, *_batch_seed_keys(batch))
        eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real)
        mixed = (eps * real + (1 - eps) * detached).requires_grad_(True)
        grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
        critic_loss = critic(detached).mean() - critic(real).mean() + self.gradient_penalty_weight * penalty
        frozen = {name: p.detach() for name, p in critic.named_parameters()}
        generator_loss = -torch.func.functional_call(critic, frozen, (fake,)).mean()
        return self.adversarial_weight * generator_loss + critic_loss

    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        acs = getattr(batch, "num_low_frequencies", None)
        if isinstance(acs, torch.Tensor) and bool((acs > 0).any()):  # e.g. ktRadial cine masks
            output = model(batch.masked_kspace, batch.mask, acs).float()
        else:
            output = model(batch.masked_kspace, batch.mask).float()
        loss = self.reconstruction_loss(output, batch)
        if self.vgg is not None:
            loss = loss + self.perceptual_weight * self.perceptual_loss(output, batch)
        if self.adversarial_weight > 0:
            loss = loss + self.adversarial_terms(model, output, batch)
        return loss


class ClassificationObjective:
    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images).float(), labels)


# ============================================================================ TiTok-MRI codec (ACDC frames)
#
# Batches are data.acdc_datasets.AcdcSample: ``frames (B, N, C, H, W)`` normalised and placed, ``label
# (B, H, W)`` int64 (-1 where a frame has none), ``has_label (B,)``, ``fname``, ``slice_index``, ``epoch``.
# ``log_values`` holds the last batch's extra statistics; the engine logs them beside the loss.

#: ACDC structures scored by the Dice terms: 1 RV, 2 myocardium, 3 LV.
ACDC_STRUCTURES = (1, 2, 3)
#: Cavities whose area the volume-preservation term keeps: 1 RV, 3 LV.
ACDC_CAVITIES = (1, 3)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, classes=ACDC_STRUCTURES, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean soft Dice`` over ``classes`` and samples: softmax of ``logits (B, K, H, W)`` against
    integer ``labels (B, H, W)``; a class absent from a sample and not predicted scores 1 (``smooth``)."""
    probs = torch.softmax(logits.float(), dim=1)
    dims = (-2, -1)
    scores = []
    for c in classes:
        p, y = probs[:, c], (labels == c).to(probs.dtype)
        scores.append((2 * (p * y).sum(dims) + smooth) / (p.sum(dims) + y.sum(dims) + smooth))
    return 1 - torch.stack(scores, dim=1).mean()


def cavity_area_error(logits: torch.Tensor, labels: torch.Tensor, classes=ACDC_CAVITIES) -> torch.Tensor:
    """Mean symmetric relative error of the soft cavity areas (pixels), ``|A - B| / (A + B + 1)`` with
    ``A = sum p_c`` (softmax of ``logits (B, K, H, W)``) and ``B = sum 1[y = c]``, over ``classes`` and
    samples: in [0, 1), 0 when the areas agree; per slice, so the stack's volumes follow."""
    probs = torch.softmax(logits.float(), dim=1)
    errors = []
    for c in classes:
        truth = (labels == c).to(probs.dtype).sum((-2, -1))
        area = probs[:, c].sum((-2, -1))
        errors.append((area - truth).abs() / (area + truth + 1))
    return torch.stack(errors, dim=1).mean()


def _acdc_generator(seed: int, batch) -> torch.Generator:
    """A generator for a batch's random draws: a function of (seed, epoch, samples), so a resumed run
    draws what the uninterrupted run drew."""
    names = zlib.crc32("|".join(map(str, batch.fname)).encode())
    ids = sum(int(i) * 7919 ** k for k, i in enumerate(batch.slice_index.tolist())) % 2**31
    epoch = int(batch.epoch.reshape(-1)[0]) if batch.epoch.numel() else 0
    return torch_generator(seed, epoch, names, ids)


def motion_weights(motion: torch.Tensor, motion_weight: float) -> torch.Tensor:
    """Per-pixel weights ``w = 1 + A s / mean(s)`` of motion maps ``s`` ``(B, 1, H, W)`` (the temporal standard
    deviation of each frame's slice, :func:`data.acdc_datasets.motion_map`; any units, the ratio is unitless),
    ``mean`` over each map's pixels, ``A = motion_weight >= 0``. A map that is 0 everywhere (a static cine)
    gives ``w = 1``. Returns ``(B, 1, H, W)`` float32, mean ``1 + A`` per moving map."""
    s = motion.float().clamp_min(0)
    mean = s.mean(dim=(-2, -1), keepdim=True)
    return 1 + float(motion_weight) * s / mean.clamp_min(torch.finfo(s.dtype).tiny)


def motion_weighted_pixel_loss(recon: torch.Tensor, x: torch.Tensor, motion: Optional[torch.Tensor],
                               motion_weight: float = 0.0, kind: str = "l2") -> torch.Tensor:
    """``mean(w * d) / mean(w)`` with ``d = (recon - x)^2`` (``kind`` "l2") or ``|recon - x|`` ("l1"), frames
    ``(B, C, H, W)``, ``w`` :func:`motion_weights` of ``motion`` ``(B, 1, H, W)`` (broadcast over channels),
    means over the whole batch. ``motion_weight`` 0 is exactly ``F.mse_loss`` / ``F.l1_loss`` (the same
    operations, the weights are not computed) and so is a static cine (``w = 1``)."""
    if kind not in ("l1", "l2"):
        raise ValueError(f"pixel loss must be 'l1' or 'l2', got {kind!r}")
    if not motion_weight:
        return F.l1_loss(recon, x) if kind == "l1" else F.mse_loss(recon, x)
    if motion is None:
        raise ValueError("a motion-weighted pixel loss needs the batch's motion maps (AcdcSample.motion)")
    w = motion_weights(motion.to(recon.device), motion_weight).expand_as(recon)
    d = (recon - x).abs() if kind == "l1" else (recon - x).square()
    return (w * d).sum() / w.sum()


class TokenizerObjective:
    """TiTok stage 1: ``pixel(recon, x) + quantizer loss`` on ``frames[:, 0]``; ``pixel_loss`` "l1" or "l2"
    (mean squared error, TiTok's single-stage recipe). Logs perplexity, codebook usage and the commitment.
    ``motion_weight`` A > 0 weights the pixel loss by ``1 + A s / mean(s)`` with ``s`` the batch's motion maps
    (:func:`motion_weighted_pixel_loss`), so the contracting heart, a small share of the frame, is not
    drowned by the static body; 0 (the default) is the plain loss."""

    def __init__(self, pixel_loss: str = "l2", motion_weight: float = 0.0):
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        if not motion_weight >= 0:
            raise ValueError(f"motion_weight must be >= 0, got {motion_weight}")
        self.pixel_loss, self.motion_weight = pixel_loss, float(motion_weight)
        self.log_values: Dict[str, float] = {}

    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        x = batch.frames[:, 0]
        out = model(x)
        recon = out.reconstruction.float()
        pixel = motion_weighted_pixel_loss(recon, x, getattr(batch, "motion", None), self.motion_weight, self.pixel_loss)
        self.log_values = {"train/pixel": float(pixel.detach()), "train/perplexity": float(out.perplexity),
                           "train/codebook_usage": float(out.usage)}
        return pixel + out.quantizer_loss


class SegmentationObjective:
    """The 2-D segmenter on labelled frames: ``cross-entropy + soft Dice`` (RV, myocardium, LV)."""

    def __init__(self, dice_weight: float = 1.0):
        self.dice_weight = float(dice_weight)
        self.log_values: Dict[str, float] = {}

    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        if not bool(batch.has_label.all()):
            raise ValueError("segmentation batches must hold labelled frames only")
        frames = batch.frames[:, 0]
        if frames.shape[1] == 2:  # complex frames: the segmenter sees the magnitude
            frames = torch.linalg.vector_norm(frames, dim=1, keepdim=True)
        logits = model(frames).float()
        ce = F.cross_entropy(logits, batch.label)
        dice = soft_dice_loss(logits, batch.label)
        self.log_values = {"train/ce": float(ce.detach()), "train/dice": float(1 - dice.detach())}
        return ce + self.dice_weight * dice


class CodecDiTObjective:
    """TiTok-MRI stage 2 (and 3): the DiT decoder with the tokenizer and the segmenter frozen.

    ``conditioner``: a frozen :class:`models.titok_mri.TiTokMRI` built with the DiT's configuration; it
    tokenises ``frames`` (``[frame, neighbours…, ED, ES]``) and builds the DiT's conditioning. The loss is

    ``||v - (x - eps)||^2 + w_pix |x_hat - x| + w_dice (1 - Dice(seg(x_hat), label)) + w_vol area error``

    with ``x_t = t x + (1 - t) eps``; ``x_hat`` is the one-step estimate ``x_t + (1 - t) v`` weighted by
    ``t`` per sample (a near-noise estimate says little), or, with ``sampler_steps > 0`` (stage 3), the
    frame decoded exactly as the codec decodes it (Euler steps from the DiT's seeded noise, gradients
    through every step). The Dice and area terms use the frozen segmenter on labelled (ED/ES) frames only.
    ``eps`` and ``t`` come from a generator of (seed, epoch, samples). ``motion_weight`` A > 0 makes the
    per-sample pixel term the motion-weighted mean ``sum(w |x_hat - x|) / sum(w)``, ``w = 1 + A s / mean(s)``
    (:func:`motion_weights`, the batch's motion maps ``s``); 0 is the plain mean.
    """

    def __init__(self, conditioner: nn.Module, pixel_weight: float = 1.0, dice_weight: float = 0.1,
                 volume_weight: float = 0.1, sampler_steps: int = 0, seed: int = 0, motion_weight: float = 0.0):
        for name, value in (("pixel_weight", pixel_weight), ("dice_weight", dice_weight), ("volume_weight", volume_weight),
                            ("motion_weight", motion_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 <= int(sampler_steps) <= 8:
            raise ValueError(f"sampler_steps must be 0 (one-step estimate) or 1..8, got {sampler_steps}")
        self.conditioner = conditioner
        self.pixel_weight, self.dice_weight, self.volume_weight = float(pixel_weight), float(dice_weight), float(volume_weight)
        self.sampler_steps, self.seed, self.motion_weight = int(sampler_steps), int(seed), float(motion_weight)
        self.log_values: Dict[str, float] = {}

    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        cond_net = self.conditioner.to(device)
        frames = batch.frames
        b, n = frames.shape[:2]
        a = cond_net.num_neighbours
        if n != a + 3:
            raise ValueError(f"DiT batches hold the frame, {a} neighbours, ED and ES ({a + 3} frames), got {n}")
        with torch.no_grad():
            ids = cond_net.encode(frames.reshape(b * n, *frames.shape[2:])).to(device).reshape(b, n, -1)
            cond = cond_net.condition(ids[:, 0], ids[:, 1:1 + a] if a else None, ids[:, -2], ids[:, -1])
        x = frames[:, 0]
        gen = _acdc_generator(self.seed, batch)
        eps = torch.randn(x.shape, generator=gen).to(device)
        t = torch.rand(b, generator=gen).to(device)
        xt, target = flow_pair(x, eps, t)
        v = model(xt, t, **cond).float()
        flow = F.mse_loss(v, target)
        if self.sampler_steps:
            x_hat = _unwrap(model).noise(b, device)
            for i in range(self.sampler_steps):
                step_t = torch.full((b,), i / self.sampler_steps, device=device)
                x_hat = x_hat + model(x_hat, step_t, **cond).float() / self.sampler_steps
            weight = torch.ones(b, device=device)
        else:
            x_hat = xt + (1 - t.view(-1, 1, 1, 1)) * v
            weight = t
        loss = flow
        if self.motion_weight:
            if getattr(batch, "motion", None) is None:
                raise ValueError("a motion-weighted pixel loss needs the batch's motion maps (AcdcSample.motion)")
            w = motion_weights(batch.motion.to(device), self.motion_weight).expand_as(x_hat).flatten(1)
            per_sample = (w * (x_hat - x).abs().flatten(1)).sum(1) / w.sum(1)
        else:
            per_sample = (x_hat - x).abs().flatten(1).mean(1)
        pixel = (per_sample * weight).sum() / weight.sum().clamp_min(1e-6)
        loss = loss + self.pixel_weight * pixel
        values = {"train/flow": float(flow.detach()), "train/pixel": float(pixel.detach())}
        labelled = batch.has_label.to(torch.bool)
        if bool(labelled.any()) and (self.dice_weight or self.volume_weight):
            est = x_hat[labelled]
            if est.shape[1] == 2:
                est = torch.linalg.vector_norm(est, dim=1, keepdim=True)
            logits = cond_net.segmenter(est).float()
            dice = soft_dice_loss(logits, batch.label[labelled])
            area = cavity_area_error(logits, batch.label[labelled])
            loss = loss + self.dice_weight * dice + self.volume_weight * area
            values.update({"train/decoded_dice": float(1 - dice.detach()), "train/area_error": float(area.detach())})
        self.log_values = values
        return loss

