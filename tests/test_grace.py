"""``--grace-period`` of ASHA and the median rule: default as before, the CLIMD spaces' default
(the curriculum reaches the whole training set first), and its validation."""

import pytest

from search.prepare.cli import parse_args
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.tune.schedulers import SCHEDULERS, asha_rungs
from spaces import get_space
from spaces.common import curriculum_grace
from spaces.dimensions import Float
from spaces.space import Space


def _ray_rungs(cfg):
    scheduler = SCHEDULERS["asha"](cfg, get_space(cfg.space))
    return sorted(m for m, _ in scheduler._brackets[0]._rungs)


def test_default_is_a_quarter_of_the_budget_as_before():
    cfg = resolve(SearchConfig(space="baseline", epochs=100))
    assert cfg.grace_period == 25
    assert _ray_rungs(cfg)[0] == 25 and asha_rungs(cfg) == [25, 75]
    assert resolve(SearchConfig(space="omnifuse", epochs=6)).grace_period == 1


def test_given_grace_reaches_asha_and_the_median_rule():
    cfg = resolve(SearchConfig(**parse_args(["--space", "baseline", "--epochs", "100", "--grace-period", "10"])))
    assert cfg.grace_period == 10
    assert asha_rungs(cfg) == [10, 30, 90] == [m for m in _ray_rungs(cfg) if m < 100]
    median = resolve(SearchConfig(space="baseline", epochs=50, scheduler="median", grace_period=7))
    assert SCHEDULERS["median"](median, get_space("baseline"))._grace_period == 7


@pytest.mark.parametrize("name", ["climd", "climd+omnifuse", "climd+alignedfusion", "climd+emrfusion"])
def test_climd_spaces_wait_until_tss_trains_on_every_sample(name):
    """TSS's S_t = t/T N equals N only at t = T: the grace is the whole budget, no rung before it."""
    cfg = resolve(SearchConfig(space=name, epochs=30))
    assert cfg.grace_period == 30 and asha_rungs(cfg) == []
    assert "default grace 100 epochs" in get_space(name).show()


def test_curriculum_grace_is_warmup_plus_the_epochs_until_competence_one():
    """Linear competence c(t) = t (1 - c0) / T_g + c0 reaches 1 at t = T_g = 10, after 5 warm-up epochs:
    the last subset epoch is curriculum epoch 9 = epoch 13 (0-based), so the grace is 5 + 10 = 15."""
    space = Space("t", "baseline", "test", (Float("lr", 1e-5, 1e-2, log=True, default=1e-3),),
                  fixed={"scheduler": "linear", "c0": 0.01, "competence_epochs": 10, "warmup_epochs": 5},
                  grace=curriculum_grace)
    assert space.default_grace(100) == 15
    assert space.default_grace(12) == 12  # capped at the budget
    plain = Space("u", "baseline", "test", (Float("lr", 1e-5, 1e-2, log=True, default=1e-3),),
                  fixed={"scheduler": "none"}, grace=curriculum_grace)
    assert plain.default_grace(100) == 25  # no subset epoch: the schedulers' default


@pytest.mark.parametrize("argv, message", [
    (["--grace-period", "0"], "--grace-period 0: must be a whole number of epochs from 1 to --epochs - 1 (19)"),
    (["--grace-period", "20"], "--grace-period 20: must be a whole number of epochs from 1 to --epochs - 1 (19)"),
    (["--grace-period", "-3"], "--grace-period -3: must be"),
    (["--grace-period", "5", "--scheduler", "fifo"], "--grace-period: only --scheduler asha and median use a grace period"),
    (["--grace-period", "5", "--scheduler", "pbt"], "--grace-period: only --scheduler asha and median"),
])
def test_bad_grace_is_one_line_before_any_trial(argv, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve(SearchConfig(**parse_args(["--space", "baseline", "--epochs", "20", *argv])))


def test_non_integer_grace_is_refused_by_the_parser():
    with pytest.raises(UsageError, match="^--grace-period 2.5: expected an integer$"):
        parse_args(["--space", "baseline", "--grace-period", "2.5"])
    with pytest.raises(UsageError, match="^--grace-period 2.5: expected an integer$"):
        resolve(SearchConfig(space="baseline", epochs=20, grace_period=2.5))  # e.g. from a YAML --config
