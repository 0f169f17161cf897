"""FoldTrainer: API, imbalance options, CLIMD on any backbone, exact resume, convergence on breast-tcga."""

import copy

import numpy as np
import pytest
import torch

from toydata import Tokens, Vec, toy_dataset
from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError
from trainables.engine import FoldTrainer
from trainables.losses import CrossEntropy, FocalLoss, balanced_class_weights

torch.set_num_threads(1)  # small MLPs: one thread is fastest, and robust on a busy 2-core machine


def toy(n=60, seed=0, tokens=False) -> MultimodalDataset:
    """Classes p, q, r in runs; ``b`` missing for every seventh sample; ``c.tokens`` with ``tokens``."""
    mods: list[Vec | Tokens] = [Vec("a", 6, shift=1.5), Vec("b", 4, shift=1.5, absent=slice(None, None, 7))]
    return toy_dataset(n, mods + [Tokens("c.tokens", 3, 2)] * tokens, labels="blocks", seed=seed)


FAST = {"epochs": 6, "lr": 3e-3, "hidden": 16, "batch_size": 16}


def test_api_and_metrics():
    data = toy()
    ft = FoldTrainer("baseline", FAST, data.take(np.arange(0, 60, 2)), data.take(np.arange(1, 60, 2)), seed=0)
    parts = ft.train_epoch()
    assert ft.epoch == 1 and {"loss", "loss_cls", "loss_probe", "epoch_samples"} <= set(parts)
    probs = ft.predict_proba(data)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert {"accuracy", "macro_f1", "weighted_f1", "auroc"} <= set(ft.evaluate())


def test_losses_by_hand():
    np.testing.assert_allclose(balanced_class_weights(np.array([30, 20, 10])), [60 / 90, 60 / 60, 60 / 30])
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    torch.testing.assert_close(FocalLoss(0.0)(logits, y), CrossEntropy()(logits, y))
    p = torch.softmax(logits, -1)[:, 0]
    torch.testing.assert_close(FocalLoss(2.0)(logits, y), (-(1 - p) ** 2 * p.log()).mean())


@pytest.mark.parametrize("imbalance", ["weighted_ce", "focal", "undersample", "smote"])
def test_imbalance_options(imbalance):
    data = toy()
    ft = FoldTrainer("baseline", {**FAST, "imbalance": imbalance}, data, seed=0)
    counts = np.bincount(ft.train_data.y.numpy(), minlength=3)
    if imbalance == "undersample":
        np.testing.assert_array_equal(counts, [10, 10, 10])
    elif imbalance == "smote":
        np.testing.assert_array_equal(counts, [30, 30, 30])
        assert ft.train_data.mask[60:].any(1).all()
    elif imbalance == "weighted_ce":
        np.testing.assert_allclose(ft.criterion.weight.numpy(), balanced_class_weights(np.array([30, 20, 10])))
    else:
        assert isinstance(ft.criterion, FocalLoss)
    assert np.isfinite(ft.train_epoch()["loss"])


def test_smote_refuses_token_inputs_and_bad_options():
    with pytest.raises(DataError, match="smote.*tokens"):
        FoldTrainer("baseline", {**FAST, "imbalance": "smote"}, toy(tokens=True), seed=0)
    with pytest.raises(DataError, match="config 'modalities'.*'zz'"):
        FoldTrainer("baseline", {**FAST, "modalities": ["a", "zz"]}, toy(), seed=0)
    with pytest.raises(ValueError, match="imbalance"):
        FoldTrainer("baseline", {**FAST, "imbalance": "gan"}, toy(), seed=0)


def test_modality_subset():
    ft = FoldTrainer("baseline", {**FAST, "modalities": "a,c"}, toy(tokens=True), seed=0)
    assert ft.model.modalities == ["a", "c"]
    assert ft.predict_proba(toy(tokens=True)).shape == (60, 3)


@pytest.mark.parametrize("method", ["baseline", "omnifuse"])
def test_climd_wraps_any_backbone(method):
    data = toy()
    cfg = {**FAST, "epochs": 4, "curriculum": "climd", **({"ra_latent": 4, "K": 2} if method == "omnifuse" else {})}
    ft = FoldTrainer(method, cfg, data, seed=0)
    sizes = [ft.train_epoch()["epoch_samples"] for _ in range(4)]
    assert sizes == [15, 30, 45, 60]  # S_t = t/T * N with the shortfall redistributed
    assert ft.curriculum.r is not None and ft.curriculum.r.shape == (60,)


def _run(ft, n):
    return [ft.train_epoch()["loss"] for _ in range(n)]


@pytest.mark.parametrize("method,extra", [("baseline", {"curriculum": "climd"}), ("omnifuse", {"ra_latent": 4, "K": 2})])
def test_resume_from_checkpoint_continues_identically(method, extra):
    data = toy()
    cfg = {**FAST, **extra}
    a = FoldTrainer(method, cfg, data, seed=3)
    _run(a, 2)
    state = copy.deepcopy(a.state_dict())
    tail_a = _run(a, 3)
    b = FoldTrainer(method, cfg, data, seed=99)  # a different seed: everything must come from the state
    b.load_state_dict(state)
    assert _run(b, 3) == tail_a
    np.testing.assert_array_equal(a.predict_proba(data), b.predict_proba(data))


def test_seed_reproducible_and_trainers_independent():
    data = toy()
    cfg = {**FAST, "curriculum": "climd", "dropout": 0.3}
    alone = _run(FoldTrainer("baseline", cfg, data, seed=1), 4)
    x, y = FoldTrainer("baseline", cfg, data, seed=1), FoldTrainer("baseline", cfg, data, seed=2)
    interleaved = []
    for _ in range(4):
        interleaved.append(x.train_epoch()["loss"])
        torch.rand(10)  # unrelated global RNG use in between
        y.train_epoch()
    assert interleaved == alone
    assert _run(FoldTrainer("baseline", cfg, data, seed=2), 4) != alone


BREAST = [
    ("baseline", {}),
    ("baseline", {"curriculum": "climd"}),
    ("baseline", {"imbalance": "weighted_ce"}),
    ("baseline", {"imbalance": "focal"}),
    ("omnifuse", {"dwfuse": False, "hidden": 64, "ra_latent": 32}),
]


@pytest.mark.parametrize("method,extra", BREAST, ids=["baseline", "climd", "weighted_ce", "focal", "omnifuse-no-dwfuse"])
def test_breast_tcga_converges(data_dir, method, extra):
    from trainables.data import load_dataset, stratified_kfold

    train = load_dataset("breast-tcga").split_part("train")
    tr, va = stratified_kfold(train.labels, 5, seed=0)[1]
    epochs = 12
    ft = FoldTrainer(method, {"epochs": epochs, "lr": 1e-3, **extra}, train.take(tr), train.take(va), seed=0)
    hist = [ft.train_epoch() for _ in range(epochs)]
    per_sample = [h["loss"] for h in hist]
    assert per_sample[-1] < 0.6 * per_sample[0]
    # majority class (LumA, 50%) alone: accuracy 0.5, macro F1 0.22
    assert ft.evaluate()["macro_f1"] > 0.7
