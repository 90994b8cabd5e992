"""E2E-VarNet training step: the project's :class:`models.varnet.VarNet` against ``fastmri.models.VarNet``.

    nice -n 15 python benchmarks/bench_varnet.py                          # issue 11 configuration (below)
    nice -n 15 python benchmarks/bench_varnet.py --height 96 --width 100 --repeats 3   # development size

Configuration (issue 11 target 2): 4 cascades, cascade U-Net chans 18 / pools 4, sensitivity U-Net 8 / 4,
batch 1 of 4 coils x 384 x 396 complex64 k-space (4x equispaced + 8% ACS), ACS width given, one training
step = forward + L1 loss on the 384 x 384 centre crop + backward + ``torch.optim.Adam`` step, one thread, CPU.
The peer (fastmri 0.3.0) comes only through ``benchmarks/peers.py``.

1. Agreement: both models hold the same weights (:func:`fastmri_state_dict` maps ours onto fastMRI's names).
   In float64 at a small size (``--check-size``, default 3 coils x 40 x 44) the forward outputs, the losses
   and every parameter gradient must agree within 1e-10 relative to their largest magnitude; in float32 at
   the benchmark size the forward outputs within ``--tol`` (default 1e-4) relative to the output's maximum.
2. Time: one warm-up step each, then ``--repeats`` rounds of (ours, peer) steps interleaved in this process;
   medians and the ratio ours/peer are printed.
3. Peak memory: each model in a fresh subprocess (``--memory-worker``) builds the model, the input and Adam,
   runs one warm-up step (so Adam's state exists), resets the kernel's peak-RSS counter
   (``/proc/self/clear_refs`` 5) and reports ``VmHWM - VmRSS`` over one more step: the step's working memory
   above the resident model, input and optimiser state. glibc's allocator is pinned with
   ``MALLOC_MMAP_THRESHOLD_=65536`` / ``MALLOC_TRIM_THRESHOLD_=0`` in those subprocesses, so every freed tensor
   goes back to the kernel and the peak is the true live-tensor peak, not an artefact of heap caching
   (where ``clear_refs`` is unavailable the first step is measured from ``ru_maxrss`` instead).
Exit status 1 when the agreement checks fail.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from models.varnet import VarNet, VarNetConfig  # noqa: E402
from utils import physics  # noqa: E402
from utils.contract import IMAGE_SIZE  # noqa: E402


def peer_varnet_class():
    """``fastmri.models.VarNet`` (fastmri 0.3.0, installed on first use into the side folder)."""
    from peers import FASTMRI, require_peer

    return require_peer(FASTMRI[0], "fastmri.models", FASTMRI[1]).VarNet


# ------------------------------------------------------------------------------------------ weights


def _unet_key(key: str, pools: int) -> str:
    """Our :class:`models.unet.Unet` parameter name -> fastMRI's ``Unet`` name (same tensors)."""
    m = re.fullmatch(r"encoder\.(\d+)\.(\d+)\.(\w+)", key)
    if m:
        return f"down_sample_layers.{m[1]}.layers.{m[2]}.{m[3]}"
    m = re.fullmatch(r"bottleneck\.(\d+)\.(\w+)", key)
    if m:
        return f"conv.layers.{m[1]}.{m[2]}"
    m = re.fullmatch(r"up\.(\d+)\.(\d+)\.(\w+)", key)
    if m:
        return f"up_transpose_conv.{m[1]}.layers.{m[2]}.{m[3]}"
    m = re.fullmatch(r"decoder\.(\d+)\.(\d+)\.(\w+)", key)
    if m:  # fastMRI's last decoder level is Sequential(ConvBlock, 1x1 conv)
        inner = ".0" if int(m[1]) == pools - 1 else ""
        return f"up_conv.{m[1]}{inner}.layers.{m[2]}.{m[3]}"
    m = re.fullmatch(r"head\.(\w+)", key)
    if m:
        return f"up_conv.{pools - 1}.1.{m[1]}"
    raise KeyError(f"no fastMRI name for U-Net parameter {key!r}")


def fastmri_key(key: str, config: VarNetConfig) -> str:
    """Our VarNet state-dict name -> fastMRI VarNet's name."""
    m = re.fullmatch(r"sens_net\.norm_unet\.unet\.(.+)", key)
    if m:
        return "sens_net.norm_unet.unet." + _unet_key(m[1], config.sens_pools)
    m = re.fullmatch(r"cascades\.(\d+)\.regulariser\.unet\.(.+)", key)
    if m:
        return f"cascades.{m[1]}.model.unet." + _unet_key(m[2], config.pools)
    m = re.fullmatch(r"cascades\.(\d+)\.dc\.weight", key)
    if m:
        return f"cascades.{m[1]}.dc_weight"
    raise KeyError(f"no fastMRI name for VarNet parameter {key!r}")


