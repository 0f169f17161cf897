"""The one in-memory representation of a multimodal dataset.

A :class:`MultimodalDataset` holds, for N samples, an id, an integer label, an optional fixed
split, and a dict of :class:`Modality`. Every modality carries an explicit boolean availability
mask of shape [N]; values of unavailable samples are zeros (numeric kinds) or "" (text) and must
never be read without the mask.

Modality kinds
--------------
``vector``  float32 [N, d]         tabular / omics features, pooled encoder outputs
``tokens``  float32 [N, L, d]      token sets (report attribute tokens, patch tokens, word tokens);
                                   ``token_mask`` [N, L] bool marks real tokens (e.g. a mentioned
                                   attribute, a non-padding word)
``text``    object  [N] of str     raw free text (reports)
``image``   float32 [N, C, H, W]   images scaled to [0, 1]
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from trainables.data.errors import DataError

ModalityKind = Literal["vector", "tokens", "text", "image"]
KINDS: tuple[str, ...] = ("vector", "tokens", "text", "image")


@dataclass
class Modality:
    name: str
    kind: ModalityKind
    values: np.ndarray
    mask: np.ndarray
    feature_names: list[str] | None = None
    token_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"modality {self.name!r}", f"unknown kind {self.kind!r}; expected one of {KINDS}")
        self.mask = np.asarray(self.mask, dtype=bool)
        n = len(self.mask)
        if len(self.values) != n:
            raise DataError(f"modality {self.name!r}", f"{len(self.values)} rows of values but {n} mask entries")
        expected_ndim = {"vector": 2, "tokens": 3, "text": 1, "image": 4}[self.kind]
        if self.kind == "text":
            self.values = np.asarray(self.values, dtype=object)
        elif self.values.ndim != expected_ndim:
            raise DataError(f"modality {self.name!r}",
                            f"kind {self.kind} needs {expected_ndim}-d values, got shape {self.values.shape}")
        if self.token_mask is not None:
            self.token_mask = np.asarray(self.token_mask, dtype=bool)

    @property
    def dim(self) -> int | tuple[int, ...] | None:
        """Feature width: d for vector/tokens, (C, H, W) for images, None for text."""
        if self.kind in ("vector", "tokens"):
            return int(self.values.shape[-1])
        if self.kind == "image":
            return tuple(int(s) for s in self.values.shape[1:])
        return None

    def take(self, idx: np.ndarray) -> Modality:
        return replace(
            self,
            values=self.values[idx],
            mask=self.mask[idx],
            token_mask=None if self.token_mask is None else self.token_mask[idx],
        )


@dataclass
class MultimodalDataset:
    name: str
    ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    modalities: dict[str, Modality]
    split: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Side information that is not a model input, e.g. ``meta["attributes"]``: the generator's
    ground-truth attribute table of synth-clinic (int8 [N, A]: 1 positive, 0 negative, -1 unmentioned)."""

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.ids)
        if len(self.labels) != n:
            raise DataError(self.name, f"{len(self.labels)} labels for {n} sample ids")
        if len(np.unique(self.ids)) != n:
            dup = _first_duplicate(self.ids)
            raise DataError(self.name, f"duplicate sample id {dup!r}")
        for m in self.modalities.values():
            if len(m.mask) != n:
                raise DataError(f"{self.name}/{m.name}", f"{len(m.mask)} rows for {n} samples")
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    def availability(self) -> np.ndarray:
        """Bool [N, M] availability matrix, columns in ``modality_names`` order."""
        return np.stack([m.mask for m in self.modalities.values()], axis=1)

    def take(self, idx: np.ndarray) -> MultimodalDataset:
        idx = np.asarray(idx)
        meta = {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == len(self) else v) for k, v in self.meta.items()}
        return MultimodalDataset(
            name=self.name,
            ids=self.ids[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            modalities={k: m.take(idx) for k, m in self.modalities.items()},
            split=None if self.split is None else self.split[idx],
            meta=meta,
        )

    def split_part(self, part: str) -> MultimodalDataset:
        """Samples of a fixed split (``"train"`` or ``"test"``); the whole dataset when it has no split
        and ``part == "train"``."""
        if self.split is None:
            if part == "train":
                return self
            raise DataError(self.name, f"has no fixed split, so there is no {part!r} part")
        return self.take(np.flatnonzero(self.split == part))

    def with_modalities(self, modalities: dict[str, Modality]) -> MultimodalDataset:
        return replace(self, modalities=modalities)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """SHA-256 over the loaded content (ids, labels, classes, split, every modality's values and
        mask), independent of the dataset's name, of file paths and of the machine."""
        h = hashlib.sha256()

        def put(tag: str, payload: bytes) -> None:
            h.update(tag.encode())
            h.update(len(payload).to_bytes(8, "little"))
            h.update(payload)

        put("ids", "\x00".join(self.ids.tolist()).encode())
        put("labels", self.labels.astype("<i8").tobytes())
        put("classes", json.dumps(self.class_names).encode())
        put("split", b"" if self.split is None else "\x00".join(self.split.tolist()).encode())
        for name in sorted(self.modalities):
            m = self.modalities[name]
            put("modality", f"{name}:{m.kind}".encode())
            put("mask", m.mask.astype(np.uint8).tobytes())
            if m.kind == "text":
                put("values", "\x00".join(str(v) for v in m.values).encode())
            else:
                put("values", np.ascontiguousarray(m.values, dtype="<f4").tobytes())
            if m.token_mask is not None:
                put("token_mask", m.token_mask.astype(np.uint8).tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: sample counts per split, modality kinds/dims/missing, classes, fingerprint."""
        if self.split is None:
            samples = {"all": len(self)}
        else:
            parts, counts = np.unique(self.split, return_counts=True)
            samples = {str(p): int(c) for p, c in zip(parts, counts)}
            samples["all"] = len(self)
        class_counts: dict[str, Any] = {}
        groups = [("all", np.ones(len(self), bool))]
        if self.split is not None:
            groups += [(str(p), self.split == p) for p in np.unique(self.split)]
        for part, sel in groups:
            counts = np.bincount(self.labels[sel], minlength=self.num_classes)
            class_counts[part] = {c: int(k) for c, k in zip(self.class_names, counts)}
        modalities = {}
        for name, m in self.modalities.items():
            entry: dict[str, Any] = {"kind": m.kind, "dim": m.dim, "missing": int((~m.mask).sum())}
            if self.split is not None:
                entry["missing_by_split"] = {str(p): int((~m.mask[self.split == p]).sum()) for p in np.unique(self.split)}
            modalities[name] = entry
        return {
            "name": self.name,
            "samples": samples,
            "classes": list(self.class_names),
            "class_counts": class_counts,
            "modalities": modalities,
            "fingerprint": self.fingerprint(),
        }


def _first_duplicate(ids: np.ndarray) -> str:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            return str(i)
        seen.add(i)
    return ""
