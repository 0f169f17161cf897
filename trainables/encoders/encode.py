"""``encode_dataset``: turn text and image modalities into model inputs, through the feature cache.

Each text/image modality ``m`` is replaced by one input modality ``m.<representation>`` per
requested representation (text: ``cls``, ``tokens``, ``attributes``; image: ``pooled``, ``map``,
``patches``), sharing ``m``'s availability mask. Vector and token modalities pass through.
Unavailable samples are never encoded: their features are zeros (and their attributes
unmentioned); a sample marked available with an empty report is an error.

Every (modality, representation) is one cache entry whose key describes all that determines it
(:func:`entry_description`). The dataset part of the key is the fingerprint of the *encoded
modality* (its values and mask: the dataset fingerprint restricted to what the encoder reads),
so editing another modality, e.g. the EHR table, does not re-encode the reports. Encoders are
resolved (and checkpoints hashed) without loading them; they are loaded only on a cache miss.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.encoders import image as image_mod
from trainables.encoders import text as text_mod
from trainables.encoders.attributes import (
    UNMENTIONED,
    AttributeConfig,
    attribute_tokens,
    get_extractor,
)
from trainables.encoders.cache import FeatureCache, key_digest
from trainables.encoders.sources import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ModelSource,
    resolve,
)

log = logging.getLogger("trainables.encoders")

Representations = Mapping[str, Sequence[str]]
"""Requested representations per modality kind (``"text"``, ``"image"``) or per modality name
(a name takes precedence), e.g. ``{"text": ("cls",), "image": ("pooled",)}`` as in
:data:`trainables.registry.METHODS`."""

DEFAULT_MAX_LENGTH = 128
POOLED_TEXT = ("sentence", "attributes")
"""Text representations made from the encoder's sentence pooling (recorded in their cache keys)."""
DEFAULT_BATCH_SIZE = 64


def modality_fingerprint(m: Modality) -> str:
    """SHA-256 of what an encoder reads from a modality: kind, mask, and the available values."""
    h = hashlib.sha256()

    def put(tag: str, payload: bytes) -> None:
        h.update(tag.encode() + len(payload).to_bytes(8, "little") + payload)

    put("kind", m.kind.encode())
    put("mask", np.asarray(m.mask, np.uint8).tobytes())
    if m.kind == "text":
        for v in m.values[m.mask]:
            put("text", str(v).encode())
    else:
        put("shape", repr(tuple(m.values.shape[1:])).encode())
        put("values", np.ascontiguousarray(m.values[m.mask], dtype="<f4").tobytes())
    return h.hexdigest()


def entry_description(source_fp: str, kind: str, representation: str, encoder: dict[str, Any],
                      code_version: str, **extra: Any) -> dict[str, Any]:
    """The content of a cache key: source fingerprint, encoder identity, representation, code version,
    plus representation-specific settings (``max_length``, ``extractor``)."""
    return {"source": source_fp, "kind": kind, "representation": representation, "encoder": encoder,
            "code_version": f"{kind}-{code_version}", **extra}


class _Lazy:
    """Build an encoder on first use only (cache hits never load it)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._obj: Any = None

    def get(self) -> Any:
        if self._obj is None:
            self._obj = self._factory()
        return self._obj


def _requested(representations: Representations, name: str, kind: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    reps = representations.get(name, representations.get(kind))
    if not reps:
        under = f"{kind!r}" + (f" or {name!r}" if name != kind else "")
        raise DataError(f"modality {name!r}", f"is {kind}; request its representations ({', '.join(allowed)}) under {under}")
    reps = tuple(dict.fromkeys(reps))
    bad = [r for r in reps if r not in allowed]
    if bad:
        raise DataError(f"modality {name!r}", f"unknown {kind} representation(s) {bad}; expected {', '.join(allowed)}")
    return reps


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_dataset(
    data: MultimodalDataset,
    representations: Representations,
    *,
    text_encoder: str | None = None,
    image_encoder: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    attributes_config: str | Path | AttributeConfig | None = None,
    extractor: str = "rules",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
) -> MultimodalDataset:
    """Replace text/image modalities by encoded inputs ``<modality>.<representation>``.

    ``text_encoder`` / ``image_encoder``: encoder IDs (alias, checkpoint folder or hub id; see
    :mod:`trainables.encoders.sources`). ``cache_dir``: the feature cache folder (default
    ``$FUSETUNE_CACHE_DIR`` or ``~/.cache/fusetune/features``); ``use_cache=False`` encodes
    without reading or writing it. ``attributes_config``: YAML/JSON attribute vocabulary for the
    ``attributes`` representation (default: the packaged synth-clinic one); ``extractor``: a name
    in :data:`trainables.encoders.attributes.EXTRACTORS`. ``max_length``: word pieces per text.
    ``device``: default ``cuda`` when available, else ``cpu``.

    The result's ``meta`` gains ``encoders`` (per input: cache key, bytes, hit or miss, encoder),
    and with ``attributes``: ``attribute_states`` (int8 [N, A]: 1/0/-1) and ``attribute_names``.
    """
    if max_length < 2:
        raise DataError("max_length", f"must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
    if batch_size < 1:
        raise DataError("batch_size", f"must be >= 1, got {batch_size}")
    cache = FeatureCache(cache_dir) if use_cache else None
    dev = device or _default_device()
    ctx = _Context(data, cache, dev, batch_size, max_length, text_encoder, image_encoder, attributes_config, extractor)
    plan = _plan(data, representations, ctx)
    modalities: dict[str, Modality] = {}
    for name, m in data.modalities.items():
        if name not in plan:
            modalities[name] = m
        elif m.kind == "text":
            modalities.update(ctx.encode_text(m, plan[name]))
        else:
            modalities.update(ctx.encode_image(m, plan[name]))
    meta = {**data.meta, **ctx.meta, "encoders": {**data.meta.get("encoders", {}), **ctx.records}}
    out = data.with_modalities(modalities)
    out.meta = meta
    return out


def _plan(data: MultimodalDataset, representations: Representations, ctx: _Context) -> dict[str, tuple[str, ...]]:
    """The representations of every text/image modality, every request validated (and the encoders
    resolved) before anything is encoded."""
    plan: dict[str, tuple[str, ...]] = {}
    for name, m in data.modalities.items():
        if m.kind == "text":
            plan[name] = _requested(representations, name, "text", text_mod.TEXT_REPRESENTATIONS)
            ctx.check_text(m, plan[name])
        elif m.kind == "image":
            plan[name] = _requested(representations, name, "image", image_mod.IMAGE_REPRESENTATIONS)
            ctx.check_image(name, plan[name])
    if sum("attributes" in reps for reps in plan.values()) > 1:
        raise DataError(data.name, "attributes can be extracted from one text modality only")
    return plan


class _Context:
    """State of one ``encode_dataset`` call: resolved sources, lazily loaded encoders, records."""

    def __init__(self, data: MultimodalDataset, cache: FeatureCache | None, device: str, batch_size: int, max_length: int,
                 text_encoder: str | None, image_encoder: str | None,
                 attributes_config: str | Path | AttributeConfig | None, extractor: str) -> None:
        self.data, self.cache, self.device = data, cache, device
        self.batch_size, self.max_length = batch_size, max_length
        self.text_id, self.image_id = text_encoder, image_encoder
        self.attributes_config, self.extractor_name = attributes_config, extractor
        self.records: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Any] = {}
        self._text_source: ModelSource | None = None
        self._image_source: ModelSource | None = None
        self._text = _Lazy(lambda: text_mod.TextEncoder(self.text_source(), self.device))
        self._image = _Lazy(lambda: image_mod.ImageEncoder(self.image_source(), self.device))

    # ------------------------------------------------------------------ sources
    def text_source(self) -> ModelSource:
        if self._text_source is None:
            if not self.text_id:
                raise DataError(self.data.name, "has a text modality; give a text encoder (--text-encoder, e.g. minilm)")
            self._text_source = resolve(self.text_id, TEXT_ENCODERS, "--text-encoder")
        return self._text_source

    def image_source(self) -> ModelSource:
        if self._image_source is None:
            if not self.image_id:
                raise DataError(self.data.name,
                                "has an image modality; give an image encoder (--image-encoder, e.g. resnet-tiny)")
            self._image_source = resolve(self.image_id, IMAGE_ENCODERS, "--image-encoder")
        return self._image_source

    # ------------------------------------------------------------------ cache plumbing
    def _lookup(self, description: dict[str, Any]) -> tuple[str, dict[str, np.ndarray] | None]:
        key = key_digest(description)
        return key, (self.cache.load(key) if self.cache is not None else None)

    def _finish(self, input_name: str, key: str, description: dict[str, Any], arrays: dict[str, np.ndarray],
                hit: bool, source: ModelSource, seconds: float) -> dict[str, np.ndarray]:
        if self.cache is not None and not hit:
            self.cache.store(key, arrays, description)
            arrays = self.cache.load(key) or arrays  # serve the memory map, like a later hit
        nbytes = int(sum(a.nbytes for a in arrays.values()))
        self.records[input_name] = {"key": key, "hit": hit, "bytes": nbytes, "seconds": round(seconds, 4),
                                    "encoder": source.describe(), "path": str(self.cache.path(key)) if self.cache else None}
        log.info("%s: %s %s (%d bytes, %.2fs)", input_name, "cache hit" if hit else "encoded", key[:12], nbytes, seconds)
        return arrays

    def check_text(self, m: Modality, reps: tuple[str, ...]) -> None:
        """Resolve the text encoder (and its sentence pooling when ``reps`` need it); a sample marked
        available must have text (never encode "" as a report)."""
        source = self.text_source()
        if any(r in POOLED_TEXT for r in reps):
            source.sentence_pooling()
        empty = [i for i in np.flatnonzero(m.mask) if not str(m.values[i]).strip()]
        if empty:
            raise DataError(f"{self.data.name}/{m.name}",
                            f"sample {str(self.data.ids[empty[0]])!r} is marked available but its text is empty")

    # ------------------------------------------------------------------ text
    def encode_text(self, m: Modality, reps: tuple[str, ...]) -> dict[str, Modality]:
        """The inputs ``<m>.<rep>`` of a text modality: cache hits loaded, the rest encoded (one
        encoder pass for the sequence representations, one for the attribute prompts)."""
        source = self.text_source()
        extractor = self._attribute_extractor() if "attributes" in reps else None
        descriptions = self._text_descriptions(m, reps, source, extractor)
        found = {rep: self._lookup(d) for rep, d in descriptions.items()}
        idx = np.flatnonzero(m.mask)
        texts = [str(m.values[i]) for i in idx]
        computed: dict[str, dict[str, np.ndarray]] = {}
        seconds: dict[str, float] = {}
        sequence_reps = [r for r in ("sentence", "cls", "tokens") if r in reps and found[r][1] is None]
        if sequence_reps:
            t0 = time.perf_counter()
            computed.update(self._encode_sequences(texts, idx, len(m.mask), sequence_reps))
            seconds.update(dict.fromkeys(sequence_reps, time.perf_counter() - t0))  # of the one pass producing all
        if "attributes" in reps and found["attributes"][1] is None:
            t0 = time.perf_counter()
            computed["attributes"] = self._encode_attributes(texts, idx, len(m.mask), extractor)
            seconds["attributes"] = time.perf_counter() - t0

        out: dict[str, Modality] = {}
        for rep in reps:
            key, arrays = found[rep]
            hit = arrays is not None
            arrays = self._finish(f"{m.name}.{rep}", key, descriptions[rep], arrays if hit else computed[rep], hit,
                                  source, seconds.get(rep, 0.0))
            kind = "vector" if rep in ("sentence", "cls") else "tokens"
            out[f"{m.name}.{rep}"] = Modality(f"{m.name}.{rep}", kind, arrays["values"], m.mask.copy(),
                                              token_mask=arrays.get("token_mask"))
            if rep == "attributes":
                self.meta["attribute_states"] = np.asarray(arrays["states"], dtype=np.int8)
                self.meta["attribute_names"] = extractor.config.names
        return out

    def _attribute_extractor(self):
        config = self.attributes_config
        config = config if isinstance(config, AttributeConfig) else AttributeConfig.load(config)
        return get_extractor(self.extractor_name, config)

    def _text_descriptions(self, m: Modality, reps: tuple[str, ...], source: ModelSource,
                           extractor: Any) -> dict[str, dict[str, Any]]:
        """The cache-key content of every requested text representation."""
        identity, fp = source.identity(), modality_fingerprint(m)
        descriptions: dict[str, dict[str, Any]] = {}
        for rep in reps:
            extra: dict[str, Any] = {"max_length": self.max_length}
            if rep in POOLED_TEXT:
                extra["pooling"] = source.sentence_pooling().identity()
            if rep == "attributes":
                extra["extractor"] = extractor.identity()
            descriptions[rep] = entry_description(fp, "text", rep, identity, text_mod.ENCODING_VERSION, **extra)
        return descriptions

    def _encode_sequences(self, texts: list[str], idx: np.ndarray, n: int,
                          reps: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """``sentence`` / ``cls`` / ``tokens`` of the available samples ``idx`` in one encoder pass;
        the unavailable samples' rows are zeros."""
        enc = self._text.get().encode(texts, max_length=self.max_length, batch_size=self.batch_size, outputs=reps)
        computed: dict[str, dict[str, np.ndarray]] = {}
        for rep in reps:
            names = ("tokens", "token_mask") if rep == "tokens" else (rep,)
            arrays = {}
            for k in names:
                full = np.zeros((n, *enc[k].shape[1:]), enc[k].dtype)
                full[idx] = enc[k]
                arrays["token_mask" if k == "token_mask" else "values"] = full
            computed[rep] = arrays
        return computed

    def _encode_attributes(self, texts: list[str], idx: np.ndarray, n: int, extractor: Any) -> dict[str, np.ndarray]:
        """AlignedFusion's attribute tokens: each sample's attribute states, then its prompt embeddings."""
        states = np.full((n, len(extractor.config)), UNMENTIONED, np.int8)
        states[idx] = extractor.extract(texts)
        # Eq.5: each of the 2*A prompts is encoded once (its sentence embedding: [CLS] for a plain
        # BERT as in the paper, the declared pooling for a sentence-transformers checkpoint);
        # samples gather their tokens from the table
        prompts = self._text.get().encode(extractor.config.prompts(), max_length=self.max_length,
                                          batch_size=self.batch_size, outputs=("sentence",))["sentence"]
        tokens, token_mask = attribute_tokens(states, prompts)  # missing reports: all unmentioned
        return {"values": tokens, "token_mask": token_mask, "states": states}

    # ------------------------------------------------------------------ image
    def check_image(self, name: str, reps: tuple[str, ...]) -> None:
        source = self.image_source()
        family = image_mod.model_family(source)
        bad = [r for r in reps if r not in image_mod.FAMILY_REPRESENTATIONS[family]]
        if bad:
            raise DataError(f"--image-encoder {source.id}", f"a {family} encoder gives "
                            f"{'/'.join(image_mod.FAMILY_REPRESENTATIONS[family])}, not {'/'.join(bad)} (needed for {name!r})")

    def encode_image(self, m: Modality, reps: tuple[str, ...]) -> dict[str, Modality]:
        source = self.image_source()
        identity = source.identity()
        fp = modality_fingerprint(m)
        n = len(m.mask)
        processor = image_mod.processor_identity(source)
        descriptions = {rep: entry_description(fp, "image", rep, identity, image_mod.ENCODING_VERSION, processor=processor)
                        for rep in reps}
        found = {rep: self._lookup(d) for rep, d in descriptions.items()}
        missing = [r for r in reps if found[r][1] is None]
        computed: dict[str, dict[str, np.ndarray]] = {}
        seconds = 0.0
        if missing:
            t0 = time.perf_counter()
            idx = np.flatnonzero(m.mask)
            enc = self._image.get().encode(m.values[idx], batch_size=self.batch_size, outputs=missing)
            for rep in missing:
                full = np.zeros((n, *enc[rep].shape[1:]), np.float32)
                full[idx] = enc[rep]
                computed[rep] = {"values": full}
                if rep != "pooled":  # every spatial position / patch is a real token of an available image
                    computed[rep]["token_mask"] = np.repeat(m.mask[:, None], full.shape[1], axis=1)
            seconds = time.perf_counter() - t0
        out: dict[str, Modality] = {}
        for rep in reps:
            key, arrays = found[rep]
            hit = arrays is not None
            arrays = self._finish(f"{m.name}.{rep}", key, descriptions[rep], arrays if hit else computed[rep], hit,
                                  source, 0.0 if hit else seconds)
            kind = "vector" if rep == "pooled" else "tokens"
            out[f"{m.name}.{rep}"] = Modality(f"{m.name}.{rep}", kind, arrays["values"], m.mask.copy(),
                                              token_mask=arrays.get("token_mask"))
        return out
