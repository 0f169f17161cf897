"""Data layer: one representation for multimodal datasets, the built-in datasets, splits, preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainables.data.dataset import KINDS, Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.preprocess import Standardizer
from trainables.data.splits import fixed_split, stratified_holdout, stratified_kfold

Loader = Callable[[str], MultimodalDataset]
"""A loader takes the argument string after ``NAME:`` (may be empty) and returns a dataset."""

DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def _no_args(name: str, fn: Callable[[], MultimodalDataset]) -> Loader:
    def load(args: str) -> MultimodalDataset:
        if args:
            raise DataError(f"--data {name}:{args}", f"{name} takes no parameters")
        return fn()

    return load


_builtins_registered = False


def _register_builtins() -> None:
    global _builtins_registered
    _builtins_registered = True
    from trainables.data import builtin

    DATASETS["rosmap"] = builtin.load_rosmap_variant
    DATASETS["breast-tcga"] = _no_args("breast-tcga", builtin.load_breast_tcga)
    from trainables.data import synth  # noqa: F401  (registers synth-clinic)


def load_dataset(spec: str) -> MultimodalDataset:
    """``NAME``, ``NAME:k=v,...`` for a registered dataset, or a path to a user dataset folder;
    any of them followed by ``@outer=I/N[,seed=S]`` for an outer fold of nested CV
    (:mod:`trainables.data.outer`)."""
    if not _builtins_registered:  # not "if not DATASETS": importing synth first registers only itself
        _register_builtins()
    from trainables.data import outer

    parsed = outer.parse(spec)
    if parsed is not None:
        base, i, n, seed = parsed
        return outer.make_outer(load_dataset(base), i, n, seed)
    name, _, args = spec.partition(":")
    if name in DATASETS:
        return DATASETS[name](args)
    path = Path(spec).expanduser()
    if path.is_dir():
        from trainables.data.folder import load_folder

        return load_folder(path)
    raise DataError(f"--data {spec}", f"not a built-in dataset ({', '.join(sorted(DATASETS))}) nor an existing folder")


__all__ = [
    "DATASETS", "KINDS", "DataError", "Modality", "MultimodalDataset", "Standardizer",
    "fixed_split", "load_dataset", "register_dataset", "stratified_holdout", "stratified_kfold",
]
