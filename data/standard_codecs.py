"""Standard image codecs at a byte budget: JPEG 2000 and JPEG through Pillow, per frame, as the peers of
the TiTok-MRI codec (``python scripts/codec.py evaluate --standard jpeg2000|jpeg``, benchmarks/bench_codec.py).

**Quantisation** (:func:`quantise`, :func:`dequantise`). Both codecs take **8-bit** grayscale frames: an
item's magnitude frames ``(…, h, w)`` (as the codec reads them, data/codec_io.py) are mapped linearly from
``[0, vmax]`` onto ``0..255`` with ``vmax`` the item's maximum, stored as float32 (4 bytes of side
information per item, the place the token file's scale takes): ``q = round(255 x / vmax)``, back ``x' =
q vmax / 255``. This is the codec's own input range, ``[0, max / scale]`` after its normalisation by the
99.5th percentile, with nothing clipped, on the scale the metrics use (PSNR's data range is the item's
maximum). Why 8 and not 16 bits for JPEG 2000: the 8-bit step costs ``vmax / 255 / sqrt(12)`` of error,
a PSNR of 59 dB, while at the budgets of a token codec (tens to a few hundred bytes per frame) JPEG 2000
reaches 15-35 dB; measured on the demo frames, 16-bit input gives the same PSNR at the same bytes (31.9 vs
31.8 dB at 320 bytes), so the extra bit-planes buy nothing, and one quantiser serves both codecs.

**Rate control** (:func:`encode_frames`). Every frame is coded on its own and must fit ``cap`` bytes,
counting every byte of what would be stored for it:

* ``jpeg2000``: Pillow's raw JPEG 2000 codestream (``no_jp2=True``: no JP2 boxes; 9/7 irreversible
  wavelet, OpenJPEG's default resolutions and code blocks), rate set by ``quality_mode="rates"`` with one
  layer at ratio ``h w / t``; a binary search over the target ``t`` (bytes) keeps the largest codestream
  within the cap;
* ``jpeg``: baseline JPEG with optimised Huffman tables, a binary search over Pillow's quality 1..95 for
  the largest file within the cap.

Optional marker segments that only describe the writer are removed before counting (OpenJPEG's
``COM`` "Created by OpenJPEG version …", 39 bytes; JPEG's ``APPn`` JFIF and ``COM`` segments, 18+ bytes):
a user storing frames would not keep them, and the stripped streams decode to the same pixels (Pillow
reads them back here). Everything else counts: the main header (SIZ, COD, QCD), tile headers, packet
headers, quantisation and Huffman tables, the markers. When even the smallest setting (JPEG 2000 at the
largest ratio, where OpenJPEG stops shrinking; JPEG quality 1) does not fit, that smallest stream is used
and the frame is marked over budget: callers report it, never silently.

Each frame goes through the external library on its own (the codecs are per image); quantisation,
dequantisation and the bookkeeping are vectorised over frames.
"""
from __future__ import annotations

import dataclasses
import io
import struct
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["STANDARDS", "BIT_DEPTH", "SUFFIX", "StandardCodecError", "EncodedFrames", "quantise", "dequantise",
           "encode_frame_at", "encode_frame", "encode_frames", "decode_frame", "decode_frames", "strip_metadata"]

STANDARDS = ("jpeg2000", "jpeg")
BIT_DEPTH = 8
LEVELS = (1 << BIT_DEPTH) - 1
SUFFIX = {"jpeg2000": ".j2k", "jpeg": ".jpg"}
JPEG_QUALITIES = (1, 95)


class StandardCodecError(ValueError):
    """A frame or a stream the standard codecs cannot take; the message says what is wrong."""


def _check_method(method: str) -> None:
    if method not in STANDARDS:
        raise StandardCodecError(f"unknown standard codec {method!r}: choose one of {', '.join(STANDARDS)}")


# ------------------------------------------------------------------------------------------ quantiser