def fastmri_state_dict(model: VarNet) -> Dict[str, torch.Tensor]:
    """Our model's weights under fastMRI's names (load with ``strict=True`` into ``fastmri.models.VarNet``)."""
    return {fastmri_key(k, model.config): v.detach().clone() for k, v in model.state_dict().items()}


def build_pair(config: VarNetConfig, dtype: torch.dtype, seed: int = 0):
    """(ours, peer) with identical weights, in ``dtype``."""
    torch.manual_seed(seed)
    ours = VarNet(config).to(dtype)
    peer = peer_varnet_class()(num_cascades=config.num_cascades, sens_chans=config.sens_chans,
                               sens_pools=config.sens_pools, chans=config.chans, pools=config.pools).to(dtype)
    peer.load_state_dict(fastmri_state_dict(ours), strict=True)
    return ours, peer


# --------------------------------------------------------------------------------------------- data


def synthetic_batch(coils: int, height: int, width: int, dtype: torch.dtype, seed: int = 0):
    """4x equispaced + round(0.08 W) centred ACS lines. Returns (kspace (1, 1, C, H, W) complex, mask (1, W)
    float, ACS width, target (1, 384, 384) real), k-space of a smooth random image times random coil maps."""
    g = torch.Generator().manual_seed(seed)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    acs = max(2 * (round(0.08 * width) // 2), 2)  # even: fastMRI's symmetric window keeps it whole
    mask = torch.zeros(1, width, dtype=dtype)
    mask[0, (width // 2) % 4:: 4] = 1
    start = (width - acs + 1) // 2
    mask[0, start: start + acs] = 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height, dtype=dtype), torch.linspace(-1, 1, width, dtype=dtype),
                            indexing="ij")
    image = torch.exp(-(xx**2 + yy**2) * 3) * (1 + 0.3 * torch.randn(height, width, generator=g, dtype=dtype))
    phase = torch.randn(coils, 1, 1, generator=g, dtype=dtype)
    centre = torch.rand(coils, 2, 1, 1, generator=g, dtype=dtype) * 2 - 1
    maps = torch.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2)) * torch.exp(1j * phase * (xx + yy))
    kspace = physics.fft2c((maps * image).to(cdtype))[None, None] * (mask != 0).view(1, 1, 1, 1, width)
    target = torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, generator=g, dtype=dtype)
    return kspace, mask, acs, target


class Runner:
    """One model's training step on one input: ``forward()`` -> (B, 384, 384) image, ``step()`` -> loss."""

    def __init__(self, model: torch.nn.Module, is_peer: bool, kspace, mask, acs: int, target):
        self.model, self.is_peer, self.acs, self.target = model.train(), is_peer, acs, target
        if is_peer:  # fastMRI: real view (B, C, H, W, 2), boolean mask (B, 1, 1, W, 1)
            self.inputs = (torch.view_as_real(kspace[:, 0]).contiguous(), (mask != 0).view(1, 1, 1, -1, 1))
        else:
            self.inputs = (kspace, mask)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward(self) -> torch.Tensor:
        out = self.model(*self.inputs, self.acs)
        if self.is_peer:  # fastMRI returns the full (B, H, W) RSS; ours its 384 x 384 centre
            out = physics.center_crop_or_pad(out, (IMAGE_SIZE, IMAGE_SIZE))
        return out

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = (self.forward() - self.target).abs().mean()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------- agreement


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def check_float64(config: VarNetConfig, coils: int, height: int, width: int, tol: float = 1e-10) -> Tuple[bool, str]:
    """Forward outputs, losses and all gradients of ours vs fastMRI's in float64; (ok, summary line)."""
    ours, peer = build_pair(config, torch.float64)
    kspace, mask, acs, _ = synthetic_batch(coils, height, width, torch.float64)
    target = torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = Runner(ours, False, kspace, mask, acs, target), Runner(peer, True, kspace, mask, acs, target)
    out_a, out_b = a.forward(), b.forward()
    (out_a - target).abs().mean().backward()
    (out_b - target).abs().mean().backward()
    peer_params = dict(peer.named_parameters())
    worst_grad = max(_rel(p.grad, peer_params[fastmri_key(k, config)].grad) for k, p in ours.named_parameters())
    worst_out = _rel(out_a.detach(), out_b.detach())
    ok = worst_out <= tol and worst_grad <= tol
    return ok, (f"float64 {coils}x{height}x{width}: max |ours - fastMRI| / max |fastMRI|: output {worst_out:.1e}, "
                f"gradients {worst_grad:.1e} (tol {tol:.0e}) {'OK' if ok else 'FAIL'}")


