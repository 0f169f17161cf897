"""One driver per search, and one creator of a new SQLite tracking store at a time.

Two drivers on one search folder (the same ``--name`` started twice, or ``--resume`` while the
search still runs) would sample into one Optuna study and write one Tune experiment from two Ray
clusters. :func:`driver_lock` takes an OS file lock (``fcntl.flock``, exclusive, non-blocking) for
the driver's lifetime; a second driver is refused in one line naming the first one's PID and host.
The kernel releases the lock when its holder exits, however it exits (a SIGKILL included), so a
killed driver never leaves a stale lock and ``--resume`` works at once.

The lock files live in a per-user folder outside the results folder (``$FUSETUNE_LOCK_DIR``, else
``~/.cache/fusetune/locks``), one small file per search named after a hash of its folder path or
URI (the file holds the path, for whoever looks): nothing is written into a results folder before
a search's checks pass, and a remote ``--storage`` (``s3://``) is locked the same way. The lock
protects against drivers of the same user on the same machine, which is where ``search.nested``
and a repeated command run them; drivers on other machines sharing one remote folder are not seen.

:func:`store_creation_lock` serialises the first use of a SQLite tracking store, whose creation
(MLflow's schema migration) fails in the second of two processes creating it at once ("Online
migration expected to match one row").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from search.prepare.errors import UsageError

LOCK_DIR_ENV = "FUSETUNE_LOCK_DIR"


def lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path.home() / ".cache" / "fusetune" / "locks").expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _lock_file(kind: str, key: str) -> Path:
    return lock_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _running(path: Path, name: str) -> UsageError:
    h = _holder(path)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
    return UsageError(f"--name {name}: the search is being run by another driver (pid {h.get('pid', '?')} on "
                      f"{h.get('host', '?')}, since {since}); wait for it to end or stop it, then --resume")


def refuse_if_running(experiment_path: str, name: str) -> None:
    """:class:`UsageError` (the one line :func:`driver_lock` gives) when a driver holds the search's
    lock, e.g. one still starting the search that ``--resume`` finds nothing of yet."""
    import fcntl

    path = _lock_file("search", experiment_path)
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _running(path, name) from None
    finally:
        os.close(fd)  # releases the probe's shared lock


@contextlib.contextmanager
def driver_lock(experiment_path: str, name: str) -> Iterator[None]:
    """Hold the search's driver lock for the block; :class:`UsageError` (one line) when another
    driver holds it."""
    import fcntl

    path = _lock_file("search", experiment_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _running(path, name) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "search": experiment_path}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (the kernel does the same when the process dies)


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a ``sqlite:///`` tracking store across processes (blocking); other
    stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = _lock_file("store", str(Path(uri[len("sqlite:///"):].partition("?")[0]).expanduser().absolute()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
