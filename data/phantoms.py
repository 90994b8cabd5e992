"""Anatomy-like synthetic MR images and coil sensitivities for :mod:`data.simulate`.

Geometry conventions
--------------------
* Arrays are ``(S, H, W)``: slices, rows (readout axis, may be 2x oversampled), columns (phase encoding).
* Physical coordinates are in *units* of ``UNIT_PX = 192`` pixels, centred on the image centre
  ``(H // 2, W // 2)`` (the DC position of ``utils.physics.fft2c``), so the central 384x384 crop
  spans ``[-1, 1)`` in both directions. ``y`` grows with the row index, ``x`` with the column index.
* Slice positions ``z`` are in the same units (through-plane), one value per slice.

Everything is vectorised over ``(S, H, W)`` with numpy broadcasting; smooth random fields are
low-resolution Gaussian noise interpolated (smoothstep in ``z``, bicubic in-plane via torch).
Every random draw comes from the ``numpy.random.Generator`` passed in, so a volume is a pure
function of its generator state.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "UNIT_PX",
    "Grid",
    "make_grid",
    "smooth_field",
    "soft_step",
    "paint",
    "smoothstep",
    "brain_magnitude",
    "knee_magnitude",
    "smooth_phase",
    "CoilArray",
    "BRAIN_CONTRASTS",
    "KNEE_CONTRASTS",
]

UNIT_PX = 192.0  # pixels per coordinate unit: the 384-pixel central field of view spans [-1, 1)
_EDGE_PX = 0.7  # width of the soft tissue boundaries, pixels

# Relative tissue intensities per contrast (scaled to challenge-like absolute values later).
BRAIN_CONTRASTS: Dict[str, Dict[str, float]] = {
    "t1": dict(scalp=1.0, bone=0.04, diploe=0.55, csf=0.10, gm=0.50, wm=0.72, deep=0.56, vent=0.08, lesion=0.30),
    "t2": dict(scalp=0.65, bone=0.04, diploe=0.40, csf=1.00, gm=0.55, wm=0.38, deep=0.45, vent=1.00, lesion=0.85),
    "flair": dict(scalp=0.80, bone=0.04, diploe=0.45, csf=0.08, gm=0.62, wm=0.48, deep=0.55, vent=0.06, lesion=1.0),
}
KNEE_CONTRASTS: Dict[str, Dict[str, float]] = {
    "pd": dict(skin=0.5, fat=1.0, muscle=0.32, septa=0.8, bone=0.04, marrow=0.85, cartilage=0.55, fluid=0.6,
               meniscus=0.05, ligament=0.10),
    "pdfs": dict(skin=0.4, fat=0.20, muscle=0.36, septa=0.22, bone=0.03, marrow=0.22, cartilage=0.58, fluid=1.0,
                 meniscus=0.05, ligament=0.12),
}

Cell = Union[float, Tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class Grid:
    """Pixel coordinates in units: ``x`` ``(1, 1, W)``, ``y`` ``(1, H, 1)``, ``z`` ``(S, 1, 1)``."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.z.shape[0], self.y.shape[1], self.x.shape[2]


