"""Frozen image encoders: ResNet (pooled vector, spatial feature map) and ViT (patch tokens).

Models are ``transformers`` ``ResNetModel`` / ``ViTModel`` from a checkpoint folder or a named
random config (:mod:`trainables.encoders.sources`). Outputs for images [N, C, H, W] in [0, 1]:

``pooled``   float32 [N, C']        ResNet: global average pool of the last stage;
                                    ViT: final-layer-normed [CLS] token
``map``      float32 [N, h*w, C']   ResNet only: last-stage feature map, row-major positions
``patches``  float32 [N, P, d]      ViT only: final-layer-normed patch tokens (no [CLS])

Channels: grayscale images are repeated to 3 channels for a 3-channel model, RGB images are
averaged for a 1-channel model. Checkpoints with a ``preprocessor_config.json`` get its resize
(to ``size``; a ``shortest_edge`` size is applied as a square) and mean/std normalisation;
random configs take the images as they are. A ViT whose ``image_size`` differs from the input
interpolates its position embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trainables.data.errors import DataError
from trainables.encoders.sources import RANDOM_INIT_SEED, ModelSource, warn_random
from trainables.encoders.text import _quiet_transformers

if TYPE_CHECKING:
    import torch

IMAGE_REPRESENTATIONS: tuple[str, ...] = ("pooled", "map", "patches")
FAMILY_REPRESENTATIONS: dict[str, tuple[str, ...]] = {"resnet": ("pooled", "map"), "vit": ("pooled", "patches")}
ENCODING_VERSION = "1"
"""Bump when the numbers this module produces for the same encoder and input change."""


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
        self.size: tuple[int, int] | None = None
        self.mean = self.std = None
        proc = source.folder / "preprocessor_config.json" if source.pretrained and source.folder else None
        if proc is not None and proc.is_file():
            p = json.loads(proc.read_text())
            size = p.get("size") if p.get("do_resize", True) else None
            if isinstance(size, int):
                self.size = (size, size)
            elif isinstance(size, dict):
                self.size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
            if p.get("do_normalize", True) and "image_mean" in p:
                self.mean = torch.tensor(p["image_mean"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
                self.std = torch.tensor(p["image_std"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        c = x.shape[1]
        if c != self.channels:
            if c == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise DataError(f"--image-encoder {self.source.id}", f"model takes {self.channels} channels, images have {c}")
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.mean is not None:
            x = (x - self.mean[:, : x.shape[1]]) / self.std[:, : x.shape[1]]
        return x

    def encode(self, images: np.ndarray, *, batch_size: int = 64, outputs: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._encode(images, batch_size, outputs)

    def _encode(self, images: np.ndarray, batch_size: int, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        bad = [o for o in outputs if o not in FAMILY_REPRESENTATIONS[self.family]]
        if bad:
            raise DataError(f"--image-encoder {self.source.id}",
                            f"a {self.family} encoder gives {'/'.join(FAMILY_REPRESENTATIONS[self.family])}, not {'/'.join(bad)}")
        if len(images) == 0:  # shapes from one blank image
            return {k: v[:0] for k, v in self.encode(np.zeros((1, *images.shape[1:]), np.float32), outputs=outputs).items()}
        parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[start:start + batch_size]), dtype=torch.float32, device=self.device)
            x = self._prepare(x)
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
