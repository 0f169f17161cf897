"""CLIMD's public functions against hand-worked cases, and the curricula."""

import math

import numpy as np
import pytest

from trainables.climd import (
    CURRICULA,
    Curriculum,
    Schedule,
    alpha_hat,
    class_distribution,
    difficulty,
    epoch_quota,
    redistribute_shortfall,
)

COUNTS = [100, 50, 10]


def test_alpha_hat_worked_example():
    # sum ln n = ln 100 + ln 50 + ln 10 = 10.8198; C ln n_min = 3 ln 10 = 6.9078; diff = ln 50 = 3.9120
    # alpha_hat = (1 + 3 / 3.9120) / 0.3 = 1.76687 / 0.3 = 5.8896
    assert alpha_hat(COUNTS, 0.3) == pytest.approx(5.8896, abs=1e-4)
    assert alpha_hat(COUNTS, 0.3) == pytest.approx((1 + 3 / math.log(50)) / 0.3, rel=1e-12)


def test_alpha_hat_degenerate_and_bad_gamma():
    assert math.isinf(alpha_hat([7, 7, 7], 0.3))  # balanced: MLE denominator 0
    with pytest.raises(ValueError, match="gamma"):
        alpha_hat(COUNTS, 0.0)


def test_class_distribution_uniform_at_first_epoch_and_power_law_at_last():
    np.testing.assert_allclose(class_distribution(COUNTS, 1, 100, 0.3), [1 / 3] * 3)
    # gamma * alpha(T) = 1 + 3 / ln 50 = 1.76687; c^-1.76687 = 1, 0.29374, 0.14357; / 1.43731
    np.testing.assert_allclose(class_distribution(COUNTS, 100, 100, 0.3), [0.6957, 0.2044, 0.0999], atol=1e-4)


def test_class_distribution_sums_to_one_and_follows_frequency_rank():
    for t in (1, 2, 37, 99, 100):
        q = class_distribution([10, 100, 50], t, 100, 0.3)
        assert q.sum() == pytest.approx(1.0)
    q = class_distribution([10, 100, 50], 100, 100, 0.3)  # rank 1 = most frequent = index 1
    np.testing.assert_allclose(q, [0.0999, 0.6957, 0.2044], atol=1e-4)


def test_class_distribution_midway_mixture_by_hand():
    # T = 3, t = 2: progress 1/2, alpha(2) = 1 + (alpha_T - 1)/2, exponent gamma*alpha(2)
    e = 0.3 * (1 + (alpha_hat(COUNTS, 0.3) - 1) / 2)
    w = np.array([1.0, 2.0 ** -e, 3.0 ** -e])
    np.testing.assert_allclose(class_distribution(COUNTS, 2, 3, 0.3), 0.5 / 3 + 0.5 * w / w.sum())


def test_epoch_quota_capped_and_sized():
    # t = T: S_T = 160; q_T * 160 = [111.3, 32.7, 16.0] -> [111, 33, 16], capped at [100, 50, 10]
    np.testing.assert_array_equal(epoch_quota(COUNTS, 100, 100, 0.3), [100, 33, 10])
    # t = 1: S_1 = round(1.6) = 2, uniform thirds -> largest remainders go to the first classes
    np.testing.assert_array_equal(epoch_quota(COUNTS, 1, 100, 0.3), [1, 1, 0])
    # t = 50: S_50 = 80, q_50 * 80 = [35.28, 24.18, 20.54] -> [35, 24, 21], the last capped at 10
    np.testing.assert_array_equal(epoch_quota(COUNTS, 50, 100, 0.3), [35, 24, 10])


