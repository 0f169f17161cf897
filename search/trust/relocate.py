"""A results folder is self-contained: a copied or moved one resumes in place.

A search records where it lives in three places: its options (``search.json``: ``--storage``, and
any ``--tracking-uri``, ``--optuna-storage`` or ``--cache-dir`` given as a path inside it), the
MLflow SQLite store beside it (``mlflow.db``: the experiment's artifact location, every run's
artifact URI, the registered versions' and logged models' storage locations, all absolute
``file://`` URIs under ``<storage>/mlartifacts``) and Ray Tune's experiment state (which Tune
itself rebases on restore: ``Tuner.restore`` takes the folder it is given). ``--resume --storage
COPY`` therefore rebases the first two from the folder the search was saved in onto ``COPY``
before anything is opened, so a resumed copy reads and writes only under ``COPY`` and never the
original (which may be gone: a moved folder).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from search.prepare.config import SearchConfig, storage_path

SQLITE = "sqlite:///"

MLFLOW_PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
"""The columns of MLflow's SQL store that hold artifact locations (MLflow 3 schema)."""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def rebase_path(path: str | None, old: str, new: str) -> str | None:
    """``path`` with the folder ``old`` at its start replaced by ``new``; as it is otherwise."""
    if path is None or not _under(path, old):
        return path
    return new.rstrip("/") + path[len(old.rstrip("/")):]


def rebase_uri(uri: str | None, old: str, new: str) -> str | None:
    """A ``sqlite:///PATH`` URI (MLflow's or Optuna's) inside ``old``, moved to ``new``."""
    if uri is None or not uri.startswith(SQLITE):
        return uri
    return SQLITE + (rebase_path(uri[len(SQLITE):], old, new) or "")


def rebased(saved: SearchConfig, storage: str) -> SearchConfig:
    """The saved options of a search found under ``storage``: its own location, and every path
    that pointed inside the folder it was saved in, now under ``storage``. A remote ``--storage``
    (``s3://...``) is taken as given."""
    old, new = storage_path(saved.storage), storage_path(storage)
    if old == new:
        return saved
    if "://" in old or "://" in new:
        return replace(saved, storage=storage)
    return replace(saved, storage=new, tracking_uri=rebase_uri(saved.tracking_uri, old, new),
                   optuna_storage=rebase_uri(saved.optuna_storage, old, new),
                   cache_dir=rebase_path(saved.cache_dir, old, new))


def rebase_mlflow_store(tracking_uri: str, old: str, new: str) -> int:
    """Rewrite the artifact locations in a SQLite MLflow store inside ``new`` (a copy of ``old``)
    that still point under ``old``, so that MLflow writes the resumed search's artifacts to the
    copy. Returns the number of rows changed (0 for another kind of store or a fresh one)."""
    if not tracking_uri.startswith(SQLITE) or old == new or "://" in old or "://" in new:
        return 0
    db = Path(tracking_uri[len(SQLITE):])
    if not db.is_file() or not _under(str(db.resolve()), new):
        return 0  # a store outside the folder is shared, not copied with it: leave it alone
    changed = 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        for table, column in MLFLOW_PATH_COLUMNS:
            if table not in tables:
                continue
            for prefix_old, prefix_new in ((Path(old).as_uri() + "/", Path(new).as_uri() + "/"),
                                           (old.rstrip("/") + "/", new.rstrip("/") + "/")):
                cur = conn.execute(
                    f"update {table} set {column} = ? || substr({column}, ?) where substr({column}, 1, ?) = ?",
                    (prefix_new, len(prefix_old) + 1, len(prefix_old), prefix_old))
                changed += cur.rowcount
    return changed
