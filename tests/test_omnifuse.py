"""OmniFuse: DWFuse weights by hand, CRA/encoder behaviour, every switch changes the loss, and the
breast-tcga test split (protein missing for everyone) is predicted."""

import math

import numpy as np
import pytest
import torch

from toydata import Vec, toy_dataset
from trainables.backbone import DataSpec, TensorData
from trainables.data.dataset import MultimodalDataset
from trainables.losses import CrossEntropy
from trainables.omnifuse import OmniFuse, all_combinations, dwfuse_weights

torch.set_num_threads(1)  # small MLPs: one thread is fastest, and robust on a busy 2-core machine


def toy(n=24, missing=True, seed=0) -> MultimodalDataset:
    """Classes x, y, z in turn; with ``missing``, ``b`` and ``c`` missing for every fifth sample from 1 and 2."""
    mods = [Vec(name, d, absent=slice(j, None, 5) if missing and j > 0 else None)
            for j, (name, d) in enumerate((("a", 5), ("b", 4), ("c", 3)))]
    return toy_dataset(n, mods, class_names=("x", "y", "z"), seed=seed)


def build(data, **switches) -> OmniFuse:
    torch.manual_seed(0)
    return OmniFuse.from_config(DataSpec.from_dataset(data), {"hidden": 8, "ra_latent": 4, "K": 2, **switches})


def test_dwfuse_weights_two_modalities_by_hand():
    # M = 2, beta = 0.5: omega_1 = (1 - p_2)^0.5, omega_2 = (1 - p_1)^0.5
    omega = dwfuse_weights(np.array([[0.9, 0.3]]), 0.5)
    np.testing.assert_allclose(omega, [[math.sqrt(0.7), math.sqrt(0.1)]])


def test_dwfuse_weights_three_modalities_by_hand():
    # M = 3, beta = 0.5: exponent 0.25; omega_1 = (0.5 * 0.8)^0.25, omega_2 = (0.1 * 0.8)^0.25, omega_3 = (0.1 * 0.5)^0.25
    omega = dwfuse_weights(np.array([[0.9, 0.5, 0.2]]), 0.5)
    np.testing.assert_allclose(omega, [[0.4 ** 0.25, 0.08 ** 0.25, 0.05 ** 0.25]])
    assert omega[0, 0] == pytest.approx(0.795271, abs=1e-6)
    t = dwfuse_weights(torch.tensor([[0.9, 0.5, 0.2]], requires_grad=True), 0.5)
    assert isinstance(t, torch.Tensor) and not t.requires_grad  # a constant weight in Eq.12


def test_all_combinations():
    combos = all_combinations(3)
    assert len(combos) == 7 and len({tuple(c.tolist()) for c in combos}) == 7 and not any(c.sum() == 0 for c in combos)


def test_missing_modality_is_encoded_from_zero_input():
    data = toy()
    model = build(data).eval()
    batch = TensorData(data).batch(np.arange(6))
    observed = batch.mask.clone()
    observed[:, 1] = False
    v = model.embed(batch, observed).view(6, 3, 8)
    v_miss = model.encoders[1].net(torch.zeros(1, 4))  # Eq.1 with a zero input
    torch.testing.assert_close(v[:, 1], v_miss.expand(6, 8))


def test_simulated_missing_patterns_cover_all_nonempty_subsets():
    model = build(toy())
    torch.manual_seed(1)
    available = torch.tensor([[True, True, True]] * 2000 + [[True, False, True]] * 2000)
    observed = model.simulate_missing(available)
    assert observed.any(1).all() and not (observed & ~available).any()
    patterns = {tuple(r) for r in observed[:2000].tolist()}
    assert len(patterns) == 7
    assert {tuple(r) for r in observed[2000:].tolist()} == {(True, False, False), (False, False, True), (True, False, True)}


def test_inference_uses_forward_cra_only():
    data = toy()
    model = build(data).eval()
    out = model(TensorData(data).batch(np.arange(8)))
    assert out.extras == {} and torch.equal(out.mask, TensorData(data).mask[:8])
    assert out.logits.shape == (8, 3) and out.unimodal_logits.shape == (3, 8, 3) and out.embeddings.shape == (3, 8, 8)


def _loss_parts(data, reference: OmniFuse, **switches) -> tuple[float, dict]:
    """Loss of a model with ``switches`` that shares every parameter with ``reference``."""
    model = build(data, dropout=0.0, **switches)
    model.load_state_dict(reference.state_dict(), strict=False)  # a switched-off CRA just has no keys
    model.train()
    batch = TensorData(data).batch(np.arange(len(data)))
    torch.manual_seed(5)  # the same simulated missing patterns for every variant
    loss, parts = model.loss(model(batch), batch, CrossEntropy())
    return float(loss.detach()), {k: float(v) for k, v in parts.items()}