def test_shortfall_redistribution_on_breast_tcga_counts():
    counts = np.array([45, 30, 75])  # breast-tcga train: Basal, Her2, LumA
    q = class_distribution(counts, 100, 100, 0.3)
    np.testing.assert_allclose(q * 150, [13.75, 3.65, 132.60], atol=0.01)
    capped = epoch_quota(counts, 100, 100, 0.3)
    np.testing.assert_array_equal(capped, [14, 4, 75])  # 'drop' trains on 93 samples
    np.testing.assert_array_equal(redistribute_shortfall(capped, counts, q, 150), [45, 30, 75])
    # a partial target: 100 samples, 7 missing after the caps go to Basal/Her2 by q (0.79/0.21)
    part = redistribute_shortfall([14, 4, 75], counts, q, 100)
    assert part.sum() == 100 and part[2] == 75 and part[0] > part[1]


def test_difficulty_two_modality_toy_by_hand():
    # C = 2 so psi = sigmoid(ln(p_true) / 2) = sqrt(p) / (1 + sqrt(p)).
    probs = np.array([
        [[0.8, 0.2], [0.2, 0.8]],  # modality 1: p_true = 0.8, 0.8
        [[0.5, 0.5], [0.2, 0.8]],  # modality 2: p_true = 0.5, 0.8
    ])
    labels = np.array([0, 1])
    feats = np.array([
        [[1.0, 0.0], [1.0, 1.0]],
        [[0.0, 1.0], [2.0, 2.0]],
    ])
    psi8 = math.sqrt(0.8) / (1 + math.sqrt(0.8))  # 0.472136
    psi5 = math.sqrt(0.5) / (1 + math.sqrt(0.5))  # 0.414214
    # sample 0: orthogonal features -> s = 0, phi = 1; sample 1: parallel -> s = 1, phi = 1 - 2/2 = 0
    np.testing.assert_allclose(difficulty(probs, labels, feats), [1 + (psi8 + psi5) / 2, 0 + psi8], rtol=1e-12)
    np.testing.assert_allclose(difficulty(probs, labels, feats, measurer="intra"), [(psi8 + psi5) / 2, psi8])
    np.testing.assert_allclose(difficulty(probs, labels, feats, measurer="inter"), [1.0, 0.0], atol=1e-12)
    # modality 2 missing for sample 1: psi mean over modality 1 only, no pair -> phi = 1
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(difficulty(probs, labels, feats, mask=mask), [1 + (psi8 + psi5) / 2, 1 + psi8])


def _schedule(labels, T=10, **kw):
    opts = {"gamma": 0.3, "shortfall": "redistribute", "n_buckets": 5, "c0": 0.1, "competence_epochs": T}
    opts.update(kw)
    return Schedule(labels=np.asarray(labels), total_epochs=T, **opts)


def test_tss_takes_easiest_of_each_class_first():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    s = _schedule(labels, T=2)
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])  # easy first: reverse index
    chosen = CURRICULA["climd"](s, 1, order)  # S_1 = 5, uniform thirds -> [2, 2, 1]
    assert sorted(chosen.tolist()) == [4, 5, 7, 8, 9]
    assert sorted(CURRICULA["climd"](s, 2, order).tolist()) == list(range(10))


def test_competence_and_bucket_schedulers():
    labels = np.zeros(100, dtype=int)
    order = np.arange(100)[::-1]
    s = _schedule(labels, T=10)
    sizes = {name: [len(CURRICULA[name](s, t, order)) for t in range(1, 11)] for name in ("linear", "root", "geom", "baby_step")}
    for name, sz in sizes.items():
        assert sz == sorted(sz) and sz[-1] == 100, name
    assert sizes["linear"][0] == math.ceil(100 * (1 * 0.9 / 10 + 0.1))  # c(1) = 0.19
    assert sizes["root"][0] == math.ceil(100 * math.sqrt(0.99 / 10 + 0.01))
    assert sizes["geom"][0] == math.ceil(100 * 0.1 ** 0.9)
    assert sizes["baby_step"] == [20, 20, 40, 40, 60, 60, 80, 80, 100, 100]
    one = [CURRICULA["one_pass"](s, t, order) for t in (1, 3, 9)]
    assert [b.tolist() for b in one] == [order[:20].tolist(), order[20:40].tolist(), order[80:].tolist()]


