"""What a trial trains on: the training part of a dataset, encoded, loaded once per process.

The search driver calls :func:`prepare` once before any trial starts (this loads the data,
runs the encoders or hits the feature cache, and surfaces data errors early) and hands the
result to every trial through the Ray object store (``tune.with_parameters``): one copy per
node, read zero-copy by the trials on it. A trainable started without it (e.g. a registered
trainable used directly with ``tune.Tuner("fusetune-omnifuse")``) calls :func:`prepare` itself;
the module-level cache makes that once per worker process, and the encoders' memory-mapped
feature cache makes it cheap.

Only the training part is searched (``split_part("train")``: breast-tcga's fixed train split,
the whole dataset where there is no fixed split); a fixed test part stays untouched for the
final evaluation of the chosen models (:func:`fixed_test_part`: loaded and encoded with the
training part, cached beside it, never in :class:`TrialData`, so no trial sees it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from trainables.data import DataError, MultimodalDataset, load_dataset, stratified_holdout, stratified_kfold

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TrialData:
    data: MultimodalDataset
    """The training part, text/image modalities replaced by their encoded inputs."""
    fingerprint: str
    """Fingerprint of the raw dataset as loaded (all parts, before encoding)."""
    name: str
    raw_kinds: tuple[str, ...]
    """Kinds of the raw modalities (``vector``, ``text``, ``image``, ...) before encoding."""
    splits: Mapping[tuple[int, int, float], tuple[Split, ...]] = field(default_factory=dict, compare=False,
                                                                       hash=False, repr=False)
    """Splits made ahead by the driver (:func:`with_splits`), by ``(folds, seed, val_fraction)``."""

    def fold_splits(self, folds: int, seed: int, val_fraction: float = 0.2) -> list[Split]:
        """:func:`fold_splits` of the training part: the ones made ahead where there are, so a
        trial worker does not import scikit-learn to make them again."""
        made = self.splits.get((int(folds), int(seed), float(val_fraction)))
        return list(made) if made is not None else fold_splits(self.data.labels, folds, seed, val_fraction)


def with_splits(data: TrialData, folds: int, seeds: Iterable[int], val_fraction: float) -> TrialData:
    """``data`` with the splits of ``seeds`` made ahead (the driver's, before the data goes to the
    object store): every trial of a search splits with the search's seed, every confirmation job
    with its repetitions' seeds."""
    made = {(int(folds), int(s), float(val_fraction)): tuple(fold_splits(data.data.labels, folds, s, val_fraction))
            for s in seeds}
    return replace(data, splits={**data.splits, **made})


_CACHE: dict[tuple, TrialData] = {}
_TEST: dict[tuple, MultimodalDataset | None] = {}  # the fixed test part of the same load, if any


def _key(spec: str, representations: dict[str, tuple[str, ...]], text_encoder: str | None,
         image_encoder: str | None, cache_dir: str | None) -> tuple:
    reps = tuple(sorted((k, tuple(v)) for k, v in representations.items()))
    return spec, reps, text_encoder, image_encoder, cache_dir


def prepare(spec: str, representations: dict[str, tuple[str, ...]], *, text_encoder: str | None = None,
            image_encoder: str | None = None, cache_dir: str | None = None) -> TrialData:
    """Load ``spec`` (see :func:`trainables.data.load_dataset`), keep its training part and encode
    its text/image modalities into ``representations``; cached per process."""
    key = _key(spec, representations, text_encoder, image_encoder, cache_dir)
    if key not in _CACHE:
        raw = load_dataset(spec)
        fingerprint = raw.fingerprint()
        data = raw
        if any(m.kind in ("text", "image") for m in raw.modalities.values()):
            from trainables.encoders import encode_dataset  # torch/transformers only when needed

            # the whole dataset, so the cache entries are the ones `python -m search.data encode` makes
            data = encode_dataset(raw, representations, text_encoder=text_encoder, image_encoder=image_encoder,
                                  cache_dir=cache_dir)
        kinds = tuple(dict.fromkeys(m.kind for m in raw.modalities.values()))
        _CACHE[key] = TrialData(data.split_part("train"), fingerprint, raw.name, kinds)
        _TEST[key] = data.split_part("test") if data.split is not None and (data.split == "test").any() else None
    return _CACHE[key]


def fixed_test_part(spec: str, representations: dict[str, tuple[str, ...]], *, text_encoder: str | None = None,
                    image_encoder: str | None = None, cache_dir: str | None = None) -> MultimodalDataset | None:
    """The fixed test part of ``spec`` (rosmap, breast-tcga), encoded exactly as :func:`prepare`
    encodes the training part (the same load, cached with it); None when the dataset has none."""
    prepare(spec, representations, text_encoder=text_encoder, image_encoder=image_encoder, cache_dir=cache_dir)
    return _TEST[_key(spec, representations, text_encoder, image_encoder, cache_dir)]


def prepare_from_config(config: dict[str, Any]) -> TrialData:
    from trainables.registry import get_method

    return prepare(config["data"], get_method(config["method"]).representations,
                   text_encoder=config.get("text_encoder"), image_encoder=config.get("image_encoder"),
                   cache_dir=config.get("cache_dir"))


def fixed_test_part_from_config(config: dict[str, Any]) -> MultimodalDataset | None:
    """:func:`fixed_test_part` with the data spec, method and encoders of a trial config."""
    from trainables.registry import get_method

    return fixed_test_part(config["data"], get_method(config["method"]).representations,
                           text_encoder=config.get("text_encoder"), image_encoder=config.get("image_encoder"),
                           cache_dir=config.get("cache_dir"))


def fold_splits(labels: np.ndarray, folds: int, seed: int, val_fraction: float = 0.2) -> list[Split]:
    """``folds`` >= 2: stratified k-fold; ``folds`` == 0: one stratified hold-out split with
    ``val_fraction`` of the samples held out. The same seed gives the same splits in every trial,
    so trials are compared on identical folds."""
    if folds == 0:
        return [stratified_holdout(labels, val_fraction, seed)]
    if folds == 1 or folds < 0:
        raise DataError("--folds", f"must be 0 (hold-out) or at least 2 (k-fold), got {folds}")
    return stratified_kfold(labels, folds, seed)
