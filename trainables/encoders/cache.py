"""Content-addressed, memory-mapped, atomically written cache of encoder features.

An entry is a folder of ``.npy`` arrays named by the SHA-256 of a JSON *key description*: the
fingerprint of the encoded source modality, the encoder's identity (model id or weights hash,
config, pretrained or random), the representation, the maximum length, the attribute
configuration and extractor, and the version of the encoding code. Anything that changes the
numbers changes the key, so a stale entry is never read; equal keys reuse the entry.

Layout under the cache folder (``cache_dir`` argument, else ``$FUSETUNE_CACHE_DIR``, else
``~/.cache/fusetune/features``)::

    <root>/<key[:2]>/<key>/key.json        the key description (for humans and `encode` output)
                           manifest.json   array names, shapes, dtypes, byte sizes
                           <array>.npy     one file per array
                           COMPLETE        written last: the entry is usable

Reading uses ``np.load(mmap_mode="c")``: arrays are copy-on-write memory maps, so every trial on
a machine shares the same page-cache pages instead of holding its own copy, and a trial that
writes into an array (or hands it to ``torch.as_tensor``, which wants writable memory) gets private
copies of the pages it touches and never alters the entry.

Atomic writes: an entry is written into a temporary folder ``<root>/<key[:2]>/.tmp-<key>-<pid>-<rand>``
next to its final place (same file system), every file is fsync'ed, the ``COMPLETE`` marker is
written last, and the folder is published with one ``os.rename``. A process killed at any point
leaves either nothing or a ``.tmp-*`` folder that readers never look at (stale ones are removed by
later writers after :data:`STALE_TMP_SECONDS`). A final folder without ``COMPLETE`` or whose
files do not match the manifest is treated as a miss and replaced. When two processes race to
write the same key, the first rename wins and the loser discards its copy.

Multi-node clusters
-------------------
Two ways to share features between the nodes of a Ray cluster:

1. *Driver encodes once, ``ray.put`` the arrays* (recommended). The driver runs
   :func:`~trainables.encoders.encode_dataset` against its local cache and puts the encoded
   dataset into the Ray object store; trials receive the object reference. Ray ships the numpy
   buffers once per node and deserialises them zero-copy from shared memory, so all trials on a
   node read one copy, and only the driver needs the encoder weights (and a GPU for encoding).
   It needs no infrastructure beyond Ray itself and cannot suffer from a network file system's
   weaker consistency guarantees.
2. *Shared storage*: point ``FUSETUNE_CACHE_DIR`` at a path mounted on every node (NFS, Lustre,
   ...). Entries persist across searches and clusters and are memory-mapped by each node;
   publication relies on ``rename`` being atomic within one directory, which POSIX file
   systems and NFS provide. Use it when many searches over the same data run on different
   clusters, and keep the driver-encodes-first order so that workers only ever read.

The recommendation is (1) with the driver's cache on local disk (or on shared storage when one
exists, to reuse features across searches): it is correct on any cluster and costs one transfer
per node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the on-disk layout; part of every key."""
ENV_VAR = "FUSETUNE_CACHE_DIR"
DEFAULT_DIR = Path("~/.cache/fusetune/features")
MARKER = "COMPLETE"
STALE_TMP_SECONDS = 3600.0


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def key_digest(description: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a key description."""
    payload = json.dumps({"cache_format": CACHE_FORMAT, **description}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FeatureCache:
    """Feature cache rooted at ``root`` (see the module docstring for layout and guarantees)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    # ------------------------------------------------------------------ paths
    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    # ------------------------------------------------------------------ read
    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays as copy-on-write memory maps, or None when there is no complete entry."""
        entry = self.path(key)
        manifest = self._valid_manifest(entry)
        if manifest is None:
            return None
        return {name: np.load(entry / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in manifest["arrays"]}

    def contains(self, key: str) -> bool:
        return self._valid_manifest(self.path(key)) is not None

    def _valid_manifest(self, entry: Path) -> dict[str, Any] | None:
        if not (entry / MARKER).is_file():
            return None
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
            for name, info in manifest["arrays"].items():
                if (entry / f"{name}.npy").stat().st_size != info["bytes"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return manifest

    def size(self, key: str) -> int:
        """Bytes of a complete entry's arrays."""
        manifest = self._valid_manifest(self.path(key))
        return 0 if manifest is None else sum(int(i["bytes"]) for i in manifest["arrays"].values())

    def describe(self, key: str) -> dict[str, Any] | None:
        entry = self.path(key)
        manifest = self._valid_manifest(entry)
        if manifest is None:
            return None
        return {
            "key": key,
            "path": str(entry),
            "bytes": sum(int(i["bytes"]) for i in manifest["arrays"].values()),
            "arrays": {n: {"shape": i["shape"], "dtype": i["dtype"]} for n, i in manifest["arrays"].items()},
        }

    # ------------------------------------------------------------------ write
    def store(self, key: str, arrays: Mapping[str, np.ndarray], description: Mapping[str, Any] | None = None) -> Path:
        """Write an entry atomically (temp folder, fsync, marker last, rename) and return its path."""
        final = self.path(key)
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(parent)
        tmp = parent / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            manifest: dict[str, Any] = {"arrays": {}}
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                file = tmp / f"{name}.npy"
                with open(file, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                manifest["arrays"][name] = {"shape": list(arr.shape), "dtype": arr.dtype.str, "bytes": file.stat().st_size}
            _write_bytes(tmp / "key.json", json.dumps(dict(description or {}), sort_keys=True, indent=1, default=str).encode())
            _write_bytes(tmp / "manifest.json", json.dumps(manifest, sort_keys=True, indent=1).encode())
            _write_bytes(tmp / MARKER, key.encode())
            _fsync_dir(tmp)
            self._publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(parent)
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists() and self._valid_manifest(final) is None:
            log.warning("feature cache: replacing incomplete entry %s", final)
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if self._valid_manifest(final) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published the same key first

    @staticmethod
    def _remove_stale_tmp(parent: Path) -> None:
        now = time.time()
        for tmp in parent.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass
