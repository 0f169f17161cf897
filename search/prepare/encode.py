"""``python -m search.data encode``: precompute encoder features into the feature cache.

    python -m search.data encode --data synth-clinic --text-encoder minilm --image-encoder resnet-tiny
    python -m search.data encode --data synth-clinic --text-encoder minilm --image-encoder vit-tiny \\
        --representations text=attributes image=patches --cache-dir /shared/fusetune-features

Prints JSON: the cache folder and, per encoded input (``<modality>.<representation>``), its cache
key, shape, bytes and whether it was already cached. Without ``--representations`` it encodes
every text representation the registered methods use and every image representation they use
that the image encoder family gives (ResNet: pooled, map; ViT: pooled, patches). A kind of
modality without its encoder (images but no ``--image-encoder``) is left out and listed under
``skipped`` with the option that would encode it; giving neither encoder is an error.
"""

from __future__ import annotations

import argparse
import json

from search.prepare.errors import UsageError
from trainables.data import MultimodalDataset, load_dataset
from trainables.encoders import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    EXTRACTORS,
    IMAGE_ENCODERS,
    IMAGE_REPRESENTATIONS,
    TEXT_ENCODERS,
    TEXT_REPRESENTATIONS,
    FeatureCache,
    encode_dataset,
    resolve,
)
from trainables.encoders.image import FAMILY_REPRESENTATIONS, model_family

ALLOWED = {"text": TEXT_REPRESENTATIONS, "image": IMAGE_REPRESENTATIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="rosmap, breast-tcga, synth-clinic[:k=v,...] or a dataset folder")
    parser.add_argument("--text-encoder", metavar="ID",
                        help=f"{', '.join(TEXT_ENCODERS)}, a BERT-family checkpoint folder or a hub id")
    parser.add_argument("--image-encoder", metavar="ID",
                        help=f"{', '.join(IMAGE_ENCODERS)}, a ResNet/ViT checkpoint folder or a hub id")
    parser.add_argument("--representations", nargs="+", metavar="KIND=REP,...",
                        help="e.g. text=cls,tokens,attributes image=pooled,map (default: what the registered methods use)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="feature cache folder (default $FUSETUNE_CACHE_DIR or ~/.cache/fusetune/features)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="word pieces per report")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--attributes", metavar="FILE", help="attribute vocabulary YAML/JSON (default: the synth-clinic one)")
    parser.add_argument("--extractor", default="rules", choices=sorted(EXTRACTORS), help="report attribute extractor")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def parse_representations(items: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        kind, eq, reps = item.partition("=")
        if not eq or kind not in ALLOWED:
            raise UsageError(f"--representations {item}: expected text=REP,... or image=REP,...")
        values = tuple(r for r in reps.split(",") if r)
        bad = [r for r in values if r not in ALLOWED[kind]]
        if not values or bad:
            raise UsageError(f"--representations {item}: {kind} representations are {', '.join(ALLOWED[kind])}")
        out[kind] = values
    return out


def default_representations(image_encoder: str | None) -> dict[str, tuple[str, ...]]:
    """Union of what the registered methods read, image part restricted to the encoder family."""
    from trainables.registry import METHODS

    used: dict[str, list[str]] = {"text": [], "image": []}
    for spec in METHODS.values():
        for kind, reps in spec.representations.items():
            used[kind].extend(reps)
    out = {"text": tuple(dict.fromkeys(used["text"]))}
    if image_encoder:
        family = model_family(resolve(image_encoder, IMAGE_ENCODERS, "--image-encoder"))
        out["image"] = tuple(r for r in dict.fromkeys(used["image"]) if r in FAMILY_REPRESENTATIONS[family])
    return out


ENCODER_OPTIONS = {"text": "--text-encoder", "image": "--image-encoder"}


def without_unencoded(data: MultimodalDataset, encoders: dict[str, str | None],
                      reps: dict[str, tuple[str, ...]]) -> tuple[MultimodalDataset, dict[str, str]]:
    """``data`` less the text/image modalities that have no encoder and no requested representation,
    and, per left-out modality, the option that would encode it."""
    skipped = {name: f"{m.kind} modality: give {ENCODER_OPTIONS[m.kind]} to encode it"
               for name, m in data.modalities.items()
               if m.kind in ENCODER_OPTIONS and not encoders[m.kind] and m.kind not in reps and name not in reps}
    if not skipped:
        return data, {}
    kept = {name: m for name, m in data.modalities.items() if name not in skipped}
    if not any(m.kind in ENCODER_OPTIONS for m in kept.values()):
        kinds = sorted({data.modalities[n].kind for n in skipped})
        raise UsageError(f"--data {data.name}: has {' and '.join(kinds)} modalities; give "
                         f"{' and/or '.join(ENCODER_OPTIONS[k] for k in kinds)}")
    out = data.with_modalities(kept)
    out.meta = dict(data.meta)
    return out, skipped


def run(args: argparse.Namespace) -> int:
    data = load_dataset(args.data)
    fingerprint = data.fingerprint()
    reps = parse_representations(args.representations) if args.representations else default_representations(args.image_encoder)
    if not args.text_encoder and not args.representations:
        reps.pop("text", None)
    data, skipped = without_unencoded(data, {"text": args.text_encoder, "image": args.image_encoder}, reps)
    encoded = encode_dataset(
        data, reps, text_encoder=args.text_encoder, image_encoder=args.image_encoder, cache_dir=args.cache_dir,
        attributes_config=args.attributes, extractor=args.extractor, max_length=args.max_length,
        batch_size=args.batch_size, device=args.device,
    )
    entries = {}
    for name, rec in encoded.meta.get("encoders", {}).items():
        m = encoded.modalities[name]
        entries[name] = {"key": rec["key"], "shape": list(m.values.shape), "bytes": rec["bytes"],
                         "cached_before": rec["hit"], "encoder": rec["encoder"]["id"], "pretrained": rec["encoder"]["pretrained"]}
    print(json.dumps({
        "data": data.name,
        "fingerprint": fingerprint,
        "cache_dir": str(FeatureCache(args.cache_dir).root),
        "entries": entries,
        "total_bytes": sum(e["bytes"] for e in entries.values()),
        **({"skipped": skipped} if skipped else {}),
    }, indent=2))
    return 0
