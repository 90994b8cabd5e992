"""Reproducibility audits: compare two training result trees, or two sets of weights, value by value.

::

    python -m utils.audit compare RESULT_A RESULT_B [--nets NAME ...] [--rtol R] [--out DIR]
    python -m utils.audit weights A B [--rtol R] [--out DIR]

``compare`` walks ``<RESULT>/<net>/`` of both trees (or the ``--nets`` given) and, for every net and
recipe step present in both, compares value by value

* ``loss_log``: the epoch losses of ``loss_log/step{k}/loss_log.npy``;
* ``iter loss`` and ``iter lr``: the per-micro-step loss and learning rate of ``loss_log/step{k}/iter_log.npy``
  (written by the engine on every run, whether or not wandb is on);
* ``wandb <metric>``: every number the run logged to wandb (``train/loss``, ``train/lr``,
  ``train/epoch_loss``, ``val/ssim``, ...), read from the offline run files (:mod:`utils.wandb_history`;
  the runs of one step, e.g. a killed run and its resumption, merged in start order).

Each series gets a verdict: ``identical`` (bit for bit), ``within rtol`` (``|a - b| <= rtol * max(|a|, |b|)``
everywhere, only with ``--rtol``), ``incomplete`` (the common points agree, but one side has points the other
lacks) or ``diverged``, with the first divergent epoch and iteration, both values there and the largest
difference. A series, step or net present on one side only is listed as missing. A run killed with SIGKILL
loses the wandb history it had not flushed (wandb buffers it in its service process), so an interrupted and
resumed run shows ``incomplete`` wandb series; its ``iter_log.npy`` is written with every checkpoint and
covers the whole run. ``--out`` receives ``report.md`` (the table, the missing
items and one PNG per net and step overlaying both loss curves and their difference).

``weights`` compares two checkpoint tags (``.../epoch-N``), two artifacts (``.safetensors``) or two folders
of artifacts tensor by tensor: a SHA-256 of every tensor, the largest difference, tensors on one side only.
Everything is read weights-only (``torch.load(weights_only=True)`` or safetensors); nothing is unpickled.

Exit status: 0 when everything compared is identical (or within ``--rtol``) and nothing is missing; 1 when
something diverged or is missing; 2 for unusable input (one line naming the path).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from utils.io import OutputError, atomic_path, prepare_output_dir

__all__ = ["SeriesResult", "compare_series", "compare_results", "compare_weights", "load_weights", "main"]

IDENTICAL, WITHIN, INCOMPLETE, DIVERGED = "identical", "within rtol", "incomplete", "diverged"
_STEP_DIR = re.compile(r"^step(\d+)$")


class AuditError(ValueError):
    """Unusable input (message names the path and the problem)."""


# ------------------------------------------------------------------------------------------ series


@dataclasses.dataclass
class SeriesResult:
    """Comparison of one series ``key -> value`` (key: epoch for loss logs, iteration otherwise)."""

    net: str
    step: int
    name: str
    points: int  # keys on both sides
    verdict: str
    first_key: Optional[int] = None  # first divergent key (the first difference when within rtol)
    first_epoch: Optional[int] = None
    first_iteration: Optional[int] = None
    value_a: Optional[float] = None
    value_b: Optional[float] = None
    max_abs_diff: float = 0.0
    only_a: int = 0
    only_b: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict in (IDENTICAL, WITHIN)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise bit equality of float64 arrays (NaN equals the same NaN, -0.0 differs from 0.0)."""
    return a.astype(np.float64).view(np.int64) == b.astype(np.float64).view(np.int64)


