"""TiTok-MRI codec command line: cine frames <-> K tokens per frame, and how much survives.

    python scripts/codec.py encode   --data <ACDC or CMRxRecon folder> --weights artifacts/titok/k64 --out TOKENS.npz
    python scripts/codec.py decode   --tokens TOKENS.npz --weights artifacts/titok/k64 --out DIR [--steps N]
    python scripts/codec.py evaluate --tokens TOKENS.npz --data <the encoded folder> --weights artifacts/titok/k64 [--json]
                                     [--json_out FILE] [--figures DIR] [--standard jpeg2000|jpeg [--standard_out DIR]]
                                     [--scorer SEGMENTER]

``encode`` writes one token file (data/codec_io.py: uint16 ids, shapes, K, the scales, ED/ES, the
tokenizer weights' SHA-256) for every ACDC patient and CMRxRecon FullSample file under ``--data``.
``decode`` writes the frames back (NIfTI patient folders for ACDC items, MATLAB v7.3 ``img4ranking`` files
for CMRxRecon items), deterministically: the same tokens, weights, device and ``--batch_size`` give the
same frames (NIfTI files byte for byte; other batch sizes agree to float rounding). ``evaluate``
decodes in memory and reports per item and overall: bytes per frame (the packed ids, ``K x
ceil(log2 codebook)`` bits, plus the per-item side information) and the token file's own bytes per frame,
the compression ratio against 16-bit magnitude frames, PSNR and SSIM per frame (data range: the item's
maximum), and for labelled ACDC frames the Dice per structure of the segmentation of the decoded ED/ES
frames against the labels (beside the Dice of the original frames' segmentation), LV/RV volumes and the
ejection-fraction errors, and the decoding milliseconds per frame; ``--json`` prints it as JSON,
``--json_out FILE`` writes it (atomically). ``--figures DIR`` draws ``DIR/codec_strip_<method>_k<K>.png``:
the ED and ES frames of the middle slice of the first labelled item, original | decoded | |error|, with
the segmenter's RV/myocardium/LV contours on the original and the decoded frames.

``evaluate --scorer SEG`` scores Dice, volumes and EF with another segmenter (an ``nnmamba_seg`` artifact or
checkpoint tag for the same frame size) instead of the codec's own: the codec's segmenter also guides its DiT
decoder (and its training), so a segmenter trained apart (another seed) checks that the structures survive
for a reader the decoder was not tuned to.

``evaluate --standard jpeg2000|jpeg`` scores a standard image codec at the same rate instead of the tokens:
each original frame of the token file's items is coded by Pillow (data/standard_codecs.py: 8-bit frames
over ``[0, item maximum]``, JPEG 2000 raw codestream with a rate search or JPEG with a quality search,
every stored byte counted) within the bytes per frame the tokens take, decoded, and scored by the very
code that scores the token decode (:func:`score_frames`). The report gives the budget, the achieved
bytes per frame and ``"over_budget": true`` where the codec's smallest stream does not fit; ``--standard_out
DIR`` writes the streams (one file per frame and a ``side.json`` per item).

``--weights`` is a folder with ``titok.safetensors`` (tokenizer), ``titok_dit.safetensors`` (DiT decoder)
and ``titok_seg.safetensors`` (2-D segmenter) (models/titok_mri.py ``CODEC_ARTIFACTS``; without the DiT,
frames decode with the tokenizer's stage-1 decoder). A token file made by other tokenizer weights, a
truncated or malformed token file, or frames whose size differs from the token file's is one clear
``error:`` line and exit status 1; an unreadable subject is reported and skipped, and the command exits 1
at the end.

Why this file is here. The codec reads and writes data (``data/``) and runs networks (``models/``), so by
DESIGN.md's dependency direction it is an entry point: ``models/`` never imports ``data/`` and ``data/``
does not import ``models/`` (tests/test_layout.py), and nothing imports an entry point. The top level is
fixed (``train.py``, ``reconstruct.py``, ``evaluate.py``), so the codec's entry point lives beside the
other entry points that are not in the top level, the shell scripts, and is run by path (``python
scripts/codec.py``), as the ``benchmarks/`` scripts are. Everything it uses stays in the layers: the token
format and frame I/O in ``data/codec_io.py``, frame placement in ``data/acdc_datasets.py``, the networks
and their weights in ``models/titok_mri.py``, the metrics in ``utils/metrics.py`` and ``data/cine.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run by path from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from data.acdc_datasets import Placement, cine_scale, place_frames, unplace_frames  # noqa: E402
from data.cine import ejection_fraction  # noqa: E402
from data.codec_io import (TokenFile, TokenFileError, TokenItem, find_subjects, read_subject, read_token_file,  # noqa: E402
                           write_decoded, write_token_file)
from data.formats import FormatError  # noqa: E402
from data.standard_codecs import BIT_DEPTH, STANDARDS, decode_frames, dequantise, encode_frames, quantise  # noqa: E402
from data.standard_codecs import SUFFIX as STANDARD_SUFFIX  # noqa: E402
from models.titok_mri import TiTokMRI, load_codec, segment_labels  # noqa: E402
from utils.io import OutputError, atomic_path, prepare_output_dir, prepare_output_file  # noqa: E402
from utils.metrics import dice_scores, psnr, ssim_map  # noqa: E402

#: Side information per item beside the ids, in bytes: scale (float32), T, Z, h, w (uint16 each), ED, ES (uint8).
SIDE_BYTES = 4 + 4 * 2 + 2
STRUCTURES = {"rv": 1, "myo": 2, "lv": 3}
#: Display names of the methods in reports and figures.
METHOD_NAMES = {"titok": "TiTok-MRI", "jpeg2000": "JPEG 2000", "jpeg": "JPEG"}


class CodecError(ValueError):
    """A problem with the command's inputs: one line, exit status 1."""


