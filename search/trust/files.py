"""Every file of a search folder is written whole: under a temporary name, then renamed into place.

A reader (a resume, a report, another driver) sees the old file or the new one, never half of one;
a write that fails (a full disk, a lost store) leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
from typing import Any


def write_atomically(fs: Any, target: str, data: bytes, tmp: str | None = None) -> str:
    """Write ``data`` to ``target`` on the pyarrow filesystem ``fs`` through ``tmp`` (default
    ``<target>.tmp``), which is removed if the write fails. Returns ``target``."""
    tmp = tmp or f"{target}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise
    return target