def test_every_switch_changes_the_loss():
    data = toy()
    reference = build(data, dropout=0.0)
    reference.lazy.copy_(torch.tensor([True, False, True]))  # a combination the simulated drop produces
    full, parts = _loss_parts(data, reference)
    assert min(parts["loss_forward"], parts["loss_backward"], parts["loss_tla"], parts["loss_ens"]) > 0
    # each of these switches removes exactly its own term of Eq.18
    assert _loss_parts(data, reference, imp_forward=False)[0] == pytest.approx(full - parts["loss_forward"], rel=1e-5)
    assert _loss_parts(data, reference, imp_backward=False)[0] == pytest.approx(full - 1.0 * parts["loss_backward"], rel=1e-5)
    assert _loss_parts(data, reference, tla=False)[0] == pytest.approx(full - 0.5 * parts["loss_tla"], rel=1e-5)
    # DWFuse off: lambda2 * (L_ens + alpha L_rc) becomes lambda2 * L_rc (+ the detached probes)
    off, off_parts = _loss_parts(data, reference, dwfuse=False)
    expected = full - 10.0 * (parts["loss_ens"] + 0.1 * parts["loss_rc"]) + 10.0 * parts["loss_rc"] + off_parts["loss_probe"]
    assert off == pytest.approx(expected, rel=1e-5) and off != pytest.approx(full, rel=1e-3)


def test_tla_mask_readings_select_the_right_samples():
    data = toy(missing=False)
    for reading in ("combination", "restrict"):
        model = build(data, tla_mask=reading)
        model.set_lazy(torch.tensor([False, True, False]))
        model.train()
        out = model(TensorData(data).batch(np.arange(len(data))))
        sel = out.extras["tla_select"]
        if reading == "combination":
            assert torch.equal(sel, (out.mask == model.lazy).all(1))  # own (simulated) combination = delta_lazy
        else:
            assert sel.all()  # every sample has modality b, all re-predicted from it alone


def test_all_switches_off_is_the_concatenation_baseline():
    data = toy()
    model = build(data, dwfuse=False, tla=False, imp_forward=False, imp_backward=False)
    assert model.forward_cra is None and model.backward_cra is None
    model.train()
    batch = TensorData(data).batch(np.arange(len(data)))
    out = model(batch)
    assert torch.equal(out.mask, batch.mask)  # no simulated dropping without a CRA
    loss, parts = model.loss(out, batch, CrossEntropy())
    # classification term is lambda2 * CE(o, y); the rest are the detached unimodal probes
    expected = 10.0 * torch.nn.functional.cross_entropy(out.logits, batch.y) + parts["loss_probe"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert parts["loss_forward"] == parts["loss_backward"] == parts["loss_tla"] == 0.0


def test_end_epoch_mines_the_worst_combination():
    data = toy()
    model = build(data)
    scored = model.combination_distances(TensorData(data))
    assert len(scored) == 7
    report = model.end_epoch(TensorData(data), CrossEntropy())
    worst = max(scored, key=lambda r: r[1])[0]
    assert torch.equal(model.lazy, worst) and report["tla_lazy_combination"] == sum(1 << m for m in range(3) if worst[m])


def test_breast_tcga_omnifuse_trains_and_predicts_test_split_without_protein(data_dir):
    from trainables.data import load_dataset, stratified_kfold
    from trainables.engine import FoldTrainer

    full = load_dataset("breast-tcga")
    train, test = full.split_part("train"), full.split_part("test")
    assert not test.modalities["protein"].mask.any()
    tr, va = stratified_kfold(train.labels, 5, seed=0)[0]
    ft = FoldTrainer("omnifuse", {"epochs": 12, "lr": 1e-3, "hidden": 64, "ra_latent": 32},
                     train.take(tr), train.take(va), seed=0)
    losses = [ft.train_epoch()["loss"] for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0]
    assert ft.evaluate()["macro_f1"] > 0.7  # majority class (LumA) alone: macro F1 0.22, accuracy 0.5
    probs = ft.predict_proba(test)
    assert probs.shape == (70, 3) and np.isfinite(probs).all()
    assert ft.evaluate(test)["macro_f1"] > 0.6


@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_modality_dropout_rate_of_omnifuse(rate):
    """The paper's scheme at the default 1 (every sample a random non-empty pattern), none at 0,
    q * 9/21 of the slots dropped in between (3 modalities)."""
    model = build(toy(), modality_dropout=rate) if rate != 1.0 else build(toy())
    assert model.modality_dropout == rate
    torch.manual_seed(3)
    available = torch.ones(14_000, 3, dtype=torch.bool)
    observed = model.simulate_missing(available)
    assert observed.any(1).all()
    assert float((~observed).double().mean()) == pytest.approx(rate * 9 / 21, abs=0.01)
