"""Fetch the real built-in datasets from their public sources, verified by pinned SHA-256 checksums.

``rosmap``       the ROSMAP folder of the MOGONET repository at a pinned commit (MIT licence).
``breast_tcga``  ``data/breast.TCGA.rda`` of the mixOmics R package at a pinned commit (GPL >= 2;
                 the data are TCGA's), converted into the CSV layout the loader reads:
                 ``{mrna,mirna}_{train,test}.csv``, ``protein_train.csv`` (first column ``sample``,
                 then features, numbers written with ``%g``) and ``subtype_{train,test}.csv``
                 (``sample,subtype``). The conversion reads the .rda with the pure-Python package
                 ``rdata`` (``pip install rdata``), imported only here.

Everything is downloaded into a staging folder beside ``dest``, verified, converted, and only then
renamed to ``dest``: an interrupted or corrupt download never leaves a half-filled folder behind.
Without network access the error says to set ``FUSETUNE_DATA_DIR`` instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainables.data.errors import DataError

DATA_DIR_ENV = "FUSETUNE_DATA_DIR"
"""A folder holding ``rosmap/`` and ``breast_tcga/``: read first, nothing downloaded (:func:`trainables.data.builtin.locate`)."""
CACHE_DIR = Path(os.path.expanduser("~/.cache/fusetune/data"))
"""Where :func:`download_builtin` installs verified downloads, read second."""

MOGONET_COMMIT = "32d9066b7fe289b3f7cdb496a5668834079c274c"
MIXOMICS_COMMIT = "d732983ad52fdd7fb2496a7ca8ac1bec501a63ab"
_MOGONET = f"https://raw.githubusercontent.com/txWang/MOGONET/{MOGONET_COMMIT}/ROSMAP/"
_MIXOMICS = f"https://raw.githubusercontent.com/mixOmicsTeam/mixOmics/{MIXOMICS_COMMIT}/data/"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the dataset folder
    url: str
    sha256: str


@dataclass(frozen=True)
class Source:
    files: tuple[RemoteFile, ...]
    convert: Callable[[Path], None] | None = None  # runs on the staging folder after verification


def fetch(url: str) -> bytes:
    """The bytes at ``url`` (tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------------------- breast.TCGA conversion
BREAST_BLOCKS = {"train": ("mrna", "mirna", "protein"), "test": ("mrna", "mirna")}


def convert_breast_tcga(folder: Path) -> None:
    """``breast.TCGA.rda`` -> the CSVs of ``breast_tcga/`` (byte-identical to the shared copies)."""
    import pandas as pd

    rda = folder / "breast.TCGA.rda"
    try:
        import rdata
    except ImportError:
        raise DataError(rda, "converting it needs the Python package 'rdata' (pip install rdata), or set "
                        f"{DATA_DIR_ENV} to a folder holding rosmap/ and breast_tcga/") from None
    try:
        data = rdata.read_rda(str(rda))["breast.TCGA"]
    except Exception as exc:  # rdata raises many types for a malformed file
        raise DataError(rda, f"cannot be read as an R data file with object 'breast.TCGA' "
                             f"({type(exc).__name__}: {exc})") from None
    for part, blocks in BREAST_BLOCKS.items():
        section = data[f"data.{part}"]
        samples = None
        for block in blocks:
            arr = section[block]  # an xarray DataArray: rows = samples, columns = features
            rows = [str(r) for r in arr.coords[arr.dims[0]].values]
            if samples is None:
                samples = rows
            elif rows != samples:
                raise DataError(rda, f"data.{part}${block} lists other samples than data.{part}${blocks[0]}")
            frame = pd.DataFrame(arr.values, index=pd.Index(rows, name="sample"),
                                 columns=[str(c) for c in arr.coords[arr.dims[1]].values])
            frame.to_csv(folder / f"{block}_{part}.csv", float_format="%g", lineterminator="\n")
        subtype = [str(s) for s in section["subtype"]]
        if len(subtype) != len(samples):
            raise DataError(rda, f"data.{part}$subtype has {len(subtype)} entries for {len(samples)} samples")
        pd.DataFrame({"sample": samples, "subtype": subtype}).to_csv(folder / f"subtype_{part}.csv", index=False,
                                                                     lineterminator="\n")


SOURCES: dict[str, Source] = {
    "rosmap": Source(files=tuple(RemoteFile(name, _MOGONET + name, digest) for name, digest in (
        ("1_tr.csv", "37bfcc58da320bf6c37b22617ed821dcfa96ca4abd334adf4d42c8e3375d972b"),
        ("1_te.csv", "d9d9daf05915556fd13008fb6ad7d88e0c5a8a57e5a985548640d4cd1563712b"),
        ("1_featname.csv", "1df5c536e47eb0d532abbb8bea6a9361bba01a913e03cd03b8ef06fb7849a660"),
        ("2_tr.csv", "b1d1d20f8793e5f11248218f19493d9a7be366ee5bbbaff585058401976f8a21"),
        ("2_te.csv", "546e9d7f640e54c4c1d6540ed2c1a3adb10497635e7d6b8d4099b4930271ac76"),
        ("2_featname.csv", "7431418fb193e02a1c1431f9446ccc227c8818a4d40c1cb72a2b640a0d8d38b7"),
        ("3_tr.csv", "fd8708bc0c41f774209f9e6a49a74c5a9acd510dd62eadc299a18d49ccd9e862"),
        ("3_te.csv", "c0d9efd6c35e8c5768b759238c95c64674d7e1e7f76ed07fca6f168d67e676f4"),
        ("3_featname.csv", "2b0b3451af16597ae34342a6abc99e397482fef30a61821a8e8fe7cb69276bae"),
        ("labels_tr.csv", "5859aa107dbf406937938ebefbec122d01fea5d41a9bd0292199f4406749e45d"),
        ("labels_te.csv", "20d728c6f51f79ff5fa7719b960daf22074a0e6e1f3028869042b02ca4e3f68d"),
        ("README.md", "e36645debac2e1a6a982d69c5aba577baa83a7c8367db164c563e1a954be89b5"),
    ))),
    "breast_tcga": Source(
        files=(RemoteFile("breast.TCGA.rda", _MIXOMICS + "breast.TCGA.rda",
                          "0812db063ceee018470b59249a27289e8231909b9ec858c9b3e8fc9ead67af48"),),
        convert=convert_breast_tcga,
    ),
}


def download_builtin(folder: str, dest: Path) -> Path:
    """Download, verify and (if needed) convert built-in dataset ``folder`` into ``dest``; returns ``dest``."""
    if folder not in SOURCES:
        raise DataError(f"dataset folder {folder!r}", f"no public source known; expected one of {', '.join(SOURCES)}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.partial-", dir=dest.parent))
    try:
        for remote in SOURCES[folder].files:
            try:
                payload = fetch(remote.url)
            except OSError as exc:  # URLError, timeouts, refused connections, DNS failures
                reason = getattr(exc, "reason", exc)
                raise DataError(
                    f"dataset {folder}",
                    f"not found locally and the download of {remote.url} failed ({reason}); set {DATA_DIR_ENV} "
                    "to a folder holding rosmap/ and breast_tcga/ (e.g. the project's ../shared/data)",
                ) from None
            got = sha256(payload)
            if got != remote.sha256:
                raise DataError(remote.url, f"SHA-256 {got} does not match the pinned {remote.sha256}: "
                                            "corrupt download or changed source")
            (staging / remote.name).write_bytes(payload)
        if SOURCES[folder].convert is not None:
            SOURCES[folder].convert(staging)
        _install(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _install(staging: Path, dest: Path) -> None:
    """Rename the finished staging folder to ``dest`` (an old, incomplete ``dest`` is moved aside first)."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
