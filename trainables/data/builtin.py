"""The real built-in datasets: ``rosmap`` and ``breast-tcga`` (see ``../shared/data/README.md``).

Files are located, in order, under ``$FUSETUNE_DATA_DIR/<folder>``, then under
``~/.cache/fusetune/data/<folder>`` (where :mod:`trainables.data.download` puts verified downloads).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.download import CACHE_DIR, DATA_DIR_ENV, download_builtin
from trainables.data.errors import DataError
from trainables.data.params import known_options
from trainables.data.tables import read_numeric_table

if TYPE_CHECKING:
    from trainables.data import DatasetSpec


def locate(folder: str, required: list[str]) -> Path:
    """Folder holding ``required`` files for a built-in dataset, downloading it if needed."""
    candidates: list[Path] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates.append(Path(env).expanduser() / folder)
    candidates.append(CACHE_DIR / folder)
    for c in candidates:
        if all((c / f).is_file() for f in required):
            return c
    if env:
        missing = [f for f in required if not (Path(env).expanduser() / folder / f).is_file()]
        raise DataError(f"{DATA_DIR_ENV}={env}", f"folder {folder}/ lacks {', '.join(missing[:3])}")
    return download_builtin(folder, CACHE_DIR / folder)


def load_rosmap() -> MultimodalDataset:
    """ROSMAP (MOGONET): mRNA, methylation, miRNA (200 features each); NC vs AD; fixed train/test split."""
    names = {"1": "mrna", "2": "meth", "3": "mirna"}
    required = [f"{k}_{p}.csv" for k in names for p in ("tr", "te")] + ["labels_tr.csv", "labels_te.csv"]
    root = locate("rosmap", required)
    parts = {}
    for p in ("tr", "te"):
        lab_file = root / f"labels_{p}.csv"
        labels = pd.read_csv(lab_file, header=None).iloc[:, 0].to_numpy()
        if not np.all(np.isin(labels, [0.0, 1.0])):
            raise DataError(lab_file, "labels must be 0 or 1")
        parts[p] = labels.astype(np.int64)
    n_tr, n_te = len(parts["tr"]), len(parts["te"])
    mods: dict[str, Modality] = {}
    for k, name in names.items():
        feat_file = root / f"{k}_featname.csv"
        feats = pd.read_csv(feat_file, header=None).iloc[:, 0].astype(str).tolist() if feat_file.is_file() else None
        blocks = []
        for p, n in (("tr", n_tr), ("te", n_te)):
            f = root / f"{k}_{p}.csv"
            x = read_numeric_table(f, header=False)
            if len(x) != n:
                raise DataError(f, f"{len(x)} rows but labels_{p}.csv has {n}")
            blocks.append(x)
        if blocks[0].shape[1] != blocks[1].shape[1]:
            raise DataError(root / f"{k}_te.csv", f"{blocks[1].shape[1]} feature columns, train has {blocks[0].shape[1]}")
        values = np.concatenate(blocks).astype(np.float32)
        mods[name] = Modality(name, "vector", values, np.ones(len(values), bool), feats)
    return MultimodalDataset(
        name="rosmap",
        ids=[f"tr{i:04d}" for i in range(n_tr)] + [f"te{i:04d}" for i in range(n_te)],
        labels=np.concatenate([parts["tr"], parts["te"]]),
        class_names=["NC", "AD"],
        modalities=mods,
        split=np.array(["train"] * n_tr + ["test"] * n_te),
    )


def subsample_class(data: MultimodalDataset, minority: str, ratio: float, seed: int) -> MultimodalDataset:
    """Keep every sample of the other classes and, within each fixed split part separately, a seeded
    random ``round(n_largest_other / ratio)`` samples of class ``minority``: a class-imbalanced
    variant whose train and test parts both have the ratio ``1 : ratio``."""
    c = data.class_names.index(minority)
    rng = np.random.default_rng(seed)
    parts = np.unique(data.split) if data.split is not None else [None]
    keep: list[np.ndarray] = []
    for part in parts:
        in_part = np.ones(len(data), bool) if part is None else data.split == part
        others = np.flatnonzero(in_part & (data.labels != c))
        pool = np.flatnonzero(in_part & (data.labels == c))
        largest = np.bincount(data.labels[others], minlength=data.num_classes).max()
        n = max(1, int(round(largest / ratio)))
        if n > len(pool):
            raise DataError(f"--data {data.name}:ratio={ratio:g}", f"{part or 'the data'} has only {len(pool)} "
                            f"{minority} samples, {n} needed")
        keep += [others, np.sort(rng.choice(pool, n, replace=False))]
    return data.take(np.sort(np.concatenate(keep)))


def parse_rosmap(spec: DatasetSpec) -> dict[str, str | float | int]:
    """The values of ``rosmap:minority=AD,ratio=5,seed=0`` (every key optional once ``ratio`` is
    given; defaults AD, 0)."""
    values: dict[str, str | float | int] = {"minority": "AD", "seed": 0}
    expected = {"minority": "NC or AD", "ratio": "a number >= 1", "seed": "an integer >= 0"}
    for key, raw in known_options(spec, expected).items():
        where = f"--data rosmap parameter {key!r}"
        try:
            value: str | float | int = raw if key == "minority" else (int(raw) if key == "seed" else float(raw))
        except ValueError:
            raise DataError(where, f"expected {expected[key]}, got {raw!r}") from None
        if (key == "minority" and value not in ("NC", "AD")) or (key == "ratio" and not 1 <= value < np.inf) \
                or (key == "seed" and value < 0):  # type: ignore[operator]
            raise DataError(where, f"expected {expected[key]}, got {raw!r}")
        values[key] = value
    if "ratio" not in values:
        raise DataError(f"--data {spec}", "parameters need ratio=R (minority class subsampled to 1:R)")
    return values


def load_rosmap_variant(spec: DatasetSpec) -> MultimodalDataset:
    """``rosmap`` as distributed, or with ``:ratio=R[,minority=AD][,seed=S]`` its class-imbalanced
    variant (:func:`subsample_class`), e.g. ``rosmap:ratio=5`` for AD : NC = 1 : 5."""
    if not spec.options:
        return load_rosmap()
    p = parse_rosmap(spec)  # before reading any file: a bad parameter needs no data
    return subsample_class(load_rosmap(), str(p["minority"]), float(p["ratio"]), int(p["seed"]))


def load_breast_tcga() -> MultimodalDataset:
    """breast.TCGA (mixOmics): mRNA 200, miRNA 184, protein 142 (missing for every test sample);
    PAM50 subtypes Basal/Her2/LumA; fixed train/test split."""
    required = ["mrna_train.csv", "mrna_test.csv", "mirna_train.csv", "mirna_test.csv",
                "protein_train.csv", "subtype_train.csv", "subtype_test.csv"]
    root = locate("breast_tcga", required)
    lab = {}
    for p in ("train", "test"):
        f = root / f"subtype_{p}.csv"
        df = pd.read_csv(f)
        if list(df.columns[:2]) != ["sample", "subtype"]:
            raise DataError(f, f"expected columns sample,subtype; got {','.join(map(str, df.columns))}")
        lab[p] = df
    class_names = sorted(set(lab["train"]["subtype"]) | set(lab["test"]["subtype"]))
    ids = np.concatenate([lab["train"]["sample"].astype(str), lab["test"]["sample"].astype(str)])
    labels = np.concatenate([lab[p]["subtype"].map(class_names.index).to_numpy() for p in ("train", "test")])
    split = np.array(["train"] * len(lab["train"]) + ["test"] * len(lab["test"]))
    mods: dict[str, Modality] = {}
    for name in ("mrna", "mirna", "protein"):
        frames = {}
        for p in ("train", "test"):
            f = root / f"{name}_{p}.csv"
            if f.is_file():
                frames[p] = read_numeric_table(f, id_column="sample")
        mods[name] = _align_modality(name, frames, ids, root)
    return MultimodalDataset("breast-tcga", ids, labels, class_names, mods, split=split)


def _align_modality(name: str, frames: dict[str, pd.DataFrame], ids: np.ndarray, root: Path) -> Modality:
    """Place each table's rows at their sample ids; samples absent from every table are missing."""
    cols = None
    for p, df in frames.items():
        if cols is None:
            cols = list(df.columns)
        elif list(df.columns) != cols:
            raise DataError(root / f"{name}_{p}.csv", "feature columns differ from the train table's")
    table = pd.concat(list(frames.values()))
    values = np.zeros((len(ids), len(cols)), np.float32)
    pos = pd.Index(ids).get_indexer(table.index)
    if (pos < 0).any():
        stray = table.index[pos < 0][0]
        raise DataError(root / f"{name}_*.csv", f"sample {stray!r} has features but no label")
    values[pos] = table.to_numpy(np.float32)
    mask = np.zeros(len(ids), bool)
    mask[pos] = True
    return Modality(name, "vector", values, mask, [str(c) for c in cols])
