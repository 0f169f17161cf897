"""``--resume`` unpickles only the Tune state this user's fusetune wrote.

Ray Tune restores a search from pickles in its folder: ``tuner.pkl``, ``experiment_state-*.json``
(trial states, cloudpickled inside), ``search_gen_state-*.json``, ``searcher-state-*.pkl``,
``basic-variant-state-*.json``, ``callback-states-*.pkl``, and a failed trial's ``error.pkl``.
Unpickling runs code, so a planted file would run with the user's rights. Each of those files is
therefore sealed: an HMAC-SHA256 of its path and content, keyed by a per-user secret
(:func:`key_path`, created on first use with mode 0600), recorded in ``fusetune.seal`` in the
search folder; :func:`verify` refuses a missing or mismatching MAC in one line before
``Tuner.restore`` reads anything.

When the MACs are written. Tune writes ``tuner.pkl`` once, when the ``Tuner`` is built, and the
rest at every experiment snapshot: Tune writes them to a local staging folder, then a background
sync copies that folder into the search folder. :func:`install` hooks the snapshot through the
one seam onto Tune's internals (:func:`search.compat.after_experiment_snapshot`), so the seal of
the staged files is written into the search folder *before* the sync starts; a driver killed at
any point therefore leaves files whose MACs are already recorded.
The seal keeps each file's last :data:`HISTORY` MACs, since a killed sync may leave the previous
snapshot's copy of a file. (A Tune callback cannot do this: the callback states are pickled after
the last callback hook of a snapshot.) The seal is not a ``.json``/``.pkl`` file, so Tune's
restore never copies it into staging and its syncs never overwrite it.

A folder sealed on another machine or account, or written by a fusetune without seals, is
refused; ``python -m search.trust.integrity trust FOLDER`` seals it as it is, for a folder the user has
checked and trusts.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

from search.prepare.errors import UsageError
from search.trust.files import write_atomically

KEY_ENV = "FUSETUNE_STATE_KEY_FILE"
"""Overrides the key file's location (tests, or a key kept elsewhere)."""

SEAL_FILE = "fusetune.seal"
HISTORY = 8
"""MACs kept per file: the current snapshot's and earlier ones a killed sync may have left."""

def tune_json_patterns() -> tuple[str, ...]:
    """The root JSON files Tune deserializes with (cloud)pickle inside: experiment state, the
    search generator's and the basic variant generator's state (their ``CKPT_FILE_TMPL``). Other
    JSON there (``search.json``, fusetune's own) is read as plain JSON and needs no seal."""
    from search import compat

    return compat.state_json_patterns()

_DOMAIN = b"fusetune-tune-state-v1"


# --------------------------------------------------------------------------------- the key
def key_path() -> Path:
    """``$FUSETUNE_STATE_KEY_FILE``, else ``$XDG_CONFIG_HOME/fusetune/state.key``, else
    ``~/.config/fusetune/state.key``."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "fusetune" / "state.key"


def secret_key() -> bytes:
    """The per-user key: created on first use (32 random bytes, hex, mode 0600); refused if
    other users may read it."""
    path = key_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"{KEY_ENV}={path}: cannot create the key that seals Tune's state ({exc.strerror or exc})") from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{KEY_ENV}={path}: readable by other users (mode {stat.S_IMODE(mode):o}); "
                         f"chmod 600 it, or delete it to start a new key")
    text = path.read_text().strip()
    if len(text) < 32:
        raise UsageError(f"{KEY_ENV}={path}: not a fusetune key (delete it to start a new one)")
    return text.encode()


def mac(key: bytes, relpath: str, content: bytes) -> str:
    """HMAC-SHA256 over the file's path in the search folder and its content's SHA-256."""
    message = b"\0".join([_DOMAIN, relpath.encode(), hashlib.sha256(content).digest()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------- file systems
def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def state_files(fs: Any, root: str) -> list[str]:
    """The files of a Tune experiment folder that Tune unpickles on restore, relative to it: every
    ``*.pkl`` at its root (``tuner.pkl``, searcher and callback states), the JSON files of
    :func:`tune_json_patterns` and every trial folder's ``error.pkl``."""
    import fnmatch

    import pyarrow.fs

    patterns = ("*.pkl", *tune_json_patterns())
    out = []
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    for info in entries:
        name = info.base_name
        if info.type == pyarrow.fs.FileType.File and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out.append(name)
        elif info.type == pyarrow.fs.FileType.Directory:
            error = fs.get_file_info(f"{info.path}/error.pkl")
            if error.type == pyarrow.fs.FileType.File:
                out.append(f"{name}/error.pkl")
    return sorted(out)


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


