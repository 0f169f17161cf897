"""Checks and set-up that need the outside world, done before any trial starts.

Every problem is a :class:`search.prepare.errors.UsageError` (or a one-line
:class:`trainables.data.DataError`): an unreachable ``--address``, more CPUs/GPUs per trial than
any node has, data the space cannot use, a model that cannot be built from the paper default on
that data, a search to ``--resume`` that is not there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.trust.credentials import redact
from spaces import Space
from trainables.data import DataError
from trainables.trial_data import TrialData, fold_splits, prepare

REPO_ROOT = Path(__file__).resolve().parents[2]

RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",          # no usage report over the network
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",               # with verbose=0 the classic output prints nothing; ProgressLine reports
    # keeping 2 checkpoints per trial forces an experiment snapshot every second checkpoint; on a
    # local or shared folder that is cheap, so Tune's warning about it is noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # result.json and progress.csv only (search.tune.orchestrate.result_loggers): no TensorBoard event
    # file written on every report
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


# --------------------------------------------------------------------------------- Ray
def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` / ``ray://host:port`` must accept a TCP connection (fail in seconds, not
    after Ray's long retry loop)."""
    if address == "auto":
        return
    hp = _host_port(address)
    if hp is None:
        raise UsageError(f"--address {address}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: cannot reach {hp[0]}:{hp[1]} ({exc.strerror or exc})") from None


