"""Anatomy routing that never silently misroutes: physical cues of the data, combined with the classifier.

The brain/knee classifier (:mod:`models.anatomy_cnn`) only ever saw what it was trained on; on other
data it can be confidently wrong. :func:`physical_cues` measures what the acquisition itself says,
from the data only (never a file or folder name), and :func:`decide` combines both by one documented
rule into an anatomy, a calibrated confidence and, where the two disagree, the evidence is weak or the
volume looks like neither anatomy, a warning.

Cues (:class:`Cues`), each a vote for brain (-1), knee (+1) or no vote (0), with a weight in nats
(log-odds units):

=============  ======  ============================================================================
cue            weight  vote
=============  ======  ============================================================================
``height``     2       k-space height H (the readout, with its oversampling): brain if
                       ``704 <= H <= 832`` (challenge brain 768 = 2x oversampled 384), knee if
                       ``576 <= H < 704`` (challenge knee 640); other heights no vote
``edges``      3       knee if sampled columns at *both* width edges hold exact zeros (knee k-space
                       has zero columns there); no vote otherwise (their absence says nothing)
``readout``    2       the object's extent along the full readout, from the zero-filled RSS (aliasing
                       runs along the width only, so rows are exact): knee if it reaches the top or the
                       bottom of the readout field of view (the leg runs through it), brain if it stays
                       clear of both with air margins and spans at most ``BRAIN_READOUT_MAX`` of H
                       (a head inside a 2x-oversampled readout); no vote in between
``margins``    1       the 384-row image field of view: brain if the object keeps clear of all four
                       borders, knee if it touches the top and bottom borders but neither side; no
                       vote otherwise, or where the ACS has fewer than ``MIN_ACS`` columns
=============  ======  ============================================================================

Rule (:func:`decide`), with ``p`` the classifier's knee probability:

1. *Nothing to route*: an empty volume (``image_grappa`` and k-space all zero) or one without spatial
   structure (pure noise: the 8x8-block-averaged ``image_grappa`` varies by less than
   ``NOISE_STRUCTURE`` of its mean) -> the classifier's label, warning "looks like neither anatomy".
2. *Neither shape*: the object runs into a side (phase-encoding) border of the field of view (more
   than ``SIDE_TOUCH`` of its length is object; judged where the ACS has at least ``MIN_ACS`` columns): a head and a knee keep clear of the sides in the
   challenge's acquisitions, a torso (a cardiac frame, an abdomen) does not -> the classifier's label,
   warning.
3. Otherwise the combined log-odds ``L = clip(logit p, -CLASSIFIER_CAP, +CLASSIFIER_CAP) + sum(weight x
   vote)``; anatomy = knee if ``L > 0`` else brain; confidence = ``sigmoid(|L|)``. Warnings: the cues'
   sum (``|cue score| >= 2``) points the other way from the classifier (``p`` on the other side of 0.5:
   the cues win whenever they carry more than ``CLASSIFIER_CAP`` nats), or the combined confidence is
   below ``MIN_CONFIDENCE``.

``CLASSIFIER_CAP`` = 4 nats (a classifier alone is trusted up to p = 0.982), so two agreeing physical
cues (H and readout extent, 4 nats) outweigh any classifier output: a phantom-trained classifier that
calls a real brain knee at 0.77 or even 0.999 is overruled by the geometry, and says so. The
thresholds were measured on the simulator's tiny/demo volumes, the training split of the real brains
(:mod:`data.real_anatomy`) and out-of-distribution images (a cardiac frame of :mod:`data.heart_phantom`,
the phantom, shoulder and abdomen images, pure noise, zeros); never on the held-out real-anatomy
leaderboard (``benchmarks/calibrate_routing.py`` prints the table). There, every simulated and real
brain and knee routed right (a real top-of-head slice with a disagreement warning: the phantom-trained
classifier said knee at 0.67-0.74), and every cardiac frame, noise and empty volume was flagged as
neither. Limit: another body part laid out like a head (inside the field of view at the brain's k-space
size: the shoulder and phantom images there) passes the cues as a brain; it is flagged only when the
classifier disagrees (the shipped one did, at 0.69-0.999).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.physics import ifft2c, rss

__all__ = ["Cues", "Decision", "physical_cues", "decide", "WEIGHTS", "MIN_CONFIDENCE", "CLASSIFIER_CAP"]

BRAIN_HEIGHT = (704, 832)
KNEE_HEIGHT = (576, 704)
EDGE_ZONE = 24  # columns at each width edge searched for zero sampled columns
BORDER = 0.03  # fraction of the size taken as a border strip
FOREGROUND = 0.1  # foreground: above this fraction of the image's 99th percentile
BRAIN_READOUT_MAX = 0.7  # a head inside a 2x-oversampled readout spans at most this fraction of H
READOUT_TOUCH = 0.05  # a readout end counts as touched when more than this fraction of its strip is object
SIDE_TOUCH = 0.15  # rule 2: a side border of the field of view covered over more than this
MIN_ACS = 16  # ACS columns needed to judge the side margins (W >= 200 with the challenge's 8 % ACS)
MARGIN_CLEAR = 0.02  # a border is clear when less than this fraction of its strip is object
NOISE_STRUCTURE = 0.15  # rule 1: coefficient of variation of the 8x8-block-averaged image below this
MAX_SLICES = 3  # slices (centre of the volume) used for the image cues
WEIGHTS: Dict[str, float] = {"height": 2.0, "edges": 3.0, "readout": 2.0, "margins": 1.0}
CLASSIFIER_CAP = 4.0
MIN_CONFIDENCE = 0.9
LABELS = ("brain", "knee")


@dataclasses.dataclass
class Cues:
    """Physical cues of one volume (measured, then voted: -1 brain, +1 knee, 0 none)."""

    height: int
    width: int
    zero_edge_columns: Tuple[int, int]  # sampled columns holding exact zeros, at the left / right edge zone
    readout_extent: float  # object rows / H over the full (oversampled) readout
    readout_ends: Tuple[float, float]  # object fraction of the top / bottom strips of the full readout
    sides: Optional[Tuple[float, float]]  # object fraction of the left / right strips of the 384-row image field
    # of view (None: fewer than MIN_ACS ACS columns, too blurred along the width to tell)
    ends: Tuple[float, float]  # object fraction of its top / bottom strips
    foreground: float  # object fraction of it
    structure: float  # coefficient of variation of the 8x8-block-averaged image_grappa
    empty: bool
    votes: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def score(self) -> float:
        """Sum of weight x vote in nats (> 0 knee, < 0 brain)."""
        return float(sum(WEIGHTS[k] * v for k, v in self.votes.items()))

    def to_dict(self) -> Dict[str, object]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
            elif isinstance(value, tuple):
                out[key] = [round(v, 4) if isinstance(v, float) else v for v in value]
        out["score"] = round(self.score, 3)
        return out


@dataclasses.dataclass
class Decision:
    """The routing decision: ``anatomy``, ``confidence`` (calibrated, 0.5..1), ``classifier`` (label,
    knee probability), ``cues`` and ``warning`` (None when cues and classifier agree confidently)."""

    anatomy: str
    confidence: float
    classifier_label: str
    classifier_knee_probability: float
    cues: Cues
    log_odds: float
    warning: Optional[str] = None


def _strip_fraction(fg: torch.Tensor, dim: int, size: int) -> Tuple[float, float]:
    """Object fraction of the first and last ``BORDER`` strips of ``fg`` ``(S, H, W)`` along ``dim``."""
    n = max(1, int(round(BORDER * size)))
    first = fg.narrow(dim, 0, n).float().mean()
    last = fg.narrow(dim, size - n, n).float().mean()
    return float(first), float(last)


def _foreground(image: torch.Tensor) -> torch.Tensor:
    """Object mask of ``image`` ``(S, H, W)``: 3x3-averaged image above ``FOREGROUND`` x its 99th percentile."""
    smooth = F.avg_pool2d(image[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    level = torch.quantile(image.flatten()[:: max(1, image.numel() // 2_000_000)], 0.99)
    return smooth > FOREGROUND * level


def _centre_slices(n: int) -> slice:
    take = min(n, MAX_SLICES)
    start = (n - take) // 2
    return slice(start, start + take)


def physical_cues(kspace: np.ndarray, mask: np.ndarray, grappa: np.ndarray) -> Cues:
    """Measure the cues of one volume: ``kspace`` complex ``(S, C, H, W)`` as stored (zeros off the
    mask), ``mask`` ``(W,)``, ``grappa`` float32 ``(S, 384, 384)`` (``image_grappa``). The image cues use
    the (up to) 3 centre slices.

    The object's geometry (readout extent and ends, side and end margins, foreground) is measured on the
    RSS of the ACS columns alone over the whole field of view (``H x W``): fully sampled there, so free
    of aliasing at any acceleration, blurred along the width only by about ``W / ACS`` pixels.
    The structure (noise test) is measured on ``image_grappa``."""
    from utils.physics import acs_bounds

    S, C, H, W = kspace.shape
    sampled = np.flatnonzero(np.asarray(mask) != 0)
    zone = min(EDGE_ZONE, W // 4)
    left_cols = sampled[sampled < zone]
    right_cols = sampled[sampled >= W - zone]
    edge_cols = np.concatenate([left_cols, right_cols])
    nonzero = np.any(kspace[..., edge_cols] != 0, axis=(0, 1, 2)) if edge_cols.size else np.zeros(0, bool)
    zero_left = int((~nonzero[: left_cols.size]).sum())
    zero_right = int((~nonzero[left_cols.size:]).sum())

    part = _centre_slices(S)
    img = torch.from_numpy(np.ascontiguousarray(grappa[part], dtype=np.float32))
    empty = not bool(torch.any(img != 0)) and not bool(np.any(kspace[part] != 0))
    if empty:
        return Cues(H, W, (zero_left, zero_right), 0.0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), 0.0, 0.0, True,
                    {"height": _height_vote(H), "edges": 0, "readout": 0, "margins": 0})

    lo, hi = acs_bounds(torch.from_numpy(np.asarray(mask)))
    k = torch.from_numpy(np.ascontiguousarray(kspace[part], dtype=np.complex64))
    acs = torch.zeros_like(k)
    acs[..., lo:hi] = k[..., lo:hi]
    low = rss(ifft2c(acs))  # (s, H, W): aliasing-free, low resolution along the width
    fg = _foreground(low)
    rows = fg.float().mean(dim=2)  # (s, H) object fraction per row
    idx = torch.nonzero((rows > 0.02).any(dim=0)).flatten()
    extent = float(idx[-1] - idx[0] + 1) / H if idx.numel() else 0.0
    readout_ends = _strip_fraction(fg, 1, H)
    crop = min(H, grappa.shape[-2])  # the rows image_grappa shows (centre crop)
    fg_crop = fg[:, (H - crop) // 2:(H - crop) // 2 + crop]
    sides = _strip_fraction(fg_crop, 2, W) if hi - lo >= MIN_ACS else None
    ends = _strip_fraction(fg_crop, 1, crop)

    blocks = F.avg_pool2d(img[:, None], 8)[:, 0]
    mean = float(blocks.mean())
    structure = float(blocks.std() / mean) if mean > 0 else 0.0

    cues = Cues(H, W, (zero_left, zero_right), extent, readout_ends, sides, ends, float(fg_crop.float().mean()),
                structure, False)
    cues.votes = {
        "height": _height_vote(H),
        "edges": 1 if zero_left > 0 and zero_right > 0 else 0,
        "readout": _readout_vote(extent, readout_ends),
        "margins": _margin_vote(sides, ends),
    }
    return cues


def _height_vote(H: int) -> int:
    if BRAIN_HEIGHT[0] <= H <= BRAIN_HEIGHT[1]:
        return -1
    if KNEE_HEIGHT[0] <= H < KNEE_HEIGHT[1]:
        return 1
    return 0


def _readout_vote(extent: float, ends: Tuple[float, float]) -> int:
    if max(ends) >= READOUT_TOUCH:
        return 1
    if max(ends) < MARGIN_CLEAR and extent <= BRAIN_READOUT_MAX:
        return -1
    return 0


def _margin_vote(sides: Optional[Tuple[float, float]], ends: Tuple[float, float]) -> int:
    if sides is None:
        return 0
    if max(sides + ends) < MARGIN_CLEAR:
        return -1
    if min(ends) >= READOUT_TOUCH and max(sides) < MARGIN_CLEAR:
        return 1
    return 0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def decide(cues: Cues, knee_probability: float) -> Decision:
    """Combine ``cues`` with the classifier's knee probability by the rule of the module docstring."""
    p = min(max(float(knee_probability), 1e-12), 1 - 1e-12)
    label = LABELS[int(p > 0.5)]
    logit = max(-CLASSIFIER_CAP, min(CLASSIFIER_CAP, math.log(p / (1 - p))))
    score = cues.score
    log_odds = logit + score
    anatomy = LABELS[int(log_odds > 0)]
    confidence = _sigmoid(abs(log_odds))
    said = f"classifier {label} (p={max(p, 1 - p):.3f})"
    warning = None
    if cues.empty or cues.structure < NOISE_STRUCTURE:
        what = "empty (all zeros)" if cues.empty else f"no structure (block variation {cues.structure:.3f}: noise)"
        return Decision(label, _sigmoid(abs(logit)), label, p, cues, logit,
                        f"looks like neither anatomy: {what}; routed by the {said}")
    if cues.sides is not None and max(cues.sides) > SIDE_TOUCH:
        return Decision(label, _sigmoid(abs(logit)), label, p, cues, logit,
                        f"looks like neither anatomy: the object runs into the side (phase-encoding) borders "
                        f"({cues.sides[0]:.2f}/{cues.sides[1]:.2f} of them; a head and a knee keep clear: a torso?); "
                        f"routed by the {said}")
    voted = ", ".join(f"{k} {LABELS[v > 0]}" for k, v in cues.votes.items() if v)
    if abs(score) >= 2 and (score > 0) != (p > 0.5):
        warning = (f"physical cues say {LABELS[int(score > 0)]} ({voted}; {abs(score):.0f} nats) but the {said}; "
                   f"routed to {anatomy} (confidence {confidence:.3f})")
    elif confidence < MIN_CONFIDENCE:
        warning = (f"low routing confidence {confidence:.3f} ({said}; cues: {voted or 'none'}); routed to {anatomy}")
    return Decision(anatomy, confidence, label, p, cues, log_odds, warning)
