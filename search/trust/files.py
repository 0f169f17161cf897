"""Every file of a search folder is written whole: under a temporary name, then renamed into place.

A reader (a resume, a report, another driver) sees the old file or the new one, never half of one;
a write that fails (a full disk, a lost store) leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pyarrow.fs


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


def write_text(text: str, experiment_path: str, filename: str, filesystem: pyarrow.fs.FileSystem | None = None) -> str:
    """Write ``<experiment>/<filename>`` whole (local folder or ``s3://``-style URI): ``results.csv``,
    ``search.json``, ``confirmation.csv``. Returns the path written."""
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path) if filesystem is None else (filesystem, experiment_path)
    fs.create_dir(path, recursive=True)
    target = f"{path.rstrip('/')}/{filename}"
    return write_atomically(fs, target, text.encode())


def read_text(experiment_path: str, filename: str) -> str:
    """``<experiment>/<filename>`` as text (local folder or URI)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
    with fs.open_input_stream(f"{path.rstrip('/')}/{filename}") as f:
        return f.read().decode()