RAY_AUTH_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
"""Where ``ray start`` keeps the cluster's auth token (token authentication, Ray >= 2.5x)."""


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch between a node reachable from other machines and a loopback-only one. Off, the
node's address is 127.0.0.1 and Ray's GCS, raylet, workers and runtime-env agent listen there only
(its gRPC servers bind to all interfaces whenever the node address is another)."""


def loopback_only() -> None:
    """Make the local cluster that ``ray.init`` starts listen on 127.0.0.1 only. ``ray.init``
    turns ``_node_ip_address="127.0.0.1"`` into the machine's outward address, so the node address
    comes from Ray's own no-cluster setting instead: the environment variable for the processes
    started from here, and the constant Ray read from it when it was imported. A cluster other
    machines join is started with ``ray start --head`` and given as ``--address``."""
    os.environ[LOOPBACK_ENV] = "0"
    from search import compat

    compat.disable_ray_cluster_constant()


def connect(cfg: SearchConfig) -> dict[str, Any]:
    """``ray.init``: the cluster at ``--address``, or a light local one (no dashboard). Returns
    timings for the report."""
    for k, v in RAY_QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if not cfg.address:
        # local workers import this checkout even when it is not pip-installed
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        loopback_only()
    if cfg.address and cfg.address != "auto" and "RAY_AUTH_MODE" not in os.environ and RAY_AUTH_TOKEN_FILE.is_file():
        # Ray sends its token by itself only for address="auto"; an explicit host:port to a
        # token-protected cluster would otherwise fail with an unrelated connection error
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    start = time.monotonic()
    try:
        ray.init(address=cfg.address, include_dashboard=False, logging_level=logging.WARNING,
                 logging_config=ray.LoggingConfig(log_level="WARNING"), ignore_reinit_error=True)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, ... from Ray
        where = f"--address {cfg.address}" if cfg.address else "local Ray"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where}: cannot start or connect ({reason})") from None
    return {"ray_init_s": time.monotonic() - start}


def alive_node_resources() -> list[dict[str, float]]:
    """Every alive node's resources (``CPU``, ``GPU``, ...) of the connected Ray cluster."""
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def check_resources(cfg: SearchConfig) -> int:
    """A trial must fit on one node: CPUs and GPUs per trial at most what the largest node has.
    Returns how many trials fit on the cluster at once."""
    nodes = alive_node_resources()
    max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    if cfg.gpus_per_trial > max_gpu:
        raise UsageError(f"--gpus-per-trial {cfg.gpus_per_trial:g}: the cluster has "
                         f"{'no GPU' if total_gpu == 0 else f'at most {max_gpu:g} GPU(s) on one node'}")
    if cfg.cpus_per_trial > max_cpu:
        raise UsageError(f"--cpus-per-trial {cfg.cpus_per_trial:g}: the largest node has {max_cpu:g} CPU(s)")
    slots = 0
    for n in nodes:
        fit = int(n.get("CPU", 0.0) // cfg.cpus_per_trial + 1e-9)
        if cfg.gpus_per_trial > 0:
            fit = min(fit, int(n.get("GPU", 0.0) / cfg.gpus_per_trial + 1e-9))
        slots += fit
    return max(1, slots)


# --------------------------------------------------------------------------------- paths
def check_storage(cfg: SearchConfig) -> None:
    """A local ``--storage`` must be a folder this user can write (created if missing), reported
    as ``--storage`` rather than as the tracking store inside it."""
    if "://" in cfg.storage:
        return
    root = Path(cfg.storage_path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot write there ({exc.strerror or exc})") from None


def sqlite_path(uri: str | None) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (None for any other URI)."""
    path = uri[len("sqlite:///"):].partition("?")[0] if uri and uri.startswith("sqlite:///") else ""
    return Path(path).expanduser().absolute() if path not in ("", ":memory:") else None


class NewPaths:
    """What a new search may create before its first trial -- the results folder, the search
    folder, the SQLite files of the tracking store and the study (and their folders) -- as far as it
    does not exist yet. :meth:`remove` deletes what of it exists after a refusal, so a refused search
    leaves nothing behind; nothing that existed before is touched."""

    def __init__(self, cfg: SearchConfig, *uris: str | None) -> None:
        paths = [Path(p).expanduser().absolute() for p in (cfg.storage_path, cfg.experiment_path) if "://" not in p]
        for db in filter(None, map(sqlite_path, uris)):
            paths += [db, *(db.with_name(db.name + side) for side in ("-journal", "-wal", "-shm"))]
        self.paths: list[Path] = []
        for p in paths:
            if p.exists() or p.is_symlink():
                continue
            while not p.parent.exists():  # the highest folder that is missing too
                p = p.parent
            if p not in self.paths:
                self.paths.append(p)

    def __contains__(self, path: Path | None) -> bool:
        return path is not None and any(path == p or p in path.parents for p in self.paths)

    def remove(self) -> None:
        import shutil

        for p in self.paths:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # e.g. below a file given as a folder: never made
                    p.unlink(missing_ok=True)


def check_creatable(option: str, path: Path) -> None:
    """A file that does not exist yet must be creatable: its nearest existing folder writable."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot create {path} ({parent} is not a folder this user can write)")


def check_sqlite_file(option: str, uri: str) -> None:
    """A ``sqlite:///PATH`` store must name a file (or nothing yet), not a folder: SQLite would
    otherwise fail only after MLflow's long retry loop."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].partition("?")[0])
    if path.is_dir():
        raise UsageError(f"{option} {redact(uri)}: {path} is a folder; name the database file, "
                         f"e.g. sqlite:///{(path / 'mlflow.db').as_posix()}")


# --------------------------------------------------------------------------------- data
def load_data(cfg: SearchConfig, space: Space) -> TrialData:
    """Load and encode the data once (cache hits after the first search), check it suits the space."""
    data = prepare(cfg.data, space.representations, text_encoder=cfg.text_encoder,
                   image_encoder=cfg.image_encoder, cache_dir=cfg.cache_dir)
    missing = [k for k in space.requires if k not in data.raw_kinds]
    if missing:
        raise UsageError(f"--data {cfg.data}: space {space.name} needs {' and '.join(space.requires)} modalities; "
                         f"the data has no {missing[0]} modality (try --data synth-clinic)")
    fold_splits(data.data.labels, cfg.folds, cfg.seed, cfg.val_fraction)  # DataError if a class is too small
    return data


def smoke_check(cfg: SearchConfig, space: Space, data: TrialData) -> None:
    """Build the paper-default model on the first fold (no training), so a model/data mismatch is
    one line now rather than every trial failing later."""
    from trainables.engine import FoldTrainer

    config = {**space.default_config(), "epochs": cfg.epochs}
    train_idx, val_idx = fold_splits(data.data.labels, cfg.folds, cfg.seed, cfg.val_fraction)[0]
    try:
        FoldTrainer(space.method, config, data.data.take(train_idx), data.data.take(val_idx), seed=cfg.seed)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the model raises becomes one line
        raise UsageError(f"--space {space.name} on --data {cfg.data}: the model cannot be built "
                         f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None


# --------------------------------------------------------------------------------- resume
def find_search(storage_path: str, name: str | None) -> str:
    """The search to resume: ``--name``, or the newest restorable search under ``--storage``."""
    from ray import tune

    root = Path(storage_path)
    if name or "://" in storage_path:
        if not name:
            raise UsageError(f"--resume: give --name of the search to resume in {storage_path}")
        path = f"{storage_path.rstrip('/')}/{name}"
        if not tune.Tuner.can_restore(path):
            from search.trust import locks

            locks.refuse_if_running(path, name)  # a driver still starting it: Tune has written nothing yet
            raise UsageError(f"--resume: no search {name!r} to resume in {storage_path}")
        return name
    found = [p for p in root.glob("*") if p.is_dir() and tune.Tuner.can_restore(str(p))] if root.is_dir() else []
    if not found:
        raise UsageError(f"--resume: no search to resume in {storage_path} (give --storage and --name)")
    return max(found, key=lambda p: p.stat().st_mtime).name