def test_sampler_order_warmup_and_shortfall_modes():
    labels = np.array([0] * 45 + [1] * 30 + [2] * 75)
    r = np.arange(150, dtype=float)
    base = {"curriculum": "climd", "gamma": 0.3, "difficulty_every": 1}
    desc = Curriculum(labels, {**base, "difficulty_order": "desc"}, 100, np.random.default_rng(0))
    asc = Curriculum(labels, {**base, "difficulty_order": "asc"}, 100, np.random.default_rng(0))
    for s in (desc, asc):
        s.set_difficulty(r)
    assert set(desc.epoch_indices(9)) != set(asc.epoch_indices(9))
    chosen = asc.epoch_indices(9)
    assert max(chosen[labels[chosen] == 0]) < 10  # asc: the lowest r of Basal (indices 0..44) first
    drop = Curriculum(labels, {**base, "shortfall": "drop"}, 100, np.random.default_rng(0))
    drop.set_difficulty(r)
    assert len(desc.epoch_indices(99)) == 150 and len(drop.epoch_indices(99)) == 93
    warm = Curriculum(labels, {**base, "warmup_epochs": 5}, 100, np.random.default_rng(0))
    assert len(warm.epoch_indices(4)) == 150 and not warm.needs_difficulty(4) and warm.needs_difficulty(5)
    with pytest.raises(ValueError, match="curriculum"):
        Curriculum(labels, {"curriculum": "cosine"}, 100, np.random.default_rng(0))


def test_a_curriculum_ordered_only_by_an_untrained_model_is_refused():
    """difficulty_every = 0 measures r once, at curriculum epoch 1: with no warm-up that is the
    untrained model's r for the whole run, so it is refused in one line; with a warm-up it is not."""
    labels = np.array([0] * 10 + [1] * 5)
    with pytest.raises(ValueError, match="'difficulty_every' = 0 .* needs 'warmup_epochs' > 0") as info:
        Curriculum(labels, {"curriculum": "climd", "difficulty_every": 0}, 10, np.random.default_rng(0))
    assert "\n" not in str(info.value)
    once = Curriculum(labels, {"curriculum": "climd", "difficulty_every": 0, "warmup_epochs": 2}, 10, np.random.default_rng(0))
    assert [once.needs_difficulty(e) for e in range(3)] == [False, False, True]   # measured after the warm-up
    once.set_difficulty(np.arange(15.0))
    assert not any(once.needs_difficulty(e) for e in range(3, 10))                 # and never again
    # no curriculum: nothing is measured, nothing to refuse
    Curriculum(labels, {"curriculum": "none", "difficulty_every": 0}, 10, np.random.default_rng(0))


def test_warmup_longer_than_the_budget_leaves_one_curriculum_epoch():
    labels = np.array([0] * 10 + [1] * 5)
    c = Curriculum(labels, {"curriculum": "linear", "warmup_epochs": 20}, 6, np.random.default_rng(0))
    assert c.warmup == 5 and c.schedule.total_epochs == 1
    assert [c.curriculum_epoch(e) for e in range(6)] == [None] * 5 + [1]


def test_competence_epochs_is_t_g_and_zero_is_the_curriculum_length():
    """linear: c(t) = min(1, t (1 - c0) / T_g + c0); 40 samples, c0 = 0.1, t = 2:
    T_g = 4 -> 0.55 -> ceil(22) = 22 samples; T_g = 0 -> T = 10 -> 0.28 -> ceil(11.2) = 12."""
    labels = np.array([0] * 20 + [1] * 20)
    sizes = {}
    for tg in (4, 0):
        c = Curriculum(labels, {"curriculum": "linear", "c0": 0.1, "competence_epochs": tg}, 10, np.random.default_rng(0))
        c.set_difficulty(np.arange(40.0))
        sizes[tg] = len(c.epoch_indices(1))
    assert sizes == {4: 22, 0: 12}
