"""Search spaces: valid samples, conditional dimensions, paper default first, grids, list/show."""

from __future__ import annotations

import itertools
import subprocess
import sys

import optuna
import pytest

from search import spaces as spaces_cli
from search.prepare.config import SearchConfig
from search.prepare.resolve import resolve
from search.tune.orchestrate import build_searcher, fixed_keys
from spaces import SPACES, Categorical, Float, Forbidden, Int, Space, When, get_space
from trainables import engine
from trainables.config import ConfigError
from trainables.registry import METHODS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample_configs(space: Space, n: int, sampler: optuna.samplers.BaseSampler) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        study.tell(trial, 0.0)
        out.append(config)
    return out


@pytest.mark.parametrize("name", list(SPACES))
def test_every_space_samples_valid_configs(name):
    space = get_space(name)
    assert space.method in METHODS
    configs = sample_configs(space, 40, optuna.samplers.RandomSampler(seed=1))
    configs += sample_configs(space, 12, optuna.samplers.TPESampler(seed=2, n_startup_trials=4))
    for config in configs:
        assert space.validate(config) == [], config
        for key, value in space.fixed.items():
            assert config[key] == value


def test_validate_rejects_bad_configs():
    space = get_space("omnifuse-ablation")
    good = space.default_config()
    assert space.validate(good) == []
    assert any("beta" in p and "inactive" in p for p in space.validate({**good, "dwfuse": False}))
    assert any("outside" in p for p in space.validate({**good, "lr": 1.0}))
    assert any("missing" in p for p in space.validate({k: v for k, v in good.items() if k != "K"}))
    assert any("fixes" in p for p in get_space("omnifuse").validate({**get_space("omnifuse").default_config(), "tla": False}))


def test_omnifuse_ablation_conditionals():
    space = get_space("omnifuse-ablation")
    configs = sample_configs(space, 200, optuna.samplers.RandomSampler(seed=0))
    for c in configs:
        assert ("beta" in c) == ("alpha" in c) == c["dwfuse"]          # no beta when DWFuse is off
        assert ("lambda1" in c) == c["imp_backward"]
        assert ("lambda3" in c) == ("tla_mask" in c) == c["tla"]
        assert ("K" in c) == ("ra_latent" in c) == (c["imp_forward"] or c["imp_backward"])
        assert "lambda2" in c
    # every switch combination shows up, so each conditional branch was exercised
    assert {tuple(c[s] for s in ("dwfuse", "tla", "imp_forward", "imp_backward")) for c in configs} == \
        set(itertools.product((True, False), repeat=4))


def test_climd_scheduler_conditionals():
    for c in sample_configs(get_space("climd"), 150, optuna.samplers.RandomSampler(seed=3)):
        assert ("gamma" in c) == ("shortfall" in c) == (c["curriculum"] == "climd")
        assert ("n_buckets" in c) == (c["curriculum"] in ("baby_step", "one_pass"))
        assert ("c0" in c) == (c["curriculum"] in ("linear", "root", "geom"))
        assert c["imbalance"] == "none"
    for c in sample_configs(get_space("baseline"), 100, optuna.samplers.RandomSampler(seed=4)):
        assert ("gamma_focal" in c) == (c["imbalance"] == "focal")
        assert ("smote_k" in c) == (c["imbalance"] == "smote")
        assert c["curriculum"] == "none"


def test_conditions_may_read_fixed_keys():
    # in `omnifuse` the switches are fixed on, so their weights are always sampled
    for c in sample_configs(get_space("omnifuse"), 20, optuna.samplers.RandomSampler(seed=5)):
        assert {"alpha", "beta", "lambda1", "lambda2", "lambda3", "K"} <= set(c)
    for c in sample_configs(get_space("emrfusion-ablation"), 60, optuna.samplers.RandomSampler(seed=6)):
        assert ("align_weight" in c) == c["alignment"]


