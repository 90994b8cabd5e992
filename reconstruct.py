"""Reconstruct a leaderboard folder with four models (brain/knee x acc4/acc8) routed per volume,
or (``--task cine``) a CMRxRecon cine set with the cine models routed by each case's mask.

    python reconstruct.py --path_data <Data>/leaderboard --result_path <result> --weights {result,artifacts}
                          [--artifacts_dir artifacts] [--net_prefix promptmr] [--classifier_net anatomy_cnn]
                          [--batch_size 4] [--device auto|cpu|cuda] [--no_progress] [--strict_routing]

For every ``<path_data>/acc{4,8}/kspace/{name}.h5`` (undersampled k-space, mask):

1. routing from the data only (a challenge rule; file and folder names are never used): the anatomy
   from the classifier on the volume's ``image_grappa`` (``acc{4,8}/image/{name}.h5``) combined with
   physical cues of the data (k-space height, zero edge columns, the object's extent along the
   readout, its margins in ``image_grappa``, intensity structure) by the documented rule of
   :mod:`data.routing`, with a calibrated confidence; where cues and classifier disagree, the
   confidence is low or the volume looks like neither anatomy (a torso, noise, zeros), the volume is
   routed by that rule and gets a warning (console, summary, ``routing.json``); the acceleration from
   the mask (:func:`data.masks.estimate_acceleration`, spacing outside the ACS, nearest of 4 and 8; a
   spacing far from both, e.g. 6, goes to the nearest model with a warning). ``--strict_routing``: a
   volume with any routing warning is not reconstructed (an earlier output of it is removed), it is
   an error line and the exit status is 1;
2. the image-space height cut of that anatomy (:data:`data.transforms.HEIGHT_CUT`), then the routed model
   on every slice with its adjacent slices (edges clamped), ``--batch_size`` slices at a time, no gradients;
3. ``<result>/test_reconstruct/reconstructions_leaderboard/acc{4,8}/{name}.h5`` (key ``reconstruction``,
   float32 ``(slices, 384, 384)``, written atomically) in the folder the input came from, and
   ``routing.json`` beside them: per volume the anatomy, classifier confidence, mask spacing, estimated
   acceleration, model used and seconds, plus the total time against the challenge's 3600 s budget.

Cine (``--task cine --path_data <CMRxRecon ...Set folder>``): every undersampled case of the set (2023
``AccFactorXX`` and 2024 ``UnderSample_TaskN`` layouts, :func:`data.cine.list_cine_cases`), routed by the
acceleration estimated from its mask (:func:`data.cine_masks.estimate_cine_mask`, never the folder name)
to ``cine_acc{R}`` (``<prefix>_cine_acc{R}`` / ``cine_acc{R}.safetensors``), or to the one all-acceleration
model ``<prefix>_cine`` / ``cine.safetensors`` when there is no model for that R; every frame with its
circular neighbour frames (:func:`utils.inference.reconstruct_cine`). Written: the CMRxRecon submission
``<result>/Submission/MultiCoil/Cine/<Set>/<relpath>`` (``img4ranking``, single, the run4Ranking crop),
the full reconstruction ``<result>/Reconstruction/MultiCoil/Cine/<Set>/<relpath>`` (``reconstruction``,
magnitude ``(t, slices, ky, kx)``, for figures) and ``<result>/Reconstruction/routing.json``.

Weights (the model configuration always comes from them, never from flags):
``--weights result``: ``<result>/<net_prefix>_{brain,knee}_acc{4,8}`` and ``<result>/<classifier_net>``, each
the last epoch of its highest recipe step; ``--weights artifacts``: ``<artifacts_dir>/{brain,knee}_acc{4,8}
.safetensors`` and ``anatomy_cnn.safetensors`` (:mod:`models.artifacts`).

A bad volume (corrupt file, no image file, wrong mask width, ...) or a missing model is one error line
naming the file; every other volume is still reconstructed, no partial output is left behind, and the
exit status is 1; ``routing.json`` is always written (valid JSON) unless its own write fails, which is
one more error line and exit status 1. Usage errors exit with 2, among them an output location that
cannot be used (``--result_path`` a file, under a file, or not writable), checked before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent
ACC_FOLDERS = ("acc4", "acc8")
SUPPORTED_ACCELERATIONS = (4, 8)
BUDGET_SECONDS = 3600.0
#: A mask spacing further than this (relative) from the routed acceleration is reported as a warning.
ACC_TOLERANCE = 0.1
OUTPUT_SUBDIR = Path("test_reconstruct") / "reconstructions_leaderboard"
ROUTING_FILE = "routing.json"
CLASSIFIER_ROLE = "classifier"
CINE = "cine"
CINE_ACCELERATIONS = (4, 8, 10, 12, 16, 20, 24)
CINE_SUBMISSION = Path("Submission") / "MultiCoil" / "Cine"
CINE_FULL = Path("Reconstruction") / "MultiCoil" / "Cine"


def _default_root(env: str, leaf: str) -> Path:
    return Path(os.environ.get(env) or REPO.parent / leaf)


# --------------------------------------------------------------------------------------------- weights


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference and where it came from."""

    role: str  # "brain_acc4" ... or "classifier"
    model: Any  # torch.nn.Module in eval mode on the target device
    info: Any  # models.artifacts.ArtifactInfo
    path: str  # checkpoint tag or artifact file


