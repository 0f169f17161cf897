"""What the search benchmarks share: run a real ``python -m search.run`` in a child process (or
reuse a finished one), read it back as a study, and describe the machine.

Each search is a folder ``<storage>/<name>``; a search whose ``results.csv`` exists is finished and
is not run again, so an interrupted benchmark continues where it stopped and ``--report-only``
re-prints the tables from the folders alone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.select.results import StudyResults, load_study  # noqa: E402


def run_search(storage: Path, name: str, options: dict[str, object], *, log=print) -> StudyResults:
    """``python -m search.run --name NAME --storage STORAGE --OPTION VALUE ...``, unless done (a list
    value repeats its flag, a dict is given as JSON: ``points=[{...}, {...}]``)."""
    if not (storage / name / "results.csv").is_file():
        argv = [sys.executable, "-m", "search.run", "--storage", str(storage), "--name", name]
        for key, value in options.items():
            for v in (value if isinstance(value, (list, tuple)) else [value]):  # a list: the flag repeated
                argv += [f"--{key.replace('_', '-')}", json.dumps(v) if isinstance(v, dict) else str(v)]
        log(f"  running {name}: {' '.join(argv[3:])}")
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "1"}
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"search {name} failed (exit {proc.returncode}):\n{tail}")
        log(f"  {name}: {time.monotonic() - t0:.0f} s")
    return load_study(name, storage)


def pm(values, scale: float = 100.0, digits: int = 1) -> str:
    v = np.asarray(list(values), dtype=float)
    return f"{scale * v.mean():.{digits}f} ± {scale * v.std():.{digits}f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}; "
            f"{datetime.date.today().isoformat()}; load average {load:.1f} at the start")