def _device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------ encode


def estimate_es(codec: TiTokMRI, ids: torch.Tensor, ed: int) -> int:
    """ES of a cycle without Info.cfg: the frame (other than ``ed``) whose stage-1 decode's segmented LV
    area, summed over slices, is smallest; ``T // 3`` without a segmenter. ``ids`` ``(T, Z, K)``."""
    t = ids.shape[0]
    if codec.segmenter is None or t < 2:
        return (ed + t // 3) % t
    labels = codec.segment(codec.stage1(ids))  # (T, Z, H, W)
    area = (labels == STRUCTURES["lv"]).flatten(1).sum(1).double()
    area[ed] = float("inf")
    return int(torch.argmin(area))


def encode_subject(codec: TiTokMRI, subject, device: torch.device, batch_size: int):
    """``(ids (T, Z, K) int64, scale, ed, es)`` of a subject's frames."""
    scale = float(np.float32(cine_scale(subject.frames)))  # the value the token file stores
    placed, _ = place_frames(torch.from_numpy(subject.frames / scale), codec.image_size)  # (T, Z, H, W)
    ids = codec.encode(placed.unsqueeze(2).float(), batch_size)  # (T, Z, K)
    t = ids.shape[0]
    ed = 0 if subject.ed is None else subject.ed
    es = subject.es if subject.es is not None else estimate_es(codec, ids, ed)
    if not (0 <= ed < t and 0 <= es < t):
        raise ValueError(f"{subject.path}: ED {ed + 1} / ES {es + 1} outside the cine's {t} frames")
    return ids, scale, ed, es


def cmd_encode(args) -> int:
    device = _device(args.device)
    codec, hashes = load_codec(args.weights, device)
    if codec.tokenizer.config.in_channels != 1:
        raise CodecError(f"{args.weights}: the tokenizer takes {codec.tokenizer.config.in_channels} channels; this "
                         f"command encodes magnitude frames (1 channel)")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise CodecError(f"{out}: token files end with .npz")
    prepare_output_file(out)
    subjects = find_subjects(args.data)
    all_ids: List[np.ndarray] = []
    items: List[TokenItem] = []
    failures: List[str] = []
    offset = 0
    for name, kind, path in subjects:
        try:
            subject = read_subject(name, kind, path)
            ids, scale, ed, es = encode_subject(codec, subject, device, args.batch_size)
        except (FormatError, ValueError, OSError) as exc:
            failures.append(f"{name}: {exc}")
            print(f"error: {name}: {exc}", file=sys.stderr)
            continue
        t, z = ids.shape[:2]
        items.append(TokenItem(name, kind, (t, z, *subject.frames.shape[-2:]), offset, scale, ed, es, subject.spacing, subject.info))
        all_ids.append(ids.reshape(t * z, -1).numpy().astype(np.uint16))
        offset += t * z
    if not items:
        raise CodecError(f"{args.data}: no subject could be encoded")
    cfg = codec.tokenizer.config
    tokens = TokenFile(np.concatenate(all_ids), cfg.num_latent_tokens, cfg.codebook_size, tuple(cfg.image_size), items,
                       hashes["tokenizer"], hashes["decoder"])
    write_token_file(out, tokens)
    frames = sum(it.num_frames for it in items)
    print(f"[codec] {out}: {len(items)} item(s), {frames} frames, K={tokens.num_tokens}, "
          f"{out.stat().st_size / frames:.1f} bytes per frame (file)")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ decode


def check_tokens(tokens: TokenFile, codec: TiTokMRI, hashes: Dict[str, str], tokens_path, weights) -> None:
    """The token file fits these weights: K, codebook, frame size and the tokenizer's hash."""
    cfg = codec.tokenizer.config
    if tokens.image_size != tuple(cfg.image_size):
        raise CodecError(f"{tokens_path}: frame-size mismatch: tokens of {tokens.image_size[0]}x{tokens.image_size[1]} "
                         f"frames, the weights in {weights} take {cfg.image_size[0]}x{cfg.image_size[1]}")
    if tokens.num_tokens != cfg.num_latent_tokens or tokens.codebook_size != cfg.codebook_size:
        raise CodecError(f"{tokens_path}: {tokens.num_tokens} tokens per frame from a codebook of {tokens.codebook_size}, "
                         f"the weights in {weights} use {cfg.num_latent_tokens} from {cfg.codebook_size}")
    if tokens.weights_sha256 != hashes["tokenizer"]:
        raise CodecError(f"{tokens_path}: made by other tokenizer weights (sha256 {tokens.weights_sha256[:12]}…), "
                         f"{weights} holds {hashes['tokenizer'][:12]}…: decode with the weights that encoded it")


def decode_item(codec: TiTokMRI, tokens: TokenFile, item: TokenItem, steps: Optional[int], seed: Optional[int],
                batch_size: int) -> np.ndarray:
    """Decoded frames ``(T, Z, h, w)`` float32 of one item, at the original intensity scale."""
    ids = torch.from_numpy(tokens.item_ids(item).astype(np.int64)).transpose(0, 1)  # (Z, T, K)
    frames = codec.decode_cycles(ids, item.ed, item.es, steps, seed, batch_size)  # (Z, T, C, H, W)
    frames = torch.linalg.vector_norm(frames, dim=2) if frames.shape[2] == 2 else frames[:, :, 0]
    place = Placement.of(item.shape[-2:], tokens.image_size)
    out = unplace_frames(frames.transpose(0, 1).float(), place)  # (T, Z, h, w)
    return (out.clamp_min(0) * item.scale).numpy().astype(np.float32)


def _load_for_tokens(args):
    tokens = read_token_file(args.tokens)
    device = _device(args.device)
    codec, hashes = load_codec(args.weights, device)
    check_tokens(tokens, codec, hashes, args.tokens, args.weights)
    if tokens.decoder_sha256 and hashes["decoder"] and tokens.decoder_sha256 != hashes["decoder"]:
        print(f"note: {args.weights}: the decoder weights differ from those present at encoding; decoding with these",
              file=sys.stderr)
    return tokens, codec


def cmd_decode(args) -> int:
    tokens, codec = _load_for_tokens(args)
    out = prepare_output_dir(args.out)
    failures = 0
    for item in tokens.items:
        try:
            frames = decode_item(codec, tokens, item, args.steps, args.seed, args.batch_size)
            written = write_decoded(out, item, frames)
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"error: {item.name}: {exc}", file=sys.stderr)
            continue
        print(f"[codec] {item.name}: {item.num_frames} frames -> {written[0]}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ evaluate


def frame_ssim(decoded: np.ndarray, original: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM per frame of ``(…, h, w)`` stacks (utils.metrics.ssim_map, 7x7 windows)."""
    lead = original.shape[:-2]
    x = torch.from_numpy(decoded.reshape(-1, *decoded.shape[-2:])).double()
    y = torch.from_numpy(original.reshape(-1, *original.shape[-2:])).double()
    return ssim_map(x, y, data_range).mean(dim=(-2, -1)).numpy().reshape(lead)


def segment_frames(segmenter: torch.nn.Module, frames: np.ndarray, scale: float, image_size) -> np.ndarray:
    """Label maps ``(Z, h, w)`` uint8 by ``segmenter`` of one phase's frames ``(Z, h, w)`` (original intensities)."""
    placed, place = place_frames(torch.from_numpy(frames / scale).float(), image_size)
    labels = segment_labels(segmenter, placed.unsqueeze(1))  # (Z, H, W)
    return unplace_frames(labels, place, labels=True).numpy().astype(np.uint8)


def clinical_errors(pred_ed, pred_es, true_ed, true_es, spacing) -> Dict[str, float]:
    """LV/RV end-diastolic and end-systolic volumes (mL) and ejection fractions (%) of the predicted and
    the true label maps (``*_decoded``, ``*_true``) and their absolute differences (``*_error``)."""
    pred, true = ejection_fraction(pred_ed, pred_es, spacing), ejection_fraction(true_ed, true_es, spacing)
    keys = ("lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "rv_esv_ml", "lv_ef", "rv_ef")
    out = {f"{k}_error": abs(pred[k] - true[k]) for k in keys}
    out.update({f"{k}_true": true[k] for k in keys})
    out.update({f"{k}_decoded": pred[k] for k in keys})
    return out


def check_frames(subject, item: TokenItem) -> None:
    """The data's frames have the shape the token file encoded."""
    if subject.frames.shape != tuple(item.shape):
        raise CodecError(f"{subject.path}: frame-size mismatch: the data has frames {subject.frames.shape} (t, z, h, w), "
                         f"the token file encoded {tuple(item.shape)}")


def token_payload_bytes(tokens: TokenFile) -> float:
    """Bytes of one frame's packed ids: ``K x ceil(log2 codebook) / 8``."""
    return tokens.num_tokens * tokens.bits_per_token / 8


def token_bytes_per_frame(tokens: TokenFile, item: TokenItem) -> float:
    """Bytes per frame of ``item`` as stored: the packed ids plus its share of the side information."""
    return token_payload_bytes(tokens) + SIDE_BYTES / item.num_frames


def score_frames(scorer: Optional[torch.nn.Module], image_size, item: TokenItem, subject, decoded: np.ndarray, ms: float,
                 bytes_per_frame: float, keep: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report row of one item's ``decoded`` frames ``(T, Z, h, w)`` (original intensities) against the
    subject's: PSNR/SSIM per frame (data range: the item's maximum), and for labelled ACDC frames with a
    segmenter the Dice per structure of the decoded and the original ED/ES frames' segmentations against
    the labels, LV/RV volumes and EF (``scorer``: the segmenter, None for no segmentation scores); ``ms``
    the decoding milliseconds per frame. The same code path for
    the token decode and the standard codecs. ``keep`` (a dict) receives the decoded frames and both
    segmentations (``decoded``, ``seg_decoded``, ``seg_original``: ED then ES, ``(Z, h, w)`` each) of a
    labelled item, for the figures."""
    original = subject.frames
    data_range = float(original.max())
    row: Dict[str, Any] = {
        "name": item.name, "kind": item.kind, "frames": item.num_frames, "shape": list(item.shape),
        "bytes_per_frame": float(bytes_per_frame),
        "psnr": float(np.mean(psnr(decoded, original, data_range, axis=(-2, -1)))),
        "ssim": float(np.mean(frame_ssim(decoded, original, data_range))) if min(item.shape[-2:]) >= 7 else None,
        "decode_ms_per_frame": ms,
    }
    row["compression_ratio"] = item.shape[2] * item.shape[3] * 2 / row["bytes_per_frame"]
    phases = (item.ed, item.es)
    if scorer is not None and all(p in subject.labels for p in phases):
        seg_dec = [segment_frames(scorer, decoded[p], item.scale, image_size) for p in phases]
        seg_orig = [segment_frames(scorer, original[p], item.scale, image_size) for p in phases]
        truth = [subject.labels[p] for p in phases]
        dice_dec = np.nanmean([dice_scores(s, t) for s, t in zip(seg_dec, truth)], axis=0)
        dice_orig = np.nanmean([dice_scores(s, t) for s, t in zip(seg_orig, truth)], axis=0)
        spacing = item.spacing[1:]
        row.update({f"dice_{k}": float(dice_dec[i]) for i, k in enumerate(STRUCTURES)})
        row.update({f"dice_original_{k}": float(dice_orig[i]) for i, k in enumerate(STRUCTURES)})
        row.update(clinical_errors(*seg_dec, *truth, spacing))
        row.update({f"original_{k}": v for k, v in clinical_errors(*seg_orig, *truth, spacing).items() if k.endswith("_error")})
        if keep is not None:
            keep.update(decoded=decoded, seg_decoded=seg_dec, seg_original=seg_orig)
    return row


def evaluate_item(codec: TiTokMRI, tokens: TokenFile, item: TokenItem, subject, args,
                  keep: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Decode ``item``'s tokens and score them (:func:`score_frames`)."""
    check_frames(subject, item)
    start = time.perf_counter()
    decoded = decode_item(codec, tokens, item, args.steps, args.seed, args.batch_size)
    ms = 1000 * (time.perf_counter() - start) / item.num_frames
    return score_frames(args.scorer_net, tokens.image_size, item, subject, decoded, ms, token_bytes_per_frame(tokens, item),
                        keep)


def standard_item(codec: TiTokMRI, tokens: TokenFile, item: TokenItem, subject, args,
                  keep: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Code ``item``'s original frames with the standard codec ``args.standard`` at the tokens' rate and
    score the round trip (:func:`score_frames`).

    Budget: the tokens' bytes per frame of this item (:func:`token_bytes_per_frame`). The standard codec
    stores the same side information (its dequantisation scale, float32, in place of the token file's
    scale; T, Z, h, w, ED, ES), so each frame's stream may take the ids' bytes, ``floor(K bits / 8)``
    (data/standard_codecs.py: 8-bit frames, rate search, every byte counted); the row's
    ``bytes_per_frame`` is what it achieved (mean stream bytes plus the side information's share),
    ``over_budget`` says whether any frame's smallest stream exceeded its cap (``over_budget_frames``
    how many). ``decode_ms_per_frame`` times Pillow's decoding and the dequantisation,
    ``encode_ms_per_frame`` the encoding with its rate search."""
    check_frames(subject, item)
    budget = token_bytes_per_frame(tokens, item)
    cap = int(math.floor(token_payload_bytes(tokens)))
    q, vmax = quantise(subject.frames)
    start = time.perf_counter()
    coded = encode_frames(q, args.standard, cap)
    encode_ms = 1000 * (time.perf_counter() - start) / item.num_frames
    start = time.perf_counter()
    decoded = dequantise(decode_frames(coded.streams, args.standard, q.shape), vmax)
    ms = 1000 * (time.perf_counter() - start) / item.num_frames
    sizes = coded.sizes
    achieved = float(sizes.mean()) + SIDE_BYTES / item.num_frames
    row = score_frames(args.scorer_net, tokens.image_size, item, subject, decoded, ms, achieved, keep)
    row.update({"method": args.standard, "bit_depth": BIT_DEPTH, "budget_bytes_per_frame": budget,
                "stream_cap_bytes": cap, "stream_bytes_min": int(sizes.min()), "stream_bytes_max": int(sizes.max()),
                "over_budget": bool(coded.over_budget.any()), "over_budget_frames": int(coded.over_budget.sum()),
                "encode_ms_per_frame": encode_ms})
    if args.standard_out:
        write_streams(Path(args.standard_out), item, coded, vmax, cap)
    return row


def write_streams(out: Path, item: TokenItem, coded, vmax: float, cap: int) -> Path:
    """The standard codec's streams of ``item`` as a user would store them: ``<out>/<name>/t###_z###<suffix>``
    (one file per frame) and ``side.json`` (method, bit depth, ``vmax``: frames = q vmax / 255, shape,
    ED/ES, spacing, the per-frame cap). Files written atomically; returns the item's folder."""
    folder = out / item.name
    t, z = item.shape[:2]
    suffix = STANDARD_SUFFIX[coded.method]
    for i, stream in enumerate(coded.streams):
        with atomic_path(folder / f"t{i // z:03d}_z{i % z:03d}{suffix}") as tmp:
            tmp.write_bytes(stream)
    side = {"method": coded.method, "bit_depth": BIT_DEPTH, "vmax": vmax, "shape": list(item.shape), "ed": item.ed,
            "es": item.es, "spacing": list(item.spacing), "stream_cap_bytes": cap,
            "over_budget_frames": int(coded.over_budget.sum())}
    with atomic_path(folder / "side.json") as tmp:
        tmp.write_text(json.dumps(side, indent=1))
    return folder


def _mean(rows: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def summarise(rows: List[Dict[str, Any]], tokens: TokenFile, token_bytes: int) -> Dict[str, Any]:
    frames = sum(r["frames"] for r in rows)
    raw = sum(r["shape"][2] * r["shape"][3] * 2 * r["frames"] for r in rows)
    coded = sum(r["bytes_per_frame"] * r["frames"] for r in rows)
    summary: Dict[str, Any] = {
        "items": len(rows), "frames": frames, "tokens_per_frame": tokens.num_tokens, "codebook_size": tokens.codebook_size,
        "bytes_per_frame": coded / frames if frames else None,
        "file_bytes_per_frame": token_bytes / max(1, sum(it.num_frames for it in tokens.items)),
        "compression_ratio": raw / coded if coded else None,
        "psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim"),
        "decode_ms_per_frame": (sum(r["decode_ms_per_frame"] * r["frames"] for r in rows) / frames) if frames else None,
    }
    summary["file_compression_ratio"] = raw / (summary["file_bytes_per_frame"] * frames) if frames else None
    keys = [k for k in ("dice_rv", "dice_myo", "dice_lv", "dice_original_rv", "dice_original_myo", "dice_original_lv",
                        "lv_ef_error", "rv_ef_error", "lv_edv_ml_error", "lv_esv_ml_error", "rv_edv_ml_error",
                        "rv_esv_ml_error", "original_lv_ef_error", "original_rv_ef_error") if any(k in r for r in rows)]
    summary.update({k: _mean(rows, k) for k in keys})
    dec = [summary.get(f"dice_{k}") for k in STRUCTURES]
    orig = [summary.get(f"dice_original_{k}") for k in STRUCTURES]
    if all(v is not None for v in dec + orig) and all(v > 0 for v in orig):
        summary["dice_ratio"] = float(np.mean(dec) / np.mean(orig))
    return summary


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def load_scorer(path, codec: TiTokMRI) -> torch.nn.Module:
    """The independent segmenter of ``evaluate --scorer``: an ``nnmamba_seg`` artifact (.safetensors) or
    checkpoint tag (``.../epoch-N``) for the codec's frame size, on the codec's device, in eval mode."""
    from models.artifacts import load_artifact, load_checkpoint_model
    from utils.artifacts import ArtifactError

    path = Path(path)
    if not path.exists():
        raise CodecError(f"{path}: --scorer: segmenter weights not found")
    try:
        net, info = (load_checkpoint_model if path.is_dir() else load_artifact)(path)
    except (ArtifactError, ValueError, OSError) as exc:
        raise CodecError(f"{path}: --scorer: {exc}") from None
    if info.model_name != "nnmamba_seg":
        raise CodecError(f"{path}: --scorer: holds {info.model_name!r}, expected a segmenter ('nnmamba_seg')")
    config = getattr(net, "config", None)
    if getattr(config, "spatial_dims", 2) != 2 or getattr(config, "num_classes", 4) != 4:
        raise CodecError(f"{path}: --scorer: not a 2-D segmenter of the 4 ACDC classes")
    return net.to(next(codec.tokenizer.parameters()).device).eval()


def cmd_evaluate(args) -> int:
    for path, prepare in ((args.json_out, prepare_output_file), (args.figures, prepare_output_dir),
                          (args.standard_out, prepare_output_dir)):
        if path:
            prepare(path)  # fail before any work
    tokens, codec = _load_for_tokens(args)
    args.scorer_net = load_scorer(args.scorer, codec) if args.scorer else codec.segmenter
    subjects = {name: (kind, path) for name, kind, path in find_subjects(args.data)}
    method = args.standard or "titok"
    score_item = standard_item if args.standard else evaluate_item
    rows, failures = [], 0
    figure: Dict[str, Any] = {}
    for item in tokens.items:
        keep: Optional[Dict[str, Any]] = {} if args.figures and not figure else None
        try:
            if item.name not in subjects:
                raise CodecError(f"{args.data}: has no {item.kind} item {item.name!r} (the token file's items are named "
                                 f"relative to the folder given to encode)")
            kind, path = subjects[item.name]
            if kind != item.kind:
                raise CodecError(f"{path}: is {kind} data, the token file encoded {item.kind}")
            subject = read_subject(item.name, kind, path)
            rows.append(score_item(codec, tokens, item, subject, args, keep))
        except (FormatError, ValueError, OSError) as exc:
            failures += 1
            print(f"error: {item.name}: {exc}", file=sys.stderr)
            continue
        if keep:
            figure = dict(keep, item=item, subject=subject, row=rows[-1])
    if not rows:
        raise CodecError(f"{args.tokens}: no item could be evaluated")
    summary = summarise(rows, tokens, Path(args.tokens).stat().st_size)
    summary["method"] = method
    if args.standard:
        frames = summary["frames"]
        summary.update({
            "bit_depth": BIT_DEPTH, "file_bytes_per_frame": summary["bytes_per_frame"],
            "file_compression_ratio": summary["compression_ratio"],
            "budget_bytes_per_frame": sum(r["budget_bytes_per_frame"] * r["frames"] for r in rows) / frames,
            "over_budget": any(r["over_budget"] for r in rows),
            "over_budget_frames": sum(r["over_budget_frames"] for r in rows),
            "encode_ms_per_frame": sum(r["encode_ms_per_frame"] * r["frames"] for r in rows) / frames})
    report = {"tokens": str(args.tokens), "weights": str(args.weights), "steps": args.steps, "method": method,
              "scorer": str(args.scorer) if args.scorer else "the codec's segmenter",
              "summary": summary, "items": rows}
    if args.figures:
        if figure:
            path = write_strip(Path(args.figures), figure, method, tokens.num_tokens)
            print(f"[codec] figure: {path}", file=sys.stderr)
        else:
            print("note: --figures: no item with ED/ES labels was scored with a segmenter: no strip drawn", file=sys.stderr)
    text = json.dumps(_nan_to_none(report), indent=2, allow_nan=False)
    if args.json_out:
        with atomic_path(Path(args.json_out)) as tmp:
            tmp.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        shown = ("psnr", "ssim", "bytes_per_frame", "compression_ratio", "dice_rv", "dice_myo", "dice_lv", "lv_ef_error",
                 "rv_ef_error", "decode_ms_per_frame")
        print("item".ljust(48) + "".join(k[:12].rjust(13) for k in shown))
        for r in rows + [{"name": "mean", **report["summary"]}]:
            print(r["name"][-47:].ljust(48) + "".join(_fmt(r.get(k)).rjust(13) for k in shown))
        s = report["summary"]
        if args.standard:
            print(f"[codec] {s['frames']} frames, {method} ({BIT_DEPTH}-bit) at the budget of {s['tokens_per_frame']} "
                  f"tokens/frame ({_fmt(s['budget_bytes_per_frame'])} bytes/frame): {_fmt(s['bytes_per_frame'])} bytes/frame, "
                  f"compression {_fmt(s['compression_ratio'])}x vs 16-bit"
                  + (f", OVER BUDGET in {s['over_budget_frames']} frame(s): the smallest {method} stream is larger"
                     if s["over_budget"] else ", within budget")
                  + (f", Dice ratio decoded/original {_fmt(s['dice_ratio'])}" if "dice_ratio" in s else ""))
        else:
            print(f"[codec] {s['frames']} frames, {s['tokens_per_frame']} tokens/frame: {_fmt(s['bytes_per_frame'])} bytes/frame "
                  f"({_fmt(s['file_bytes_per_frame'])} in the file), compression {_fmt(s['compression_ratio'])}x vs 16-bit"
                  + (f", Dice ratio decoded/original {_fmt(s['dice_ratio'])}" if "dice_ratio" in s else ""))
    return 1 if failures else 0


def write_strip(out: Path, figure: Dict[str, Any], method: str, num_tokens: int) -> Path:
    """``<out>/codec_strip_<method>_k<K>.png``: ED and ES of the middle slice of the first labelled item,
    original | decoded | |error|, the segmenter's contours on both (data/codec_figures.py)."""
    from data.codec_figures import save_codec_strip

    item, row = figure["item"], figure["row"]
    z = item.shape[1] // 2
    phases = (item.ed, item.es)
    original = np.stack([figure["subject"].frames[p, z] for p in phases])
    decoded = np.stack([figure["decoded"][p, z] for p in phases])
    seg_orig = np.stack([s[z] for s in figure["seg_original"]])
    seg_dec = np.stack([s[z] for s in figure["seg_decoded"]])
    name = METHOD_NAMES.get(method, method)
    dice = np.mean([row[f"dice_{k}"] for k in STRUCTURES])
    title = (f"{item.name}, slice {z + 1}/{item.shape[1]}: {name} at K={num_tokens}, {row['bytes_per_frame']:.1f} bytes/frame"
             f"{' (over budget)' if row.get('over_budget') else ''}\nPSNR {row['psnr']:.2f} dB, mean Dice {dice:.3f} "
             f"(original frames {np.mean([row[f'dice_original_{k}'] for k in STRUCTURES]):.3f})")
    return save_codec_strip(out / f"codec_strip_{method}_k{num_tokens}.png", original, decoded, seg_orig, seg_dec,
                            rows=(f"ED (frame {item.ed + 1})", f"ES (frame {item.es + 1})"), decoded_name=name,
                            title=title)


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/codec.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    default_weights = str(REPO / "artifacts" / "titok" / "k64")  # the shipped demo codec

    def common(p, tokens: bool):
        p.add_argument("--weights", default=default_weights, help="folder with titok.safetensors, titok_dit.safetensors, "
                                                                  "titok_seg.safetensors (default: the shipped demo codec, artifacts/titok/k64)")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        p.add_argument("--batch_size", type=int, default=64, help="frames per network call")
        if tokens:
            p.add_argument("--tokens", required=True, help="token file (.npz) written by encode")
            p.add_argument("--steps", type=int, default=None, help="DiT sampling steps 1..8 (default: the DiT's config)")
            p.add_argument("--seed", type=int, default=None, help="decoding noise seed (default: the DiT's config)")

    enc = sub.add_parser("encode", help="frames -> token file")
    enc.add_argument("--data", required=True, help="ACDC tree / patient folder, or CMRxRecon tree / set / .mat file")
    enc.add_argument("--out", required=True, help="token file to write (.npz)")
    common(enc, tokens=False)
    dec = sub.add_parser("decode", help="token file -> frames (NIfTI for ACDC, .mat for CMRxRecon)")
    dec.add_argument("--out", required=True, help="output folder")
    common(dec, tokens=True)
    ev = sub.add_parser("evaluate", help="decode in memory and compare with the original frames")
    ev.add_argument("--data", required=True, help="the folder that was encoded")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--scorer", default=None, help="score Dice and EF with this segmenter (nnmamba_seg .safetensors or "
                    "checkpoint tag) instead of the codec's own, e.g. one trained with another seed: the codec's "
                    "segmenter guides its decoder, an independent one checks the structures survive for any reader")
    ev.add_argument("--json_out", default=None, help="also write the JSON report to this file")
    ev.add_argument("--standard", default=None, metavar="|".join(STANDARDS),
                    help="score a standard codec (Pillow) on the original frames at the tokens' bytes per frame "
                         "instead of decoding the tokens")
    ev.add_argument("--standard_out", default=None, help="with --standard: write its streams (one file per frame) "
                                                         "and side.json per item under this folder")
    ev.add_argument("--figures", default=None, help="folder for the PNG strip of the first labelled item (ED/ES of "
                                                    "its middle slice: original | decoded | error, contours)")
    common(ev, tokens=True)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch_size must be >= 1", file=sys.stderr)
        return 2
    if getattr(args, "steps", None) is not None and not 1 <= args.steps <= 8:
        print(f"error: --steps must be 1..8, got {args.steps}", file=sys.stderr)
        return 2
    if getattr(args, "standard", None) is not None and args.standard not in STANDARDS:
        print(f"error: --standard must be one of {', '.join(STANDARDS)}, got {args.standard!r}", file=sys.stderr)
        return 2
    if getattr(args, "standard_out", None) and not args.standard:
        print("error: --standard_out needs --standard jpeg2000|jpeg", file=sys.stderr)
        return 2
    try:
        return {"encode": cmd_encode, "decode": cmd_decode, "evaluate": cmd_evaluate}[args.command](args)
    except (CodecError, TokenFileError, FormatError, FileNotFoundError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