def test_issue_coverage():
    def names(s):
        return set(get_space(s).names) | set(get_space(s).fixed)

    assert {"gamma", "curriculum", "measurer", "difficulty_order"} <= names("climd")
    assert {"K", "alpha", "beta", "lambda1", "lambda2", "lambda3"} <= names("omnifuse")
    assert {"mask_p", "rec_weight", "intermediate_token", "depth"} <= names("alignedfusion-ablation")
    assert {"align_weight", "ortho_weight", "alignment", "self_attention", "residual", "dynamic_weighting"} \
        <= names("emrfusion-ablation")
    for name, space in SPACES.items():
        training = {"lr", "weight_decay", "batch_size", "hidden", "dropout"}
        assert training <= (set(space.fixed) if name in TRAINING_FIXED else set(space.names)), name
    for composite, method in (("climd+omnifuse", "omnifuse"), ("climd+alignedfusion", "alignedfusion"),
                              ("climd+emrfusion", "emrfusion")):
        assert get_space(composite).method == method
        assert {"curriculum", "gamma", "measurer"} <= names(composite)
        assert set(get_space(method).names) <= names(composite)


TRAINING_FIXED = ("omnifuse-paper",)
"""Spaces that hold the training settings fixed (not at the code's defaults) and search the rest."""


def test_omnifuse_paper_space_is_the_papers_grid():
    space = get_space("omnifuse-paper")
    assert set(space.names) == {"K", "alpha", "beta", "lambda1", "lambda2", "lambda3"}
    points = space.grid_points(0)
    assert len(points) == 3 ** 6 == len({tuple(sorted(p.items())) for p in points})
    assert points[0] == {"K": 5, "alpha": 0.1, "beta": 0.5, "lambda1": 1.0, "lambda2": 10.0, "lambda3": 0.5}
    assert space.fixed["lr"] == 1e-3 and space.epochs == 30


SPACE_CHOICES = {"curriculum", "lr"}
"""Keys where a space's default may deliberately differ from the code's: a CLIMD space's default
curriculum is the paper's TSS (``climd``), the engine's is ``none``; each space documents its own
default learning rate (``Space.lr_source``, tested below)."""


@pytest.mark.parametrize("name", [s for s in SPACES if s not in TRAINING_FIXED])
def test_the_first_trial_trains_what_the_code_trains_without_configuration(name):
    """The space's default configuration, parsed into the typed configs, equals an empty config
    parsed (the dataclasses' defaults) except where the space says otherwise (SPACE_CHOICES)."""
    space = get_space(name)
    parsed = engine.parse_config(space.method, space.default_config()).flat
    bare = engine.parse_config(space.method, {}).flat
    differ = {k for k in bare if parsed[k] != bare[k]} - SPACE_CHOICES
    assert not differ, f"{name}: {', '.join(f'{k}={parsed[k]!r} (code: {bare[k]!r})' for k in sorted(differ))}"
    assert space.epochs == bare["epochs"]


@pytest.mark.parametrize("name", list(SPACES))
def test_every_value_a_space_can_give_is_a_config_the_code_accepts(name):
    """Every dimension and fixed key is a key the method's configs declare, and every grid value,
    categorical choice and bound has the type (and choice) the config expects: a space that searched
    a key the code ignores, or offered a value the code refuses, fails here."""
    space = get_space(name)
    base = {**space.default_config(), **fixed_keys(resolve(SearchConfig(space=name)), space)}
    engine.parse_config(space.method, base)
    for dim in space.dimensions:
        values = [*getattr(dim, "choices", ()), *dim.grid, dim.default]
        values += [getattr(dim, b) for b in ("low", "high") if hasattr(dim, b)]
        for v in values:
            config = {**base, dim.name: v}
            if space.forbids(config):  # what the space forbids, the code refuses
                with pytest.raises(ConfigError):
                    engine.parse_config(space.method, config)
            else:
                engine.parse_config(space.method, config)


