"""Selective scan on CPU: ours (PyTorch, models.selective_scan) vs mambapy 1.2.0's ``pscan``, interleaved.

    python benchmarks/bench_scan.py [--lengths 4096 16384] [--dims 96 128] [--d-state 16] [--batch 2]
                                    [--repeats 5] [--threads 1] [--backends parallel [sequential]]
                                    [--modes fwd fwd+bwd] [--no-peer] [--no-memory]

Inputs as in a Mamba block: fp32, ``delta_softplus`` with ``delta_bias``, ``D`` and the ``z`` gate;
B/C shared by all channels, ``(batch, d_state, L)``; ``A = -[1..d_state]`` per channel.
The peer computes the same function the way mambapy's ``MambaBlock.selective_scan`` does
(``exp(delta A)``, ``delta B x`` and ``pscan`` on ``(batch, L, dim, d_state)`` tensors, ``hs @ C``),
on the same values in its own ``(batch, L, dim)`` layout (built outside the timed region).
``fwd`` runs without autograd; ``fwd+bwd`` runs the forward with autograd and the backward of a fixed
random weighting of the output into all eight inputs (u, delta, A, B, C, D, z, delta_bias).

Per configuration (dim x L) and mode, in this one process, one warm-up each and then ``--repeats``
rounds of ours and the peer in turn (so both see the same machine load); prints the median and fastest
wall time of each and the ratio of the medians (ours / peer). Memory: every (implementation, dim, L,
mode) runs once more in a fresh subprocess: one small warm-up call, then the inputs are built, then one
call; it reports its peak resident memory (``VmHWM``, reset before the call through
``/proc/self/clear_refs``) minus its resident memory before the call: the memory the call adds on top
of its inputs. The ratio of those figures is printed too.
Agreement: at every configuration, ours vs the peer (output and the eight gradients, max error relative
to the largest magnitude); and once, at a small size with L not a power of two, both vs a float64
sequential recurrence written here. Peers come only from ``benchmarks/peers.py`` (a side folder).
On a shared machine use one thread (the default) and ``nice``; the interleaving keeps the ratio
meaningful under load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

LEAVES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process image in MiB (Linux /proc).

    ``VmHWM`` belongs to the address space created at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent's peak at fork time.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"bench_scan: no {field} in /proc/self/status")


def _inputs(batch: int, dim: int, d_state: int, length: int, dtype=None) -> list:
    """The eight inputs in our layout: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, bias (dim,)."""
    import torch

    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1)
    b = torch.randn(batch, d_state, length, generator=g)
    c = torch.randn(batch, d_state, length, generator=g)
    d = torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, length, generator=g)
    bias = torch.full((dim,), -3.0)
    out = [u, delta, a, b, c, d, z, bias]
    return [t.to(dtype) for t in out] if dtype is not None else out


def _peer_layout(tensors: list) -> list:
    """Our inputs in mambapy's layout: u, delta, z (batch, L, dim); B, C (batch, L, N); the rest as is."""
    u, delta, a, b, c, d, z, bias = tensors
    return [t.transpose(1, 2).contiguous() if t.dim() == 3 else t.clone() for t in (u, delta, a, b, c, d, z, bias)]


def _ours(backend: str):
    from models.selective_scan import selective_scan

    def run(u, delta, a, b, c, d, z, bias):
        return selective_scan(u, delta, a, b, c, d, z, bias, delta_softplus=True, backend=backend)

    return run


def _peer():
    """The selective scan the way mambapy 1.2.0's MambaBlock computes it (softplus and gate around it)."""
    import torch
    import torch.nn.functional as F
    from peers import MAMBAPY, require_peer

    pscan = require_peer(MAMBAPY[0], "mambapy.pscan").pscan

    def run(x, delta, a, b, c, d, z, bias):  # x, delta, z: (batch, L, dim); b, c: (batch, L, N)
        delta = F.softplus(delta + bias)
        delta_a = torch.exp(delta.unsqueeze(-1) * a)  # (batch, L, dim, N)
        bx = delta.unsqueeze(-1) * b.unsqueeze(2) * x.unsqueeze(-1)
        hs = pscan(delta_a, bx)
        y = (hs @ c.unsqueeze(-1)).squeeze(3) + d * x
        return y * F.silu(z)

    return run


