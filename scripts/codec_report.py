"""Rate-distortion report of the TiTok-MRI codec against standard codecs, from ``scripts/codec.py evaluate``'s JSON.

    python scripts/codec_report.py --json k32/titok.json k32/jpeg2000.json k64/titok.json ... --out DIR [--title T]

Each ``--json`` file is one ``evaluate --json`` (or ``--json_out``) report: the codec's own decode
(method ``titok``) or a standard codec at the tokens' rate (``--standard jpeg2000|jpeg``). Writes
``DIR/codec_rd.md`` (a Markdown table, printed too) and ``DIR/codec_rd.png`` (bytes per frame on a log
axis against PSNR, mean Dice and the LV/RV ejection-fraction errors; one line per method, hollow markers
where a standard codec could not get down to the budget), both atomically.

Table columns: method, K (tokens per frame: the budget), bytes per frame as stored (a standard codec's
achieved figure, starred where over the budget), compression ratio against 16-bit frames, PSNR, SSIM,
Dice per structure (RV, myocardium, LV) of the segmentation of the decoded ED/ES frames and their mean,
the ratio of that mean to the Dice of the original frames' segmentation, the absolute LV/RV EF errors
(percentage points) and the decoding milliseconds per frame. A row "original frames" gives the Dice and
EF errors of the segmenter on the uncompressed frames (one per distinct value among the reports).

A file that cannot be read or is not an evaluate report is one ``error:`` line and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run by path from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from utils.io import OutputError, atomic_path, prepare_output_dir  # noqa: E402

METHOD_NAMES = {"titok": "TiTok-MRI", "jpeg2000": "JPEG 2000 (Pillow)", "jpeg": "JPEG (Pillow)"}
METHOD_ORDER = ("titok", "jpeg2000", "jpeg")
STRUCTURES = ("rv", "myo", "lv")
COLUMNS = ("method", "K", "bytes/frame", "ratio vs 16-bit", "PSNR (dB)", "SSIM", "Dice RV", "Dice MYO", "Dice LV",
           "Dice mean", "Dice ratio", "EF err LV", "EF err RV", "decode ms/frame")


class ReportError(ValueError):
    """A report file that cannot be used; the message names it."""


def read_report(path) -> Dict[str, Any]:
    """The ``summary`` of one evaluate report, with ``method`` and ``tokens_per_frame`` checked."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    summary = report.get("summary") if isinstance(report, dict) else None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: not a scripts/codec.py evaluate report (no 'summary')")
    for key in ("tokens_per_frame", "bytes_per_frame", "psnr"):
        if not isinstance(summary.get(key), (int, float)) or isinstance(summary.get(key), bool):
            raise ReportError(f"{path}: summary has no number {key!r}")
    method = str(summary.get("method") or report.get("method") or "titok")
    return dict(summary, method=method, source=str(path))


def _fixed(value, places: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{places}f}"


def dice_mean(summary: Dict[str, Any], prefix: str = "dice_") -> Optional[float]:
    values = [summary.get(f"{prefix}{k}") for k in STRUCTURES]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _order(summary: Dict[str, Any]):
    method = summary["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method, summary["tokens_per_frame"], summary["bytes_per_frame"]


def table_rows(summaries: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """The table's cells (:data:`COLUMNS`), methods in order, K ascending; then the original frames."""
    rows = []
    for s in sorted(summaries, key=_order):
        bytes_cell = _fixed(s["bytes_per_frame"], 1)
        if s.get("over_budget"):
            bytes_cell += f" (budget {_fixed(s.get('budget_bytes_per_frame'), 1)})*"
        rows.append([METHOD_NAMES.get(s["method"], s["method"]), str(s["tokens_per_frame"]), bytes_cell,
                     _fixed(s.get("compression_ratio"), 1), _fixed(s.get("psnr"), 2), _fixed(s.get("ssim"), 4),
                     *(_fixed(s.get(f"dice_{k}"), 3) for k in STRUCTURES), _fixed(dice_mean(s), 3),
                     _fixed(s.get("dice_ratio"), 3), _fixed(s.get("lv_ef_error"), 2), _fixed(s.get("rv_ef_error"), 2),
                     _fixed(s.get("decode_ms_per_frame"), 2)])
    originals: Dict[tuple, int] = {}  # distinct original-frame figures -> K of the first report with them
    for s in sorted(summaries, key=_order):
        ref = tuple(s.get(k) for k in ("dice_original_rv", "dice_original_myo", "dice_original_lv",
                                       "original_lv_ef_error", "original_rv_ef_error"))
        if all(v is not None for v in ref[:3]):
            originals.setdefault(ref, s["tokens_per_frame"])
    for ref, k in originals.items():
        label = "original frames" + (f" (segmenter of the K={k} weights)" if len(originals) > 1 else "")
        rows.append([label, "-", "-", "1.0", "-", "-", *(_fixed(v, 3) for v in ref[:3]), _fixed(sum(ref[:3]) / 3, 3),
                     "1.000", _fixed(ref[3], 2), _fixed(ref[4], 2), "-"])
    return rows


def markdown_table(summaries: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table of the reports (module docstring) with its footnote."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(summaries)]
    notes = ["bytes/frame: everything stored per frame (token ids or codestream, plus the per-item side information); "
             "ratio against 16-bit magnitude frames. Dice and EF of the segmenter on the decoded ED/ES frames against "
             "the labels; Dice ratio: mean Dice decoded / original frames; EF errors in percentage points."]
    if any(s.get("over_budget") for s in summaries):
        notes.append("*: over the budget: the standard codec's smallest stream (headers included) is larger than "
                     "the tokens' bytes per frame.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def rd_series(summaries: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    series: Dict[str, List[Dict[str, Any]]] = {}
    for s in sorted(summaries, key=_order):
        series.setdefault(METHOD_NAMES.get(s["method"], s["method"]), []).append(dict(s, label=f"K={s['tokens_per_frame']}"))
    return series


def references(summaries: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """The original frames' Dice and EF errors (of the first report that has them), keyed as the panels."""
    for s in sorted(summaries, key=_order):
        ref = {k: s.get(f"dice_original_{k[5:]}") for k in ("dice_rv", "dice_myo", "dice_lv")}
        ref.update(lv_ef_error=s.get("original_lv_ef_error"), rv_ef_error=s.get("original_rv_ef_error"))
        ref = {k: v for k, v in ref.items() if v is not None}
        if ref:
            return ref
    return {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/codec_report.py", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--json", nargs="+", required=True, help="evaluate reports (JSON)")
    parser.add_argument("--out", required=True, help="output folder (codec_rd.md, codec_rd.png)")
    parser.add_argument("--title", default="TiTok-MRI vs standard codecs at the same bytes per frame")
    args = parser.parse_args(argv)
    try:
        summaries = [read_report(path) for path in args.json]
        out = prepare_output_dir(args.out)
        table = markdown_table(summaries)
        with atomic_path(out / "codec_rd.md") as tmp:
            tmp.write_text(table)
        from data.codec_figures import save_rd_plot

        png = save_rd_plot(out / "codec_rd.png", rd_series(summaries), references(summaries), title=args.title)
    except (ReportError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table)
    print(f"[codec_report] {out / 'codec_rd.md'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
