"""A text checkpoint's sentence embedding, as its authors declared it (sentence-transformers config).

A sentence-transformers checkpoint (such as the packaged all-MiniLM-L6-v2) says in ``modules.json``
which modules turn the transformer's token states into its embedding: a ``Pooling`` module (its
``config.json`` names the pooling modes; several are concatenated) and optionally ``Normalize``
(L2 norm 1). :func:`declared_pooling` reads them without loading any weights; :class:`Pooling`
applies them to the last hidden states and the attention mask, so the ``sentence`` representation
is the embedding ``SentenceTransformer(folder).encode(text)`` gives.

With h_i the last hidden state of word piece i and m_i its attention mask (1 = real, 0 = padding):

    cls                    h_0
    mean                   sum_i m_i h_i / max(sum_i m_i, 1e-9)
    max                    max_{i: m_i = 1} h_i                     (per feature)
    mean_sqrt_len_tokens   sum_i m_i h_i / sqrt(max(sum_i m_i, 1e-9))
    Normalize              e / max(||e||_2, 1e-12)

A checkpoint without ``modules.json`` (a plain transformers checkpoint such as ClinicalBERT)
declares no embedding; it gets its [CLS] state, BERT's own sequence representation (and
AlignedFusion's Eq.5 reading), marked ``declared: false``. (sentence-transformers would mean-pool
such a checkpoint; we keep [CLS] so that a plain BERT's ``sentence`` equals its ``cls``.) Modules
fusetune does not apply (Dense projections, other poolings) are refused in one line rather than
silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.data.errors import DataError

if TYPE_CHECKING:
    import torch

POOLING_VERSION = "1"
"""Bump when the numbers a pooling mode produces change."""


def _cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def _masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1), m.sum(dim=1).clamp(min=1e-9)


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total, count = _masked_sum(hidden, mask)
    return total / count


def _mean_sqrt_len(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total, count = _masked_sum(hidden, mask)
    return total / count.sqrt()


def _max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values


POOLING_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cls": _cls, "mean": _mean, "max": _max, "mean_sqrt_len_tokens": _mean_sqrt_len,
}
"""Pooling mode -> (last hidden states [B, L, d], attention mask [B, L]) -> [B, d]."""

_LEGACY_KEYS = {  # sentence-transformers' boolean keys, in its concatenation order
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class Pooling:
    """Pooling modes (concatenated in order), whether the result is L2-normalised, and whether the
    checkpoint declared it (``False``: the [CLS] default of a plain checkpoint)."""

    modes: tuple[str, ...] = ("cls",)
    normalize: bool = False
    declared: bool = False

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in POOLING_MODES]
        if bad or not self.modes:
            raise DataError("text encoder pooling",
                            f"mode(s) {bad or '(none)'} not supported; expected {', '.join(POOLING_MODES)}")

    def identity(self) -> dict[str, Any]:
        """Part of the feature-cache key and of a bundle's encoder record."""
        return {"modes": list(self.modes), "normalize": self.normalize, "declared": self.declared, "version": POOLING_VERSION}

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        out = torch.cat([POOLING_MODES[m](hidden, mask) for m in self.modes], dim=-1)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        return out


def declared_pooling(folder: Path | None, where: str) -> Pooling:
    """The pooling declared by the sentence-transformers files of ``folder`` (see the module
    docstring); ``where`` names the encoder in errors."""
    modules_file = Path(folder) / "modules.json" if folder is not None else None
    if modules_file is None or not modules_file.is_file():
        return Pooling()
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [(str(m["type"]).rsplit(".", 1)[-1], str(m.get("path", ""))) for m in modules]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DataError(where, f"{modules_file} is not a sentence-transformers modules list") from None
    modes: tuple[str, ...] | None = None
    normalize = False
    for kind, path in kinds:
        if kind == "Transformer":
            continue
        if kind == "Pooling" and modes is None:
            modes = _pooling_modes(Path(folder) / path / "config.json", where)
        elif kind == "Normalize" and modes is not None:
            normalize = True
        else:
            raise DataError(where, f"declares a {kind} module ({modules_file}); fusetune applies Transformer, Pooling "
                            "and Normalize only, so its sentence embedding cannot be reproduced "
                            "(use the cls or tokens representation)")
    if modes is None:
        raise DataError(where, f"{modules_file} declares no Pooling module")
    return Pooling(modes, normalize, declared=True)


def _pooling_modes(config_file: Path, where: str) -> tuple[str, ...]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(where, f"{config_file} is missing or not JSON (the Pooling module's config)") from None
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if config.get(key)) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise DataError(where, f"{config_file} declares pooling {', '.join(bad)}; supported: {', '.join(POOLING_MODES)}")
    return modes
