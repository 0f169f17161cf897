"""``Space.only`` / ``--only``: a search of some dimensions with the others at their defaults."""

import optuna
import pytest

from search.prepare.cli import parse_args
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.parse import from_saved
from search.prepare.resolve import resolve
from spaces import get_space


@pytest.mark.parametrize("name", ["baseline", "climd", "omnifuse"])
def test_lr_only_varies_lr_and_keeps_every_default(name):
    full = get_space(name)
    lr = full.only("lr")
    assert lr.names == ["lr"] and lr.default_config() == full.default_config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [lr.sample(study.ask()) for _ in range(5)]
    default = full.default_config()
    for c in configs:
        assert set(c) == set(default) and not full.validate({k: v for k, v in c.items() if k not in full.fixed})
        assert {k: v for k, v in c.items() if k != "lr"} == {k: v for k, v in default.items() if k != "lr"}
    assert len({c["lr"] for c in configs}) == 5


def test_inactive_dimensions_are_dropped_and_conditions_still_hold():
    space = get_space("climd").only("gamma", "lr")
    assert space.names == ["lr", "gamma"]
    assert "n_buckets" not in space.fixed and space.fixed["curriculum"] == "climd"


def test_only_option_resolves_and_checks():
    cfg = resolve(SearchConfig(**parse_args(["--space", "climd", "--only", "lr"])))
    assert cfg.only == ("lr",) and cfg.space_spec.names == ["lr"] and cfg.as_params()["only"] == "lr"
    assert from_saved({"space": "climd", "only": ["lr"]}).only == ("lr",)  # as read back from search.json
    with pytest.raises(UsageError, match=r"^--only lr,zz: 'zz' is not a dimension of space climd \(lr, "):
        resolve(SearchConfig(**parse_args(["--space", "climd", "--only", "lr,zz"])))
    with pytest.raises(UsageError, match="^--only lr,lr: a dimension is listed twice"):
        resolve(SearchConfig(space="climd", only=("lr", "lr")))
    with pytest.raises(UsageError, match=r"--points \{\"gamma\": 0.5\}: 'gamma' is not a dimension of space climd \(lr\)"):
        resolve(SearchConfig(space="climd", only=("lr",), points=({"gamma": 0.5},)))
    with pytest.raises(KeyError, match="no dimension 'zz'"):
        get_space("baseline").only("zz")
