"""The tests' one factory of small multimodal data: in memory (:func:`toy_dataset`) or as a user
dataset folder on disk (:func:`write_folder`, :func:`write_table`).

``toy_dataset`` draws every modality from one seeded generator, in the order given, so a test's
data is fixed by ``n``, ``seed``, the labels and the modality list. A :class:`Vec` is Gaussian
features shifted by ``shift * label`` (the class signal); a :class:`Tokens` modality is Gaussian
tokens without class signal. ``absent`` marks the samples whose modality is missing: their mask
is False and their values are zeros, as the loaders leave them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from trainables.data import Modality, MultimodalDataset


@dataclass(frozen=True)
class Vec:
    """A vector modality of ``dim`` features: N(0, 1) + ``shift`` * label, float32."""

    name: str
    dim: int
    shift: float = 1.0
    absent: slice | None = None
    """Samples (a slice of 0..n-1) with the modality missing; None = present for every sample."""
    features: Sequence[str] | None = None


@dataclass(frozen=True)
class Tokens:
    """A token modality of ``length`` tokens of ``dim`` values: N(0, 1), float32."""

    name: str
    length: int
    dim: int
    mentioned: int | None = None
    """Token positions set in every sample's token mask (the first ``mentioned``); None = all."""


Labels = Literal["cycle", "blocks"]
"""``cycle``: sample i has class i mod C. ``blocks``: three classes in runs of n//2, n//3 and the rest."""


def toy_labels(n: int, classes: int, labels: Labels) -> np.ndarray:
    if labels == "cycle":
        return np.arange(n) % classes
    if classes != 3:
        raise ValueError("labels='blocks' is for 3 classes")
    return np.array([0] * (n // 2) + [1] * (n // 3) + [2] * (n - n // 2 - n // 3))


def toy_dataset(n: int, modalities: Sequence[Vec | Tokens], *, class_names: Sequence[str] = ("p", "q", "r"),
                labels: Labels = "cycle", seed: int = 0, name: str = "toy") -> MultimodalDataset:
    """``n`` samples with ids ``s0``..., the classes ``class_names`` laid out as ``labels`` says, and
    ``modalities`` drawn in order from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    y = toy_labels(n, len(class_names), labels)
    mods: dict[str, Modality] = {}
    for spec in modalities:
        if isinstance(spec, Vec):
            x = (rng.normal(size=(n, spec.dim)) + spec.shift * y[:, None]).astype(np.float32)
            mask = np.ones(n, bool)
            if spec.absent is not None:
                mask[spec.absent] = False
                x[~mask] = 0.0
            features = list(spec.features) if spec.features is not None else None
            mods[spec.name] = Modality(spec.name, "vector", x, mask, features)
        else:
            tokens = rng.normal(size=(n, spec.length, spec.dim)).astype(np.float32)
            token_mask = np.zeros((n, spec.length), bool)
            token_mask[:, :spec.length if spec.mentioned is None else spec.mentioned] = True
            mods[spec.name] = Modality(spec.name, "tokens", tokens, np.ones(n, bool), token_mask=token_mask)
    return MultimodalDataset(name, [f"s{i}" for i in range(n)], y, list(class_names), mods)


def write_table(folder: Path, name: str, rows: Mapping[str, Sequence[object] | np.ndarray]) -> Path:
    """``rows`` (column -> values) as the CSV ``folder/name`` without an index column."""
    path = folder / name
    pd.DataFrame(dict(rows)).to_csv(path, index=False)
    return path


def write_folder(folder: Path, ids: Sequence[str], labels: Sequence[object], *,
                 split: Sequence[str] | None = None,
                 tables: Mapping[str, Mapping[str, Sequence[object] | np.ndarray]] | None = None) -> Path:
    """A user dataset folder: ``labels.csv`` (``sample_id``, ``label`` and, given ``split``, ``split``)
    and one CSV per entry of ``tables`` (file name -> columns, ``sample_id`` among them)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder, "labels.csv", {"sample_id": ids, "label": labels, **({"split": split} if split is not None else {})})
    for file, rows in (tables or {}).items():
        write_table(folder, file, rows)
    return folder
