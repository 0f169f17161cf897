"""Frozen BERT-family text encoder: sentence embeddings, [CLS] vectors and padded token sequences.

Any ``transformers`` encoder checkpoint with a tokenizer works (BERT, ClinicalBERT, BioBERT,
MiniLM, RoBERTa, ...), named as in :mod:`trainables.encoders.sources`. Outputs for a batch of
texts, truncated to ``max_length`` word pieces (special tokens included):

``sentence`` float32 [N, d']               the checkpoint's sentence embedding: its declared pooling
                                           and normalisation (:mod:`trainables.encoders.pooling`;
                                           ``minilm``: mean over the attention mask, L2 norm 1)
``cls``     float32 [N, d]                 last hidden state at [CLS] (position 0)
``tokens``  float32 [N, max_length, d]     last hidden states, zero at padding;
            bool    [N, max_length]        attention mask (True = real word piece)

Texts are batched in order of length (dynamic padding to the batch's longest text) and run under
``torch.inference_mode()``; results are returned in the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trainables.encoders.pooling import Pooling
from trainables.encoders.sources import RANDOM_INIT_SEED, ModelSource, warn_random

if TYPE_CHECKING:
    import torch

TEXT_REPRESENTATIONS: tuple[str, ...] = ("sentence", "cls", "tokens", "attributes")
ENCODING_VERSION = "1"
"""Bump when the numbers this module produces for the same encoder and input change."""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class TextEncoder:
    def __init__(self, source: ModelSource, device: str | torch.device = "cpu") -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        _quiet_transformers()
        warn_random(source, "text")
        self.source = source
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source.folder)
        if source.pretrained:
            model = AutoModel.from_pretrained(source.folder, dtype=torch.float32)
        else:
            cfg = dict(source.config)
            config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = AutoModel.from_config(config)
        self.model = model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._pooling: Pooling | None = None

    @property
    def pooling(self) -> Pooling:
        """The sentence pooling (read on first use, so cls/tokens never depend on it)."""
        if self._pooling is None:
            self._pooling = self.source.sentence_pooling()
        return self._pooling

    def encode(self, texts: Sequence[str], *, max_length: int, batch_size: int = 64,
               outputs: Sequence[str] = ("cls",)) -> dict[str, np.ndarray]:
        """``outputs`` from ``sentence``, ``cls``, ``tokens``; returns arrays keyed ``sentence``, ``cls``,
        ``tokens``, ``token_mask``."""
        import torch

        with torch.inference_mode():
            return self._encode(texts, max_length, batch_size, outputs)

    def _encode(self, texts: Sequence[str], max_length: int, batch_size: int, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        n = len(texts)
        if n == 0:  # shapes from one blank text
            return {k: v[:0] for k, v in self.encode([""], max_length=max_length, outputs=outputs).items()}
        out: dict[str, np.ndarray] = {}
        if "sentence" in outputs:
            out["sentence"] = np.zeros((n, self.dim * len(self.pooling.modes)), np.float32)
        if "cls" in outputs:
            out["cls"] = np.zeros((n, self.dim), np.float32)
        if "tokens" in outputs:
            out["tokens"] = np.zeros((n, max_length, self.dim), np.float32)
            out["token_mask"] = np.zeros((n, max_length), bool)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([str(texts[i]) for i in idx], padding="longest", truncation=True,
                                 max_length=max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [b, l, d], l <= max_length
            if "sentence" in out:
                out["sentence"][idx] = self.pooling(hidden.float(), enc["attention_mask"]).cpu().numpy()
            if "cls" in out:
                out["cls"][idx] = hidden[:, 0].float().cpu().numpy()
            if "tokens" in out:
                mask = enc["attention_mask"].bool()
                length = hidden.shape[1]
                out["tokens"][idx, :length] = (hidden * mask[..., None]).float().cpu().numpy()
                out["token_mask"][idx, :length] = mask.cpu().numpy()
        return out
