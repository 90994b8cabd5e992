"""TiTok-MRI as one codec: the tokenizer (:mod:`models.titok`), the DiT decoder (:mod:`models.dit`) and the
2-D segmentation network whose features guide it (``nnmamba_seg`` in 2-D, or any network with a ``head``
module whose input are its last features). Pure model code: tensors in, tensors out (no files; the token
file format and the frame I/O are :mod:`data.codec_io`, the command line ``scripts/codec.py``).

Frames are ``(…, C, H, W)`` at the tokenizer's ``image_size``, normalised (magnitude / the subject's 99.5th
percentile). A cine slice is a cycle of ``T`` frames; token ids are ``(…, K)`` int64.

Decoding a cycle (:meth:`TiTokMRI.decode_cycles`, ids ``(S, T, K)`` -> frames ``(S, T, C, H, W)``):

1. stage-1 frames of every frame from its own tokens (the tokenizer's pixel decoder);
2. segmentation features of the stage-1 end-diastolic and end-systolic frames of each slice (decode
   side only: they cost no bytes, and training sees exactly the same features);
3. per frame, the DiT samples the frame from the seeded noise in ``steps`` Euler steps, attending to the
   frame's codes, its neighbours' codes (circular offsets :func:`neighbour_offsets`) and the ED/ES
   features; the stage-1 frame is its extra input channel.

Without a DiT the codec decodes with the stage-1 decoder alone.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from models.dit import DiTConfig, TokenDiT
from models.titok import TiTok

__all__ = ["TiTokMRI", "SEG_CLASSES", "CODEC_ARTIFACTS", "magnitude", "neighbour_offsets", "segmenter_features",
           "check_codec_parts", "load_codec"]

#: ACDC classes: 0 background, 1 RV, 2 myocardium, 3 LV.
SEG_CLASSES = 4


def neighbour_offsets(count: int) -> List[int]:
    """Time offsets of the ``count`` neighbouring frames in DiT slot order: ``[-1, +1, -2, +2, …]``."""
    return [(i // 2 + 1) * (-1 if i % 2 == 0 else 1) for i in range(count)]


def magnitude(frames: torch.Tensor) -> torch.Tensor:
    """``(…, 1, H, W)`` magnitude of frames ``(…, C, H, W)``: the frame itself for C = 1, ``sqrt(re² + im²)``
    for C = 2 (real, imaginary)."""
    if frames.shape[-3] == 1:
        return frames
    return torch.linalg.vector_norm(frames, dim=-3, keepdim=True)


def segmenter_features(segmenter: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, classes, H, W), features (B, F, H, W))`` of a segmentation network on ``x (B, C, H, W)``:
    the features are the input of its ``head`` module (nnMamba's last decoder features), cropped to H, W."""
    head = getattr(segmenter, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(segmenter).__name__}: a segmenter for TiTok-MRI needs a 'head' module")
    captured: Dict[str, torch.Tensor] = {}
    handle = head.register_forward_pre_hook(lambda module, inputs: captured.__setitem__("features", inputs[0]))
    try:
        logits = segmenter(x)
    finally:
        handle.remove()
    h, w = x.shape[-2:]
    return logits, captured["features"][..., :h, :w]