# ------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_worker(which: str, spec: Dict) -> Dict:
    """Peak working memory (bytes) of one training step of ``which`` ('ours' | 'peer'); see the module doc."""
    torch.set_num_threads(spec["threads"])
    config = VarNetConfig(**spec["config"])
    ours, peer = build_pair(config, torch.float32)
    model = ours if which == "ours" else peer
    del ours, peer
    kspace, mask, acs, target = synthetic_batch(spec["coils"], spec["height"], spec["width"], torch.float32)
    runner = Runner(model, which == "peer", kspace, mask, acs, target)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        runner.step()  # warm-up: Adam's state now exists
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kib("VmRSS")
        runner.step()
        peak = _status_kib("VmHWM")
        how = "VmHWM after clear_refs"
    except OSError:
        base = _status_kib("VmRSS")
        runner.step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "ru_maxrss, first step"
    return {"step_bytes": (peak - base) * 1024, "base_bytes": base * 1024, "how": how}


def measure_memory(which: str, spec: Dict) -> Dict:
    """:func:`memory_worker` in a fresh interpreter with glibc's allocator pinned."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", which, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {which} failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cascades", type=int, default=4)
    p.add_argument("--chans", type=int, default=18)
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--sens-chans", type=int, default=8)
    p.add_argument("--sens-pools", type=int, default=4)
    p.add_argument("--coils", type=int, default=4)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=396)
    p.add_argument("--repeats", type=int, default=5, help="interleaved (ours, peer) timing rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check-size", default="3x40x44", help="coils x H x W of the float64 agreement check")
    p.add_argument("--tol", type=float, default=1e-4, help="float32 output tolerance, relative to the max")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-worker", nargs=2, metavar=("WHICH", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker[0], json.loads(args.memory_worker[1]))))
        return 0

    torch.set_num_threads(args.threads)
    config = VarNetConfig(num_cascades=args.cascades, chans=args.chans, pools=args.pools,
                          sens_chans=args.sens_chans, sens_pools=args.sens_pools)
    print(f"E2E-VarNet training step: {args.cascades} cascades, chans {args.chans}/{args.pools}, sens "
          f"{args.sens_chans}/{args.sens_pools}, 1 x {args.coils} coils x {args.height} x {args.width}, "
          f"Adam, {args.threads} thread(s), torch {torch.__version__}")

    c, h, w = (int(v) for v in args.check_size.split("x"))
    ok64, line = check_float64(config, c, h, w)
    print(line, flush=True)

    ours, peer = build_pair(config, torch.float32)
    kspace, mask, acs, target = synthetic_batch(args.coils, args.height, args.width, torch.float32)
    runners = {"ours": Runner(ours, False, kspace, mask, acs, target),
               "peer": Runner(peer, True, kspace, mask, acs, target)}
    with torch.no_grad():
        rel32 = _rel(runners["ours"].forward(), runners["peer"].forward())
    ok32 = rel32 <= args.tol
    print(f"float32 {args.coils}x{args.height}x{args.width}: max |ours - fastMRI| / max |fastMRI| of the output "
          f"{rel32:.1e} (tol {args.tol:.0e}) {'OK' if ok32 else 'FAIL'}", flush=True)

    times: Dict[str, List[float]] = {"ours": [], "peer": []}
    cpu: Dict[str, List[float]] = {"ours": [], "peer": []}
    for name in ("ours", "peer"):
        runners[name].step()  # warm-up
    for _ in range(args.repeats):
        for name in ("ours", "peer"):
            t0, c0 = time.perf_counter(), time.process_time()
            runners[name].step()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"step time, median of {args.repeats} interleaved: ours {med['ours']:.3f} s, fastMRI {med['peer']:.3f} s,"
          f" ratio ours/peer {med['ours'] / med['peer']:.3f}  (CPU time: ours {med_cpu['ours']:.3f} s, fastMRI "
          f"{med_cpu['peer']:.3f} s, ratio {med_cpu['ours'] / med_cpu['peer']:.3f})")
    print("  wall s, ours: " + " ".join(f"{t:.3f}" for t in times["ours"]))
    print("  wall s, peer: " + " ".join(f"{t:.3f}" for t in times["peer"]))

    if not args.no_memory:
        del runners, ours, peer
        spec = {"config": config.to_dict(), "coils": args.coils, "height": args.height, "width": args.width,
                "threads": args.threads}
        mem = {name: measure_memory(name, spec) for name in ("ours", "peer")}
        mib = {k: v["step_bytes"] / 2**20 for k, v in mem.items()}
        print(f"peak step memory ({mem['ours']['how']}, fresh process each): ours {mib['ours']:.1f} MiB, "
              f"fastMRI {mib['peer']:.1f} MiB, ratio ours/peer {mib['ours'] / mib['peer']:.3f}")
    return 0 if ok64 and ok32 else 1


if __name__ == "__main__":
    sys.exit(main())