def test_a_config_the_code_refuses_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"'lamda1': unknown key; did you mean 'lambda1'\?"):
        engine.parse_config("omnifuse", {"lamda1": 1.0})
    with pytest.raises(ConfigError, match=r"'curriculum': expected one of 'none', 'climd'.*got 'cosine'"):
        engine.parse_config("baseline", {"curriculum": "cosine"})
    with pytest.raises(ConfigError, match=r"'K': expected an integer, got 2.5"):
        engine.parse_config("omnifuse", {"K": 2.5})
    with pytest.raises(ConfigError, match=r"'lr': expected a number, got '1e-3'"):
        engine.parse_config("baseline", {"lr": "1e-3"})
    with pytest.raises(ConfigError, match=r"'dwfuse': expected true or false, got 1"):
        engine.parse_config("omnifuse", {"dwfuse": 1})


def test_paper_defaults_where_the_papers_give_them():
    c = get_space("climd").default_config()
    assert (c["lr"], c["gamma"], c["curriculum"], get_space("climd").epochs) == (5e-5, 0.3, "climd", 100)
    o = get_space("omnifuse").default_config()
    assert (o["K"], o["alpha"], o["beta"], o["lambda1"], o["lambda2"], o["lambda3"]) == (5, 0.1, 0.5, 1.0, 10.0, 0.5)
    a = get_space("alignedfusion").default_config()
    assert (a["mask_p"], a["rec_weight"], a["intermediate_token"]) == (0.3, 1.0, True)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "nsga2"])
@pytest.mark.parametrize("name", ["omnifuse", "climd+emrfusion", "alignedfusion-ablation"])
def test_first_trial_is_the_paper_default(name, sampler):
    cfg = resolve(SearchConfig(space=name, sampler=sampler, points=({"lr": 1e-3},) if sampler != "grid" else ()))
    space = get_space(name)
    searcher = build_searcher(cfg, space)
    first = searcher.suggest("trial-1")
    assert first == space.default_config()
    second = searcher.suggest("trial-2")
    if sampler == "grid":
        assert second == {**space.grid_points(cfg.seed)[1], **space.fixed}
    else:
        assert second["lr"] == 1e-3 and space.validate(second) == []


def test_sampler_seed_changes_the_draws_not_the_folds():
    def draws(**kw):
        cfg = resolve(SearchConfig(space="omnifuse", sampler="random", **kw))
        searcher = build_searcher(cfg, get_space("omnifuse"))
        return cfg, [searcher.suggest(f"t{i}") for i in range(4)]

    cfg0, a = draws(seed=0)
    cfg1, b = draws(seed=0, sampler_seed=1)
    assert a[0] == b[0]  # the paper default first either way
    assert a[1:] != b[1:]
    assert draws(seed=1)[1][1:] == b[1:]  # --sampler-seed alone = what --seed would draw
    assert fixed_keys(cfg0, get_space("omnifuse"))["seed"] == fixed_keys(cfg1, get_space("omnifuse"))["seed"] == 0


def test_pbt_population_starts_with_the_default():
    cfg = resolve(SearchConfig(space="omnifuse", scheduler="pbt", sampler="random", num_samples=5))
    space = get_space("omnifuse")
    gen = build_searcher(cfg, space)
    assert gen._points_to_evaluate[0] == space.default_point()
    assert len(gen._points_to_evaluate) == 5
    assert all(space.validate({**p, **space.fixed}) == [] for p in gen._points_to_evaluate)


@pytest.mark.parametrize("name", list(SPACES))
def test_grid_points_are_valid_and_distinct(name):
    space = get_space(name)
    points = space.grid_points(seed=0)
    assert points[0] == space.default_point()
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    for p in points[:300]:
        assert space.validate({**p, **space.fixed}) == []
    assert space.grid_points(seed=0) == points and (len(points) < 3 or space.grid_points(seed=1) != points)


def test_ablation_grids_are_the_papers_tables():
    omni = get_space("omnifuse-ablation").grid_points()
    assert len(omni) == 16  # Table 4: every combination of the four switches, weights at the paper's values
    assert {tuple(p[s] for s in ("dwfuse", "tla", "imp_forward", "imp_backward")) for p in omni} == \
        set(itertools.product((True, False), repeat=4))
    aligned = get_space("alignedfusion-ablation").grid_points()
    assert {(p["intermediate_token"], p["mask_p"]) for p in aligned} == \
        set(itertools.product((True, False), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)))


