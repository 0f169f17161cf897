"""Preprocessing fitted on the training part of a fold only, then applied to any part.

Vector modalities are standardised with mean/std computed over the *available* training samples;
unavailable samples stay exactly zero (the mask, not the value, says they are missing).
Token modalities are left as they are (encoder outputs). Text and images are not touched here:
they reach models through the encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainables.data.dataset import Modality, MultimodalDataset


@dataclass
class Standardizer:
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)
    eps: float = 1e-6

    @classmethod
    def fit(cls, data: MultimodalDataset) -> Standardizer:
        st = cls()
        for name, m in data.modalities.items():
            if m.kind != "vector":
                continue
            x = m.values[m.mask].astype(np.float64)
            if len(x) == 0:
                mean = np.zeros(m.values.shape[1])
                std = np.ones(m.values.shape[1])
            else:
                mean = x.mean(axis=0)
                std = x.std(axis=0)
            st.mean[name] = mean.astype(np.float32)
            st.std[name] = np.where(std < st.eps, 1.0, std).astype(np.float32)
        return st

    def transform(self, data: MultimodalDataset) -> MultimodalDataset:
        mods: dict[str, Modality] = {}
        for name, m in data.modalities.items():
            if name in self.mean:
                z = (m.values.astype(np.float32) - self.mean[name]) / self.std[name]
                z[~m.mask] = 0.0
                mods[name] = Modality(name, m.kind, z.astype(np.float32), m.mask.copy(), m.feature_names, m.token_mask)
            else:
                mods[name] = m
        return data.with_modalities(mods)

    def state_dict(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for name in self.mean:
            out[f"{name}.mean"] = self.mean[name].tolist()
            out[f"{name}.std"] = self.std[name].tolist()
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, list[float]]) -> Standardizer:
        st = cls()
        for key, val in state.items():
            name, stat = key.rsplit(".", 1)
            getattr(st, stat)[name] = np.asarray(val, dtype=np.float32)
        return st