def compare_series(a: Dict[int, float], b: Dict[int, float], rtol: Optional[float] = None) -> dict:
    """Fields of a :class:`SeriesResult` (all but net, step, name) for series ``a`` and ``b``: the verdict,
    the first divergent key (with ``rtol``: the first beyond it, or the first difference when all are
    within it; for ``incomplete``, the first key on one side only), both values there, the largest
    difference and the keys on one side only. ``incomplete``: the common points agree but one side has
    points the other lacks (e.g. the wandb history a SIGKILLed run never flushed)."""
    keys = sorted(set(a) | set(b))
    common = [k for k in keys if k in a and k in b]
    va = np.array([a[k] for k in common], dtype=np.float64)
    vb = np.array([b[k] for k in common], dtype=np.float64)
    same = _same_bits(va, vb)
    diff = np.where(same, 0.0, np.abs(va - vb))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN against a number (or another NaN) is a divergence
    close = same if rtol is None else same | (diff <= rtol * np.maximum(np.abs(va), np.abs(vb)))
    out = {"points": len(common), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
           "max_abs_diff": float(diff.max()) if len(diff) else 0.0}
    differs = np.flatnonzero(~close)
    one_sided = [k for k in keys if k not in a or k not in b]
    if len(differs):
        out["verdict"], first = DIVERGED, common[int(differs[0])]
    elif one_sided:
        out["verdict"], first = INCOMPLETE, one_sided[0]
    elif same.all():
        out["verdict"] = IDENTICAL
        return out
    else:
        out["verdict"], first = WITHIN, common[int(np.flatnonzero(~same)[0])]
    out.update(first_key=first, value_a=a.get(first), value_b=b.get(first))
    return out


# ------------------------------------------------------------------------------------------ trees


def _net_names(root: Path) -> List[str]:
    if not root.is_dir():
        raise AuditError(f"{root}: not a result folder (not found)")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "loss_log").is_dir() or (p / "checkpoints").is_dir()))


def _read_log(path: Path, cls) -> Optional[np.ndarray]:
    return cls.read(path) if path.is_file() else None


@dataclasses.dataclass
class StepData:
    loss_log: Optional[np.ndarray]  # (N, 2) epoch, loss
    iter_log: Optional[np.ndarray]  # (N, 4) epoch, iteration, loss, lr
    wandb: Dict[str, Dict[int, float]]

    def series(self) -> Dict[str, Dict[int, float]]:
        out: Dict[str, Dict[int, float]] = {}
        if self.loss_log is not None:
            out["loss_log"] = {int(e): float(v) for e, v in self.loss_log}
        if self.iter_log is not None:
            out["iter loss"] = {int(i): float(v) for _, i, v, _ in self.iter_log}
            out["iter lr"] = {int(i): float(v) for _, i, _, v in self.iter_log}
        for key, values in self.wandb.items():
            out[f"wandb {key}"] = values
        return out

    def epoch_of(self, iteration: int) -> Optional[int]:
        """The epoch an iteration belongs to: from the iteration log, else the wandb epoch records."""
        if self.iter_log is not None and len(self.iter_log):
            rows = self.iter_log[self.iter_log[:, 1] == iteration]
            if len(rows):
                return int(rows[0, 0])
        ends = sorted(self.wandb.get("epoch", {}).items())
        return next((int(e) for s, e in ends if s >= iteration), None)


def _step_data(run_dir: Path, net: str) -> Dict[int, StepData]:
    from utils.engine import IterationLog, LossLog
    from utils.wandb_history import WandbFileError, step_histories

    steps: Dict[int, StepData] = {}
    log_root = run_dir / "loss_log"
    if log_root.is_dir():
        for folder in sorted(log_root.iterdir()):
            match = _STEP_DIR.match(folder.name)
            if match and folder.is_dir():
                steps[int(match.group(1))] = StepData(_read_log(folder / "loss_log.npy", LossLog),
                                                      _read_log(folder / "iter_log.npy", IterationLog), {})
    try:
        histories = step_histories(run_dir, net)
    except ImportError:  # wandb not installed: its files cannot be decoded (listed as missing series)
        histories = {}
    except WandbFileError as exc:
        raise AuditError(str(exc)) from None
    for step, history in histories.items():
        steps.setdefault(step, StepData(None, None, {})).wandb = history
    return steps