def _load_seal(fs: Any, root: str) -> dict[str, list[str]] | None:
    try:
        data = json.loads(_read(fs, f"{root}/{SEAL_FILE}"))
    except (FileNotFoundError, OSError):
        return None
    except ValueError:
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {k: list(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _write_seal(fs: Any, root: str, files: dict[str, list[str]]) -> None:
    text = json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True).encode()
    write_atomically(fs, f"{root}/{SEAL_FILE}", text, tmp=f"{root}/.{SEAL_FILE}.{secrets.token_hex(4)}.tmp")


# --------------------------------------------------------------------------------- seal, verify
def seal(experiment_path: str, source: str | None = None) -> None:
    """Record the MACs of the state files in ``source`` (default: the search folder itself) in
    the search folder's seal, keeping each file's earlier MACs (up to :data:`HISTORY`)."""
    fs, root = _fs(experiment_path)
    src_fs, src = _fs(source) if source else (fs, root)
    key = secret_key()
    files = _load_seal(fs, root) or {}
    for rel in state_files(src_fs, src):
        try:
            value = mac(key, rel, _read(src_fs, f"{src}/{rel}"))
        except OSError:  # removed while we looked: nothing to seal
            continue
        known = [m for m in files.get(rel, []) if m != value]
        files[rel] = [value, *known][:HISTORY]
    fs.create_dir(root, recursive=True)
    _write_seal(fs, root, files)


def verify(experiment_path: str, option: str = "--resume") -> None:
    """One-line :class:`UsageError` unless every state file in the folder has a MAC in its seal."""
    fs, root = _fs(experiment_path)
    files = _load_seal(fs, root)
    hint = f"if you wrote it and trust it as it is: python -m search.trust.integrity trust {experiment_path}"
    if files is None:
        raise UsageError(f"{option}: {experiment_path} has no {SEAL_FILE}, so nothing shows this user's fusetune "
                         f"wrote its Tune state; refusing to unpickle it ({hint})")
    key = secret_key()
    for rel in state_files(fs, root):
        if not any(hmac.compare_digest(mac(key, rel, _read(fs, f"{root}/{rel}")), m) for m in files.get(rel, [])):
            raise UsageError(f"{option}: {experiment_path}/{rel} does not match its HMAC in {SEAL_FILE} (changed, "
                             f"or written by someone else); refusing to unpickle it ({hint})")


# --------------------------------------------------------------------------------- the hook in Tune
def install() -> None:
    """Seal every Tune experiment snapshot this process writes (idempotent): after Tune has staged
    the files, before it syncs them (:func:`search.compat.after_experiment_snapshot`)."""
    from search import compat

    compat.after_experiment_snapshot(_seal_snapshot)


def _seal_snapshot(experiment: str, staging: str) -> None:
    seal(experiment, source=staging)


# --------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.trust.integrity",
                                     description="Seal or check the Tune state of a search folder (--resume checks it).")
    sub = parser.add_subparsers(dest="command", required=True)
    trust = sub.add_parser("trust", help="seal the folder's state as it is now (a folder you checked and trust)")
    trust.add_argument("folder")
    check = sub.add_parser("verify", help="check the folder's state against its seal")
    check.add_argument("folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "trust":
            seal(args.folder)
            print(f"sealed {args.folder}: {len(state_files(*_fs(args.folder)))} state file(s)")
        else:
            verify(args.folder, option=args.folder)
            print(f"{args.folder}: every state file matches its seal")
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