class ModelBank:
    """Loads each role's model on first use (so a missing model fails only the volumes that need it).

    ``locate(role) -> path`` finds the weights (may raise), ``load(path) -> (model, info)`` reads them.
    A failure is remembered and re-raised for every later volume needing that role.
    """

    def __init__(self, locate: Callable[[str], Path], load: Callable[[Path], Tuple[Any, Any]]):
        self._locate, self._load = locate, load
        self._cache: Dict[str, Any] = {}

    def get(self, role: str) -> LoadedModel:
        if role not in self._cache:
            try:
                self._cache[role] = self._load_role(role)
            except (ValueError, OSError) as exc:
                self._cache[role] = exc
        entry = self._cache[role]
        if isinstance(entry, Exception):
            raise entry
        return entry

    def loaded(self) -> Dict[str, LoadedModel]:
        return {k: v for k, v in self._cache.items() if isinstance(v, LoadedModel)}

    def _load_role(self, role: str) -> LoadedModel:
        from models import CLASSIFIERS
        from utils.artifacts import ArtifactError

        path = self._locate(role)
        model, info = self._load(path)
        if role == CLASSIFIER_ROLE:
            if info.model_name not in CLASSIFIERS:
                raise ArtifactError(f"{path}: holds {info.model_name!r}, expected a classifier {list(CLASSIFIERS)}")
        else:
            anatomy, acc = role.split("_acc")
            if anatomy == CINE and info.acceleration is None:  # one model for every acceleration
                acc = None
            if info.model_name in CLASSIFIERS:
                raise ArtifactError(f"{path}: holds the classifier {info.model_name!r}, expected a reconstruction model")
            if (info.anatomy is not None and info.anatomy != anatomy) or (
                info.acceleration is not None and acc is not None and int(info.acceleration) != int(acc)
            ):
                raise ArtifactError(f"{path}: trained for {info.anatomy} acc{info.acceleration}, used for {role}")
        return LoadedModel(role, model, info, str(path))


def make_model_bank(args: argparse.Namespace, device) -> ModelBank:
    """The :class:`ModelBank` of ``--weights result`` or ``--weights artifacts``."""
    from models import artifacts

    stems = {CLASSIFIER_ROLE: artifacts.CLASSIFIER_ARTIFACT}
    if args.task == CINE:  # cine_acc{R}, else the all-acceleration "cine" model
        def first(*candidates):
            found = [c for c in candidates if c.exists()]
            return found[0] if found else candidates[-1]

        if args.weights == "result":
            return ModelBank(
                lambda role: artifacts.find_result_checkpoint(
                    args.result_path, first(*(Path(args.result_path) / f"{args.net_prefix}_{r}" for r in (role, CINE))).name),
                lambda path: artifacts.load_checkpoint_model(path, device),
            )
        return ModelBank(
            lambda role: first(*(Path(args.artifacts_dir) / f"{r}{artifacts.SUFFIX}" for r in (role, CINE))),
            lambda path: artifacts.load_artifact(path, device),
        )
    if args.weights == "result":
        nets = artifacts.result_net_names(args.net_prefix, args.classifier_net)
        nets[CLASSIFIER_ROLE] = nets.pop(artifacts.CLASSIFIER_ARTIFACT)
        return ModelBank(
            lambda role: artifacts.find_result_checkpoint(args.result_path, nets[role]),
            lambda path: artifacts.load_checkpoint_model(path, device),
        )
    return ModelBank(
        lambda role: Path(args.artifacts_dir) / f"{stems.get(role, role)}{artifacts.SUFFIX}",
        lambda path: artifacts.load_artifact(path, device),
    )


