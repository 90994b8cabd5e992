"""A beating-heart phantom for :mod:`data.simulate_cine`: anatomy, cardiac motion and imaging planes.

Geometry
--------
* Patient frame, millimetres: ``X`` towards the patient's left, ``Y`` posterior, ``Z`` superior; the
  torso is an elliptic cylinder along ``Z`` centred on the origin.
* Heart frame, millimetres: origin at the centre of the mitral annulus at end-diastole (ED), ``e_z``
  along the LV long axis from the apex towards the base, ``e_x`` from the LV axis towards the RV
  (septal direction, anterior-right), ``e_y = e_z x e_x``. The LV occupies ``z_h <= 0``.
* An image is a plane through 3-D space: pixel ``(i, j)`` of a ``(H, W)`` image lies at
  ``origin + (i - H//2) dy row + (j - W//2) dx col`` (the centre pixel is the DC position of
  ``utils.physics.fft2c``). Rows are the phase-encoding axis (ky), columns the readout (kx, which
  carries the 2x readout oversampling: the columns span twice the nominal field of view).
  Short-axis (SAX) planes are perpendicular to ``e_z`` from just below the base towards the apex;
  long-axis (LAX) planes contain the long axis: 2-, 3- and 4-chamber views (in that order), rotated
  about ``e_z`` so that the 4-chamber plane cuts the RV, the 3-chamber plane the aortic root (LVOT),
  and the 2-chamber plane neither.

Anatomy (all 3-D, so every view of a subject shows the same organs): skin and subcutaneous fat,
chest-wall muscle, lungs with vessels, mediastinal and epicardial fat, liver and upper abdomen under a
domed diaphragm, spine (vertebral body, canal) and descending aorta; the heart: LV as truncated
prolate half-ellipsoids (endocardium, epicardium), trabeculated endocardial border, two papillary
muscles, RV as a crescent wrapped round the septum with a thin free wall, both atria, the aortic
root. Intensities are bSSFP-like (bright blood and fat, dark myocardium and lung), jittered per subject.

Motion (vectorised over frames: every per-frame parameter is an array broadcast over
``(t, slices, H, W)``): frame ``f`` of ``T`` is at cardiac phase ``f / T``; frame 0 is ED, end-systole
(ES) is frame ``es_frame``. The contraction ``c`` (0 at ED, 1 at ES) follows a half-cosine ejection,
then rapid filling, diastasis and the atrial kick (:func:`contraction`). The endocardial radius
shrinks by the factor solved from the subject's target ejection fraction, the mitral annulus descends
towards the fixed apex (longitudinal shortening: through-plane motion for SAX slices), the epicardium
follows from myocardial incompressibility (wall thickening), the RV and atria move with their own
factors, and a slow respiratory drift (at most 1.5 mm, mostly along ``Z``, zero at ED) shifts heart,
diaphragm and liver (so the SAX slices also see some through-plane motion).

Labels (ACDC): 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles and
trabeculae included, as ACDC's convention); the RV free wall, atria and vessels are background.
A label is the hard inside test of the same surfaces whose soft edges (:func:`data.phantoms.soft_step`)
make the image, for every frame.

Groups (ACDC): NOR normal, DCM dilated LV with a thin wall and low EF, HCM thick (asymmetric septal)
wall with a small cavity and high EF, MINF an akinetic thinned sector with reduced EF, RV a dilated
poorly contracting RV (DCM's RV contracts less too). Targets (LV EF %): NOR 55-70, DCM 20-38, HCM
60-78, MINF 25-45, RV 52-66. EF measured on label stacks differs from the target by slice
discretisation and through-plane motion: with 5 SAX slices at 3 mm, LV EF (%) came out NOR 59-72,
DCM 9-33, HCM 54-80, MINF 16-50, RV 53-69 and RV EF NOR 36-63, DCM 17-28, RV 20-31 (20 subjects each).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np

from data.phantoms import paint, smoothstep, soft_step
from data.volumes import slice_chunks

__all__ = [
    "GROUPS",
    "LABEL_RV",
    "LABEL_MYO",
    "LABEL_LV",
    "LAX_VIEWS",
    "Subject",
    "Planes",
    "sample_subject",
    "contraction",
    "es_frame",
    "frame_contraction",
    "sax_planes",
    "lax_planes",
    "render",
    "analytic_lv_volume_ml",
]

GROUPS: Tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")
LABEL_RV, LABEL_MYO, LABEL_LV = 1, 2, 3
LAX_VIEWS: Tuple[str, ...] = ("2ch", "3ch", "4ch")

# bSSFP-like relative intensities (blood ~1), jittered per subject
CONTRAST: Dict[str, float] = dict(
    blood=0.95, myo=0.27, fat=0.85, muscle=0.30, lung=0.045, vessel=0.20, liver=0.38, abdomen=0.33,
    marrow=0.50, bone=0.06, csf=0.90, wall=0.30,
)
# LV ejection fraction targets and remodelling per group
_EF_RANGE = {"NOR": (0.55, 0.70), "DCM": (0.20, 0.38), "HCM": (0.60, 0.78), "MINF": (0.25, 0.45), "RV": (0.52, 0.66)}
_CHUNK_PIXELS = 2**21  # pixels of (frames x slices x H x W) evaluated at once: bounds temporary memory


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------- subject


@dataclasses.dataclass(frozen=True)
class Waves:
    """Sum of ``n`` random plane waves, a smooth zero-mean unit-variance texture in 3-D (mm)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)

    @classmethod
    def sample(cls, rng: np.random.Generator, n: int, wavelength_mm: Tuple[float, float]) -> "Waves":
        direction = rng.standard_normal((n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        length = rng.uniform(*wavelength_mm, size=(n, 1))
        return cls((2 * np.pi / length * direction).astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
        for (kx, ky, kz), p in zip(self.k, self.phase):  # a handful of components, each a full-array op
            out += np.cos(kx * x + ky * y + kz * z + p)
        return out * np.float32(math.sqrt(2.0 / len(self.phase)))


@dataclasses.dataclass(frozen=True)
class Subject:
    """All anatomical, contrast and motion parameters of one synthetic subject (lengths in mm)."""

    group: str
    height_cm: float
    weight_kg: float
    contrast: Dict[str, float]
    # torso (patient frame)
    body_axes: Tuple[float, float]
    body_shape: np.ndarray  # (3, 2) angular harmonics (order 2..4): amplitude, phase
    fat_mm: float
    muscle_mm: float
    spine_y: float
    desc_aorta: Tuple[float, float, float]  # x, y, radius
    diaphragm_z: float
    # heart pose
    base_centre: np.ndarray  # (3,) patient mm
    axes: np.ndarray  # (3, 3) rows e_x, e_y, e_z in patient coordinates
    # LV at ED
    lv_radius: float  # endocardial equatorial radius
    lv_length: float  # endocardial long semi-axis (base plane to apex)
    wall_mm: float
    septal_extra: float  # fractional extra wall thickness towards the septum (HCM)
    infarct: Tuple[float, float, float]  # angle, angular half-width (rad), depth 0..1 (MINF)
    radial_factor: float  # fraction of the endocardial radius lost at ES (solved from the EF target)
    descent_mm: float  # mitral annulus descent at ES
    ef_target: float
    trabeculae: np.ndarray  # (4, 3): angular order, amplitude (fraction), phase
    papillary: np.ndarray  # (2,) angles (rad)
    papillary_mm: float
    # RV at ED
    rv_offset: float
    rv_axes: Tuple[float, float, float]
    rv_wall_mm: float
    rv_contract: Tuple[float, float, float]  # shrink of the x / y semi-axes at ES, tricuspid descent / mitral
    # atria and aorta (heart frame)
    la: Tuple[float, float, float, float]  # angle, offset, radius, height
    ra: Tuple[float, float, float]  # offset along e_x, radius, height
    aorta_angle: float
    aorta_radius: float
    epi_fat_mm: float
    # motion
    es_fraction: float
    drift: np.ndarray  # (3,) respiratory drift direction x peak-to-peak amplitude (at most), mm
    drift_cycles: float
    drift_phase: float
    # textures
    heart_waves: Waves
    body_waves: Waves
    lung_waves: Waves
    # views
    sax_top_mm: float
    sax_bottom_fraction: float
    sax_roll: float
    lax_angles: Tuple[float, float, float]  # 2ch, 3ch, 4ch rotations about e_z (rad, from e_x)


def _solve_radial_factor(ef: float, length_ratio: float, weight: np.ndarray) -> float:
    """Radial shrink ``u`` with ``1 - mean((1 - u k)^2) * length_ratio = ef`` (``k`` the angular
    motion weight, 1 for normal wall, ~0 in an akinetic infarct)."""
    k1, k2 = float(weight.mean()), float((weight**2).mean())
    q = (1.0 - ef) / length_ratio  # required mean of (1 - u k)^2
    disc = k1 * k1 - k2 * (1.0 - q)
    u = (k1 - math.sqrt(disc)) / k2 if disc >= 0 else k1 / k2
    return float(np.clip(u, 0.0, 0.6))


def _infarct_weight(phi: np.ndarray, infarct: Tuple[float, float, float]) -> np.ndarray:
    """Infarct membership in [0, 1] of polar angle ``phi`` (0 outside the sector)."""
    angle, width, depth = infarct
    if depth <= 0:
        return np.zeros_like(phi)
    d = np.angle(np.exp(1j * (phi - angle))).astype(np.float32)
    return (depth * np.exp(-((d / width) ** 4))).astype(np.float32)


def sample_subject(rng: np.random.Generator, group: str) -> Subject:
    """Draw one subject of ACDC ``group`` (:data:`GROUPS`); every later draw of the simulator uses the
    same generator after this one, so a subject is a pure function of the generator state."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    u = rng.uniform
    height = u(155.0, 195.0)
    bmi = u(19.0, 32.0)
    weight = bmi * (height / 100.0) ** 2
    bsa = math.sqrt(height * weight / 3600.0)  # Mosteller, m^2
    size = (bsa / 1.9) ** 0.5
    contrast = {k: float(v * u(0.88, 1.12)) for k, v in sorted(CONTRAST.items())}

    # torso: wider and deeper with weight, fat with BMI
    habitus = (weight / 75.0) ** 0.3
    body_axes = (u(150.0, 172.0) * habitus, u(100.0, 118.0) * habitus)
    body_shape = np.stack([u(0.0, 0.04, 3), u(0, 2 * np.pi, 3)], 1)
    fat = u(6.0, 10.0) + 1.2 * max(bmi - 20.0, 0.0)
    muscle = u(9.0, 15.0)
    spine_y = body_axes[1] - fat - muscle - u(22.0, 30.0)
    desc_aorta = (u(16.0, 26.0), spine_y - u(30.0, 38.0), u(10.0, 13.0))

    # heart pose: long axis base -> apex points anterior, left and inferior
    apex_dir = _unit(np.array([0.62, -0.60, -0.50]) + rng.normal(0.0, 0.06, 3))
    e_z = -apex_dir
    ant_right = np.array([-0.55, -0.80, 0.20])
    e_x = _unit(ant_right - ant_right.dot(e_z) * e_z)
    e_y = np.cross(e_z, e_x)
    base_centre = np.array([u(-12.0, 2.0), u(-20.0, -8.0), u(-10.0, 10.0)])

    # LV by group
    radius, length = u(22.0, 26.0) * size, u(78.0, 88.0) * size
    wall, septal, infarct, descent = u(7.5, 10.0), 0.0, (0.0, 0.5, 0.0), u(10.0, 15.0)
    rv_scale, rv_contract = 1.0, (u(0.30, 0.40), u(0.10, 0.16), 1.4)
    if group == "DCM":
        radius, length, wall, descent = radius * u(1.28, 1.45), length * u(1.08, 1.18), u(5.0, 7.0), u(4.0, 8.0)
        rv_contract = (rv_contract[0] * 0.6, rv_contract[1] * 0.6, 1.0)
    elif group == "HCM":
        radius, wall, septal, descent = radius * u(0.82, 0.92), u(13.0, 18.0), u(0.25, 0.6), u(7.0, 11.0)
    elif group == "MINF":
        radius, length, descent = radius * u(1.05, 1.2), length * u(1.0, 1.08), u(6.0, 10.0)
        infarct = (u(-np.pi, np.pi), u(0.55, 0.9), u(0.8, 1.0))
    elif group == "RV":
        rv_scale, rv_contract = u(1.35, 1.6), (u(0.18, 0.25), u(0.05, 0.09), 0.8)
    ef = u(*_EF_RANGE[group])
    length_ratio = (length - descent) / length
    phi = np.linspace(-np.pi, np.pi, 360, endpoint=False).astype(np.float32)
    weight_k = 1.0 - 0.95 * _infarct_weight(phi, infarct)
    radial = _solve_radial_factor(ef, length_ratio, weight_k)
    trabeculae = np.stack([np.array([5.0, 7.0, 11.0, 17.0]), u(0.006, 0.02, 4), u(0, 2 * np.pi, 4)], 1)
    papillary = np.array([np.pi - u(0.5, 0.9), -(np.pi - u(0.8, 1.2))])
    papillary_mm = u(3.5, 5.0) * size

    epi_radius = radius + wall
    rv_offset = epi_radius * u(0.85, 0.98)
    rv_axes = (epi_radius * u(0.88, 1.0) * rv_scale, epi_radius * u(1.4, 1.6) * rv_scale, length * u(0.82, 0.9))
    la = (u(-2.6, -2.0), radius * u(0.2, 0.4), u(18.0, 23.0) * size, u(20.0, 26.0) * size)
    ra = (rv_offset * u(0.95, 1.15), u(17.0, 21.0) * size, u(18.0, 24.0) * size)
    aorta_angle = u(0.7, 1.1)
    aorta_radius = u(11.0, 14.0) * size
    lowest = base_centre[2] - (length + wall) * abs(apex_dir[2])
    diaphragm_z = lowest + u(8.0, 16.0)

    es_fraction = u(0.33, 0.40)
    drift = rng.normal(0.0, 1.0, 3) * np.array([0.3, 0.4, 1.0])
    drift = drift / np.linalg.norm(drift) * u(0.3, 1.5)
    return Subject(
        group=group, height_cm=float(height), weight_kg=float(weight), contrast=contrast,
        body_axes=body_axes, body_shape=body_shape, fat_mm=float(fat), muscle_mm=float(muscle),
        spine_y=float(spine_y), desc_aorta=desc_aorta, diaphragm_z=float(diaphragm_z),
        base_centre=base_centre, axes=np.stack([e_x, e_y, e_z]),
        lv_radius=float(radius), lv_length=float(length), wall_mm=float(wall), septal_extra=float(septal),
        infarct=infarct, radial_factor=radial, descent_mm=float(descent), ef_target=float(ef),
        trabeculae=trabeculae, papillary=papillary, papillary_mm=float(papillary_mm),
        rv_offset=float(rv_offset), rv_axes=rv_axes, rv_wall_mm=float(u(2.5, 4.0)), rv_contract=rv_contract,
        la=la, ra=ra, aorta_angle=float(aorta_angle), aorta_radius=float(aorta_radius),
        epi_fat_mm=float(u(2.0, 5.0)),
        es_fraction=float(es_fraction), drift=drift, drift_cycles=float(u(0.15, 0.35)),
        drift_phase=float(u(0, 2 * np.pi)),
        heart_waves=Waves.sample(rng, 8, (6.0, 25.0)), body_waves=Waves.sample(rng, 8, (10.0, 60.0)),
        lung_waves=Waves.sample(rng, 10, (5.0, 14.0)),
        sax_top_mm=float(u(-2.0, 2.0)), sax_bottom_fraction=float(u(0.92, 1.0)), sax_roll=float(u(-0.2, 0.2)),
        lax_angles=(float(u(1.45, 1.75)), float(aorta_angle), float(u(-0.1, 0.1))),
    )


# --------------------------------------------------------------------------------------------- motion


def es_frame(subject: Subject, frames: int) -> int:
    """0-based end-systolic frame: ``round(es_fraction * frames)`` (at least 1, at most ``frames - 1``)."""
    return int(min(max(round(subject.es_fraction * frames), 1), frames - 1))


def contraction(phase: np.ndarray, es_phase: float) -> np.ndarray:
    """Contraction state in [0, 1] at cardiac phase(s) in [0, 1): 0 at ED (phase 0), 1 at ES.

    Systole: half-cosine ejection up to ``es_phase``. Diastole: rapid filling (78 % of the volume
    back by 45 % of diastole), diastasis, then the atrial kick over its last 28 %.
    """
    phase = np.asarray(phase, np.float64)
    systole = 0.5 * (1.0 - np.cos(np.pi * np.clip(phase / es_phase, 0.0, 1.0)))
    s = np.clip((phase - es_phase) / (1.0 - es_phase), 0.0, 1.0)
    diastole = 1.0 - (0.78 * smoothstep(s / 0.45) + 0.22 * smoothstep((s - 0.72) / 0.28))
    return np.where(phase <= es_phase, systole, diastole)


def frame_contraction(subject: Subject, frames: int) -> np.ndarray:
    """Contraction ``(frames,)`` at phases ``f / frames``, exactly 1 at :func:`es_frame`."""
    return contraction(np.arange(frames) / frames, es_frame(subject, frames) / frames)


def analytic_lv_volume_ml(subject: Subject, frames: int) -> np.ndarray:
    """LV cavity volume ``(frames,)`` in mL of the analytic half-ellipsoid (papillary muscles and
    trabeculae ignored): ``2/3 pi mean_phi(a(phi)^2) c``."""
    c = frame_contraction(subject, frames)
    phi = np.linspace(-np.pi, np.pi, 360, endpoint=False).astype(np.float32)
    k = 1.0 - 0.95 * _infarct_weight(phi, subject.infarct)
    a = subject.lv_radius * (1.0 - subject.radial_factor * c[:, None] * k[None, :])
    length = subject.lv_length - subject.descent_mm * c
    return 2.0 / 3.0 * np.pi * (a**2).mean(1) * length / 1000.0


# --------------------------------------------------------------------------------------------- planes


@dataclasses.dataclass(frozen=True)
class Planes:
    """``S`` image planes of ``shape = (H, W)`` pixels, ``pixel_mm = (dy, dx)``: ``origin`` ``(S, 3)``,
    ``rows``/``cols`` ``(S, 3)`` unit vectors (patient frame, mm). ``position_mm`` ``(S,)``: slice
    positions along the heart axis (SAX) or 0 (LAX)."""

    origin: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    shape: Tuple[int, int]
    pixel_mm: Tuple[float, float]
    position_mm: np.ndarray

    def coordinates(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates ``X, Y, Z`` of every pixel, each float32 ``(S, H, W)`` mm."""
        H, W = self.shape
        i = ((np.arange(H) - H // 2) * self.pixel_mm[0]).astype(np.float32).reshape(1, H, 1)
        j = ((np.arange(W) - W // 2) * self.pixel_mm[1]).astype(np.float32).reshape(1, 1, W)
        o, r, c = (a.astype(np.float32).reshape(-1, 3, 1, 1) for a in (self.origin, self.rows, self.cols))
        return tuple(o[:, d] + i * r[:, d] + j * c[:, d] for d in range(3))


def _heart_to_patient(subject: Subject, v) -> np.ndarray:
    """Heart-frame vector(s) ``(..., 3)`` as patient-frame vectors."""
    return np.asarray(v, np.float64) @ subject.axes


def sax_planes(subject: Subject, slices: int, shape: Tuple[int, int], pixel_mm: float) -> Planes:
    """``slices`` short-axis planes, the centres of equal slabs tiling the LV from ``sax_top_mm``
    below the ED base to ``sax_bottom_fraction`` of its length, centred between LV and RV; the readout
    (columns) points from the RV towards the LV lateral wall, rolled by ``sax_roll``."""
    if slices < 1:
        raise ValueError(f"need at least one SAX slice, got {slices}")
    gap = (subject.sax_bottom_fraction * subject.lv_length - subject.sax_top_mm) / slices
    z = -subject.sax_top_mm - (np.arange(slices) + 0.5) * gap  # slice centres of slabs tiling the LV
    e_x, e_y, e_z = subject.axes
    roll = subject.sax_roll
    col = math.cos(roll) * -e_x + math.sin(roll) * e_y
    row = np.cross(e_z, col)
    centre = subject.base_centre + 0.35 * subject.rv_offset * e_x
    origin = centre[None, :] + z[:, None] * e_z[None, :]
    return Planes(origin, np.tile(row, (slices, 1)), np.tile(col, (slices, 1)), tuple(shape),
                  (float(pixel_mm), float(pixel_mm)), z.astype(np.float32))


def lax_planes(subject: Subject, shape: Tuple[int, int], pixel_mm: float) -> Planes:
    """The 2-, 3- and 4-chamber planes (:data:`LAX_VIEWS` order): rows run along the long axis from
    the atria towards the apex, columns across at the view's angle about ``e_z``."""
    e_x, e_y, e_z = subject.axes
    cols = np.stack([math.cos(a) * e_x + math.sin(a) * e_y for a in subject.lax_angles])
    rows = np.tile(-e_z, (3, 1))
    centre = subject.base_centre - 0.3 * subject.lv_length * e_z
    return Planes(np.tile(centre, (3, 1)), rows, cols, tuple(shape), (float(pixel_mm), float(pixel_mm)),
                  np.zeros(3, np.float32))


# --------------------------------------------------------------------------------------------- shapes


def _ellipsoid_sd(u, v, w, a, b, c) -> np.ndarray:
    """First-order signed distance (mm, positive inside) to ``u²/a² + v²/b² + w²/c² = 1``."""
    qu, qv, qw = u / a, v / b, w / c
    f = 1.0 - (qu * qu + qv * qv + qw * qw)
    g = 2.0 * np.sqrt((qu / a) ** 2 + (qv / b) ** 2 + (qw / c) ** 2) + 1e-3
    return f / g


def _ellipse_sd(u, v, a, b) -> np.ndarray:
    """First-order signed distance (mm, positive inside) to the ellipse ``u²/a² + v²/b² = 1``."""
    qu, qv = u / a, v / b
    return (1.0 - (qu * qu + qv * qv)) / (2.0 * np.sqrt((qu / a) ** 2 + (qv / b) ** 2) + 1e-3)


def _disc_sd(u, v, cx, cy, r) -> np.ndarray:
    return r - np.sqrt((u - cx) ** 2 + (v - cy) ** 2)


def _segment_sd(x, y, z, p0, p1, r) -> np.ndarray:
    """Signed distance (positive inside) to a capsule of radius ``r`` around segment ``p0 -> p1``."""
    d = np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
    px, py, pz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / float(d @ d), 0.0, 1.0)
    return r - np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)


def _smin(a, b):
    return np.minimum(a, b)


# --------------------------------------------------------------------------------------------- render


def _frame_params(subject: Subject, c: np.ndarray, phase: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-frame scalars, each ``(t, 1, 1, 1)`` float32, from contraction ``c`` and phase ``(t,)``."""
    f32 = lambda v: np.asarray(v, np.float32).reshape(-1, 1, 1, 1)  # noqa: E731
    length = subject.lv_length - subject.descent_mm * c
    shift = 0.5 * (np.sin(2 * np.pi * subject.drift_cycles * phase + subject.drift_phase) - math.sin(subject.drift_phase))
    return dict(
        c=f32(c), z_base=f32(-subject.descent_mm * c), length=f32(length),
        apex_wall=f32((0.8 * subject.wall_mm) * (1.0 + 0.35 * c)),
        thick_scale=f32(subject.lv_length / length),  # myocardial volume kept as the LV shortens
        rv_x=f32(subject.rv_axes[0] * (1.0 - subject.rv_contract[0] * c)),
        rv_y=f32(subject.rv_axes[1] * (1.0 - subject.rv_contract[1] * c)),
        z_tricuspid=f32(5.0 - subject.rv_contract[2] * subject.descent_mm * c),
        atria=f32(1.0 + 0.12 * c),
        papillary=f32(subject.papillary_mm * (1.0 + 0.3 * c)),
        dx=f32(subject.drift[0] * shift), dy=f32(subject.drift[1] * shift), dz=f32(subject.drift[2] * shift),
    )


def _render_chunk(subject: Subject, X, Y, Z, p: Dict[str, np.ndarray], px: float) -> Tuple[np.ndarray, np.ndarray]:
    """Magnitude and labels ``(t, S, H, W)`` for patient coordinates ``X, Y, Z`` ``(S, H, W)``."""
    k = subject.contrast
    edge = lambda sd: soft_step(sd / px)  # noqa: E731  signed distance (mm) -> soft inside [0, 1]
    f32 = np.float32

    # ---- static torso (patient frame)
    ax, ay = subject.body_axes
    theta = np.arctan2(Y / ay, X / ax)
    shape = np.ones_like(X)
    for order, (amp, ph) in zip((2, 3, 4), subject.body_shape):
        shape = shape + f32(amp) * np.cos(order * theta + f32(ph))
    body = _ellipse_sd(X, Y, ax * shape, ay * shape)
    tex = subject.body_waves(X, Y, Z)
    img = np.zeros(np.broadcast_shapes(p["c"].shape, X.shape), np.float32)
    img = paint(img, edge(body), k["fat"] * (1.0 + 0.04 * tex))
    muscle = body - subject.fat_mm
    img = paint(img, edge(muscle), k["muscle"] * (1.0 + 0.06 * tex))
    cavity = muscle - subject.muscle_mm  # thoracic/abdominal cavity

    # ---- moving organs: respiratory drift
    Xm, Ym, Zm = X - p["dx"], Y - p["dy"], Z - p["dz"]
    diaphragm = subject.diaphragm_z + 20.0 / (1.0 + np.exp((Xm + 15.0) / 25.0)) - 0.0018 * (Xm * Xm + 0.6 * Ym * Ym)
    above = Zm - diaphragm  # > 0: thorax, < 0: abdomen

    # heart frame
    e = subject.axes.astype(np.float32)
    c0 = subject.base_centre.astype(np.float32)
    rx, ry, rz = Xm - c0[0], Ym - c0[1], Zm - c0[2]
    hx = e[0, 0] * rx + e[0, 1] * ry + e[0, 2] * rz
    hy = e[1, 0] * rx + e[1, 1] * ry + e[1, 2] * rz
    hz = e[2, 0] * rx + e[2, 1] * ry + e[2, 2] * rz
    r = np.sqrt(hx * hx + hy * hy)
    phi = np.arctan2(hy, hx)

    # LV: endocardium with trabeculae and an (akinetic) infarct, epicardium by incompressibility
    infarct = _infarct_weight(phi, subject.infarct)
    trab = np.zeros_like(phi)
    for order, amp, ph in subject.trabeculae:
        trab = trab + f32(amp) * np.cos(f32(order) * phi + f32(ph) + 0.05 * hz)
    a_ed = subject.lv_radius * (1.0 + trab)
    a_en = a_ed * (1.0 - subject.radial_factor * p["c"] * (1.0 - 0.95 * infarct))
    wall = subject.wall_mm * (1.0 + subject.septal_extra * np.maximum(np.cos(phi), 0.0) ** 2) * (1.0 - 0.55 * infarct)
    a_ep = np.sqrt(a_en * a_en + ((a_ed + wall) ** 2 - a_ed * a_ed) * p["thick_scale"])
    dz = hz - p["z_base"]
    below_base = -dz  # > 0 below the mitral annulus plane
    endo = _ellipsoid_sd(r, 0.0, dz, a_en, 1.0, p["length"])
    epi_full = _ellipsoid_sd(r, 0.0, dz, a_ep, 1.0, p["length"] + p["apex_wall"])
    lv_cavity = _smin(endo, below_base)
    lv_outer = _smin(epi_full, below_base)
    myo = _smin(lv_outer, -lv_cavity)

    # papillary muscles: tubes along the axis inside the cavity, from 25 % to 70 % of the length
    pap = np.full_like(r, -1e3)
    z_lo, z_hi = -0.72 * p["length"], -0.22 * p["length"]
    z_in = _smin(dz - z_lo, z_hi - dz)
    for angle in subject.papillary:
        rad = 0.68 * a_en
        tube = p["papillary"] - np.sqrt((hx - rad * f32(math.cos(angle))) ** 2 + (hy - rad * f32(math.sin(angle))) ** 2)
        pap = np.maximum(pap, _smin(tube, z_in))
    pap = _smin(pap, lv_cavity)

    # RV: ellipsoid beside the LV minus the LV, under the tricuspid plane; thin free wall
    rvx = hx - subject.rv_offset
    rv_ell = _ellipsoid_sd(rvx, hy, hz - 5.0, p["rv_x"], p["rv_y"], subject.rv_axes[2])
    rv_wall_ell = _ellipsoid_sd(rvx, hy, hz - 5.0, p["rv_x"] + subject.rv_wall_mm, p["rv_y"] + subject.rv_wall_mm,
                                subject.rv_axes[2] + subject.rv_wall_mm)
    tricuspid = p["z_tricuspid"] - hz
    # the RV stays off the LV's column above the mitral plane too (atria and LVOT live there)
    rv_cavity = _smin(_smin(rv_ell, tricuspid), -epi_full)
    rv_outer = _smin(_smin(rv_wall_ell, tricuspid + subject.rv_wall_mm), -epi_full + 0.5)

    # atria above the valve planes, aortic root
    la_angle, la_off, la_r, la_h = subject.la
    la = _ellipsoid_sd(hx - la_off * math.cos(la_angle), hy - la_off * math.sin(la_angle), dz - 0.8 * la_h,
                       la_r * p["atria"], 0.9 * la_r * p["atria"], la_h * p["atria"])
    la = _smin(la, dz)
    ra_off, ra_r, ra_h = subject.ra
    ra = _ellipsoid_sd(hx - ra_off, hy, hz - p["z_tricuspid"] - 0.8 * ra_h, ra_r * p["atria"], ra_r * p["atria"],
                       ra_h * p["atria"])
    ra = _smin(ra, hz - p["z_tricuspid"])
    ao_dir = np.array([math.cos(subject.aorta_angle), math.sin(subject.aorta_angle), 0.0])
    ao0 = 0.45 * subject.lv_radius * ao_dir
    ao1 = ao0 + 55.0 * _unit(np.array([0.0, 0.0, 1.0]) + 0.35 * ao_dir)
    aorta = _segment_sd(hx, hy, hz, ao0, ao1, subject.aorta_radius)
    aorta = _smin(aorta, hz + 0.0)

    heart_outer = np.maximum.reduce([lv_outer, rv_outer, la + 2.0, ra + 2.0, aorta + 2.0])
    htex = subject.heart_waves(hx, hy, hz)

    # ---- thorax contents
    img = paint(img, edge(cavity), k["fat"] * 0.9)  # mediastinal fat fills what organs leave
    column = 28.0 - np.sqrt(((Xm - 8.0) / 1.0) ** 2 + ((Ym - (subject.spine_y - 30.0)) / 1.8) ** 2)
    mediastinum = np.maximum(heart_outer + subject.epi_fat_mm + 4.0, column)
    lung = _smin(_smin(cavity - 4.0, above), -mediastinum)
    ltex = subject.lung_waves(Xm, Ym, Zm)
    img = paint(img, edge(lung), k["lung"] + (k["vessel"] - k["lung"]) * soft_step((ltex - 1.7) * 4.0))
    # abdomen under the diaphragm: liver on the right and across the midline, stomach/spleen left
    belly = _smin(cavity, -above)
    img = paint(img, edge(belly), k["abdomen"] * (1.0 + 0.05 * tex))
    liver = _smin(belly - 2.0, 35.0 - Xm - 0.3 * Ym)
    img = paint(img, edge(liver), k["liver"] * (1.0 + 0.04 * tex))
    # spine and descending aorta (static)
    vert = _disc_sd(X, Y, 0.0, subject.spine_y, 17.0)
    img = paint(img, edge(vert), k["bone"])
    img = paint(img, edge(vert - 2.0), k["marrow"] * (1.0 + 0.05 * tex))
    img = paint(img, edge(_disc_sd(X, Y, 0.0, subject.spine_y + 24.0, 7.0)), k["csf"])
    dx_, dy_, dr = subject.desc_aorta
    img = paint(img, edge(_disc_sd(X, Y, dx_, dy_, dr)), k["blood"])

    # ---- heart: epicardial fat, walls, then blood pools, then papillary muscles
    fat_shell = _smin(heart_outer + subject.epi_fat_mm * (0.6 + 0.4 * htex), above + 5.0)
    img = paint(img, edge(fat_shell), k["fat"])
    for outer in (la + 2.0, ra + 2.0, aorta + 2.0, rv_outer, lv_outer):
        img = paint(img, edge(outer), k["wall"] if outer is not lv_outer else k["myo"] * (1.0 + 0.05 * htex))
    blood = k["blood"] * (1.0 + 0.03 * htex)
    for pool in (la, ra, aorta, rv_cavity, lv_cavity):
        img = paint(img, edge(pool), blood)
    img = paint(img, edge(pap), k["myo"])

    labels = np.zeros(img.shape, np.uint8)
    labels[rv_cavity > 0] = LABEL_RV
    labels[myo > 0] = LABEL_MYO
    labels[lv_cavity > 0] = LABEL_LV
    return np.maximum(img, 0.0).astype(np.float32, copy=False), labels


def render(subject: Subject, planes: Planes, frames: int) -> Tuple[np.ndarray, np.ndarray]:
    """Magnitude image float32 ``(frames, S, H, W)`` (relative bSSFP intensities, blood ~1) and ACDC
    labels uint8 ``(frames, S, H, W)`` of ``planes`` over one cardiac cycle (frame 0 = ED).

    Vectorised over frames, slices and pixels; evaluated in chunks of frames to bound memory.
    """
    if frames < 2:
        raise ValueError(f"a cardiac cycle needs at least 2 frames, got {frames}")
    X, Y, Z = planes.coordinates()
    S, (H, W) = X.shape[0], planes.shape
    phase = np.arange(frames) / frames
    c = frame_contraction(subject, frames)
    image = np.empty((frames, S, H, W), np.float32)
    labels = np.empty((frames, S, H, W), np.uint8)
    px = float(min(planes.pixel_mm))
    for part in slice_chunks(frames, S * H * W * (2**25 // _CHUNK_PIXELS)):
        params = _frame_params(subject, c[part], phase[part])
        image[part], labels[part] = _render_chunk(subject, X, Y, Z, params, px)
    return image, labels
