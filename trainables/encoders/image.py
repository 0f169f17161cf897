"""Frozen image encoders: ResNet (pooled vector, spatial feature map) and ViT (patch tokens).

Models are ``transformers`` ``ResNetModel`` / ``ViTModel`` from a checkpoint folder or a named
random config (:mod:`trainables.encoders.sources`). Outputs for images [N, C, H, W] in [0, 1]:

``pooled``   float32 [N, C']        ResNet: global average pool of the last stage;
                                    ViT: final-layer-normed [CLS] token
``map``      float32 [N, h*w, C']   ResNet only: last-stage feature map, row-major positions
``patches``  float32 [N, P, d]      ViT only: final-layer-normed patch tokens (no [CLS])

Channels: grayscale images are repeated to 3 channels for a 3-channel model, RGB images are
averaged for a 1-channel model. A checkpoint folder with a ``preprocessor_config.json`` is
preprocessed by the image processor its authors configured (``transformers.AutoImageProcessor``:
its resize and resampling filter, centre crop, rescale and mean/std normalisation), fed the
images as 8-bit pixels (``round(255 x)``, the input such processors are written for); random
configs and checkpoints without a processor config take the images as they are. A ViT whose
``image_size`` differs from the input interpolates its position embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.data.errors import DataError
from trainables.encoders.sources import RANDOM_INIT_SEED, ModelSource, warn_random
from trainables.encoders.text import _quiet_transformers

if TYPE_CHECKING:
    import torch

IMAGE_REPRESENTATIONS: tuple[str, ...] = ("pooled", "map", "patches")
FAMILY_REPRESENTATIONS: dict[str, tuple[str, ...]] = {"resnet": ("pooled", "map"), "vit": ("pooled", "patches")}
ENCODING_VERSION = "2"
"""Bump when the numbers this module produces for the same encoder and input change."""


PROCESSOR_CONFIG = "preprocessor_config.json"


def image_processor(source: ModelSource) -> Any | None:
    """``AutoImageProcessor`` of a checkpoint folder that has a processor config, else None."""
    if not source.pretrained or source.folder is None or not (source.folder / PROCESSOR_CONFIG).is_file():
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(source.folder))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"--image-encoder {source.id}", f"{PROCESSOR_CONFIG} does not describe an image processor: "
                        f"{' '.join(str(err).split())[:200]}") from None


def processor_identity(source: ModelSource) -> dict[str, Any] | None:
    """What preprocesses a checkpoint's images, for the cache key: the processor class (its backend,
    PIL or torchvision, resizes differently) and settings; None when the images go in as they are."""
    processor = image_processor(source)
    if processor is None:
        return None
    return {"class": type(processor).__name__, "config": json.loads(processor.to_json_string())}


def model_family(source: ModelSource) -> str:
    """``resnet`` or ``vit``, read from the config without loading weights."""
    if source.pretrained:
        assert source.folder is not None
        model_type = json.loads((source.folder / "config.json").read_text()).get("model_type")
    else:
        model_type = source.config.get("model_type")
    if model_type not in FAMILY_REPRESENTATIONS:
        raise DataError(f"--image-encoder {source.id}", f"model_type {model_type!r} is not supported; expected resnet or vit")
    return str(model_type)


class ImageEncoder:
    def __init__(self, source: ModelSource, device: str | torch.device = "cpu") -> None:
        import torch
        from transformers import AutoConfig, ResNetModel, ViTModel

        _quiet_transformers()
        warn_random(source, "image")
        self.source = source
        self.family = model_family(source)
        self.device = torch.device(device)
        model_cls = {"resnet": ResNetModel, "vit": ViTModel}[self.family]
        kwargs = {"add_pooling_layer": False} if self.family == "vit" else {}
        if source.pretrained:
            model = model_cls.from_pretrained(source.folder, dtype=torch.float32, **kwargs)
        else:
            cfg = dict(source.config)
            config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = model_cls(config, **kwargs)
        self.model = model.to(self.device).eval()
        self.channels = int(self.model.config.num_channels)
        self.processor = image_processor(source)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] -> the model's ``pixel_values`` (module docstring)."""
        import torch

        x = torch.as_tensor(np.asarray(images), dtype=torch.float32, device=self.device)
        c = x.shape[1]
        if c != self.channels:
            if c == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise DataError(f"--image-encoder {self.source.id}", f"model takes {self.channels} channels, images have {c}")
        if self.processor is None:
            return x
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, C]
        out = self.processor(images=list(pixels), return_tensors="pt", input_data_format="channels_last")
        return out["pixel_values"].to(self.device, torch.float32)

    def encode(self, images: np.ndarray, *, batch_size: int = 64, outputs: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._encode(images, batch_size, outputs)

    def _encode(self, images: np.ndarray, batch_size: int, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        bad = [o for o in outputs if o not in FAMILY_REPRESENTATIONS[self.family]]
        if bad:
            raise DataError(f"--image-encoder {self.source.id}",
                            f"a {self.family} encoder gives {'/'.join(FAMILY_REPRESENTATIONS[self.family])}, not {'/'.join(bad)}")
        if len(images) == 0:  # shapes from one blank image
            return {k: v[:0] for k, v in self.encode(np.zeros((1, *images.shape[1:]), np.float32), outputs=outputs).items()}
        parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        for start in range(0, len(images), batch_size):
            x = self.preprocess(images[start:start + batch_size])
            if self.family == "resnet":
                out = self.model(pixel_values=x)
                if "pooled" in parts:
                    parts["pooled"].append(out.pooler_output.flatten(1).float().cpu().numpy())
                if "map" in parts:  # [b, C, h, w] -> [b, h*w, C]
                    parts["map"].append(out.last_hidden_state.flatten(2).transpose(1, 2).float().cpu().numpy())
            else:
                interpolate = tuple(x.shape[-2:]) != (self.model.config.image_size,) * 2
                hidden = self.model(pixel_values=x, interpolate_pos_encoding=interpolate).last_hidden_state
                if "pooled" in parts:
                    parts["pooled"].append(hidden[:, 0].float().cpu().numpy())
                if "patches" in parts:
                    parts["patches"].append(hidden[:, 1:].float().cpu().numpy())
        return {o: np.ascontiguousarray(np.concatenate(v), dtype=np.float32) for o, v in parts.items()}
