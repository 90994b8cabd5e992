"""The command line of :mod:`data.formats` (``python -m data.formats ...``)::

    python -m data.formats check PATH [PATH ...]      # one line per problem; exit 0 only when all is valid
    python -m data.formats convert-fastmri --src DIR --out DIR --anatomy {brain,knee} [--acceleration 4]
    python -m data.formats convert-raw --src FILE_OR_DIR --out DIR --anatomy {brain,knee} [--acceleration 4] [--leaderboard]

It lives apart from :mod:`data.formats` so that the format module imports none of the modules built on
it (:mod:`data.convert` -> :mod:`data.volumes` -> :mod:`data.formats`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from data import formats
from data import raw_kspace
from data.convert import convert_fastmri_folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.formats", description=formats.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a file, a Data tree, a folder with kspace/ and image/, a CMRxRecon or ACDC tree")
    check.add_argument("path", nargs="+")
    conv = sub.add_parser("convert-fastmri", help="convert fastMRI multi-coil files to the challenge layout")
    conv.add_argument("--src", required=True, help="folder of fastMRI .h5 files")
    conv.add_argument("--out", required=True, help="output folder (gets kspace/ and image/)")
    conv.add_argument("--anatomy", required=True, choices=formats.ANATOMIES)
    conv.add_argument("--acceleration", type=int, default=4, help="acc used for the mask and baselines")
    raw = sub.add_parser("convert-raw", help="convert raw Cartesian multi-coil k-space (ISMRMRD, MRD, Siemens twix) to the challenge layout")
    raw_kspace.add_arguments(raw)
    args = parser.parse_args(argv)
    if args.command == "check":
        problems: List[str] = []
        for p in args.path:
            problems += formats.validate_path(p)
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) found" if problems else "all files valid", file=sys.stderr)
        return 1 if problems else 0
    if args.command == "convert-raw":
        return raw_kspace.run(args)
    return convert_fastmri_folder(Path(args.src), Path(args.out), args.anatomy, args.acceleration)


if __name__ == "__main__":
    sys.exit(main())