def quantise(frames: np.ndarray) -> Tuple[np.ndarray, float]:
    """``(q, vmax)``: frames ``(…, h, w)`` (non-negative magnitude) as uint8 ``q = round(255 x / vmax)``
    and ``vmax`` (float32 value as a Python float), the frames' maximum. Blank or non-finite frames are a
    :class:`StandardCodecError`."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim < 2 or frames.size == 0:
        raise StandardCodecError(f"frames must be (..., h, w) and non-empty, got {frames.shape}")
    if not np.isfinite(frames).all():
        raise StandardCodecError("frames hold non-finite values")
    vmax = float(np.float32(frames.max()))
    if vmax <= 0:
        raise StandardCodecError(f"frames have no positive value (maximum {vmax})")
    q = np.rint(np.clip(frames, 0, None) * np.float32(LEVELS / vmax))
    return np.clip(q, 0, LEVELS).astype(np.uint8), vmax


def dequantise(q: np.ndarray, vmax: float) -> np.ndarray:
    """Frames ``q vmax / 255`` float32 of uint8 ``q`` (:func:`quantise`'s inverse up to the step)."""
    return np.asarray(q, dtype=np.float32) * np.float32(np.float32(vmax) / LEVELS)


# ------------------------------------------------------------------------------------------ streams


def _segments(data: bytes, start: int, stop_markers: Sequence[int]) -> List[Tuple[int, int, int]]:
    """``(marker, offset, length incl. marker)`` of the length-prefixed segments from ``start`` up to
    (not including) the first marker in ``stop_markers``."""
    out, i = [], start
    while i + 4 <= len(data):
        marker = struct.unpack(">H", data[i:i + 2])[0]
        if marker in stop_markers:
            return out
        if marker >> 8 != 0xFF:
            raise StandardCodecError(f"malformed stream: no marker at byte {i}")
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        out.append((marker, i, 2 + length))
        i += 2 + length
    raise StandardCodecError("malformed stream: the header does not end")


def strip_metadata(data: bytes, method: str) -> bytes:
    """``data`` without its optional writer-description segments (module docstring): the JPEG 2000
    main header's ``COM`` segments; JPEG's ``APPn`` and ``COM`` segments before the first scan."""
    _check_method(method)
    if method == "jpeg2000":
        if data[:4] != b"\xff\x4f\xff\x51":
            raise StandardCodecError("not a JPEG 2000 codestream (no SOC/SIZ)")
        drop = {0xFF64}
        segments = _segments(data, 2, (0xFF90,))  # up to the first tile-part (SOT)
    else:
        if data[:2] != b"\xff\xd8":
            raise StandardCodecError("not a JPEG stream (no SOI)")
        drop = {0xFFFE, *range(0xFFE0, 0xFFF0)}
        segments = _segments(data, 2, (0xFFDA,))  # up to the first scan (SOS)
    out, last = [], 0
    for marker, offset, length in segments:
        if marker in drop:
            out.append(data[last:offset])
            last = offset + length
    out.append(data[last:])
    return b"".join(out)


def encode_frame_at(image: np.ndarray, method: str, param: float) -> bytes:
    """One uint8 frame ``(h, w)`` coded at one setting: JPEG 2000 with ``param`` target bytes (ratio
    ``h w / param``), JPEG at quality ``param``; metadata stripped (:func:`strip_metadata`)."""
    from PIL import Image

    _check_method(method)
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise StandardCodecError(f"a frame must be (h, w) uint8, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    picture = Image.fromarray(image)
    if method == "jpeg2000":
        ratio = max(1.0, image.size / float(param))
        picture.save(buf, format="JPEG2000", no_jp2=True, irreversible=True, quality_mode="rates",
                     quality_layers=[ratio])
    else:
        picture.save(buf, format="JPEG", quality=int(param), optimize=True)
    return strip_metadata(buf.getvalue(), method)


def encode_frame(image: np.ndarray, method: str, cap: int) -> Tuple[bytes, float, bool]:
    """``(stream, setting, over_budget)``: the largest stream of ``image`` (uint8 ``(h, w)``) within
    ``cap`` bytes found by the binary search of the module docstring, or the smallest achievable one
    with ``over_budget`` True when nothing fits."""
    if method == "jpeg2000":
        low, high = 1, int(image.size)  # target bytes; the stream grows with the target
    else:
        _check_method(method)
        low, high = JPEG_QUALITIES
    smallest = encode_frame_at(image, method, low)
    if len(smallest) > cap:
        return smallest, float(low), True
    best = (smallest, float(low))  # the largest stream within the cap so far, and its setting
    top = encode_frame_at(image, method, high)
    if len(top) <= cap:
        return top, float(high), False
    while high - low > 1:  # invariant: setting low fits, high does not
        mid = (low + high) // 2
        stream = encode_frame_at(image, method, mid)
        if len(stream) <= cap:
            low = mid
            if len(stream) >= len(best[0]):
                best = (stream, float(mid))
        else:
            high = mid
    return best[0], best[1], False


@dataclasses.dataclass
class EncodedFrames:
    """Streams of ``N`` frames: ``streams`` (bytes each), ``settings`` ``(N,)`` (target bytes or
    quality), ``over_budget`` ``(N,)`` bool, ``sizes`` ``(N,)`` bytes."""

    method: str
    streams: List[bytes]
    settings: np.ndarray
    over_budget: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(s) for s in self.streams], dtype=np.int64)


def encode_frames(frames: np.ndarray, method: str, cap: int) -> EncodedFrames:
    """Code every frame of uint8 ``frames (…, h, w)`` within ``cap`` bytes (:func:`encode_frame`), in
    C order of the leading axes."""
    _check_method(method)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 2:
        raise StandardCodecError(f"frames must be (..., h, w) uint8, got {frames.dtype} {frames.shape}")
    if cap < 1:
        raise StandardCodecError(f"the byte budget per frame must be >= 1, got {cap}")
    flat = frames.reshape(-1, *frames.shape[-2:])
    coded = [encode_frame(image, method, int(cap)) for image in flat]
    return EncodedFrames(method, [c[0] for c in coded], np.array([c[1] for c in coded]),
                         np.array([c[2] for c in coded], dtype=bool))


def decode_frame(data: bytes, method: str, shape: Sequence[int]) -> np.ndarray:
    """The uint8 ``(h, w)`` frame of one stream; a stream of another size or kind is a
    :class:`StandardCodecError`."""
    from PIL import Image, UnidentifiedImageError

    _check_method(method)
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG2000" if method == "jpeg2000" else "JPEG"]) as picture:
            picture.load()
            if picture.mode != "L":
                raise StandardCodecError(f"decoded a {picture.mode} picture, expected 8-bit grayscale (L)")
            image = np.asarray(picture, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise StandardCodecError(f"cannot decode the {method} stream: {exc}") from None
    if image.shape != tuple(shape):
        raise StandardCodecError(f"decoded a {image.shape} frame, expected {tuple(shape)}")
    return image


def decode_frames(streams: Sequence[bytes], method: str, shape: Sequence[int]) -> np.ndarray:
    """uint8 frames ``(*shape)`` of ``streams`` (C order of the leading axes of ``shape``)."""
    shape = tuple(int(s) for s in shape)
    if len(streams) != int(np.prod(shape[:-2], dtype=np.int64)):
        raise StandardCodecError(f"{len(streams)} streams for frames of shape {shape}")
    frames = np.empty((len(streams), *shape[-2:]), dtype=np.uint8)
    for i, data in enumerate(streams):
        frames[i] = decode_frame(data, method, shape[-2:])
    return frames.reshape(shape)