def _to_ours(grads_or_out: list) -> list:
    """Peer-layout tensors (batch, L, ...) back to ours (batch, ..., L) for comparison."""
    return [t.transpose(1, 2) if t is not None and t.dim() == 3 else t for t in grads_or_out]


def _call(fn, tensors: list, mode: str, weight=None):
    """One timed unit: forward (no autograd) or forward + backward into all leaves. Returns (out, grads)."""
    import torch

    if mode == "fwd":
        with torch.no_grad():
            return fn(*tensors), None
    for t in tensors:
        t.requires_grad_(True)
        t.grad = None
    out = fn(*tensors)
    loss = out.sum() if weight is None else (out * weight).sum()
    loss.backward()
    return out.detach(), [t.grad for t in tensors]


def _reference64(u, delta, a, b, c, d, z, bias):
    """Float64 sequential recurrence (mamba-ssm semantics, B/C (batch, N, L)): one Python step per time step."""
    import torch
    import torch.nn.functional as F

    dt = F.softplus(delta + bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], a.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * a) * h + (dt[..., t] * u[..., t])[..., None] * b[:, None, :, t]
        ys.append((h * c[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + d[:, None] * u) * F.silu(z)


def _rel_err(got: list, ref: list) -> float:
    """Largest max-abs error over matching tensors, each relative to the reference's largest magnitude."""
    worst = 0.0
    for x, y in zip(got, ref):
        worst = max(worst, ((x.double() - y.double()).abs().max() / y.double().abs().max().clamp_min(1e-30)).item())
    return worst


def _weight(shape, peer_layout: bool):
    import torch

    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return w.transpose(1, 2).contiguous() if peer_layout else w


def check_small(backends: list, with_peer: bool, batch: int = 2, dim: int = 8, d_state: int = 16, length: int = 300) -> list:
    """Outputs and gradients of ours (and the peer) vs the float64 recurrence at a small size: rows to print."""
    import torch

    base = _inputs(batch, dim, d_state, length)
    leaves64 = [t.double() for t in base]
    w = _weight((batch, dim, length), False)
    out64, grads64 = _call(_reference64, leaves64, "fwd+bwd", w.double())
    rows = []
    impls = [(f"ours ({be})", _ours(be), False) for be in backends]
    if with_peer:
        impls.append(("mambapy", _peer(), True))
    for name, fn, peer_layout in impls:
        tensors = _peer_layout(base) if peer_layout else [t.clone() for t in base]
        out, grads = _call(fn, tensors, "fwd+bwd", _weight((batch, dim, length), peer_layout))
        if peer_layout:
            out, grads = _to_ours([out])[0], _to_ours(grads)
        rows.append((name, _rel_err([out], [out64]), _rel_err(grads, grads64)))
    return rows


def _child(impl: str, batch: int, length: int, dim: int, d_state: int, mode: str, threads: int) -> dict:
    """Fresh process: one call of ``impl`` ('peer' or a backend); peak RSS above the inputs' RSS."""
    import torch

    torch.set_num_threads(threads)
    peer = impl == "peer"
    fn = _peer() if peer else _ours(impl)
    small = _inputs(batch, dim, d_state, 64)  # load the kernels' code and first allocations before the baseline
    _call(fn, _peer_layout(small) if peer else small, mode, _weight((batch, dim, 64), peer))
    base_tensors = _inputs(batch, dim, d_state, length)
    tensors = _peer_layout(base_tensors) if peer else base_tensors
    w = _weight((batch, dim, length), peer)
    del base_tensors, small
    try:  # reset the peak to the current resident size (Linux >= 4.0), so that freed set-up memory does not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_mib("VmRSS")
    except OSError:
        base = _status_mib("VmHWM")
    _call(fn, tensors, mode, w)
    return {"peak_mib": _status_mib("VmHWM") - base}


def _peak_mib(args: argparse.Namespace, impl: str, length: int, dim: int, mode: str) -> float:
    cmd = [sys.executable, __file__, "--child", json.dumps([impl, args.batch, length, dim, args.d_state, mode, args.threads])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_scan: memory run {impl} L={length} dim={dim} {mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def bench_config(args: argparse.Namespace, length: int, dim: int, mode: str) -> list:
    """Interleaved timing of every implementation at one configuration: rows of figures."""
    import torch

    base = _inputs(args.batch, dim, args.d_state, length)
    impls = [(be, _ours(be), False) for be in args.backends]
    if args.peer:
        impls.append(("mambapy", _peer(), True))
    inputs = {name: (_peer_layout(base) if pl else [t.clone() for t in base]) for name, _, pl in impls}
    weights = {name: _weight((args.batch, dim, length), pl) for name, _, pl in impls}
    results = {}
    for name, fn, pl in impls:  # warm-up, and the values compared below
        out, grads = _call(fn, inputs[name], mode, weights[name])
        results[name] = _to_ours([out] + (grads or [])) if pl else [out] + (grads or [])
    times = {name: [] for name, _, _ in impls}
    for _ in range(args.repeats):
        for name, fn, _ in impls:
            t0 = time.perf_counter()
            _call(fn, inputs[name], mode, weights[name])
            times[name].append(time.perf_counter() - t0)
    rows = []
    peer_med = statistics.median(times["mambapy"]) if args.peer else None
    for name, _, _ in impls:
        med = statistics.median(times[name])
        row = {"impl": name, "L": length, "dim": dim, "mode": mode, "median_s": med, "min_s": min(times[name])}
        if args.peer and name != "mambapy":
            row["ratio"] = med / peer_med
            row["err_vs_peer"] = _rel_err(results[name], results["mambapy"])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["parallel"], choices=["parallel", "sequential"],
                        help="our backends to time (sequential: the Python-loop reference, slow)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="time ours only (no mambapy)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the fresh-process peak-memory runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    if args.repeats < 1 or args.threads < 1 or args.batch < 1:
        parser.error("--repeats, --threads and --batch must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    print(f"selective scan, batch {args.batch}, d_state {args.d_state}, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats; torch {torch.__version__}")
    print("agreement at batch 2, dim 8, L 300 vs a float64 sequential recurrence (max error / max magnitude):")
    for name, err_out, err_grad in check_small(args.backends, args.peer, d_state=args.d_state):
        print(f"  {name:<20} out {err_out:.1e}  grads {err_grad:.1e}")
    header = (f"{'impl':<11} {'L':>6} {'dim':>4} {'mode':<8} {'median s':>9} {'min s':>8} {'ratio':>6} "
              f"{'peak MiB':>9} {'mem ratio':>9} {'err vs peer':>11}")
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        for dim in args.dims:
            for mode in args.modes:
                rows = bench_config(args, length, dim, mode)
                peaks = {r["impl"]: (_peak_mib(args, "peer" if r["impl"] == "mambapy" else r["impl"], length, dim, mode)
                                     if args.memory else float("nan")) for r in rows}
                for r in rows:
                    ratio = f"{r['ratio']:>6.2f}" if "ratio" in r else f"{'':>6}"
                    mem_ratio = (f"{peaks[r['impl']] / peaks['mambapy']:>9.2f}" if "ratio" in r and args.memory
                                 else f"{'':>9}")
                    err = f"{r['err_vs_peer']:>11.1e}" if "err_vs_peer" in r else f"{'':>11}"
                    print(f"{r['impl']:<11} {length:>6} {dim:>4} {mode:<8} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {ratio} "
                          f"{peaks[r['impl']]:>9.1f} {mem_ratio} {err}", flush=True)


if __name__ == "__main__":
    main()