def make_grid(z: Sequence[float], height: int, width: int) -> Grid:
    """Grid for slices at positions ``z`` (units) and an ``height x width`` image."""
    x = (np.arange(width, dtype=np.float32) - width // 2) / UNIT_PX
    y = (np.arange(height, dtype=np.float32) - height // 2) / UNIT_PX
    z = np.asarray(z, dtype=np.float32)
    return Grid(x.reshape(1, 1, -1), y.reshape(1, -1, 1), z.reshape(-1, 1, 1))


# --------------------------------------------------------------------------------------------- helpers


def _step(d_px: np.ndarray) -> np.ndarray:
    """Soft inside indicator from a signed distance in pixels (positive inside), float32."""
    return (0.5 + 0.5 * np.tanh(np.asarray(d_px, np.float32) / _EDGE_PX)).astype(np.float32, copy=False)


def _paint(image: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    """Painter's algorithm: ``image`` becomes ``value`` where ``mask`` is 1 (soft in between)."""
    return image + mask * (value - image)


def _smax(a: np.ndarray, b: np.ndarray, k: float = 40.0) -> np.ndarray:
    """Smooth maximum of two signed functions (rounds the corners of an intersection, radius ~1/k)."""
    m = np.maximum(a, b)
    return m + np.log(np.exp(k * (a - m)) + np.exp(k * (b - m))) / k


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# public names of the painting helpers, shared with the cardiac phantom (data/heart_phantom.py)
soft_step = _step
paint = _paint
smoothstep = _smoothstep


def smooth_field(rng: np.random.Generator, grid: Grid, cell_px: Cell, z_cell: float = 0.2) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field ``(S, H, W)`` float32.

    ``cell_px``: correlation length in-plane (pixels; a pair ``(rows, cols)`` makes it anisotropic);
    ``z_cell``: correlation length through-plane (units), so neighbouring slices vary smoothly.
    """
    S, H, W = grid.shape
    cy, cx = (cell_px, cell_px) if np.isscalar(cell_px) else cell_px
    gh, gw = int(np.ceil(H / cy)) + 2, int(np.ceil(W / cx)) + 2
    z = grid.z.reshape(-1).astype(np.float64)
    t = (z - z.min()) / z_cell
    nz = int(np.floor(t.max())) + 2
    coarse = rng.standard_normal((nz, gh, gw), dtype=np.float32)
    i0 = np.minimum(np.floor(t).astype(np.int64), nz - 2)
    w = _smoothstep(t - i0).astype(np.float32).reshape(-1, 1, 1)
    planes = coarse[i0] * (1.0 - w) + coarse[i0 + 1] * w  # (S, gh, gw)
    field = F.interpolate(torch.from_numpy(np.ascontiguousarray(planes))[:, None], size=(H, W),
                          mode="bicubic", align_corners=True)[:, 0].numpy()
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _harmonics(rng: np.random.Generator, phi: np.ndarray, z: np.ndarray, amp: float, orders: Sequence[int]) -> np.ndarray:
    """``sum_k a_k(z) cos(k phi + p_k(z))`` with amplitudes ~amp/k and coefficients linear in z."""
    out = np.zeros(np.broadcast_shapes(phi.shape, z.shape), np.float32)
    for k in orders:  # a handful of angular orders, each a full-array op
        a = amp / k * rng.uniform(0.3, 1.0) * (1.0 + rng.uniform(-0.8, 0.8) * z)
        p = rng.uniform(0, 2 * np.pi) + rng.uniform(-2.0, 2.0) * z
        out += (a * np.cos(k * phi + p)).astype(np.float32)
    return out


def _ellipse_radius(phi: np.ndarray, ax: float, ay: float) -> np.ndarray:
    """Radius of an ellipse with semi-axes ``ax`` (x) and ``ay`` (y) along polar angle ``phi``."""
    return (ax * ay / np.sqrt((ay * np.cos(phi)) ** 2 + (ax * np.sin(phi)) ** 2)).astype(np.float32)


def _pose(rng: np.random.Generator, grid: Grid, scale: Tuple[float, float], rot: float, shift: float,
          warp: float) -> Tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates ``(u, v)`` ``(S, H, W)``: random scale, rotation, shift and a smooth warp."""
    s = rng.uniform(*scale)
    a = rng.uniform(-rot, rot)
    dx, dy = rng.uniform(-shift, shift, size=2)
    x, y = grid.x - dx, grid.y - dy
    c, n = float(np.cos(a)) / s, float(np.sin(a)) / s
    u = (c * x + n * y).astype(np.float32)
    v = (c * y - n * x).astype(np.float32)
    u = u + warp * smooth_field(rng, grid, 110.0, 0.5)
    v = v + warp * smooth_field(rng, grid, 110.0, 0.5)
    return u, v


def _jitter(rng: np.random.Generator, table: Dict[str, float], spread: float = 0.1) -> Dict[str, float]:
    return {k: float(v * rng.uniform(1 - spread, 1 + spread)) for k, v in sorted(table.items())}


def _ellipsoid(u, v, z, centre, axes, angle: float = 0.0, bend: float = 0.0) -> np.ndarray:
    """Signed distance-like value (units, positive inside) of a rotated 3-D ellipsoid ``(S, H, W)``.

    ``bend`` curves the long (second) axis into a banana shape: ``p -> p - bend * q^2``.
    """
    cx, cy, cz = (float(c) for c in centre)
    ax, ay, az = (float(a) for a in axes)
    c, n = float(np.cos(angle)), float(np.sin(angle))
    du, dv = u - np.float32(cx), v - np.float32(cy)
    p = np.float32(c) * du + np.float32(n) * dv
    q = np.float32(c) * dv - np.float32(n) * du
    if bend:
        p = p - np.float32(bend) * q * q
    dz2 = ((z - np.float32(cz)) / np.float32(az)) ** 2
    rho2 = (p / np.float32(ax)) ** 2 + (q / np.float32(ay)) ** 2 + dz2
    return (1.0 - np.sqrt(rho2)) * np.float32(min(ax, ay))


# --------------------------------------------------------------------------------------------- brain


def brain_magnitude(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Axial brain-like magnitude image ``(S, H, W)`` float32, max about 1 (relative intensities).

    Layers from outside in: scalp, skull (cortical tables around a brighter diploe), CSF, cortex with
    sulci (zero-level lines of a smooth random field) wrapping gyral white matter, deep grey nuclei,
    lateral ventricles, a few small lesions, and fine texture. The head narrows with ``z`` (top).
    """
    contrast = rng.choice(sorted(BRAIN_CONTRASTS))
    val = _jitter(rng, BRAIN_CONTRASTS[contrast])
    u, v = _pose(rng, grid, (0.88, 1.05), 0.2, 0.05, 0.025)
    z = grid.z
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)

    # head outline: egg-shaped ellipse, low-order deformation, narrowing towards the vertex (z > 0)
    ax, ay = rng.uniform(0.62, 0.70), rng.uniform(0.78, 0.86)
    taper = np.sqrt(np.clip(1.0 - (np.maximum(z, 0) / 0.95) ** 2 - (np.minimum(z, 0) / 1.6) ** 2, 0.05, 1.0))
    shape = 1.0 + _harmonics(rng, phi, z, 0.05, (2, 3, 4, 5, 6)) + 0.04 * np.sin(phi)
    head_r = _ellipse_radius(phi, ax, ay) * shape * taper
    depth = head_r - r  # units inward from the scalp surface

    t_scalp = rng.uniform(0.035, 0.06)
    t_skull = rng.uniform(0.045, 0.07) * (1.0 + 0.25 * _harmonics(rng, phi, z, 1.0, (1, 2)))
    t_table = 0.3 * t_skull
    t_csf = rng.uniform(0.012, 0.025)
    d_brain = t_scalp + t_skull + t_csf

    # gyri: a roughly radial sulcal pattern, cos(n phi + meander) peaks are sulci; each sulcus has
    # its own depth, and the white matter dips beneath it (so it reaches into the gyri between)
    n_gyri = rng.uniform(26.0, 38.0)
    meander = 2.5 * smooth_field(rng, grid, 45.0, 0.15) + 1.2 * smooth_field(rng, grid, 25.0, 0.1)
    theta = np.mod(n_gyri * phi + meander + np.pi, 2 * np.pi) - np.pi  # 0 on a sulcus, in [-pi, pi)
    sulc_depth = rng.uniform(0.11, 0.17) * (0.5 + 0.45 * _smoothstep(0.5 + smooth_field(rng, grid, 60.0, 0.2)))
    t_gm = rng.uniform(0.026, 0.036)
    fine = smooth_field(rng, grid, 9.0, 0.08)

    img = np.zeros(grid.shape, np.float32)
    img = _paint(img, _step(depth * UNIT_PX), val["scalp"])
    img = _paint(img, _step((depth - t_scalp) * UNIT_PX), val["bone"])
    img = _paint(img, _step((depth - t_scalp - t_table) * UNIT_PX), val["diploe"])
    img = _paint(img, _step((depth - t_scalp - t_skull + t_table) * UNIT_PX), val["bone"])
    img = _paint(img, _step((depth - t_scalp - t_skull) * UNIT_PX), val["csf"])
    img = _paint(img, _step((depth - d_brain + 0.004 * fine) * UNIT_PX), val["gm"])
    wm_depth = d_brain + t_gm + 0.9 * sulc_depth * np.exp(-((theta / 1.1) ** 2)) + 0.005 * fine
    img = _paint(img, _step((depth - wm_depth) * UNIT_PX), val["wm"])
    # sulci: thin CSF clefts (half-width ~1.5 px at the surface, closing towards the bottom)
    arc_px = np.abs(theta) * r * (UNIT_PX / n_gyri)
    into = np.clip((depth - d_brain) / sulc_depth, 0.0, 1.0)
    half_px = 1.6 * np.sqrt(1.0 - into)
    cleft = _step(half_px - arc_px) * _step((depth - d_brain + 0.006) * UNIT_PX)
    cleft = cleft * _step((d_brain + sulc_depth - depth) * UNIT_PX)
    img = _paint(img, cleft, val["csf"])

    # deep grey nuclei (basal ganglia / thalami), two pairs, near the slab centre
    for side in (-1.0, 1.0):
        for cy, size in ((-0.06, 0.085), (0.10, 0.075)):
            centre = (side * rng.uniform(0.11, 0.16), cy + rng.uniform(-0.02, 0.02), rng.uniform(-0.15, 0.05))
            axes = (size, size * rng.uniform(1.0, 1.4), rng.uniform(0.12, 0.2))
            img = _paint(img, _step(_ellipsoid(u, v, z, centre, axes, side * 0.3) * UNIT_PX), val["deep"])

    # lateral ventricles: elongated, deformed, diverging anteriorly, largest mid-slab
    zv = rng.uniform(0.0, 0.2)
    for side in (-1.0, 1.0):
        centre = (side * rng.uniform(0.05, 0.08), rng.uniform(-0.04, 0.04), zv)
        axes = (rng.uniform(0.035, 0.055), rng.uniform(0.2, 0.27), rng.uniform(0.16, 0.24))
        d = _ellipsoid(u, v, z, centre, axes, side * rng.uniform(0.15, 0.3), side * rng.uniform(0.5, 1.5))
        d = d + 0.01 * _harmonics(rng, phi, z, 1.0, (2, 3))
        img = _paint(img, _step(d * UNIT_PX), val["vent"])

    # small lesions in the white matter (3-D ellipsoids, so they come and go across slices)
    for _ in range(int(rng.integers(0, 6))):
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.45)
        centre = (rad * np.cos(ang), rad * np.sin(ang) * 1.2, rng.uniform(-0.2, 0.4))
        size = rng.uniform(0.012, 0.04)
        d = _ellipsoid(u, v, z, centre, (size, size * rng.uniform(0.7, 1.4), size * 2.0), rng.uniform(0, np.pi))
        img = _paint(img, _step(d * UNIT_PX), val["lesion"])

    # texture: fine speckle-free tissue heterogeneity plus a slow intensity drift
    texture = 1.0 + 0.04 * smooth_field(rng, grid, 3.0, 0.05) + 0.03 * fine
    return (img * texture).astype(np.float32)


# --------------------------------------------------------------------------------------------- knee


def knee_magnitude(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Coronal knee-like magnitude image ``(S, H, W)`` float32, max about 1 (relative intensities).

    Leg outline with skin and subcutaneous fat, striated muscle with fat septa, femur (shaft widening
    into two condyles with an intercondylar notch) and tibia (plateau narrowing into the shaft), each
    a dark cortical rim around textured marrow, articular cartilage layers, a thin joint-fluid line,
    menisci, cruciate ligaments in the notch and the fibular head. ``z`` runs anterior-posterior.
    """
    contrast = rng.choice(sorted(KNEE_CONTRASTS))
    val = _jitter(rng, KNEE_CONTRASTS[contrast])
    u, v = _pose(rng, grid, (0.92, 1.08), 0.12, 0.05, 0.02)
    z = grid.z
    cz = np.sqrt(np.clip(1.0 - (z / 0.75) ** 2, 0.2, 1.0))  # through-plane size factor
    yj = rng.uniform(-0.08, 0.08)  # joint line

    # leg: rounded band, thigh wider than calf, ends tapered inside the oversampled readout FOV
    half = rng.uniform(0.62, 0.72) * (1.0 - 0.07 * v) * np.sqrt(np.clip(1.0 - (z / 1.1) ** 2, 0.3, 1.0))
    half = half * (1.0 + 0.03 * smooth_field(rng, grid, 150.0, 0.5))
    f_leg = _smax(np.abs(u - 0.03 * v) - half, np.abs(v) - 1.45, 12.0)
    d_leg = -f_leg
    t_fat = rng.uniform(0.05, 0.1) * (1.0 + 0.3 * smooth_field(rng, grid, 90.0, 0.5))

    img = np.zeros(grid.shape, np.float32)
    img = _paint(img, _step(d_leg * UNIT_PX), val["skin"])
    img = _paint(img, _step((d_leg - 0.008) * UNIT_PX), val["fat"])
    muscle_tex = 1.0 + 0.08 * smooth_field(rng, grid, (18.0, 4.0), 0.1)
    img = _paint(img, _step((d_leg - t_fat) * UNIT_PX), val["muscle"] * muscle_tex)
    septa = smooth_field(rng, grid, (70.0, 22.0), 0.2)
    inner = _step((d_leg - t_fat - 0.01) * UNIT_PX)
    img = _paint(img, inner * _step((0.05 - np.abs(septa)) * 14.0), val["septa"])

    # femur: shaft -> condyles; bottom surface curved up at the edges, notch deeper posteriorly
    w_fc = rng.uniform(0.38, 0.45) * cz
    w_fs = rng.uniform(0.14, 0.18)
    t_cart = rng.uniform(0.022, 0.032)
    gap = rng.uniform(0.008, 0.014)
    notch_w = rng.uniform(0.06, 0.09)
    notch_d = 0.04 + 0.22 * _smoothstep((z + 0.1) / 0.4)
    notch = np.exp(-((u / notch_w) ** 4))
    y_fb = yj - gap / 2 - t_cart - 0.12 * (np.abs(u) / w_fc) ** 4 - notch_d * notch
    w_f = w_fs + (w_fc - w_fs) * _smoothstep((v - (yj - 0.8)) / 0.6)
    f_fem = _smax(np.abs(u - 0.02) - w_f, v - y_fb)

    # tibia: plateau with a central spine, narrowing into the shaft
    w_tp = w_fc * rng.uniform(0.95, 1.05)
    w_ts = rng.uniform(0.12, 0.16)
    y_tt = yj + gap / 2 + t_cart + 0.1 * (np.abs(u) / w_tp) ** 6 - 0.035 * np.exp(-((u / 0.05) ** 2))
    w_t = w_ts + (w_tp - w_ts) * (1.0 - _smoothstep((v - (yj + 0.15)) / 0.55))
    f_tib = _smax(np.abs(u + 0.01) - w_t, y_tt - v)

    # cartilage (articular surfaces only), then fluid line, then the bones on top
    art = np.clip(1.0 - notch * (notch_d > 0.12), 0.0, 1.0)
    cart_f = _step((t_cart - f_fem) * UNIT_PX) * _step((v - y_fb + 0.02) * UNIT_PX) * art
    cart_t = _step((t_cart - f_tib) * UNIT_PX) * _step((y_tt - v + 0.02) * UNIT_PX)
    joint = _step((w_fc * 0.98 - np.abs(u)) * UNIT_PX) * _step((gap / 2 + 0.004 - np.abs(v - yj)) * UNIT_PX)
    img = _paint(img, joint, val["fluid"])
    img = _paint(img, np.maximum(cart_f, cart_t), val["cartilage"])

    # menisci: dark wedges at the joint margins, thick outside, thin inwards
    x_in, x_out = w_fc * 0.62, w_fc * 1.04
    frac = np.clip((np.abs(u) - x_in) / (x_out - x_in), 0.0, 1.0)
    wedge = (t_cart + gap / 2 + 0.01) * frac - np.abs(v - yj)
    men = _step(wedge * UNIT_PX) * _step((x_out - np.abs(u)) * UNIT_PX) * _step((np.abs(u) - x_in) * UNIT_PX)
    img = _paint(img, men, val["meniscus"])

    # cruciate ligaments: two dark oblique bands crossing in the notch
    for sign in (-1.0, 1.0):
        ang = sign * rng.uniform(0.35, 0.6)
        band = np.abs(np.cos(ang) * u + np.sin(ang) * (v - yj + 0.08)) - rng.uniform(0.018, 0.028)
        region = _step((notch_w * 1.1 - np.abs(u)) * UNIT_PX) * _step((v - (yj - notch_d - gap)) * UNIT_PX)
        region = region * _step((yj + 0.1 - v) * UNIT_PX) * (notch_d > 0.1)
        img = _paint(img, region * _step(-band * UNIT_PX), val["ligament"])

    # fibula head on one side, posterior slices only
    side = rng.choice([-1.0, 1.0])
    x_fib = side * w_tp * rng.uniform(0.85, 0.95)
    y_fh = yj + rng.uniform(0.14, 0.2)
    w_fib = 0.045 + 0.035 * np.exp(-(((v - y_fh - 0.06) / 0.08) ** 2))
    f_fib = _smax(np.abs(u - x_fib) - w_fib, y_fh - v) + 0.3 * np.clip(0.05 - z, 0.0, None)

    trabecular = 1.0 + 0.08 * smooth_field(rng, grid, 4.0, 0.04) + 0.06 * smooth_field(rng, grid, 10.0, 0.08)
    for f_bone, t_cort in ((f_fem, 0.035 - 0.02 * _smoothstep((v - yj + 0.6) / 0.4)),
                           (f_tib, 0.03 - 0.017 * (1.0 - _smoothstep((v - yj - 0.25) / 0.35))),
                           (f_fib, np.float32(0.015))):
        img = _paint(img, _step(-f_bone * UNIT_PX), val["bone"])
        img = _paint(img, _step((-f_bone - t_cort) * UNIT_PX), val["marrow"] * trabecular)

    texture = 1.0 + 0.03 * smooth_field(rng, grid, 4.0, 0.05) + 0.03 * smooth_field(rng, grid, 25.0, 0.2)
    return (img * texture).astype(np.float32)


# --------------------------------------------------------------------------------------------- phase, coils


def smooth_phase(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Smooth object phase ``(S, H, W)`` float32 radians: offset, gentle ramps, curvature, slow field."""
    p = rng.uniform(-np.pi, np.pi)
    gx, gy, q = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.8, 0.8)
    phase = p + gx * grid.x + gy * grid.y + q * (grid.x**2 + grid.y**2) + 0.2 * grid.z
    return (phase + 0.5 * smooth_field(rng, grid, 160.0, 0.5)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CoilArray:
    """Receive loops on an elliptical cylinder around the object, in one or two rings along its axis.

    ``positions`` ``(C, 3)`` (x, y, z) units; ``normals`` ``(C, 3)`` unit vectors pointing into the
    object; ``tangents`` ``(C, 3)`` unit vectors across them; ``size`` the loop radius (units) setting
    the fall-off; ``phases`` ``(C,)`` constant phase offsets (radians); ``centre`` the point where the
    combined sensitivity is normalised to 1.
    """

    positions: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    size: float
    phases: np.ndarray
    centre: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator, n_coils: int, radii: Tuple[float, float],
               centre: Sequence[float], axis: str = "z") -> "CoilArray":
        """Random array of ``n_coils`` coils around ``centre`` (x, y, z) on a cylinder along ``axis``.

        The loop radius scales as ``1.9 / sqrt(n_coils)`` (fewer coils, larger loops), which keeps the
        combined sensitivity's centre-to-edge ratio moderate (about 1.5 to 2.5).
        ``axis="z"``: a head coil around an axial slab (coils on an ellipse in the image plane, semi-axes
        ``radii`` = (x, y)); ``axis="y"``: an extremity coil around a leg imaged coronally (coils on an
        ellipse in the x-z plane, semi-axes (x, z), rings stacked along y).
        """
        if axis not in ("y", "z"):
            raise ValueError(f"coil axis must be 'y' or 'z', got {axis!r}")
        rings = 2 if n_coils >= 8 else 1
        per_ring = np.full(rings, n_coils // rings)
        per_ring[: n_coils % rings] += 1
        start = rng.uniform(0, 2 * np.pi)
        ang = np.concatenate([start + (np.arange(n) + 0.5 * i) * 2 * np.pi / n for i, n in enumerate(per_ring)])
        ang = ang + rng.normal(0, 0.08, n_coils)
        along = np.concatenate([np.full(n, 0.0 if rings == 1 else (i - 0.5) * 0.5) for i, n in enumerate(per_ring)])
        along = along + rng.normal(0, 0.03, n_coils)
        ra, rb = radii
        a, b = ra * np.cos(ang), rb * np.sin(ang)  # the two in-ring coordinates
        na, nb = -np.cos(ang) / ra, -np.sin(ang) / rb  # inward normal of the ellipse
        norm = np.hypot(na, nb)
        na, nb = na / norm, nb / norm
        zero = np.zeros(n_coils)
        cx, cy, cz = (float(c) for c in centre)
        if axis == "z":
            pos = np.stack([cx + a, cy + b, cz + along], 1)
            normal = np.stack([na, nb, zero], 1)
            tangent = np.stack([-nb, na, zero], 1)
        else:
            pos = np.stack([cx + a, cy + along, cz + b], 1)
            normal = np.stack([na, zero, nb], 1)
            tangent = np.stack([-nb, zero, na], 1)
        return cls(pos.astype(np.float32), normal.astype(np.float32), tangent.astype(np.float32),
                   float(rng.uniform(0.85, 1.1) * 1.9 / np.sqrt(n_coils)), rng.uniform(-np.pi, np.pi, n_coils).astype(np.float32),
                   np.asarray([cx, cy, cz], np.float32))

    def _magnitude(self, d2: np.ndarray) -> np.ndarray:
        return (1.0 + d2 / self.size**2) ** -1.5

    def centre_rss(self) -> float:
        """Root-sum-of-squares of the coil magnitudes at ``centre`` (the maps are divided by it)."""
        d2 = ((self.positions - self.centre) ** 2).sum(1)
        return float(np.sqrt((self._magnitude(d2) ** 2).sum()))

    def maps(self, grid: Grid, coarse_px: int = 8) -> torch.Tensor:
        """Sensitivities ``(S, C, H, W)`` complex64 (torch), smooth in magnitude and phase.

        Magnitude ``(1 + (d/size)^2)^-1.5`` of the 3-D coil-to-pixel distance ``d``; phase the coil's
        offset plus ``atan2(d.t, d.n)``, the angle of the coil-to-pixel vector in the coil frame (a
        field turning around the loop, smooth everywhere inside the cylinder). Evaluated on a grid
        ``coarse_px`` times coarser in-plane and interpolated bicubically; divided by
        :meth:`centre_rss`.
        """
        S, H, W = grid.shape
        gh, gw = -(-H // coarse_px) + 1, -(-W // coarse_px) + 1
        # coarse nodes spanning the same physical extent as the full grid (align_corners interpolation)
        xs = np.linspace(grid.x[0, 0, 0], grid.x[0, 0, -1], gw, dtype=np.float32).reshape(1, 1, 1, -1)
        ys = np.linspace(grid.y[0, 0, 0], grid.y[0, -1, 0], gh, dtype=np.float32).reshape(1, 1, -1, 1)
        zs = grid.z.reshape(-1, 1, 1, 1)
        col = lambda arr, i: arr[:, i].reshape(1, -1, 1, 1)  # noqa: E731  (C,) -> (1, C, 1, 1)
        d = [xs - col(self.positions, 0), ys - col(self.positions, 1), zs - col(self.positions, 2)]
        mag = self._magnitude(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        dn = sum(d[i] * col(self.normals, i) for i in range(3))
        dt = sum(d[i] * col(self.tangents, i) for i in range(3))
        ang = self.phases.reshape(1, -1, 1, 1) + np.arctan2(dt, dn)
        coarse = np.concatenate([mag * np.cos(ang), mag * np.sin(ang)], axis=1).astype(np.float32)
        fine = F.interpolate(torch.from_numpy(coarse), size=(H, W), mode="bicubic", align_corners=True)
        C = self.positions.shape[0]
        return torch.complex(fine[:, :C], fine[:, C:]) / self.centre_rss()
