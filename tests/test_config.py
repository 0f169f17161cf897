"""Typed configs: parsing, one-line errors, the old key ``scheduler`` (configs, checkpoints, bundles),
and a toy method added with a method file, its space and one registry line."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from toydata import Vec, toy_dataset
from trainables import config as tc
from trainables.climd import CURRICULA, CURRICULUM_NAMES, CurriculumConfig
from trainables.data.dataset import MultimodalDataset
from trainables.engine import EngineConfig, FoldTrainer, parse_config
from trainables.losses import CRITERIA
from trainables.omnifuse import OmniFuseConfig

torch.set_num_threads(1)


def toy(n=48, seed=0) -> MultimodalDataset:
    return toy_dataset(n, [Vec("a", 5, shift=1.5), Vec("b", 3, shift=1.5)], labels="blocks", seed=seed)


# ------------------------------------------------------------------------------- parsing
def test_parse_fills_defaults_and_types_values():
    c = parse_config("omnifuse", {"lr": 1, "K": 3.0, "modalities": "a, b", "tla_mask": "restrict", "alpha": None})
    assert c.engine.lr == 1.0 and isinstance(c.engine.lr, float)
    assert c.model.K == 3 and isinstance(c.model.K, int)
    assert c.engine.modalities == ("a", "b")
    assert c.model.alpha == OmniFuseConfig.alpha  # None = not set (PBT's inactive dimension)
    assert c.curriculum == CurriculumConfig() and c.engine.epochs == EngineConfig.epochs == 100
    assert c.flat["K"] == 3 and c.flat["curriculum"] == "none" and c.flat["gamma"] == 0.3


def test_bad_keys_and_values_fail_in_one_line():
    cases = [({"hiden": 64}, r"baseline config 'hiden': unknown key; did you mean 'hidden'\?"),
             ({"K": 5}, r"'K': unknown key"),                    # an OmniFuse key given to the baseline
             ({"batch_size": True}, r"'batch_size': expected an integer, got True"),
             ({"measurer": "all"}, r"'measurer': expected one of 'intra', 'inter', 'both', got 'all'"),
             ({"imbalance": "vae2"}, r"config 'imbalance': unknown 'vae2'"),
             ({"warmup_epochs": -1}, r"config 'warmup_epochs' must be >= 0")]
    for config, match in cases:
        with pytest.raises(tc.ConfigError, match=match) as info:
            parse_config("baseline", config)
        assert "\n" not in str(info.value)


def test_registries_and_literals_agree():
    """The curriculum names a config accepts are the registry's (plus ``none``); every imbalance
    option has a criterion (EngineConfig checks against CRITERIA itself)."""
    assert set(CURRICULUM_NAMES) == {*CURRICULA, "none"}
    for name in CRITERIA:
        assert EngineConfig(imbalance=name).imbalance == name


def test_prefixed_keys_are_known_through_their_class():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Extra:
        latent: int = 8

    tc.check_keys({"vae_latent": 4}, [EngineConfig], prefixed={"vae_": Extra})
    with pytest.raises(tc.ConfigError, match="'vae_hidden': unknown key"):
        tc.check_keys({"vae_hidden": 4}, [EngineConfig], prefixed={"vae_": Extra})


# ------------------------------------------------------------------------------- the old key
def test_the_old_curriculum_key_still_loads_and_trains_the_same():
    old = {"epochs": 3, "lr": 3e-3, "hidden": 8, "scheduler": "climd", "config_version": 1}
    new = {"epochs": 3, "lr": 3e-3, "hidden": 8, "curriculum": "climd"}
    assert parse_config("baseline", old).curriculum.curriculum == "climd"
    a, b = FoldTrainer("baseline", old, toy(), seed=0), FoldTrainer("baseline", new, toy(), seed=0)
    assert [a.train_epoch()["loss"] for _ in range(3)] == [b.train_epoch()["loss"] for _ in range(3)]
    assert "scheduler" not in a.config and a.config["curriculum"] == "climd"
    with pytest.raises(tc.ConfigError, match="'scheduler' is the old name of 'curriculum'"):
        parse_config("baseline", {"scheduler": "climd", "curriculum": "none"})


def test_a_checkpoint_written_before_the_rename_resumes():
    cfg = {"epochs": 4, "lr": 3e-3, "hidden": 8, "curriculum": "climd"}
    a = FoldTrainer("baseline", cfg, toy(), seed=0)
    a.train_epoch()
    state = a.state_dict()
    state["sampler"] = state.pop("curriculum")  # the key before the rename
    b = FoldTrainer("baseline", cfg, toy(), seed=5)
    b.load_state_dict(state)
    assert np.array_equal(b.curriculum.r, a.curriculum.r)
    assert a.train_epoch()["loss"] == b.train_epoch()["loss"]


def _rewrite_manifest(path) -> None:
    from trainables.bundle import MANIFEST, _sha256

    manifest = json.loads((path / MANIFEST).read_text())
    for name, entry in manifest["files"].items():
        entry.update(sha256=_sha256(path / name), bytes=(path / name).stat().st_size)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))


def test_a_bundle_written_before_the_rename_loads_and_predicts_the_same(tmp_path):
    from trainables.bundle import CONFIG, load_bundle, save_bundle

    data = toy()
    trainer = FoldTrainer("omnifuse", {"epochs": 2, "lr": 3e-3, "hidden": 8, "ra_latent": 4, "K": 2}, data, seed=0)
    for _ in range(2):
        trainer.train_epoch()
    path = save_bundle(tmp_path / "new", trainer, data=data)
    written = json.loads((path / CONFIG).read_text())
    assert written["config_version"] == tc.CONFIG_VERSION == 2 and written["curriculum"] == "none"
    # the same bundle as the code before the rename wrote it: no version, the curriculum as 'scheduler'
    old = {k: v for k, v in written.items() if k not in ("config_version", "curriculum")} | {"scheduler": "none"}
    (path / CONFIG).write_text(json.dumps(old, indent=1, sort_keys=True))
    _rewrite_manifest(path)
    bundle = load_bundle(path)
    assert bundle.config["curriculum"] == "none" and "scheduler" not in bundle.config
    frame = {k: m.values for k, m in data.modalities.items()}
    np.testing.assert_array_equal(bundle.predict(frame), trainer.predict_proba(data))


# ------------------------------------------------------------------------------- a toy method
TOY_METHOD = '''
    """A toy method: one linear encoder per modality, the mean of the embeddings, a linear classifier."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from trainables.backbone import Backbone, BackboneOutput, DataSpec, logical_name


    @dataclass(frozen=True)
    class ToyConfig:
        hidden: int = 8        # embedding width
        scale: float = 1.0     # multiplies the fused embedding before the classifier


    class Toy(Backbone):
        Config = ToyConfig

        def __init__(self, spec: DataSpec, config: ToyConfig = ToyConfig()) -> None:
            super().__init__(spec)
            self.config = config
            dims = {m: sum(i.dim for i in spec.inputs if logical_name(i.name) == m) for m in self.modalities}
            self.encoders = nn.ModuleList(nn.Linear(dims[m], config.hidden) for m in self.modalities)
            self.heads = nn.ModuleList(nn.Linear(config.hidden, self.num_classes) for _ in self.modalities)
            self.classifier = nn.Linear(config.hidden, self.num_classes)

        def forward(self, batch):
            emb = torch.stack([enc(batch.inputs[m]) for m, enc in zip(self.modalities, self.encoders)])
            fused = self.config.scale * emb.mean(0)
            uni = torch.stack([h(e.detach()) for h, e in zip(self.heads, emb)])
            return BackboneOutput(self.classifier(fused), uni, emb, batch.mask)
