"""A user's own dataset: ``--data path/to/folder``.

Layout
------
::

    my_study/
      dataset.yaml       optional manifest (or dataset.yml / dataset.json), see below
      labels.csv         sample_id,label[,split]         one row per sample (required)
      ehr.csv            sample_id,<numeric features>    one table per tabular modality ...
      omics_train.csv    sample_id,<numeric features>    ... or one modality in two tables with
      omics_test.csv     sample_id,<numeric features>        the same feature columns
      reports.csv        sample_id,text                  free-text reports  -> modality "report"
      images.csv         sample_id,path                  image files        -> modality "image"
      images/0001.png ...

Tables are CSV or Parquet (``.csv``, ``.parquet``, ``.pq``). Without a manifest, every table in
the folder other than the labels table is a modality named after its file: ``reports`` is text,
``images`` is image, anything else is a numeric vector modality; a ``_train`` / ``_test`` suffix
marks the two halves of one modality.

Rules
-----
* ``labels``: one row per sample. ``label`` may be text or integers; the class order is the
  manifest's ``classes``, else sorted (numerically when every label is a number). The optional
  ``split`` column fixes a train/test split (every value ``train`` or ``test``); without it the
  dataset has no fixed split. At least two classes.
* Sample ids are read as text (``007`` stays ``007``) and must be unique within each table.
* A sample absent from a modality's table -- or whose report text or image path is empty -- is
  *missing* for that modality (the availability mask says so; nothing is filled in). Every sample
  must have at least one modality, every row of a modality table must have a label, every
  modality at least one usable sample, and every cell of a numeric table must be a number.
* ``_train`` / ``_test`` tables must have identical feature columns; when ``labels`` has a split,
  a sample in ``x_test`` must be a test sample (and likewise for train).
* Images: paths relative to the folder (or absolute). PNG/JPEG/... are read with Pillow
  (grayscale stays one channel, colour becomes RGB, alpha is dropped); ``.npy`` arrays are
  [H, W] or [H, W, C] (uint8 is divided by 255, uint16 by 65535, floats must already lie in
  [0, 1]). All images become float32 [C, H, W] in [0, 1], resized (bilinear) to ``image_size``
  or to the first image's size, with ``image_channels`` channels or the first image's (1 or 3).

Manifest
--------
Every key is optional::

    name: my-study                 # default: the folder's name
    labels: labels.csv             # default: labels.csv / labels.parquet / labels.pq
    id_column: sample_id           # in every table
    label_column: label
    split_column: split
    classes: [benign, malignant]   # class order (default: sorted labels)
    image_size: [64, 64]           # H, W (or one number for square images)
    image_channels: 1              # 1 or 3
    modalities:                    # replaces discovery from file names
      ehr: ehr.csv                                   # a numeric table
      omics: {train: omics_train.csv, test: omics_test.csv}
      report: {kind: text, file: reports.csv, column: text}
      image: {kind: image, file: images.csv, column: path}

Every problem is a one-line :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.tables import not_a_folder, read_numeric_table, read_table

MANIFEST_NAMES = ("dataset.yaml", "dataset.yml", "dataset.json")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
PARTS = ("train", "test")
SPECIAL_TABLES = {"reports": ("report", "text"), "images": ("image", "image")}
DEFAULT_COLUMN = {"text": "text", "image": "path"}
MANIFEST_KEYS = ("name", "labels", "id_column", "label_column", "split_column", "classes",
                 "image_size", "image_channels", "modalities")
MODALITY_KEYS = ("kind", "file", "train", "test", "column")


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str  # vector | text | image
    files: tuple[tuple[str | None, Path], ...]  # (part or None, table path)
    column: str | None = None  # text column of a report table, path column of an image table


@dataclass
class Manifest:
    source: Path | None = None
    name: str | None = None
    labels: str | None = None
    id_column: str = "sample_id"
    label_column: str = "label"
    split_column: str = "split"
    classes: list[str] | None = None
    image_size: tuple[int, int] | None = None
    image_channels: int | None = None
    modalities: dict[str, Any] | None = None


@dataclass
class _Context:
    folder: Path
    manifest: Manifest
    labels_file: Path
    ids: np.ndarray
    split: np.ndarray | None

    @property
    def index(self) -> pd.Index:
        return pd.Index(self.ids)


# ---------------------------------------------------------------------------- entry point
def load_folder(path: str | Path) -> MultimodalDataset:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    manifest = read_manifest(folder)
    labels_file = _labels_file(folder, manifest)
    ids, labels, class_names, split = read_labels(labels_file, manifest)
    ctx = _Context(folder, manifest, labels_file, ids, split)
    specs = _manifest_modalities(ctx) if manifest.modalities is not None else discover_modalities(folder, labels_file)
    if not specs:
        raise DataError(folder, f"no modality tables next to {labels_file.name} (expected e.g. ehr.csv, reports.csv, images.csv)")
    modalities = {s.name: LOADERS[s.kind](s, ctx) for s in specs}
    available = np.stack([m.mask for m in modalities.values()], axis=1).any(axis=1)
    if not available.all():
        lonely = ids[~available]
        raise DataError(labels_file, f"sample {str(lonely[0])!r} has a label but no data in any modality "
                                     f"({len(lonely)} such samples)")
    return MultimodalDataset(
        name=manifest.name or folder.resolve().name,
        ids=ids, labels=labels, class_names=class_names, modalities=modalities, split=split,
    )


# ---------------------------------------------------------------------------- manifest
def read_manifest(folder: Path) -> Manifest:
    found = [folder / n for n in MANIFEST_NAMES if (folder / n).is_file()]
    if not found:
        return Manifest()
    if len(found) > 1:
        raise DataError(folder, f"several manifests ({', '.join(f.name for f in found)}); keep one")
    f = found[0]
    try:
        raw = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f, f"cannot be parsed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise DataError(f, "expected a mapping of keys (name, labels, modalities, ...)")
    for key in raw:
        if key not in MANIFEST_KEYS:
            raise DataError(f, f"unknown key {key!r}; expected some of {', '.join(MANIFEST_KEYS)}")
    m = Manifest(source=f)
    for key in ("name", "labels", "id_column", "label_column", "split_column"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise DataError(f, f"{key!r} must be a non-empty string")
            setattr(m, key, raw[key])
    if "classes" in raw:
        if not isinstance(raw["classes"], list) or len(raw["classes"]) < 2:
            raise DataError(f, "'classes' must be a list of at least two class names")
        m.classes = [str(c) for c in raw["classes"]]
    if "image_size" in raw:
        size = raw["image_size"]
        size = [size, size] if isinstance(size, int) else size
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise DataError(f, f"'image_size' must be [height, width] in pixels (or one number), got {raw['image_size']!r}")
        m.image_size = (size[0], size[1])
    if "image_channels" in raw:
        if raw["image_channels"] not in (1, 3):
            raise DataError(f, f"'image_channels' must be 1 or 3, got {raw['image_channels']!r}")
        m.image_channels = raw["image_channels"]
    if "modalities" in raw:
        if not isinstance(raw["modalities"], dict) or not raw["modalities"]:
            raise DataError(f, "'modalities' must map modality names to tables")
        m.modalities = raw["modalities"]
    return m


def _manifest_modalities(ctx: _Context) -> list[ModalitySpec]:
    f = ctx.manifest.source
    specs = []
    for name, entry in ctx.manifest.modalities.items():
        entry = {"file": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            raise DataError(f, f"modality {name!r}: expected a file name or a mapping with {', '.join(MODALITY_KEYS)}")
        for key in entry:
            if key not in MODALITY_KEYS:
                raise DataError(f, f"modality {name!r}: unknown key {key!r}; expected some of {', '.join(MODALITY_KEYS)}")
        kind = entry.get("kind", "vector")
        if kind not in LOADERS:
            raise DataError(f, f"modality {name!r}: kind must be one of {', '.join(LOADERS)}, got {kind!r}")
        if "file" in entry and any(p in entry for p in PARTS):
            raise DataError(f, f"modality {name!r}: give either 'file' or 'train'/'test', not both")
        files = [(None, entry["file"])] if "file" in entry else [(p, entry[p]) for p in PARTS if p in entry]
        if not files:
            raise DataError(f, f"modality {name!r}: no 'file' (or 'train'/'test') given")
        specs.append(ModalitySpec(str(name), kind, tuple((p, ctx.folder / str(v)) for p, v in files), entry.get("column")))
    return specs


def discover_modalities(folder: Path, labels_file: Path) -> list[ModalitySpec]:
    """Modalities from file names: ``reports.*`` text, ``images.*`` image, other tables vectors;
    ``<m>_train`` / ``<m>_test`` are the two halves of modality ``m``."""
    found: dict[str, dict[str | None, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in TABLE_SUFFIXES and not f.is_file():
            not_a_folder(f, "table (a modality's CSV or Parquet file)")
        if not f.is_file() or f.suffix.lower() not in TABLE_SUFFIXES or f.resolve() == labels_file.resolve():
            continue
        stem, part = f.stem, None
        for p in PARTS:
            if stem.endswith(f"_{p}") and len(stem) > len(p) + 1:
                stem, part = stem[: -len(p) - 1], p
        slots = found.setdefault(stem, {})
        if part in slots:
            raise DataError(f, f"modality {stem!r} is also given as {slots[part].name}; keep one")
        slots[part] = f
    specs = []
    for stem, slots in found.items():
        if None in slots and len(slots) > 1:
            other = next(v for k, v in slots.items() if k is not None)
            raise DataError(slots[None], f"modality {stem!r} is also split into {other.name}; "
                                         "give one table or train/test tables")
        name, kind = SPECIAL_TABLES.get(stem, (stem, "vector"))
        specs.append(ModalitySpec(name, kind, tuple((p, slots[p]) for p in (None, *PARTS) if p in slots)))
    return specs


# ---------------------------------------------------------------------------- labels
def _labels_file(folder: Path, manifest: Manifest) -> Path:
    if manifest.labels:
        return folder / manifest.labels
    for suffix in TABLE_SUFFIXES:
        if (folder / f"labels{suffix}").is_file():
            return folder / f"labels{suffix}"
    raise DataError(folder, "no labels.csv (or labels.parquet); expected columns sample_id,label[,split]")


def read_labels(path: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """ids, integer labels, class names, split (or None) from the labels table."""
    id_col, label_col, split_col = manifest.id_column, manifest.label_column, manifest.split_column
    df = read_table(path, str_columns=(id_col,))
    for col in (id_col, label_col):
        if col not in df.columns:
            raise DataError(path, f"no {col!r} column (columns: {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise DataError(path, "no samples (the table has no rows)")
    ids = _checked_ids(df, id_col, path)
    raw = df[label_col]
    if raw.isna().any():
        raise DataError(path, f"empty label in row {int(np.flatnonzero(raw.isna())[0]) + 1}")
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        integral = (numeric == numeric.round()).all()
        text = (numeric.astype(np.int64) if integral else numeric).astype(str)
        order = sorted(set(text), key=lambda s: float(s))
    else:
        text = raw.astype(str)
        order = sorted(set(text))
    class_names = manifest.classes or order
    unknown = sorted(set(text) - set(class_names))
    if unknown:
        raise DataError(path, f"label {unknown[0]!r} is not among the manifest's classes {class_names}")
    if len(set(text)) < 2:
        raise DataError(path, f"only one class ({text.iloc[0]!r}); classification needs at least two")
    labels = text.map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64)
    split = None
    if split_col in df.columns:
        split = df[split_col].astype(str).str.strip().str.lower()
        bad = ~split.isin(PARTS)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"split must be 'train' or 'test', got {df[split_col].iloc[r]!r} in row {r + 1}")
        split = split.to_numpy(dtype=str)
    return ids, labels, list(class_names), split


def _checked_ids(df: pd.DataFrame, id_col: str, path: Path) -> np.ndarray:
    if id_col not in df.columns:
        raise DataError(path, f"no {id_col!r} column (columns: {', '.join(map(str, df.columns))})")
    col = df[id_col]
    if col.isna().any():
        raise DataError(path, f"empty sample id in row {int(np.flatnonzero(col.isna())[0]) + 1}")
    ids = col.astype(str)
    if ids.duplicated().any():
        raise DataError(path, f"duplicate sample id {ids[ids.duplicated()].iloc[0]!r}")
    return ids.to_numpy(dtype=str)


# ---------------------------------------------------------------------------- modality tables
def _place(ctx: _Context, path: Path, part: str | None, ids: np.ndarray) -> np.ndarray:
    """Row positions of ``ids`` (from table ``path``) among the labelled samples, with the checks
    every modality table shares: a label for every row, split agreement for train/test tables."""
    pos = ctx.index.get_indexer(pd.Index(ids))
    if (pos < 0).any():
        raise DataError(path, f"sample {str(ids[pos < 0][0])!r} has features but no label in {ctx.labels_file.name}")
    if part is not None and ctx.split is not None:
        wrong = ctx.split[pos] != part
        if wrong.any():
            sid, other = str(ids[wrong][0]), str(ctx.split[pos][wrong][0])
            raise DataError(path, f"sample {sid!r} is in this {part} table but {ctx.labels_file.name} puts it in {other!r}")
    return pos


def _check_disjoint(ctx: _Context, positions: list[tuple[Path, np.ndarray]]) -> None:
    """The train and test tables of one modality must not share a sample."""
    seen: dict[int, Path] = {}
    for path, pos in positions:
        for p in pos:
            if p in seen:
                raise DataError(path, f"duplicate sample id {str(ctx.ids[p])!r}: also in {seen[p].name}")
            seen[p] = path


def _require_usable(spec: ModalitySpec, mask: np.ndarray) -> None:
    if not mask.any():
        raise DataError(", ".join(str(p) for _, p in spec.files), f"modality {spec.name!r} has no usable samples")


def load_vector(spec: ModalitySpec, ctx: _Context) -> Modality:
    columns: list[str] | None = None
    first: Path | None = None
    blocks = []
    for part, path in spec.files:
        df = read_numeric_table(path, id_column=ctx.manifest.id_column)
        cols = [str(c) for c in df.columns]
        if columns is None:
            columns, first = cols, path
        elif cols != columns:
            diff = next((f"column {i + 1} is {b!r} there, {a!r} here" for i, (a, b) in enumerate(zip(cols, columns)) if a != b),
                        f"{len(cols)} feature columns here, {len(columns)} there")
            raise DataError(path, f"feature columns differ from {first.name}: {diff}")
        blocks.append((path, _place(ctx, path, part, df.index.to_numpy(dtype=str)), df.to_numpy(np.float32)))
    _check_disjoint(ctx, [(p, pos) for p, pos, _ in blocks])
    values = np.zeros((len(ctx.ids), len(columns)), np.float32)
    mask = np.zeros(len(ctx.ids), bool)
    for _, pos, x in blocks:
        values[pos] = x
        mask[pos] = True
    _require_usable(spec, mask)
    return Modality(spec.name, "vector", values, mask, columns)


def _keyed_column(spec: ModalitySpec, ctx: _Context, kind: str) -> list[tuple[Path, np.ndarray, pd.Series]]:
    """(table, positions, non-empty cells of the text/path column) for each table of a text/image modality."""
    column = spec.column or DEFAULT_COLUMN[kind]
    out = []
    for part, path in spec.files:
        df = read_table(path, str_columns=(ctx.manifest.id_column, column))
        if column not in df.columns:
            raise DataError(path, f"no {column!r} column (columns: {', '.join(map(str, df.columns))})")
        ids = _checked_ids(df, ctx.manifest.id_column, path)
        cells = df[column]
        keep = cells.notna() & (cells.astype(str).str.strip() != "")
        pos = _place(ctx, path, part, ids)
        out.append((path, pos[keep.to_numpy()], cells[keep].astype(str)))
    _check_disjoint(ctx, [(p, pos) for p, pos, _ in out])
    return out


def load_text(spec: ModalitySpec, ctx: _Context) -> Modality:
    values = np.full(len(ctx.ids), "", dtype=object)
    mask = np.zeros(len(ctx.ids), bool)
    for _, pos, cells in _keyed_column(spec, ctx, "text"):
        values[pos] = cells.to_list()
        mask[pos] = True
    _require_usable(spec, mask)
    return Modality(spec.name, "text", values, mask)


def load_images(spec: ModalitySpec, ctx: _Context) -> Modality:
    entries = [(table, p, rel) for table, pos, cells in _keyed_column(spec, ctx, "image") for p, rel in zip(pos, cells)]
    mask = np.zeros(len(ctx.ids), bool)
    if not entries:
        _require_usable(spec, mask)
    size = ctx.manifest.image_size
    channels = ctx.manifest.image_channels
    values: np.ndarray | None = None
    for table, p, rel in entries:
        file = Path(rel) if Path(rel).is_absolute() else ctx.folder / rel
        img = read_image(file, listed_in=f"{table.name}, sample {str(ctx.ids[p])!r}")  # [H, W, C]
        if size is None:
            size = (img.shape[0], img.shape[1])
        if channels is None:
            channels = 1 if img.shape[2] == 1 else 3
        if values is None:
            values = np.zeros((len(ctx.ids), channels, *size), np.float32)
        values[p] = _resize(_to_channels(img, channels), size).transpose(2, 0, 1)
        mask[p] = True
    return Modality(spec.name, "image", values, mask)


LOADERS: dict[str, Callable[[ModalitySpec, _Context], Modality]] = {
    "vector": load_vector,
    "text": load_text,
    "image": load_images,
}


# ---------------------------------------------------------------------------- image files
def read_image(path: Path, listed_in: str = "") -> np.ndarray:
    """float32 [H, W, C] in [0, 1], C in (1, 3), from a Pillow-readable file or a ``.npy`` array."""
    where = f"{path} (listed in {listed_in})" if listed_in else str(path)
    if path.is_dir():
        raise DataError(where, "is a folder; expected an image file")
    if not path.is_file():
        raise DataError(where, "image file not found")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("1", "L", "LA"):
                    im = im.convert("L")
                elif im.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except Exception as exc:  # Pillow and numpy raise many types for a broken file
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(where, f"cannot be read as an image ({type(exc).__name__}: {detail})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) == 0:
        raise DataError(where, f"expected an image of shape [H, W] or [H, W, C] with C in 1, 3, 4; got {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16 or (arr.dtype == np.int32 and path.suffix.lower() != ".npy"):  # 16-bit files
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(where, "16-bit image values outside [0, 65535]")
        return arr.astype(np.float32) / 65535.0
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise DataError(where, "float image values must lie in [0, 1]")
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    raise DataError(where, f"unsupported pixel type {arr.dtype} (use uint8, uint16 or floats in [0, 1])")


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.shape[2] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=2)
    return (img @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]  # ITU-R 601 luma, as Pillow's "L"


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    from PIL import Image

    out = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c])).resize((size[1], size[0]), Image.Resampling.BILINEAR))
           for c in range(img.shape[2])]
    return np.clip(np.stack(out, axis=2), 0.0, 1.0)
