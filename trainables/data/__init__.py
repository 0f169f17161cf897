"""Data layer: one representation for multimodal datasets, the built-in datasets, splits, preprocessing."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from trainables.data.dataset import KINDS, Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.preprocess import Standardizer
from trainables.data.splits import fixed_split, stratified_holdout, stratified_kfold

OUTER_MARK = "@outer="
"""What starts the outer-fold suffix of a spec: ``SPEC@outer=I/N[,seed=S]``."""
_OUTER = re.compile(r"(?P<i>\d+)/(?P<n>\d+)(?:,seed=(?P<seed>-?\d+))?")
_OUTER_EXPECTED = "expected SPEC@outer=I/N[,seed=S] with 1 <= I <= N"


@dataclass(frozen=True)
class OuterFold:
    """Outer fold ``index`` (1-based) of a seeded stratified ``folds``-fold split of a dataset's
    training part (:mod:`trainables.data.outer`)."""

    index: int
    folds: int
    seed: int = 0

    def __str__(self) -> str:
        return f"outer={self.index}/{self.folds},seed={self.seed}"


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--data`` value: ``NAME``, ``NAME:k=v,...`` for a registered dataset, or a path to a
    user dataset folder; any of them followed by ``@outer=I/N[,seed=S]`` for an outer fold of nested CV.

    ``name`` is the registered dataset's name, or the folder's path as given; ``options`` the
    ``k=v`` pairs in the order given (a folder has none); ``outer`` the outer fold or None.
    ``str(spec)`` is the canonical text, and ``DatasetSpec.parse(str(spec)) == spec``.
    (Not :class:`trainables.backbone.DataSpec`, which describes a model's inputs.)
    """

    name: str
    options: tuple[tuple[str, str], ...] = ()
    outer: OuterFold | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """The one parser of a ``--data`` value; a one-line :class:`DataError` naming the spec and what
        was expected for a malformed outer-fold suffix or ``k=v`` list.

        A head (the text before the first ``:``) that names a registered dataset is that dataset
        with its options; any other text is a folder path, taken whole (it may contain ``:``);
        whether that folder exists is for :func:`load_dataset` to say.
        """
        base, mark, tail = text.rpartition(OUTER_MARK)
        outer = None
        if mark:
            m = _OUTER.fullmatch(tail)
            if m is None or not base:
                raise DataError(f"--data {text}", _OUTER_EXPECTED)
            if OUTER_MARK in base:
                raise DataError(f"--data {text}", f"{_OUTER_EXPECTED}, given once")
            i, n = int(m["i"]), int(m["n"])
            if n < 2 or not 1 <= i <= n:
                raise DataError(f"--data {text}", f"outer fold {i}/{n}: expected 1 <= I <= N and N >= 2")
            outer = OuterFold(i, n, int(m["seed"] or 0))
        else:
            base = text
        if not base:
            raise DataError("--data", "expected a dataset name (NAME[:k=v,...]) or a folder, got nothing")
        head, _, args = base.partition(":")
        if head not in _registry():
            return cls(base, (), outer)
        return cls(head, _options(head, args), outer)

    @property
    def folder(self) -> Path | None:
        """The folder of a user dataset (``~`` expanded), None for a registered dataset."""
        return None if self.name in _registry() else Path(self.name).expanduser()

    @property
    def params(self) -> dict[str, str]:
        """``options`` as a dict: key -> raw value text."""
        return dict(self.options)

    @property
    def short_name(self) -> str:
        """``synth-clinic`` for ``synth-clinic:n=600``, a folder's name; ``breast-tcga-outer2of5`` for
        the outer fold ``breast-tcga@outer=2/5``."""
        base = self.name if self.folder is None else Path(self.name).name
        return base + (f"-outer{self.outer.index}of{self.outer.folds}" if self.outer else "")

    def without_outer(self) -> DatasetSpec:
        return replace(self, outer=None)

    def with_outer(self, index: int, folds: int, seed: int) -> DatasetSpec:
        """This dataset's outer fold ``index`` of ``folds``; a :class:`DataError` if it already is one."""
        if self.outer is not None:
            raise DataError(f"--data {self}", "already an outer fold; expected a spec without @outer=")
        if folds < 2 or not 1 <= index <= folds:
            raise DataError(f"--data {self}", f"outer fold {index}/{folds}: expected 1 <= I <= N and N >= 2")
        return replace(self, outer=OuterFold(index, folds, seed))

    def __str__(self) -> str:
        opts = ":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else ""
        return f"{self.name}{opts}" + (f"@{self.outer}" if self.outer else "")


def _options(name: str, args: str) -> tuple[tuple[str, str], ...]:
    """``"n=600, seed=1"`` -> ``(("n", "600"), ("seed", "1"))``: items split at ``,``, blanks around
    items, keys and values dropped, empty items skipped; one line for an item that is not
    ``key=value`` or a key given twice. Which keys a dataset knows is its loader's to check."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in args.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or not key:
            raise DataError(f"--data {name}:{args}", f"{item!r}: expected key=value")
        if key in out:
            raise DataError(f"--data {name} parameter {key!r}", "given twice")
        out[key] = raw
    return tuple(out.items())


Loader = Callable[[DatasetSpec], MultimodalDataset]
"""A loader takes the parsed spec of its dataset (``name`` and ``options``; no outer fold) and returns it."""

DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def _no_args(fn: Callable[[], MultimodalDataset]) -> Loader:
    def load(spec: DatasetSpec) -> MultimodalDataset:
        if spec.options:
            raise DataError(f"--data {spec}", f"{spec.name} takes no parameters")
        return fn()

    return load


_builtins_registered = False


def _register_builtins() -> None:
    global _builtins_registered
    _builtins_registered = True
    from trainables.data import builtin

    DATASETS["rosmap"] = builtin.load_rosmap_variant
    DATASETS["breast-tcga"] = _no_args(builtin.load_breast_tcga)
    from trainables.data import synth  # noqa: F401  (registers synth-clinic)


def _registry() -> dict[str, Loader]:
    if not _builtins_registered:  # not "if not DATASETS": importing synth first registers only itself
        _register_builtins()
    return DATASETS


def load_dataset(spec: str | DatasetSpec) -> MultimodalDataset:
    """The dataset a ``--data`` value names (:class:`DatasetSpec`): a registered dataset with its
    options, a user dataset folder, or an outer fold of either (:mod:`trainables.data.outer`)."""
    parsed = spec if isinstance(spec, DatasetSpec) else DatasetSpec.parse(spec)
    if parsed.outer is not None:
        from trainables.data import outer

        o = parsed.outer
        return outer.make_outer(load_dataset(parsed.without_outer()), o.index, o.folds, o.seed)
    folder = parsed.folder
    if folder is None:
        return _registry()[parsed.name](parsed)
    if folder.is_dir():
        from trainables.data.folder import load_folder

        return load_folder(folder)
    raise DataError(f"--data {parsed}", f"not a built-in dataset ({', '.join(sorted(DATASETS))}) nor an existing folder")


__all__ = [
    "DATASETS", "KINDS", "DataError", "DatasetSpec", "Modality", "MultimodalDataset", "OuterFold", "Standardizer",
    "fixed_split", "load_dataset", "register_dataset", "stratified_holdout", "stratified_kfold",
]