'''

TOY_SPACE = '''
    from spaces import common
    from spaces.dimensions import Float
    from spaces.registry import register_space
    from spaces.space import Space, combine
    from toy_method import ToyConfig

    register_space(Space(
        "toy", "toy", "the toy method",
        combine(common.training(lr=1e-2), (Float("scale", 0.1, 10.0, log=True, default=ToyConfig.scale, help="scale"),)),
        fixed={"curriculum": "none"},
    ))
'''


def test_a_toy_method_needs_a_method_file_its_space_and_one_registry_line(tmp_path, monkeypatch):
    from spaces import SPACES
    from trainables.registry import METHODS, MethodSpec, register_method
    from trainables.trainable import Trial
    from trainables.trial_data import TrialData

    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD))
    (tmp_path / "toy_space.py").write_text(textwrap.dedent(TOY_SPACE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("trainables.registry.METHODS", dict(METHODS))
    monkeypatch.setattr("spaces.registry.SPACES", dict(SPACES))
    for name in ("toy_method", "toy_space"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    register_method(MethodSpec("toy", "toy_method:Toy", description="toy"))   # the registry line
    import toy_space  # noqa: F401  (registers the space)

    from spaces.registry import get_space

    space = get_space("toy")
    config = {**space.default_config(), "method": "toy", "seed": 0, "folds": 3, "epochs": 3}
    assert config["lr"] == 1e-2 and config["scale"] == 1.0
    trial = Trial("toy", config, TrialData(toy(), "fp", "toy", ("vector",)))
    reports = [trial.step() for _ in range(3)]
    assert reports[-1]["final"] and 0.0 <= reports[-1]["accuracy"] <= 1.0
    assert reports[-1]["loss"] < reports[0]["loss"]
    with pytest.raises(tc.ConfigError, match="'scal': unknown key; did you mean 'scale'"):
        Trial("toy", {**config, "scal": 2.0}, TrialData(toy(), "fp", "toy", ("vector",)))