def test_space_declaration_errors():
    lr = Float("lr", 1e-5, 1e-2, log=True, default=1e-3)
    with pytest.raises(ValueError, match="nor declared before"):
        Space("x", "baseline", "", (Float("beta", 0, 1, default=0.5, when=(When("dwfuse", True),)),))
    with pytest.raises(ValueError, match="outside"):
        Space("x", "baseline", "", (Float("lr", 1e-5, 1e-2, default=1.0),))
    with pytest.raises(ValueError, match="twice"):
        Space("x", "baseline", "", (lr, lr))
    with pytest.raises(ValueError, match="cannot take"):
        Space("x", "baseline", "", (Categorical("s", ("a", "b"), default="a"),
                                    Float("g", 0, 1, default=0.1, when=(When("s", "c"),))))


def test_pbt_mutations_are_unconditional_or_fixed_on():
    assert {d.name for d in get_space("omnifuse").mutable()} >= {"lr", "alpha", "beta", "lambda3"}
    ablation = {d.name for d in get_space("omnifuse-ablation").mutable()}
    assert "beta" not in ablation and {"lr", "lambda2"} <= ablation


def test_list_and_show(capsys):
    assert spaces_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SPACES:
        assert name in out
    assert spaces_cli.main(["show", "omnifuse-ablation"]) == 0
    out = capsys.readouterr().out
    assert "float [0.01, 1] log" in out                     # alpha: range and log scale
    assert "dwfuse=True" in out                              # beta/alpha condition
    assert "(imp_forward=True or imp_backward=True)" in out  # K condition
    assert "grid points: 16" in out
    beta = next(line for line in out.splitlines() if line.strip().startswith("beta"))
    assert "0.5" in beta and "float [0, 2]" in beta          # default and linear range
    assert spaces_cli.main(["show", "no-such-space"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown space 'no-such-space'" in err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "search.spaces", "show", "climd"], capture_output=True, text=True, check=True)
    assert "gamma" in out.stdout and "curriculum=climd" in out.stdout


@pytest.mark.parametrize("epochs", [4, 20, 50, 100, 300])
def test_asha_reports_at_the_rungs_ray_decides_at(epochs):
    from search.tune.schedulers import CADENCES, SCHEDULERS, asha_rungs

    cfg = resolve(SearchConfig(space="baseline", epochs=epochs))
    scheduler = SCHEDULERS["asha"](cfg, get_space("baseline"))
    ray_rungs = sorted(m for m, _ in scheduler._brackets[0]._rungs)  # Ray's own milestones
    assert asha_rungs(cfg) == [m for m in ray_rungs if m < epochs]
    keys = CADENCES["asha"].keys(cfg)
    assert keys["report_at"] == asha_rungs(cfg) and keys["report_every"] == 0


def test_every_scheduler_has_a_cadence_and_pbt_reports_only_at_its_interval():
    from search.tune.schedulers import CADENCES, SCHEDULERS

    assert set(CADENCES) == set(SCHEDULERS)
    cfg = resolve(SearchConfig(space="baseline", epochs=50, scheduler="pbt"))
    keys = fixed_keys(cfg, get_space("baseline"))
    assert keys["report_every"] == keys["checkpoint_every"] == 10 and keys["report_seconds"] == 0.0
    median = fixed_keys(resolve(SearchConfig(space="baseline", epochs=50, scheduler="median")), get_space("baseline"))
    assert median["report_every"] == 1


@pytest.mark.parametrize("name", list(SPACES))
def test_every_space_documents_its_default_learning_rate(name):
    space = get_space(name)
    assert space.default_lr is not None and len(space.lr_source) > 20
    assert f"default learning rate {space.default_lr:g}: {space.lr_source}" in space.show()


def test_paper_learning_rates_where_the_papers_give_one():
    for name in ("baseline", "climd"):
        assert get_space(name).default_lr == 5e-5 and "CLIMD's paper" in get_space(name).lr_source
    for name in ("alignedfusion", "selfattn", "emrfusion"):
        assert "borrowed" in get_space(name).lr_source  # no paper value: said so, not passed off as the paper's


CLIMD_SPACES = [s for s in SPACES if "climd" in s]


@pytest.mark.parametrize("name", CLIMD_SPACES)
def test_climd_spaces_search_warmup_and_competence_and_forbid_an_untrained_only_curriculum(name):
    space = get_space(name)
    assert {"warmup_epochs", "competence_epochs", "difficulty_every"} <= set(space.names)
    c = space.default_config()
    assert c["warmup_epochs"] == 0 and c["difficulty_every"] == 1 and "competence_epochs" not in c  # paper reading; TSS
    bad = {**space.default_point(), "difficulty_every": 0}
    assert any("forbidden combination: difficulty_every=0 and warmup_epochs=0" in p for p in space.validate(bad))
    assert not space.validate({**bad, "warmup_epochs": 3})
    assert all(not (p.get("difficulty_every") == 0 and p.get("warmup_epochs") == 0) for p in space.grid_points())
    with pytest.raises(ConfigError, match="needs 'warmup_epochs' > 0"):
        engine.parse_config(space.method, {**space.default_config(), "difficulty_every": 0})
    linear = {**space.default_point(), "curriculum": "linear"}
    linear = {k: v for k, v in linear.items() if k not in ("gamma", "shortfall")}
    assert any("competence_epochs: missing although active" in p for p in space.validate(linear))


def test_modality_dropout_is_a_dimension_of_omnifuse_and_the_baseline():
    o, b = get_space("omnifuse").dimension("modality_dropout"), get_space("baseline").dimension("modality_dropout")
    assert (o.low, o.high, o.default) == (b.low, b.high, 1.0) and b.default == 0.0
    ablation = get_space("omnifuse-ablation")
    no_cra = {**ablation.default_point(), "imp_forward": False, "imp_backward": False}
    assert not ablation.dimension("modality_dropout").active(no_cra)  # the drop acts only while a CRA runs


def test_show_lists_the_new_dimensions():
    for name, dims in (("climd", ("warmup_epochs", "competence_epochs")), ("omnifuse", ("modality_dropout",)),
                       ("baseline", ("modality_dropout",))):
        text = get_space(name).show()
        assert all(d in text for d in dims) and "default learning rate" in text
    assert "forbidden: difficulty_every=0 and warmup_epochs=0" in get_space("climd").show()


def test_a_forbidden_combination_is_never_sampled_the_domain_is_conditional():
    space = get_space("climd")
    configs = sample_configs(space, 400, optuna.samplers.RandomSampler(seed=4))
    once = [c for c in configs if c["difficulty_every"] == 0]
    assert len(once) > 10 and all(1 <= c["warmup_epochs"] <= 20 for c in once)
    assert any(c["warmup_epochs"] == 0 for c in configs if c["difficulty_every"] > 0)
    assert space.allowed(space.dimension("warmup_epochs"), {"difficulty_every": 0}).describe() == "int [1, 20]"
    assert space.allowed(space.dimension("warmup_epochs"), {"difficulty_every": 2}).describe() == "int [0, 20]"


def test_dimensions_leave_out_values_at_their_ends_only():
    assert Int("k", 0, 5, default=1).excluding((0,)).low == 1
    assert Int("k", 0, 5, default=1).excluding((5, 4)).high == 3
    assert Categorical("c", ("a", "b", "c"), default="a").excluding(("b",)).choices == ("a", "c")
    with pytest.raises(ValueError, match="ends only"):
        Int("k", 0, 5, default=1).excluding((3,))
    with pytest.raises(ValueError, match="cannot leave out"):
        Space("bad", "baseline", "x", (Float("lr", 1e-5, 1e-2, default=1e-3), Float("dropout", 0.0, 0.5, default=0.1)),
              forbidden=(Forbidden((When("lr", 1e-3), When("dropout", 0.5)), "x"),))
