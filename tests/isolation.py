"""Run a Python process in which neither this checkout nor the editable fusetune install is
importable: what a machine that only has a logged MLflow model (and its requirements) sees."""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = '''"""Test helper: hide fusetune's checkout and editable install from this process."""
import sys
from pathlib import Path

sys.meta_path[:] = [f for f in sys.meta_path if "fusetune" not in str(getattr(f, "__module__", ""))]
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "trainables" / "bundle.py").is_file()]
'''


def without_fusetune(tmp: Path) -> dict[str, str]:
    """An environment (for ``subprocess``, and the processes it starts) hiding fusetune; run it with
    a ``cwd`` outside the checkout."""
    folder = Path(tmp) / "hide-fusetune"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(folder)}
