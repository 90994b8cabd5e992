"""TiTok-MRI codec speed and memory beside Pillow's JPEG 2000: encode and decode milliseconds per frame, peak memory.

    python benchmarks/bench_codec.py                          # CUDA if there, else CPU (1 thread): demo weights/presets and paper presets
    python benchmarks/bench_codec.py --weights artifacts/titok/k64 --variants weights --frames 24 --repeats 5
    python benchmarks/bench_codec.py --device cpu --paper-frames 12    # force the CPU

Variants (``--variants``):

* ``weights``: the codec in ``--weights`` (default ``artifacts/titok/k64`` when it is there, else the
  randomly initialised ``demo`` presets: ``titok`` demo, ``titok_dit`` demo, ``nnmamba_seg`` acdc_demo);
* ``paper``: the ``paper`` presets at 256 x 256, randomly initialised (``titok`` paper: TiTok-B-64, K 64;
  ``titok_dit`` paper: width 384, 12 layers, patch 8; ``nnmamba_seg`` acdc2d): the cost at ACDC's frame
  size, to project; the weights do not change the time.

Frames: one simulated short-axis cine slice (``data.simulate_cine``, seed 0, 12 frames, 2 coils, the
model's frame size, normalised by the 99.5th percentile as the codec does), ``--frames`` of them per call
(``--paper-frames`` for the paper presets), as one cycle ``(1, T)`` for decoding (ED frame 0, ES T // 3).
Ours: ``TiTokMRI.encode`` (frames -> ids) and ``TiTokMRI.decode_cycles`` (ids -> frames: the stage-1
decoder, the segmentation features of ED/ES, the DiT's default sampling steps), in evaluation mode without
gradients. The peer: Pillow JPEG 2000 (data/standard_codecs.py, the coder of ``scripts/codec.py evaluate
--standard jpeg2000``) on the same frames, 8-bit, at the tokens' bytes per frame (the rate of every frame
found once by the rate search; the timed encode is one encode at that rate, as an encoder set to a rate
would run, the search not included), and its decode. Both run interleaved in one process (``--repeats``
rounds after a warm-up round), so both see the same machine load; printed are the medians per frame and the
ratios ours / peer. Memory (``--no-memory`` skips it): every (variant, operation) once more in a fresh
subprocess: CUDA ``torch.cuda.max_memory_allocated`` above the allocation before the call; CPU the peak
resident size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident size before the
call: what the call adds to the model and its inputs.
The plan's targets for reference: < 5 ms per frame decoding, 100-1000x compression.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_scan import _status_mib  # noqa: E402 - one /proc memory reader for the benchmarks (script folder)

DEFAULT_WEIGHTS = REPO / "artifacts" / "titok" / "k64"
PRESETS = {"demo": ("demo", "demo", "acdc_demo"), "paper": ("paper", "paper", "acdc2d")}
OPS = ("encode", "decode", "peer_encode", "peer_decode")


def build_codec(spec: Dict, device):
    """``(codec, label)`` of a variant: a weights folder or random presets (module docstring)."""
    import torch

    from models import build_model
    from models.titok_mri import TiTokMRI, load_codec

    if spec["weights"]:
        codec, _ = load_codec(spec["weights"], device)
        return codec, Path(spec["weights"]).name
    torch.manual_seed(0)
    tok, dit, seg = PRESETS[spec["presets"]]
    tokenizer = build_model("titok", tok)
    codec = TiTokMRI(tokenizer, build_model("titok_dit", dit), build_model("nnmamba_seg", seg)).to(device)
    return codec, f"{spec['presets']} presets (random)"


def simulated_frames(height: int, width: int, frames: int):
    """``(frames, H, W)`` float32 normalised magnitude frames of one simulated SAX slice (repeated cycles
    when ``frames`` exceeds the simulated 12)."""
    import numpy as np

    from data.acdc_datasets import cine_scale
    from data.simulate_cine import CinePreset, acdc_cine, simulate_subject, subject_specs

    preset = CinePreset("bench", 1, 0, 12, 1, 2, (height, 2 * width), (16, 32), 256 * 1.4 / max(height, width), None)
    cine = acdc_cine(simulate_subject(0, subject_specs(preset)[0], preset, lax=False).sax.kspace)[:, 0]  # (12, H, W)
    cine = cine / cine_scale(cine)
    return np.ascontiguousarray(np.resize(cine, (frames, height, width)).astype(np.float32))


class Ops:
    """The four timed operations of one variant on fixed frames (built once, called many times)."""

    def __init__(self, spec: Dict):
        import numpy as np
        import torch

        from data import standard_codecs as sc

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        self.torch, self.sc = torch, sc
        self.device = torch.device(spec["device"])
        self.codec, self.label = build_codec(spec, self.device)
        frames = np.load(spec["frames"], allow_pickle=False)
        self.frames = torch.from_numpy(frames)[:, None]  # (T, 1, H, W)
        self.t = frames.shape[0]
        cfg = self.codec.tokenizer.config
        self.k, self.bits = cfg.num_latent_tokens, max(1, math.ceil(math.log2(cfg.codebook_size)))
        self.cap = self.k * self.bits // 8  # the ids' bytes per frame: the peer's budget
        self.ids = self.codec.encode(self.frames.to(self.device)).reshape(1, self.t, self.k)
        self.q, _ = sc.quantise(frames)
        coded = sc.encode_frames(self.q, "jpeg2000", self.cap)
        self.settings, self.streams = coded.settings, coded.streams
        self.peer_bytes = float(coded.sizes.mean())
        self.peer_over = bool(coded.over_budget.any())

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, op: str) -> float:
        """Run ``op`` once; its wall seconds."""
        self._sync()
        start = time.perf_counter()
        if op == "encode":
            self.codec.encode(self.frames.to(self.device))
        elif op == "decode":
            self.codec.decode_cycles(self.ids, ed=0, es=self.t // 3)
        elif op == "peer_encode":
            for image, setting in zip(self.q, self.settings):
                self.sc.encode_frame_at(image, "jpeg2000", setting)
        elif op == "peer_decode":
            self.sc.decode_frames(self.streams, "jpeg2000", self.q.shape)
        else:
            raise ValueError(f"unknown operation {op!r}")
        self._sync()
        return time.perf_counter() - start


def child(spec: Dict, op: str) -> Dict:
    """Fresh process: one ``op`` after a warm-up call; the memory it adds (MiB)."""
    ops = Ops(spec)
    ops(op)  # kernels, caches and first allocations before the baseline
    torch = ops.torch
    if ops.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops(op)
        return {"peak_mib": max(0.0, (torch.cuda.max_memory_allocated() - base) / 2 ** 20)}
    try:  # reset the peak to the current resident size (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_mib("VmRSS")
    except OSError:
        base = _status_mib("VmHWM")
    ops(op)
    return {"peak_mib": max(0.0, _status_mib("VmHWM") - base)}  # page-granular: a call that frees memory reads 0


def peak_mib(spec: Dict, op: str) -> Optional[float]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([spec, op])], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode != 0:
        print(f"  memory run {op} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def bench_variant(spec: Dict, repeats: int, memory: bool) -> Dict:
    ops = Ops(spec)
    for op in OPS:  # warm-up round
        ops(op)
    times: Dict[str, List[float]] = {op: [] for op in OPS}
    for _ in range(repeats):
        for op in OPS:
            times[op].append(ops(op))
    ms = {op: 1e3 * statistics.median(v) / ops.t for op, v in times.items()}
    h, w = ops.codec.image_size
    out = {"label": ops.label, "size": f"{h}x{w}", "k": ops.k, "frames": ops.t, "bytes": ops.cap,
           "ratio16": h * w * 2 / ops.cap, "peer_bytes": ops.peer_bytes, "peer_over": ops.peer_over, "ms": ms,
           "params_m": sum(p.numel() for p in ops.codec.parameters()) / 1e6}
    del ops
    out["mib"] = {op: peak_mib(spec, op) for op in OPS} if memory else {}
    return out


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="codec weights folder (default: artifacts/titok/k64 if present, "
                                                   "else random demo presets)")
    p.add_argument("--variants", nargs="+", default=["weights", "paper"], choices=["weights", "paper"])
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--frames", type=int, default=12, help="frames per call (weights variant)")
    p.add_argument("--paper-frames", type=int, default=4, help="frames per call (paper presets)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        spec, op = json.loads(args.child)
        print(json.dumps(child(spec, op)))
        return 0
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if min(args.frames, args.paper_frames, args.repeats) < 1:
        p.error("--frames, --paper-frames and --repeats must be >= 1")
    weights = args.weights or (str(DEFAULT_WEIGHTS) if (DEFAULT_WEIGHTS / "titok.safetensors").is_file() else None)
    if weights and not Path(weights).is_dir():
        p.error(f"--weights {weights}: weights folder not found")
    import numpy as np

    print(f"device={args.device} threads={args.threads or 'default'}; median of {args.repeats} interleaved rounds after a "
          f"warm-up, per frame; ours = TiTok-MRI, peer = Pillow JPEG 2000 at the tokens' bytes per frame")
    header = (f"{'variant':<28} {'size':>7} {'K':>4} {'bytes':>6} {'x16bit':>7} {'params M':>8} | {'enc ms':>8} {'dec ms':>8} | "
              f"{'J2K enc':>8} {'J2K dec':>8} {'J2K B':>6} | {'enc ratio':>9} {'dec ratio':>9} | {'MiB enc/dec':>13} "
              f"{'J2K MiB e/d':>13}")
    print(header)
    with tempfile.TemporaryDirectory(prefix="bench_codec.") as tmp:
        for variant in args.variants:
            if variant == "weights":
                spec = {"weights": weights, "presets": "demo"}
                frames_n = args.frames
            else:
                spec = {"weights": None, "presets": "paper"}
                frames_n = args.paper_frames
            import torch

            probe, _ = build_codec(spec, torch.device("cpu"))
            h, w = probe.image_size
            del probe
            path = Path(tmp) / f"{variant}.npy"
            np.save(path, simulated_frames(h, w, frames_n), allow_pickle=False)
            spec.update(device=args.device, threads=args.threads, frames=str(path))
            r = bench_variant(spec, args.repeats, not args.no_memory)
            ms, mib = r["ms"], r["mib"]
            mem = lambda a, b: f"{_f(mib.get(a), '.0f')}/{_f(mib.get(b), '.0f')}"  # noqa: E731
            print(f"{r['label'][:28]:<28} {r['size']:>7} {r['k']:>4} {r['bytes']:>6} {r['ratio16']:>7.0f} {r['params_m']:>8.2f} | "
                  f"{ms['encode']:>8.2f} {ms['decode']:>8.2f} | {ms['peer_encode']:>8.2f} {ms['peer_decode']:>8.2f} "
                  f"{r['peer_bytes']:>5.0f}{'*' if r['peer_over'] else ' '} | {ms['encode'] / ms['peer_encode']:>9.1f} "
                  f"{ms['decode'] / ms['peer_decode']:>9.1f} | {mem('encode', 'decode'):>13} "
                  f"{mem('peer_encode', 'peer_decode'):>13}", flush=True)
    print("bytes: the ids per frame (K x ceil(log2 codebook) / 8); x16bit: compression against 16-bit frames; "
          "J2K B: the peer's bytes per frame (*: over the budget: its smallest codestream is larger); "
          "ratios: ours / peer (above 1: we are slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