# --------------------------------------------------------------------------------------------- volumes


@dataclasses.dataclass
class Job:
    """One leaderboard volume: ``folder`` (acc4/acc8, where the input lies and the output goes) and files."""

    folder: str
    kspace_path: Path
    image_path: Path
    out_path: Path

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.kspace_path.name}"


@dataclasses.dataclass
class VolumeData:
    kspace: Any  # complex64 (S, C, H, W)
    mask: Any  # float32 (W,)
    grappa: Any  # float32 (S, 384, 384)
    read_seconds: float


@dataclasses.dataclass
class Routing:
    """Routing of one volume, decided from the data only."""

    anatomy: str
    confidence: float
    acc_spacing: float  # mean gap between sampled columns outside the ACS
    acs_width: int
    acceleration: int  # the model's acceleration (nearest supported)
    warning: Optional[str] = None
    classifier_label: Optional[str] = None
    classifier_confidence: Optional[float] = None
    cues: Optional[Dict[str, Any]] = None  # data.routing.Cues.to_dict(); None when routed without k-space

    @property
    def role(self) -> str:
        return f"{self.anatomy}_acc{self.acceleration}"


def find_jobs(path_data: Path, out_root: Path) -> List[Job]:
    """Every ``acc{4,8}/kspace/*.h5`` under ``path_data``, with its image file and output path."""
    jobs = []
    for folder in ACC_FOLDERS:
        for kspace_path in sorted((path_data / folder / "kspace").glob("*.h5")):
            jobs.append(Job(folder, kspace_path, path_data / folder / "image" / kspace_path.name,
                            out_root / folder / kspace_path.name))
    return jobs


def read_volume(job: Job) -> VolumeData:
    """Read and check a volume's k-space, mask and ``image_grappa``; :class:`FormatError` names the file.

    Both headers are checked against each other first (declared sizes within the readers' limits, mask
    width = k-space width, slices = ``image_grappa`` slices), so a hostile header is rejected unread."""
    from data.formats import check_pair, read_image_file, read_kspace_file

    start = time.perf_counter()
    check_pair(job.kspace_path, job.image_path, key="image_grappa")
    volume = read_kspace_file(job.kspace_path)
    grappa = read_image_file(job.image_path, keys=("image_grappa",))["image_grappa"]
    return VolumeData(volume.kspace, volume.mask, grappa, time.perf_counter() - start)


class RoutingRefused(ValueError):
    """``--strict_routing``: a volume whose routing carries a warning is not reconstructed."""

    def __init__(self, message: str, record: Dict[str, Any]):
        super().__init__(message)
        self.record = record


def route_volume(classifier, grappa, mask, device, path="volume", kspace=None) -> Routing:
    """Anatomy from ``classifier`` on ``grappa`` ``(S, H, W)`` combined with the physical cues of
    ``kspace`` ``(S, C, H, W)``, ``mask`` and ``grappa`` (:mod:`data.routing`; without ``kspace`` the
    classifier alone decides); acceleration from ``mask`` ``(W,)``."""
    import torch

    from data.formats import FormatError, MASK_KEY
    from data.masks import estimate_acceleration
    from models.anatomy_cnn import LABELS

    labels, confidence = classifier.predict(torch.from_numpy(grappa)[None].to(device))
    try:
        est = estimate_acceleration(mask, supported=SUPPORTED_ACCELERATIONS)
    except ValueError as exc:
        raise FormatError(path, MASK_KEY, str(exc)) from None
    if not math.isfinite(est.spacing):  # only the ACS is sampled (the readers reject such masks too)
        raise FormatError(path, MASK_KEY, f"only the {est.acs_width} ACS lines are sampled, none outside: "
                                          "the acceleration is undefined")
    acc = int(est.acc)
    warnings = []
    if not abs(est.spacing / acc - 1) <= ACC_TOLERANCE:
        warnings.append(f"{path}: mask: spacing {est.spacing:.2f} outside the ACS matches no model "
                        f"{list(SUPPORTED_ACCELERATIONS)}; using the nearest, acc{acc}")
    label, conf = LABELS[int(labels[0])], float(confidence[0])
    anatomy, routed_conf, cues = label, conf, None
    if kspace is not None:
        from data.routing import decide, physical_cues

        decision = decide(physical_cues(kspace, mask, grappa), conf if label == LABELS[1] else 1.0 - conf)
        anatomy, routed_conf, cues = decision.anatomy, decision.confidence, decision.cues.to_dict()
        if decision.warning:
            warnings.append(f"{path}: anatomy: {decision.warning}")
    return Routing(anatomy, routed_conf, float(est.spacing), int(est.acs_width), acc,
                   "; ".join(warnings) or None, label, conf, cues)


def reconstruct_kspace(model, kspace, mask, anatomy: str, batch_size: int, device):
    """Height-cut ``kspace`` ``(S, C, H, W)`` for ``anatomy`` and run ``model`` on every slice.

    Returns float32 ``(S, 384, 384)`` as a numpy array.
    """
    import torch

    from data.transforms import undersampled_model_input
    from utils.inference import reconstruct_volume

    with torch.inference_mode():
        mask_t = torch.from_numpy(mask).to(device)
        k = undersampled_model_input(torch.from_numpy(kspace).to(device), mask_t, anatomy)
        num_adj = int(getattr(model.config, "num_adj_slices", 1))
        return reconstruct_volume(model, k, mask_t, num_adj, batch_size=batch_size, device=device).numpy()


def process_volume(job: Job, data: VolumeData, bank: ModelBank, args, device) -> Dict[str, Any]:
    """Route, reconstruct and write one volume; returns its routing record (raises on failure)."""
    import numpy as np

    from data.formats import IMAGE_SIZE, RECON_KEY, write_reconstruction_file

    start = time.perf_counter()
    classifier = bank.get(CLASSIFIER_ROLE)
    routing = route_volume(classifier.model, data.grappa, data.mask, device, job.kspace_path, data.kspace)
    record = {
        "anatomy": routing.anatomy,
        "confidence": round(routing.confidence, 6),
        "classifier": {"anatomy": routing.classifier_label, "confidence": round(routing.classifier_confidence, 6)},
        "cues": routing.cues,
        "acc_spacing": round(routing.acc_spacing, 4),
        "acs_width": routing.acs_width,
        "acceleration": routing.acceleration,
        "model": routing.role,
        "warning": routing.warning,
    }
    if routing.warning:
        if getattr(args, "strict_routing", False):
            raise RoutingRefused(f"routing refused (--strict_routing): {routing.warning}", record)
        _log(f"warning: {routing.warning}")
    recon_model = bank.get(routing.role)
    recon = reconstruct_kspace(recon_model.model, data.kspace, data.mask, routing.anatomy, args.batch_size, device)
    expected = (data.kspace.shape[0], IMAGE_SIZE, IMAGE_SIZE)
    if recon.shape != expected or not np.isfinite(recon).all():
        raise ValueError(f"{job.kspace_path}: {recon_model.path} gave {recon.shape} with "
                         f"{int((~np.isfinite(recon)).sum())} non-finite values, expected finite {expected}")
    write_reconstruction_file(job.out_path, recon, key=RECON_KEY)
    return {
        **record,
        "weights": recon_model.path,
        "slices": int(recon.shape[0]),
        "seconds": round(time.perf_counter() - start, 4),
        "read_seconds": round(data.read_seconds, 4),
    }


# --------------------------------------------------------------------------------------------- driver


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _error_line(job: Job, exc: BaseException) -> str:
    """One line for a failed volume that always names its k-space file."""
    message = " ".join(str(exc).split()) or exc.__class__.__name__
    if isinstance(exc, MemoryError):
        message = f"out of memory ({message})"
    if str(job.kspace_path) not in message and str(job.image_path) not in message and str(job.out_path) not in message:
        message = f"{job.kspace_path}: {message}"
    return message


