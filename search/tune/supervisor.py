"""The command line's driver runs in a child process that this one watches: whatever ends it, the
user gets our lines.

A search's driver can end without running a line of Python: Ray's core worker ends the process
(``_exit(1)``) when its local node dies, the kernel's OOM killer or a user sends SIGKILL. Ray then
leaves its state dumps in the terminal and the user no ``--resume`` line. So ``python -m search.run``
and ``fusetune run`` fork before anything else (:func:`supervised`): the child is the driver (it
dies with its parent, ``PR_SET_PDEATHSIG``), the parent waits for it and, when it ended without
saying so (:func:`report` ``ended``), prints what stopped, what was kept and the exact ``--resume``
command, and marks the search's MLflow run KILLED (a signal) or FAILED; its exit status is the
child's (a child killed by a signal: the parent ends by the same signal).

The child tells the parent what it knows as it learns it (:func:`report`: the search folder, its
name and storage, the tracking URI; one JSON line each through a pipe, kept in memory, never
written). Once the search folder is known, the child's C-level standard error (Ray's core worker
logs) and Ray's relayed raylet messages (state dumps) go to ``<search>/driver.log``
(:func:`keep_ray_output_in`); Python's own ``sys.stderr`` (our messages, tracebacks) stays on the
terminal. :func:`search.run_search` in a user's Python process is not supervised.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUPERVISED_ENV = "FUSETUNE_SUPERVISOR_FD"
"""In the child: the file descriptor of the pipe to the parent."""
DRIVER_LOG = "driver.log"
PR_SET_PDEATHSIG = 1
DISK_FULL = ("database or disk is full", "No space left on device", "Disk quota exceeded")
RAY_NODE_LOST = ("Raylet is terminated", "has been marked dead", "raylet died", "Failed to connect to GCS")


_known: dict[str, Any] = {}
"""What this driver has reported (:func:`stopped` reads it)."""


def report(**fields: Any) -> None:
    """Tell the supervising parent ``fields`` (kept here too, for :func:`stopped`)."""
    _known.update(fields)
    fd = os.environ.get(SUPERVISED_ENV)
    if fd is None:
        return
    try:
        os.write(int(fd), (json.dumps(fields, default=str) + "\n").encode())
    except OSError:
        pass


def keep_ray_output_in(folder: str) -> None:
    """In a supervised driver: the process's C-level standard error and Ray's relayed raylet
    messages append to ``<folder>/driver.log``; ``sys.stderr`` keeps the terminal."""
    if os.environ.get(SUPERVISED_ENV) is None or "://" in folder:
        return
    from search import compat

    Path(folder).mkdir(parents=True, exist_ok=True)
    log = open(Path(folder) / DRIVER_LOG, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    sys.stderr = open(terminal, "w", buffering=1, closefd=True)  # noqa: SIM115
    compat.route_raylet_messages(log)
    report(log=str(Path(folder) / DRIVER_LOG))


def _die_with_parent(parent: int) -> None:
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the call
        os._exit(1)


def supervised(run: Callable[[], int]) -> int:
    """``run()`` in a forked child watched by this process (see the module's docstring); ``run()``
    here when already supervised or where there is no ``fork``/``/proc`` (not Linux)."""
    if os.environ.get(SUPERVISED_ENV) is not None or not hasattr(os, "fork") or not Path("/proc/self").exists():
        return run()
    read_end, write_end = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _die_with_parent(parent)
        os.environ[SUPERVISED_ENV] = str(write_end)
        code = 1
        try:
            code = run()
        except SystemExit as exc:  # argparse's --help and its usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - the traceback is printed; the child ends with 1 all the same
            import traceback

            traceback.print_exc()
        finally:
            report(ended=code)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    return _watch(child, read_end)


def _watch(child: int, read_end: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too: it stops the search itself
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    known: dict[str, Any] = {}
    buffer, status = b"", None
    # until the child has ended (not until the pipe's end: a process the child forked may hold it)
    while status is None:
        ready, _, _ = select.select([read_end], [], [], 0.5)
        chunk = os.read(read_end, 65536) if ready else b""
        pid, waited = os.waitpid(child, os.WNOHANG)
        if pid:
            status = waited
            while select.select([read_end], [], [], 0)[0] and (more := os.read(read_end, 65536)):
                chunk += more
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                known.update(json.loads(line))
    os.close(read_end)
    if "ended" in known:
        return os.waitstatus_to_exitcode(status)
    sig = -os.waitstatus_to_exitcode(status) if os.WIFSIGNALED(status) else None
    code = os.waitstatus_to_exitcode(status)
    print(stopped_message(known, sig, code), file=sys.stderr, flush=True)
    _mark_parent_run(known, "KILLED" if sig else "FAILED")
    if sig:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return code or 1


def cause(exc: BaseException) -> str | None:
    """What stopped the search, in words, for the failures of the machine and the services around
    it (a full disk, a failing tracking store, a lost Ray cluster); None for anything else."""
    import errno

    from mlflow.exceptions import MlflowException
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.filename or reason})"
    if any(words in str(exc) for words in DISK_FULL):  # SQLite's (MLflow's, Optuna's store), pyarrow's
        return f"the disk is full ({reason})"
    if isinstance(exc, MlflowException) or type(exc).__module__.startswith(("requests", "urllib3")):
        return f"the MLflow tracking store failed ({reason})"
    if type(exc).__module__.startswith("ray."):
        return node_lost(_known) or f"Ray failed ({reason})"
    from search.tune.settle import TrialsLost

    if isinstance(exc, TrialsLost):  # the driver's node lost: that is what stopped it
        return node_lost(_known) or (f"its Ray node was lost ({reason})" if exc.own_node else reason)
    return None


def stopped(exc: BaseException) -> int:
    """The driver stops on ``exc`` (one of :func:`cause`'s): our lines instead of a traceback, the
    MLflow run FAILED, no temporary file left in the search folder. Returns the exit code, 1."""
    folder = _known.get("folder")
    if folder and "://" not in folder:
        for tmp in Path(folder).rglob("*.tmp"):
            tmp.unlink(missing_ok=True)
    print(stopped_message(_known, None, 1, cause(exc)), file=sys.stderr, flush=True)
    _mark_parent_run(_known, "FAILED")
    report(ended=1)
    return 1


def _cause(known: dict[str, Any], sig: int | None, code: int) -> str:
    if sig is not None:
        return f"the driver was killed ({signal.Signals(sig).name})"
    return node_lost(known) or f"the driver ended unexpectedly (exit code {code})"


def node_lost(known: dict[str, Any]) -> str | None:
    """'its Ray node was lost' (or the cluster at ``--address``) when Ray's log says so, else None."""
    try:
        tail = Path(known["log"]).read_text(errors="replace")[-200_000:]
    except (KeyError, OSError):
        return None
    if not any(s in tail for s in RAY_NODE_LOST):
        return None
    where = f"the Ray cluster at --address {known['address']}" if known.get("address") else "its Ray node"
    return f"{where} was lost (Ray's log: {known['log']})"


def stopped_message(known: dict[str, Any], sig: int | None, code: int, why: str | None = None) -> str:
    """What stopped (``why``, else read from the signal, the exit code and Ray's log), what was
    kept, and the exact command that continues the search."""
    PROG = "python -m search.run"  # noqa: N806 - search.run's, not imported (the parent stays light)

    why = why or _cause(known, sig, code)
    name, folder = known.get("name"), known.get("folder")
    if not name or not folder:
        return f"{PROG}: {why} before the search started; nothing was recorded"
    kept = sum(1 for _ in Path(folder).glob("*/final_result.json")) if "://" not in folder else None
    kept_text = f"{kept} finished trial(s) kept" if kept is not None else "the finished trials kept"
    return (f"{PROG}: search {name} stopped: {why}; {kept_text} in {folder}\n"
            f"continue with: {PROG} --resume --storage {known.get('storage')} --name {name}")


def _mark_parent_run(known: dict[str, Any], status: str) -> None:
    """The search's MLflow run, if it is RUNNING, ends ``status`` (a resume runs it again)."""
    uri, name = known.get("tracking_uri"), known.get("name")
    if not uri or not name:
        return
    import logging

    mlflow_logger = logging.getLogger("mlflow")  # MLflow logs a failing store's traceback itself
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.CRITICAL + 1)
    try:
        from search.tracking.store import end_search_run

        end_search_run(uri, name, status)
    except Exception:  # noqa: BLE001 - the store may be what failed (a full disk); our lines above are what counts
        pass
    finally:
        mlflow_logger.setLevel(level)
