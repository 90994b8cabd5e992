"""Benchmark-only peer libraries (fastmri, mambapy, pygrappa, ...) in a side folder, never in requirements.txt.

    from peers import require_peer          # inside benchmarks/bench_*.py (run as python benchmarks/bench_x.py)
    fastmri = require_peer("fastmri==0.3.0", "fastmri")
    VarNet = require_peer("fastmri==0.3.0", "fastmri.models").VarNet

The first call installs the pinned distribution with ``pip install --no-deps --target`` into
``$MRI_BENCH_PEERS/<name>-<version>`` (default ``.bench_peers/`` in the checkout, git-ignored) and records a
stamp; later calls reuse it. ``--no-deps``: a peer runs on the project's own torch/numpy/scipy, so the
comparison is library against library on identical kernels, and no second torch is pulled in. The folder is
*appended* to ``sys.path``, so a peer can never shadow the project's modules or its pinned dependencies.
Nothing in the pipeline imports this module; it is for ``benchmarks/`` only.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def peer_root() -> Path:
    """The side folder that holds the peers (``$MRI_BENCH_PEERS``, default ``<repo>/.bench_peers``)."""
    return Path(os.environ.get("MRI_BENCH_PEERS", REPO / ".bench_peers"))


def require_peer(spec: str, module: str, extra: Sequence[str] = ()) -> ModuleType:
    """Import ``module`` from the pinned peer ``spec`` (``"name==version"``), installing it on first use.

    ``extra``: more pinned distributions the peer needs at import time that the project does not have
    (installed beside it, also without their dependencies). Raises ``RuntimeError`` naming the spec and pip's
    last lines when the install fails (e.g. no network to the registry).
    """
    if "==" not in spec:
        raise ValueError(f"peer spec must pin a version (name==version), got {spec!r}")
    target = peer_root() / spec.replace("==", "-")
    stamp = target / ".installed"
    wanted = " ".join([spec, *extra])
    if not stamp.exists() or stamp.read_text() != wanted:
        target.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                              "--target", str(target), spec, *extra], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"cannot install benchmark peer {wanted} into {target}: {res.stderr.strip()[-800:]}")
        stamp.write_text(wanted)
    if str(target) not in sys.path:
        sys.path.append(str(target))
    return importlib.import_module(module)


# The peers of the README's benchmark table, pinned: (spec, extra distributions needed at import time).
FASTMRI = ("fastmri==0.3.0", ("pandas==2.2.3", "pytz==2025.2", "runstats==2.0.0", "six==1.17.0"))
MAMBAPY = ("mambapy==1.2.0", ())
PYGRAPPA = ("pygrappa==0.26.3", ())