def _json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no inf/NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _remove_stale(path: Path) -> bool:
    """Remove an output left by an earlier run for a volume that failed now (it would be scored)."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available")
    return torch.device(name)


def run(args: argparse.Namespace) -> Tuple[Dict[str, Any], int]:
    """Reconstruct every volume; returns the routing report and the number of failed volumes."""
    from tqdm import tqdm

    from utils.io import atomic_path

    wall_start = time.perf_counter()
    device = _resolve_device(args.device)
    path_data = Path(args.path_data)
    out_root = Path(args.result_path) / OUTPUT_SUBDIR
    jobs = find_jobs(path_data, out_root)
    if not jobs:
        raise SystemExit(f"error: {path_data}: no .h5 files under acc4/kspace or acc8/kspace")
    bank = make_model_bank(args, device)
    records: Dict[str, Dict[str, Any]] = {}
    failed = 0
    with ThreadPoolExecutor(max_workers=1) as pool:  # reads the next volume while this one computes
        pending: Future = pool.submit(read_volume, jobs[0])
        for i, job in enumerate(tqdm(jobs, desc="reconstruct", unit="vol", disable=args.no_progress, file=sys.stderr)):
            current = pending
            if i + 1 < len(jobs):
                pending = pool.submit(read_volume, jobs[i + 1])
            try:
                records[job.name] = {"status": "ok", **process_volume(job, current.result(), bank, args, device)}
            except (ValueError, OSError, RuntimeError, MemoryError) as exc:
                failed += 1
                message = _error_line(job, exc)
                if _remove_stale(job.out_path):
                    message += f" (removed the stale {job.out_path})"
                records[job.name] = {"status": "error", "error": message, **getattr(exc, "record", {})}
                _log(f"error: {message}")
    total = time.perf_counter() - wall_start
    report = {
        "weights": args.weights,
        "strict_routing": bool(getattr(args, "strict_routing", False)),
        "routing_warnings": sum(1 for r in records.values() if r.get("warning")),
        "device": str(device),
        "batch_size": args.batch_size,
        "models": {role: {"path": m.path, "model_name": m.info.model_name, "epoch": m.info.epoch}
                   for role, m in sorted(bank.loaded().items())},
        "volumes": records,
        "failed": failed,
        "slices": sum(r.get("slices", 0) for r in records.values()),
        "total_seconds": round(total, 3),
        "budget_seconds": BUDGET_SECONDS,
    }
    try:
        with atomic_path(out_root / ROUTING_FILE) as tmp:
            tmp.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        report["routing_error"] = str(exc)
        _log(f"error: {exc}")
    return report, failed


# --------------------------------------------------------------------------------------------- cine


def route_cine_mask(mask, path) -> Tuple[int, str, float]:
    """``(acceleration, family, estimated R)`` of a cine mask ``(ky, kx)`` or ``(t, ky, kx)``: the R
    nearest (in log scale) among :data:`CINE_ACCELERATIONS` to the one estimated from the mask."""
    from data.cine_masks import estimate_cine_mask
    from data.formats import FormatError

    try:
        est = estimate_cine_mask(mask)
    except ValueError as exc:
        raise FormatError(path, "mask", str(exc)) from None
    if not math.isfinite(float(est.acceleration)) or est.acceleration <= 0:
        raise FormatError(path, "mask", f"acceleration cannot be estimated (got {est.acceleration})")
    acc = min(CINE_ACCELERATIONS, key=lambda r: abs(math.log(r / float(est.acceleration))))
    return acc, est.family, float(est.acceleration)


def process_cine_case(case, bank: ModelBank, args, device, sub_root: Path, full_root: Path) -> Dict[str, Any]:
    """Route, reconstruct and write one cine case; returns its routing record (raises on failure)."""
    import numpy as np
    import torch

    from data.cine import write_submission_file
    from data.cine_datasets import cine_acs_width, from_model_layout, is_line_mask, to_model_layout
    from data.formats import FormatError
    from data.matlab import write_mat73
    from utils.inference import reconstruct_cine
    from utils.metrics import run4ranking

    start = time.perf_counter()
    kspace, mask = case.read_kspace(), case.read_mask()
    where = case.kspace_path or case.mask_path
    if mask.shape[-2:] != kspace.shape[-2:] or (mask.ndim == 3 and mask.shape[0] != kspace.shape[0]):
        raise FormatError(case.mask_path, case.mask_key, f"mask {mask.shape} does not match k-space {kspace.shape}")
    acc, family, estimate = route_cine_mask(mask, case.mask_path)
    loaded = bank.get(f"{CINE}_acc{acc}")
    model_mask = mask[..., :1] if is_line_mask(mask) else mask
    k = to_model_layout(torch.from_numpy(kspace))  # (t, slices, coils, kx, ky)
    m = to_model_layout(torch.from_numpy(np.ascontiguousarray(model_mask, dtype=np.float32)))
    num_adj = int(getattr(loaded.model.config, "num_adj_slices", 1))
    images = reconstruct_cine(loaded.model, k * (m[:, None, None] if m.dim() == 3 else m), m, num_adj,
                              cine_acs_width(mask), args.batch_size, device)
    images = from_model_layout(images).numpy()  # (t, slices, ky, kx)
    if images.shape != kspace.shape[:2] + kspace.shape[3:] or not np.isfinite(images).all():
        raise ValueError(f"{where}: {loaded.path} gave {images.shape} with {int((~np.isfinite(images)).sum())} "
                         f"non-finite values, expected finite {kspace.shape[:2] + kspace.shape[3:]}")
    rel = Path(case.set_name) / case.relpath
    write_submission_file(sub_root / rel, run4ranking(images).numpy())
    write_mat73(full_root / rel, {"reconstruction": images.astype(np.float32)})
    return {
        "subject": case.subject, "view": case.view, "group": case.group, "family": family,
        "acc_estimate": round(estimate, 3), "acceleration": acc, "weights": loaded.path,
        "frames": int(images.shape[0]), "slices": int(images.shape[1]),
        "seconds": round(time.perf_counter() - start, 4),
    }


def run_cine(args: argparse.Namespace) -> Tuple[Dict[str, Any], int]:
    """Reconstruct every undersampled case of the CMRxRecon set(s) under ``--path_data``."""
    from tqdm import tqdm

    from data.cine import find_cine_sets, list_cine_cases
    from utils.io import atomic_path

    wall_start = time.perf_counter()
    device = _resolve_device(args.device)
    cases = [c for set_dir in find_cine_sets(args.path_data) for c in list_cine_cases(set_dir)]
    if not cases:
        raise SystemExit(f"error: {args.path_data}: no undersampled CMRxRecon cine cases (AccFactorXX/ or UnderSample_TaskN/)")
    sub_root, full_root = Path(args.result_path) / CINE_SUBMISSION, Path(args.result_path) / CINE_FULL
    bank = make_model_bank(args, device)
    records: Dict[str, Dict[str, Any]] = {}
    failed = 0
    for case in tqdm(cases, desc="reconstruct cine", unit="case", disable=args.no_progress, file=sys.stderr):
        name = (Path(case.set_name) / case.relpath).as_posix()
        try:
            records[name] = {"status": "ok", **process_cine_case(case, bank, args, device, sub_root, full_root)}
        except (ValueError, OSError, RuntimeError, MemoryError) as exc:
            failed += 1
            where = str(case.kspace_path or case.mask_path)
            message = " ".join(str(exc).split()) or exc.__class__.__name__
            if where not in message and str(case.mask_path) not in message:
                message = f"{where}: {message}"
            for stale in (sub_root / name, full_root / name):
                _remove_stale(stale)
            records[name] = {"status": "error", "error": message}
            _log(f"error: {message}")
    total = time.perf_counter() - wall_start
    frames = sum(r.get("frames", 0) * r.get("slices", 0) for r in records.values())
    report = {
        "task": CINE, "weights": args.weights, "device": str(device), "batch_size": args.batch_size,
        "models": {role: {"path": m.path, "model_name": m.info.model_name, "epoch": m.info.epoch}
                   for role, m in sorted(bank.loaded().items())},
        "cases": records, "failed": failed, "frames": frames, "total_seconds": round(total, 3),
        "seconds_per_frame": round(total / frames, 5) if frames else None,
    }
    try:
        with atomic_path(Path(args.result_path) / "Reconstruction" / ROUTING_FILE) as tmp:
            tmp.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        report["routing_error"] = str(exc)
        _log(f"error: {exc}")
    return report, failed


def cine_summary(report: Dict[str, Any], result_path: Path) -> str:
    ok = [r for r in report["cases"].values() if r["status"] == "ok"]
    counts: Dict[str, int] = {}
    for r in ok:
        counts[f"acc{r['acceleration']}"] = counts.get(f"acc{r['acceleration']}", 0) + 1
    lines = [
        f"reconstructed {len(ok)}/{len(report['cases'])} cine cases ({report['frames']} frames) on {report['device']} "
        f"into {result_path / CINE_SUBMISSION} (submission) and {result_path / CINE_FULL}",
        f"total {report['total_seconds']:.1f} s ({report['seconds_per_frame'] or float('nan'):.4f} s/frame); routing: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    ]
    if report["failed"]:
        lines.append(f"{report['failed']} case(s) FAILED (see the errors above); exit status 1")
    if report.get("routing_error"):
        lines.append(f"{ROUTING_FILE} NOT written: {report['routing_error']}; exit status 1")
    return "\n".join(lines)


def summary(report: Dict[str, Any], out_root: Path) -> str:
    """Human summary: volumes, slices, time against the budget, routing counts."""
    ok = [r for r in report["volumes"].values() if r["status"] == "ok"]
    counts: Dict[str, int] = {}
    for r in ok:
        counts[r["model"]] = counts.get(r["model"], 0) + 1
    total, budget = report["total_seconds"], report["budget_seconds"]
    per_slice = total / report["slices"] if report["slices"] else math.nan
    verdict = "within" if total <= budget else "OVER"
    lines = [
        f"reconstructed {len(ok)}/{len(report['volumes'])} volumes ({report['slices']} slices) on {report['device']} "
        f"into {out_root}",
        f"total {total:.1f} s ({per_slice:.3f} s/slice): {100 * total / budget:.1f}% of the {budget:.0f} s budget ({verdict})",
        "routing: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; details in {out_root / ROUTING_FILE}",
    ]
    flagged = [name for name, r in report["volumes"].items() if r.get("warning")]
    if flagged:
        verdict = "NOT reconstructed (--strict_routing)" if report.get("strict_routing") else "routed by the rule, check them"
        lines.append(f"routing WARNING for {len(flagged)} volume(s), {verdict}: " + ", ".join(flagged))
    if report["failed"]:
        lines.append(f"{report['failed']} volume(s) FAILED (see the errors above); exit status 1")
    if report.get("routing_error"):
        lines.append(f"{ROUTING_FILE} NOT written: {report['routing_error']}; exit status 1")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", choices=("leaderboard", CINE), default="leaderboard",
                        help="leaderboard: the SNU brain/knee leaderboard; cine: a CMRxRecon cine set")
    parser.add_argument("--path_data", type=Path, default=None,
                        help="leaderboard folder with acc4/ and acc8/, each with kspace/ and image/ (default "
                             "$DATA_ROOT/leaderboard); --task cine: a CMRxRecon set folder or one above it")
    parser.add_argument("--result_path", type=Path, default=_default_root("RESULT_ROOT", "result"),
                        help="outputs go to <result_path>/test_reconstruct/reconstructions_leaderboard")
    parser.add_argument("--weights", choices=("result", "artifacts"), default="result",
                        help="checkpoints in --result_path, or exported files in --artifacts_dir")
    parser.add_argument("--artifacts_dir", type=Path, default=REPO / "artifacts")
    parser.add_argument("--net_prefix", default="promptmr", help="--weights result: nets <prefix>_{brain,knee}_acc{4,8}")
    parser.add_argument("--classifier_net", default="anatomy_cnn", help="--weights result: the classifier's net name")
    parser.add_argument("--batch_size", type=int, default=4, help="slices per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--strict_routing", action="store_true",
                        help="a volume with a routing warning (cues and classifier disagree, low confidence, neither "
                             "anatomy, unsupported acceleration) is not reconstructed and the exit status is 1")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.path_data is None:
        if args.task == CINE:
            parser.error("--task cine needs --path_data <CMRxRecon ...Set folder>")
        args.path_data = _default_root("DATA_ROOT", "Data") / "leaderboard"
    if not args.path_data.is_dir():
        parser.error(f"--path_data {args.path_data}: folder not found")
    from utils.io import prepare_output_dir

    try:  # output locations first: a bad --result_path fails before any volume is read
        if args.task == CINE:
            for sub in (CINE_SUBMISSION, CINE_FULL):
                prepare_output_dir(args.result_path / sub)
        else:
            prepare_output_dir(args.result_path / OUTPUT_SUBDIR)
    except OSError as exc:
        parser.error(f"--result_path: {exc}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.task == CINE:
        report, failed = run_cine(args)
        print(cine_summary(report, Path(args.result_path)))
        return 1 if failed or report.get("routing_error") else 0
    report, failed = run(args)
    print(summary(report, Path(args.result_path) / OUTPUT_SUBDIR))
    return 1 if failed or report.get("routing_error") else 0


if __name__ == "__main__":
    sys.exit(main())