@dataclasses.dataclass
class AuditReport:
    a: Path
    b: Path
    rtol: Optional[float]
    results: List[SeriesResult]
    missing: List[str]  # "net", "net step k", "net step k: series" present on one side only
    plots: List[Tuple[str, int, Path]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and bool(self.results) and all(r.ok for r in self.results)


def compare_results(a, b, nets: Optional[Sequence[str]] = None, rtol: Optional[float] = None,
                    out: Optional[Path] = None) -> AuditReport:
    """Compare result trees ``a`` and ``b`` (see the module doc); with ``out``, write the report and plots."""
    a, b = Path(a), Path(b)
    names_a, names_b = _net_names(a), _net_names(b)
    wanted = list(nets) if nets else sorted(set(names_a) | set(names_b))
    results: List[SeriesResult] = []
    missing: List[str] = []
    data: Dict[Tuple[str, int], Tuple[StepData, StepData]] = {}
    for net in wanted:
        sides = [net in names_a, net in names_b]
        if not all(sides):
            missing.append(f"{net}: only in {'A' if sides[0] else 'B' if sides[1] else 'neither tree'}")
            continue
        steps_a, steps_b = _step_data(a / net, net), _step_data(b / net, net)
        for step in sorted(set(steps_a) | set(steps_b)):
            if step not in steps_a or step not in steps_b:
                missing.append(f"{net} step {step}: only in {'A' if step in steps_a else 'B'}")
                continue
            da, db = steps_a[step], steps_b[step]
            data[(net, step)] = (da, db)
            series_a, series_b = da.series(), db.series()
            for name in sorted(set(series_a) | set(series_b)):
                if name not in series_a or name not in series_b:
                    missing.append(f"{net} step {step}: {name} only in {'A' if name in series_a else 'B'}")
                    continue
                fields = compare_series(series_a[name], series_b[name], rtol)
                result = SeriesResult(net, step, name, **fields)
                if result.first_key is not None:
                    if name == "loss_log":
                        result.first_epoch = result.first_key
                    else:
                        result.first_iteration = result.first_key
                        result.first_epoch = da.epoch_of(result.first_key) or db.epoch_of(result.first_key)
                results.append(result)
    report = AuditReport(a, b, rtol, results, missing)
    if out is not None:
        prepare_output_dir(out)
        for (net, step), (da, db) in data.items():
            report.plots.append((net, step, plot_step(out / f"{net}_step{step}.png", net, step, da, db)))
        write_markdown(report, out / "report.md")
    return report


# ------------------------------------------------------------------------------------------ output


def _curve(data: StepData) -> Tuple[str, Dict[int, float]]:
    series = data.series()
    for name in ("iter loss", "wandb train/loss"):
        if series.get(name):
            return name, series[name]
    return "", {}


def plot_step(path: Path, net: str, step: int, da: StepData, db: StepData) -> Path:
    """PNG: per-iteration loss of A and B overlaid (top left), their difference B - A (bottom left), and
    the same for the epoch losses (right); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(11, 6), dpi=100, sharex="col")
    panels = []
    name_a, iter_a = _curve(da)
    _, iter_b = _curve(db)
    panels.append(("iteration", f"per-iteration loss ({name_a or 'none'})", iter_a, iter_b))
    epochs_a = {int(e): float(v) for e, v in da.loss_log} if da.loss_log is not None else {}
    epochs_b = {int(e): float(v) for e, v in db.loss_log} if db.loss_log is not None else {}
    panels.append(("epoch", "epoch loss (loss_log.npy)", epochs_a, epochs_b))
    for col, (xlabel, title, sa, sb) in enumerate(panels):
        top, bottom = axes[0, col], axes[1, col]
        for series, label, style in ((sa, "A", "-"), (sb, "B", "--")):
            if series:
                x = sorted(series)
                top.plot(x, [series[k] for k in x], style, label=label, marker="." if len(x) < 50 else None)
        top.set_title(title, fontsize=9)
        top.legend(fontsize=8)
        common = sorted(set(sa) & set(sb))
        if common:
            bottom.plot(common, [sb[k] - sa[k] for k in common], color="tab:red")
        bottom.axhline(0.0, color="grey", linewidth=0.5)
        bottom.set_title("B - A", fontsize=9)
        bottom.set_xlabel(xlabel)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{net} step {step}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.10g}"


def _where(r: SeriesResult) -> str:
    if r.first_key is None:
        return ""
    parts = []
    if r.first_epoch is not None:
        parts.append(f"epoch {r.first_epoch}")
    if r.first_iteration is not None:
        parts.append(f"iteration {r.first_iteration}")
    return ", ".join(parts)


def table_rows(results: Sequence[SeriesResult]) -> List[List[str]]:
    rows = [["net", "step", "series", "points", "verdict", "first divergence", "A", "B", "max abs diff"]]
    for r in results:
        points = str(r.points) + (f" (+{r.only_a} A only)" if r.only_a else "") + (f" (+{r.only_b} B only)" if r.only_b else "")
        rows.append([r.net, str(r.step), r.name, points, r.verdict, _where(r), _fmt(r.value_a), _fmt(r.value_b),
                     f"{r.max_abs_diff:.3g}"])
    return rows


def write_markdown(report: AuditReport, path: Path) -> Path:
    verdict = "PASS" if report.ok else "FAIL"
    lines = [f"# Reproducibility audit: {verdict}", "", f"- A: `{report.a}`", f"- B: `{report.b}`",
             f"- tolerance: {'bit-identical' if report.rtol is None else f'rtol {report.rtol:g}'}", ""]
    rows = table_rows(report.results)
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", "## Missing (present on one side only)", ""]
    lines += [f"- {m}" for m in report.missing] or ["- none"]
    if report.plots:
        lines += ["", "## Loss curves", ""]
        lines += [f"![{net} step {step}]({p.name})" for net, step, p in report.plots]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# ------------------------------------------------------------------------------------------ weights


def load_weights(path) -> Dict[str, "object"]:
    """``{name: tensor}`` of a checkpoint tag, a model-states ``.pt`` or a ``.safetensors`` artifact, read
    without unpickling anything but tensors and containers."""
    from utils.checkpoint import CheckpointError, load_model_states, safe_torch_load

    path = Path(path)
    try:
        if path.is_dir():
            states = load_model_states(path)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                return load_file(str(path))
            except Exception as exc:  # noqa: BLE001 - safetensors' header/IO errors
                raise AuditError(f"{path}: not a safetensors file ({' '.join(str(exc).split())[:200]})") from None
        elif path.is_file():
            states = safe_torch_load(path)
        else:
            raise AuditError(f"{path}: not found")
    except CheckpointError as exc:
        raise AuditError(str(exc)) from None
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict):
        raise AuditError(f"{path}: holds no model weights ('module' state dict)")
    return module


def _digest(tensor) -> str:
    import torch

    t = tensor.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(raw.numpy().tobytes())
    return h.hexdigest()


def compare_weights(a, b, rtol: Optional[float] = None) -> Tuple[List[List[str]], bool]:
    """Table rows ``name, shape/dtype, sha256 A, sha256 B, max |A-B|, verdict`` and whether all match.
    Folders that are not checkpoint tags are compared artifact by artifact (``*.safetensors`` by name)."""
    import torch
    from utils.checkpoint import is_checkpoint

    a, b = Path(a), Path(b)
    pairs: List[Tuple[str, Path, Path]] = []
    rows = [["tensor", "shape dtype", "sha256 A", "sha256 B", "max abs diff", "verdict"]]
    ok = True
    if a.is_dir() and b.is_dir() and not is_checkpoint(a) and not is_checkpoint(b):
        files_a = {p.name for p in a.glob("*.safetensors")}
        files_b = {p.name for p in b.glob("*.safetensors")}
        if not files_a and not files_b:
            raise AuditError(f"{a}, {b}: neither a checkpoint tag nor a folder of .safetensors artifacts")
        for name in sorted(files_a ^ files_b):
            rows.append([name, "", "", "", "", f"only in {'A' if name in files_a else 'B'}"])
            ok = False
        pairs = [(Path(n).stem + ":", a / n, b / n) for n in sorted(files_a & files_b)]
    else:
        pairs = [("", a, b)]
    for prefix, pa, pb in pairs:
        wa, wb = load_weights(pa), load_weights(pb)
        for name in sorted(set(wa) | set(wb)):
            if name not in wa or name not in wb:
                rows.append([prefix + name, "", "", "", "", f"only in {'A' if name in wa else 'B'}"])
                ok = False
                continue
            ta, tb = wa[name], wb[name]
            shape = f"{tuple(ta.shape)} {str(ta.dtype).replace('torch.', '')}"
            da, db = _digest(ta), _digest(tb)
            if ta.shape != tb.shape or ta.dtype != tb.dtype:
                verdict, diff = f"differs: B is {tuple(tb.shape)} {str(tb.dtype).replace('torch.', '')}", math.inf
            else:
                fa, fb = ta.detach().double().cpu(), tb.detach().double().cpu()
                delta = (fa - fb).abs()
                diff = float(delta.max()) if delta.numel() else 0.0
                if da == db:
                    verdict = IDENTICAL
                elif rtol is not None and bool((delta <= rtol * torch.maximum(fa.abs(), fb.abs())).all()):
                    verdict = WITHIN
                else:
                    verdict = DIVERGED
            ok = ok and verdict in (IDENTICAL, WITHIN)
            rows.append([prefix + name, shape, da[:12], db[:12], f"{diff:.3g}", verdict])
    return rows, ok


# ------------------------------------------------------------------------------------------ CLI


def _rtol(value: str) -> float:
    from utils.cli import finite_float

    number = finite_float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a tolerance >= 0, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.audit", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare two result trees (loss logs, iteration logs, wandb histories)")
    cmp.add_argument("result_a")
    cmp.add_argument("result_b")
    cmp.add_argument("--nets", nargs="+", default=None, help="net names to compare (default: every net of either tree)")
    cmp.add_argument("--rtol", type=_rtol, default=None, help="pass values within this relative tolerance")
    cmp.add_argument("--out", default=None, help="folder for report.md and the PNG plots")
    wts = sub.add_parser("weights", help="compare two checkpoints or artifacts tensor by tensor")
    wts.add_argument("a")
    wts.add_argument("b")
    wts.add_argument("--rtol", type=_rtol, default=None, help="pass tensors within this relative tolerance")
    wts.add_argument("--out", default=None, help="folder for weights.md")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else None
    try:
        if out is not None:
            prepare_output_dir(out)
        if args.command == "compare":
            report = compare_results(args.result_a, args.result_b, args.nets, args.rtol, out)
            _print_table(table_rows(report.results))
            for item in report.missing:
                print(f"missing: {item}")
            if not report.results and not report.missing:
                print("nothing to compare: no nets with loss logs or wandb runs in either tree")
            print(f"audit: {'PASS' if report.ok else 'FAIL'}" + (f" (report: {out / 'report.md'})" if out else ""))
            return 0 if report.ok else 1
        rows, ok = compare_weights(args.a, args.b, args.rtol)
        _print_table(rows)
        if out is not None:
            lines = [f"# Weights audit: {'PASS' if ok else 'FAIL'}", "", f"- A: `{args.a}`", f"- B: `{args.b}`", "",
                     "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
            with atomic_path(out / "weights.md") as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        print(f"audit: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    except (AuditError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
