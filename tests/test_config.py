"""Typed configs: parsing, one-line errors, the old key ``scheduler`` (configs, checkpoints, bundles),
and a toy method added with a method file, its space and one registry line."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

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
REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------------------- the options of a search
# search.prepare.config.SearchConfig: one typed declaration of every option; the command line, a --config file,
# run_search() and a resumed search's search.json all go through search.prepare.parse.typed, then resolve

SEARCH_JSON_TODAY = """{
  "space": "climd", "only": ["lr", "gamma"], "data": "breast-tcga", "metric": ["macro_f1", "macro_f1_std"],
  "mode": ["max", "min"], "num_samples": 20, "epochs": 20, "folds": 5, "val_fraction": 0.2, "sampler": "nsga2",
  "scheduler": "median", "grace_period": 7, "max_concurrent": null, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0,
  "address": null, "storage": "/old/results", "name": "climd-breast-tcga-20250101-120000", "resume": false,
  "tracking_uri": null, "experiment": "fusetune", "seed": 0, "sampler_seed": null, "top_k": 3, "max_failures": 0,
  "text_encoder": "minilm", "image_encoder": "resnet-tiny", "cache_dir": null, "optuna_storage": null,
  "warm_start": null, "points": [{"lr": 0.001}], "confirm_repeats": 3, "references": [], "promote": "better",
  "ensemble": "trials+references", "ensemble_size": 5, "parent_run_id": null
}"""
"""A search.json as the fusetune before the typed options wrote it (``cfg.as_saved()``, verbatim)."""


def _help_options(capsys, monkeypatch) -> dict[str, str]:
    """``python -m search.run --help``: option -> its help line (one line each: a wide terminal)."""
    import re

    from search import run as run_mod

    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as done:
        run_mod.run(["--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    blocks: list[str] = []
    for line in lines[lines.index("options:") + 1:]:  # an option's line, then its help's on deeper indents
        if line.startswith("  -"):
            blocks.append(line.strip())
        elif blocks:
            blocks[-1] += " " + line.strip()
    return {m[1]: m[2] for block in blocks if (m := re.match(r"^(?:-h, )?(--[\w-]+)(?: [A-Z_]+| \{\S+\})?\s*(.*)$", block))}


def _shown_default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _printed(capsys, argv) -> str:
    from search import run as run_mod

    assert run_mod.run([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


def test_help_print_config_and_run_search_have_the_same_options_and_defaults(capsys, monkeypatch, tmp_path):
    import inspect
    import re
    from dataclasses import MISSING, fields

    import yaml

    from search import run_search
    from search.prepare import config, parse

    declared = {f.name: f.default for f in fields(config.SearchConfig)}
    shown = _help_options(capsys, monkeypatch)
    assert set(shown) - {"--help", "--config", "--print-config"} == {config.flag(n) for n in declared} - {"--parent-run-id"}
    printed = yaml.safe_load(_printed(capsys, ["--space", "baseline", "--storage", str(tmp_path)]))
    assert list(printed) == list(declared)
    params = inspect.signature(run_search).parameters
    assert list(params) == [*declared, "out"]  # out=: where its lines go (none by default), not an option
    params = {name: p for name, p in params.items() if name != "out"}
    filled = {"data", "name", "metric", "mode", "epochs", "grace_period", "text_encoder", "image_encoder", "ensemble",
              "storage"}  # what resolve fills from the space (storage: made absolute here)
    for name, value in declared.items():
        assert params[name].default is (inspect.Parameter.empty if value is MISSING else value), name
        if name not in filled and value is not MISSING:
            assert printed[name] == (list(value) if isinstance(value, tuple) else value), name
        help_line = shown.get(config.flag(name))
        if help_line is None:  # --parent-run-id: search.nested's, not shown
            continue
        default = re.search(r"\((default:? [^()]*(?:\([^()]*\)[^()]*)*)\)$", help_line)
        if (parse.info(name).json_schema_extra or {}).get("shown"):
            assert default and default[1].startswith("default: "), name  # a default the space or the run fills
        elif value in (MISSING, None, ()) or isinstance(value, bool):
            assert default is None, name
        else:
            assert default and default[1] == f"default {_shown_default(value)}", (name, help_line)


@pytest.mark.parametrize("argv", [
    ["--space", "baseline"],
    ["--space", "climd", "--sampler", "nsga2", "--points", '{"lr": 0.001}', "--references", "none", "--only", "lr,gamma",
     "--epochs", "20"],
    ["--space", "omnifuse", "--scheduler", "fifo", "--metric", "macro_f1,auroc", "--mode", "max,min", "--folds", "0",
     "--val-fraction", "0.25", "--gpus-per-trial", "0.5", "--confirm-repeats", "0", "--name", "n1"],
    ["--space", "omnifuse", "--scheduler", "pbt", "--sampler", "random", "--num-samples", "4", "--seed", "3",
     "--sampler-seed", "9", "--tracking-uri", "http://127.0.0.1:5000", "--promote", "never"],
])
def test_print_config_fed_back_with_config_is_the_same_search(argv, capsys, tmp_path):
    from search import run as run_mod
    from search.prepare.cli import parse_args
    from search.prepare.config import SearchConfig
    from search.prepare.resolve import resolve

    argv = [*argv, "--storage", str(tmp_path)]
    first = run_mod.options(parse_args(argv), refuse_taken=False)
    path = tmp_path / "search.yaml"
    path.write_text(_printed(capsys, argv))
    again = resolve(SearchConfig(**parse_args(["--config", str(path)])))
    if "--name" not in argv:  # the default name carries the second it was resolved in: the printed one's
        assert again.name.rsplit("-", 2)[0] == first.name.rsplit("-", 2)[0]
        first = replace(first, name=again.name)
    assert again == first
    assert _printed(capsys, ["--config", str(path)]) == path.read_text()  # and prints the same YAML
    assert [p.name for p in tmp_path.iterdir()] == ["search.yaml"]  # nothing else written


BAD_VALUES = [("num_samples", "0", 0, "--num-samples 0: expected an integer >= 1"),
              ("val_fraction", "1.5", 1.5, "--val-fraction 1.5: expected a number in (0, 1)"),
              ("references", "xgb", ["xgb"], "--references xgb: unknown reference 'xgb'; choose from logreg, rf, hgb or none"),
              ("folds", "1", 1, "--folds 1: must be 0 (one hold-out split, see --val-fraction) or at least 2"),
              ("tracking_uri", "http://alice:s3cr3t@h:5000", "http://alice:s3cr3t@h:5000",
               "--tracking-uri http://alice:***@h:5000: leave the credentials out of the URI")]


@pytest.mark.parametrize("name, text, value, message", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_one_bad_value_is_one_line_naming_the_option_on_every_path(name, text, value, message, tmp_path):
    """The command line, a --config file, run_search() and search.json refuse it alike, before anything runs."""
    from search import run as run_mod
    from search import run_search
    from search.prepare.cli import parse_args
    from search.prepare.config import flag
    from search.prepare.errors import UsageError
    from search.prepare.parse import from_saved

    path = tmp_path / "search.yaml"
    path.write_text(f"space: baseline\n{name}: {json.dumps(value)}\n")
    attempts = {"command line": lambda: parse_args(["--space", "baseline", flag(name), text]),
                "--config": lambda: parse_args(["--config", str(path)]),
                "run_search": lambda: run_search(space="baseline", **{name: value}),
                "search.json": lambda: from_saved({**json.loads(SEARCH_JSON_TODAY), name: value})}
    for where, attempt in attempts.items():
        with pytest.raises(UsageError) as err:
            attempt()
        assert str(err.value).startswith(message) and "\n" not in str(err.value), (where, str(err.value))
        assert "s3cr3t" not in str(err.value)
    assert run_mod.main(["--space", "baseline", flag(name), text, "--storage", str(tmp_path)]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["search.yaml"]


def test_a_search_json_of_the_earlier_fusetune_resumes(tmp_path, monkeypatch):
    from search import run as run_mod
    from search.prepare import parse, preflight, resolve
    from search.trust import integrity

    folder = tmp_path / "climd-breast-tcga-20250101-120000"
    folder.mkdir()
    (folder / run_mod.SEARCH_FILE).write_text(SEARCH_JSON_TODAY)
    monkeypatch.setattr(preflight, "find_search", lambda storage, name: name)  # no Tune state in this folder
    monkeypatch.setattr(integrity, "verify", lambda path: None)
    cfg = run_mod.options({"resume": True, "storage": str(tmp_path), "name": folder.name, "num_samples": "20"})
    assert (cfg.only, cfg.metric, cfg.mode, cfg.points, cfg.references) == (
        ("lr", "gamma"), ("macro_f1", "macro_f1_std"), ("max", "min"), ({"lr": 0.001},), ())
    assert cfg.storage == str(tmp_path) and cfg.resume and cfg.grace_period == 7 and cfg.ensemble == "trials+references"
    assert cfg == resolve.resolve(cfg)  # what it saved is a resolved search
    # one written before ensembles (no 'ensemble' key) had no out-of-fold predictions; a fifo search then kept
    # the space's grace period it did not read
    older = {k: v for k, v in json.loads(SEARCH_JSON_TODAY).items() if k not in ("ensemble", "only", "parent_run_id")}
    old = parse.from_saved({**older, "scheduler": "fifo", "grace_period": 25})
    assert (old.ensemble, old.only, old.grace_period) == ("off", (), 25)
    with pytest.raises(Exception, match="--metric: cannot change on --resume"):
        run_mod.options({"resume": True, "storage": str(tmp_path), "name": folder.name, "metric": "auroc"})


def test_choices_are_the_registries_and_their_capabilities():
    import subprocess

    from search.prepare import config, registry_names
    from search.prepare.cli import build_parser

    parser = {a.dest: a for a in build_parser()._actions}
    assert tuple(parser["sampler"].choices) == tuple(registry_names.SAMPLERS)
    assert tuple(parser["scheduler"].choices) == tuple(registry_names.SCHEDULERS)
    assert tuple(parser["promote"].choices) == tuple(registry_names.PROMOTE_POLICIES)
    assert config.default("references") == registry_names.REFERENCES
    # the declaration the options check reads imports neither Ray nor sklearn; the registries check it at import
    code = ("import sys, search.prepare.registry_names, search.prepare.config, search.prepare.parse, "
            "search.prepare.resolve; print(sorted({'search.tune.samplers', 'search.tune.schedulers', "
            "'search.select.references', 'search.handoff.promotion'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    code = "import sys, search.prepare.registry_names; print(sorted({'ray', 'sklearn', 'optuna'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    from search.select import references
    from search.tune import samplers

    assert all(samplers.SAMPLERS[n].traits is t for n, t in registry_names.SAMPLERS.items())
    assert tuple(references.REFERENCES) == registry_names.REFERENCES