@torch.no_grad()
def segment_labels(segmenter: nn.Module, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Label maps ``(…, H, W)`` int64 (argmax over the classes) of a 2-D segmenter on frames ``(…, C, H, W)``
    (their magnitude), in chunks of ``batch_size``, on the segmenter's device; returned on the CPU."""
    lead = frames.shape[:-3]
    device = next(segmenter.parameters()).device
    flat = magnitude(frames.reshape(-1, *frames.shape[-3:])).to(device)
    out = [segmenter(flat[i:i + batch_size]).argmax(dim=1).cpu() for i in range(0, flat.shape[0], batch_size)]
    return torch.cat(out).reshape(*lead, *frames.shape[-2:])


def _segmenter_channels(segmenter: nn.Module, in_channels: int) -> Tuple[int, int]:
    """``(input channels, feature channels)`` of a segmenter, by a dry run in evaluation mode."""
    was_training = segmenter.training
    segmenter.eval()
    try:
        with torch.no_grad():
            device = next(segmenter.parameters()).device
            logits, feats = segmenter_features(segmenter, torch.zeros(1, in_channels, 16, 16, device=device))
    finally:
        segmenter.train(was_training)
    return logits.shape[1], feats.shape[1]


def check_codec_parts(tokenizer: TiTok, dit_config: Optional[DiTConfig] = None, segmenter: Optional[nn.Module] = None) -> None:
    """Raise ``ValueError`` naming the first mismatch between the three networks' configurations."""
    tc = tokenizer.config
    if segmenter is not None:
        seg_in = getattr(getattr(segmenter, "config", None), "in_channels", tc.in_channels)
        if getattr(getattr(segmenter, "config", None), "spatial_dims", 2) != 2:
            raise ValueError("segmenter: must be 2-D (nnmamba_seg --spatial_dims 2)")
        if seg_in != 1:
            raise ValueError(f"segmenter: takes {seg_in} input channels; it segments magnitude frames (1)")
        classes, _ = _segmenter_channels(segmenter, 1)
        if classes != SEG_CLASSES:
            raise ValueError(f"segmenter: predicts {classes} classes; ACDC has {SEG_CLASSES} (bg, RV, myocardium, LV)")
    if dit_config is None:
        return
    dc = dit_config
    for field in ("image_size", "in_channels", "token_size", "num_latent_tokens"):
        mine, theirs = getattr(dc, field), getattr(tc, field)
        if field == "image_size":
            mine, theirs = tuple(mine), tuple(theirs)
        if mine != theirs:
            raise ValueError(f"DiT decoder: {field} {mine} differs from the tokenizer's {theirs}")
    if dc.seg_channels:
        if segmenter is None:
            raise ValueError(f"DiT decoder: takes segmentation features ({dc.seg_channels} channels) but no segmenter was given")
        _, feats = _segmenter_channels(segmenter, 1)
        if feats != dc.seg_channels:
            raise ValueError(f"DiT decoder: takes {dc.seg_channels} segmentation feature channels, the segmenter gives {feats}")


class TiTokMRI(nn.Module):
    """The codec's networks together, frozen and in evaluation mode.

    ``dit_config`` without ``dit`` makes a *conditioner* for training a DiT of that configuration: it
    builds the DiT's conditioning (:meth:`condition`) from the frozen tokenizer and segmenter while the
    DiT itself trains outside it (utils.objectives.CodecDiTObjective)."""

    def __init__(self, tokenizer: TiTok, dit: Optional[TokenDiT] = None, segmenter: Optional[nn.Module] = None,
                 dit_config: Optional[DiTConfig] = None):
        super().__init__()
        self.dit_config = dit.config if dit is not None else dit_config
        check_codec_parts(tokenizer, self.dit_config, segmenter)
        self.tokenizer, self.dit, self.segmenter = tokenizer, dit, segmenter
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TiTokMRI":
        return super().train(False)  # frozen parts: BatchNorm statistics and the codebook never change

    @property
    def num_tokens(self) -> int:
        return self.tokenizer.config.num_latent_tokens

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.tokenizer.config.image_size)

    @property
    def num_neighbours(self) -> int:
        return self.dit_config.num_neighbours if self.dit_config is not None else 0

    def _device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    # ------------------------------------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Token ids ``(…, K)`` of frames ``(…, C, H, W)`` (any leading shape), in chunks of ``batch_size``."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        device = self._device()
        ids = [self.tokenizer.encode(flat[i:i + batch_size].to(device)).cpu() for i in range(0, flat.shape[0], batch_size)]
        return torch.cat(ids).reshape(*lead, self.num_tokens) if ids else torch.zeros(*lead, self.num_tokens, dtype=torch.long)

    # ------------------------------------------------------------------------------------------ pieces
    def seg_features(self, ed_frames: torch.Tensor, es_frames: torch.Tensor) -> torch.Tensor:
        """Segmentation features ``(B, 2, F, H, W)`` of the ED and ES frames ``(B, C, H, W)`` (their magnitude)."""
        _, feats = segmenter_features(self.segmenter, magnitude(torch.cat([ed_frames, es_frames])))
        b = ed_frames.shape[0]
        return torch.stack([feats[:b], feats[b:]], dim=1)

    def condition(self, ids: torch.Tensor, neighbour_ids: Optional[torch.Tensor] = None,
                  ed_ids: Optional[torch.Tensor] = None, es_ids: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The DiT's conditioning (keyword arguments of :meth:`TokenDiT.forward` besides ``x_t, t``) from
        token ids: ``ids (B, K)``, ``neighbour_ids (B, A, K)``, ``ed_ids / es_ids (B, K)``."""
        cfg = self.dit_config
        if cfg is None:
            raise ValueError("TiTokMRI: no DiT decoder configuration")
        codes = self.tokenizer.codes(ids)
        cond: Dict[str, torch.Tensor] = {"frame_codes": codes}
        if cfg.stage1_input:
            cond["stage1"] = self.tokenizer.decode_codes(codes)
        if self.num_neighbours and neighbour_ids is not None:
            cond["neighbour_codes"] = self.tokenizer.codes(neighbour_ids)
        if cfg.seg_channels and ed_ids is not None and es_ids is not None:
            stage1 = self.tokenizer.decode_ids(torch.cat([ed_ids, es_ids]))
            b = ed_ids.shape[0]
            cond["seg_features"] = self.seg_features(stage1[:b], stage1[b:])
        return cond

    # ------------------------------------------------------------------------------------------ decode
    @torch.no_grad()
    def stage1(self, ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Stage-1 frames ``(…, C, H, W)`` of ids ``(…, K)``."""
        lead = ids.shape[:-1]
        flat = ids.reshape(-1, self.num_tokens).to(self._device())
        out = [self.tokenizer.decode_ids(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)]
        return torch.cat(out).reshape(*lead, self.tokenizer.config.in_channels, *self.image_size)

    def segment(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Label maps ``(…, H, W)`` int64 of frames ``(…, C, H, W)`` by the codec's segmenter (:func:`segment_labels`)."""
        if self.segmenter is None:
            raise ValueError("TiTokMRI: no segmentation network")
        return segment_labels(self.segmenter, frames, batch_size)

    @torch.no_grad()
    def decode_cycles(self, ids: torch.Tensor, ed: int, es: int, steps: Optional[int] = None,
                      seed: Optional[int] = None, batch_size: int = 64) -> torch.Tensor:
        """Frames ``(S, T, C, H, W)`` of the ids ``(S, T, K)`` of ``S`` slices' cycles of ``T`` frames, with
        0-based ED/ES frame indices ``ed``/``es`` (module docstring). Deterministic: the DiT's noise comes
        from ``seed`` (default its config's ``noise_seed``)."""
        if ids.dim() != 3 or ids.shape[-1] != self.num_tokens:
            raise ValueError(f"TiTokMRI: ids must be (slices, frames, {self.num_tokens}), got {tuple(ids.shape)}")
        s, t, k = ids.shape
        if not (0 <= ed < t and 0 <= es < t):
            raise ValueError(f"TiTokMRI: ED {ed} / ES {es} outside the {t} frames")
        device = self._device()
        ids = ids.to(device)
        stage1 = self.stage1(ids, batch_size)  # (S, T, C, H, W)
        if self.dit is None:
            return stage1.cpu()
        cfg = self.dit.config
        seg = None
        if cfg.seg_channels:
            seg = torch.cat([self.seg_features(stage1[i:i + batch_size, ed], stage1[i:i + batch_size, es])
                             for i in range(0, s, batch_size)])  # (S, 2, F, H, W)
        frames_t = torch.arange(t, device=device)
        offsets = neighbour_offsets(cfg.num_neighbours)
        nbr_index = (frames_t[:, None] + torch.tensor(offsets, device=device, dtype=torch.long)[None]) % t  # (T, A)
        flat_ids = ids.reshape(s * t, k)
        slice_of = torch.arange(s, device=device).repeat_interleave(t)
        frame_of = frames_t.repeat(s)
        out = []
        for i in range(0, s * t, batch_size):
            sl, fr = slice_of[i:i + batch_size], frame_of[i:i + batch_size]
            cond = {"stage1": stage1[sl, fr]} if cfg.stage1_input else {}
            if cfg.num_neighbours:
                cond["neighbour_codes"] = self.tokenizer.codes(ids[sl[:, None], nbr_index[fr]])
            if seg is not None:
                cond["seg_features"] = seg[sl]
            out.append(self.dit.sample(self.tokenizer.codes(flat_ids[i:i + batch_size]), steps, seed, **cond))
        return torch.cat(out).reshape(s, t, *stage1.shape[2:]).cpu()


# ============================================================================ weights

#: File names of the codec's weights in a weights folder (artifacts/ ships small demo ones).
CODEC_ARTIFACTS = {"tokenizer": "titok.safetensors", "decoder": "titok_dit.safetensors", "segmenter": "titok_seg.safetensors"}


def load_codec(folder, device: torch.device | str = "cpu") -> Tuple[TiTokMRI, Dict[str, str]]:
    """The codec of a weights folder (:data:`CODEC_ARTIFACTS`; the DiT and the segmenter are optional:
    without a DiT frames decode with the stage-1 decoder) and the SHA-256 hashes ``{"tokenizer": …,
    "decoder": …}`` (the decoder's over the DiT and segmenter files present). Any problem is a
    ``ValueError`` (an :class:`~utils.artifacts.ArtifactError` for a bad file) naming the path."""
    from pathlib import Path

    from models.artifacts import load_artifact
    from utils.io import file_sha256

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: weights folder not found (it holds {', '.join(CODEC_ARTIFACTS.values())})")
    paths = {role: folder / name for role, name in CODEC_ARTIFACTS.items()}
    if not paths["tokenizer"].is_file():
        raise ValueError(f"{paths['tokenizer']}: tokenizer weights not found (train with scripts/train_titok_step1.sh "
                         f"and export with python -m models.artifacts export)")
    parts: Dict[str, Optional[nn.Module]] = {}
    for role, expected in (("tokenizer", "titok"), ("decoder", "titok_dit"), ("segmenter", "nnmamba_seg")):
        if not paths[role].is_file():
            parts[role] = None
            continue
        model, info = load_artifact(paths[role], device)
        if info.model_name != expected:
            raise ValueError(f"{paths[role]}: holds {info.model_name!r}, expected {expected!r}")
        parts[role] = model
    try:
        codec = TiTokMRI(parts["tokenizer"], parts["decoder"], parts["segmenter"])
    except ValueError as exc:
        raise ValueError(f"{folder}: the codec's weights do not fit together: {exc}") from None
    present = [paths[r] for r in ("decoder", "segmenter") if parts[r] is not None]
    hashes = {"tokenizer": file_sha256(paths["tokenizer"]), "decoder": file_sha256(present) if present else ""}
    return codec.to(device), hashes
