"""Early-fusion baseline: zeros plus the mask for missing modalities, token pooling, probe heads, and the
training-time modality dropout it shares with OmniFuse."""

import dataclasses

import numpy as np
import pytest
import torch

from toydata import Tokens, Vec, toy_dataset
from trainables.backbone import DataSpec, TensorData
from trainables.baseline import EarlyFusion, drop_modalities, pool_tokens
from trainables.data.dataset import MultimodalDataset
from trainables.losses import CrossEntropy

torch.set_num_threads(1)  # small MLPs: one thread is fastest, and robust on a busy 2-core machine


def toy(n=12) -> MultimodalDataset:
    """Classes neg, pos in turn, no class signal; ``ehr`` missing for every third sample; report
    tokens of which the first 3 of 5 are mentioned."""
    return toy_dataset(n, [Vec("ehr", 4, shift=0.0, absent=slice(None, None, 3)), Tokens("report.tokens", 5, 3, mentioned=3),
                           Vec("report.cls", 2, shift=0.0)], class_names=("neg", "pos"))


def model_for(data) -> EarlyFusion:
    torch.manual_seed(0)
    return EarlyFusion.from_config(DataSpec.from_dataset(data), {"hidden": 6}).eval()


def test_shapes_and_logical_modalities():
    data = toy()
    model = model_for(data)
    assert model.modalities == ["ehr", "report"]
    out = model(TensorData(data).batch(np.arange(7)))
    assert out.logits.shape == (7, 2) and out.unimodal_logits.shape == (2, 7, 2) and out.embeddings.shape == (2, 7, 6)


def test_pool_tokens_by_hand():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(pool_tokens(x, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool_tokens(x, None), torch.tensor([[104 / 3, 106 / 3]]))


def test_missing_modality_enters_as_zeros_plus_mask():
    data = toy()
    model = model_for(data)
    td = TensorData(data)
    batch = td.batch(np.arange(12))
    before = model(batch).logits
    batch.inputs["ehr"][~batch.mask[:, 0]] = 123.0  # garbage where ehr is missing changes nothing
    torch.testing.assert_close(model(batch).logits, before)
    # the fused vector: [ehr slot (0 when missing), report slot, mask bits]
    missing = ~batch.mask[:, 0]
    batch.mask[:, 0] = True  # flipping the mask bit alone changes the prediction of those samples
    assert not torch.allclose(model(batch).logits[missing], before[missing])


def test_padding_tokens_do_not_matter():
    data = toy()
    model = model_for(data)
    batch = TensorData(data).batch(np.arange(12))
    before = model(batch).logits
    batch.inputs["report.tokens"][:, 3:] = -50.0
    torch.testing.assert_close(model(batch).logits, before)


def test_unimodal_heads_are_probes_that_leave_the_encoders_alone():
    data = toy()
    model = model_for(data).train()
    batch = TensorData(data).batch(np.arange(12))
    out = model(batch)
    probe_only = sum(CrossEntropy()(lg, batch.y) for lg in out.unimodal_logits)
    probe_only.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.encoders.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.unimodal_heads.parameters())
    model.zero_grad()
    _, parts = model.loss(model(batch), batch, CrossEntropy())
    assert set(parts) == {"loss_cls", "loss_probe"} and parts["loss_probe"] > 0


# ------------------------------------------------------------------------------- modality dropout
ALL3 = torch.ones(21_000, 3, dtype=torch.bool)


def test_modality_dropout_zero_keeps_everything_and_draws_nothing():
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    available = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    assert torch.equal(drop_modalities(available, 0.0, g), available)
    assert torch.equal(g.get_state(), before)


def test_modality_dropout_one_draws_every_nonempty_pattern_uniformly():
    """Rate 1: each of the 2^3 - 1 = 7 non-empty patterns with frequency 1/7; never an empty one;
    dropped slots 9/21 (3 patterns of one modality drop 2 slots, 3 of two drop 1, the full one 0)."""
    observed = drop_modalities(ALL3, 1.0, torch.Generator().manual_seed(0))
    assert observed.any(1).all()
    codes = (observed.long() * torch.tensor([1, 2, 4])).sum(1)
    freq = torch.bincount(codes, minlength=8).double() / len(codes)
    assert freq[0] == 0 and torch.allclose(freq[1:], torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.01)
    assert float((~observed).double().mean()) == pytest.approx(9 / 21, abs=0.01)


def test_modality_dropout_intermediate_rate_drops_its_share():
    """Rate q: a share q of the samples get a random pattern, so q * 9/21 of the slots are dropped
    (q = 0.5: 0.2143), and a share 1 - q + q/7 of the samples keeps all three."""
    observed = drop_modalities(ALL3, 0.5, torch.Generator().manual_seed(1))
    assert float((~observed).double().mean()) == pytest.approx(0.5 * 9 / 21, abs=0.01)
    assert float(observed.all(1).double().mean()) == pytest.approx(0.5 + 0.5 / 7, abs=0.01)


def test_modality_dropout_respects_what_a_sample_has():
    available = torch.tensor([[True, False, True]] * 3000 + [[False, False, False]] * 10 + [[False, True, False]] * 10)
    observed = drop_modalities(available, 1.0, torch.Generator().manual_seed(2))
    assert not (observed & ~available).any()
    assert not observed[3000:3010].any() and observed[3010:, 1].all()  # no modality stays none; one stays one
    codes = (observed[:3000].long() * torch.tensor([1, 2, 4])).sum(1)
    freq = torch.bincount(codes, minlength=8).double() / 3000
    assert torch.allclose(freq[[1, 4, 5]], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)


def test_baseline_modality_dropout_drops_in_training_only():
    data = toy(n=400)
    batch = TensorData(data).batch(np.arange(400))
    plain = model_for(data).train()
    assert torch.equal(plain(batch).mask, batch.mask)                       # default 0: the papers' baseline
    torch.manual_seed(0)
    model = EarlyFusion.from_config(DataSpec.from_dataset(data), {"hidden": 6, "dropout": 0.0, "modality_dropout": 1.0}).train()
    out = model(batch)
    dropped = batch.mask & ~out.mask
    assert dropped.any() and out.mask.any(1).all() and not (out.mask & ~batch.mask).any()
    # a dropped modality enters exactly as a missing one: the same logits as with it marked missing
    really_missing = model.eval()(dataclasses.replace(batch, mask=out.mask))
    assert torch.allclose(out.logits, really_missing.logits, atol=1e-6)
    assert torch.equal(model.eval()(batch).mask, batch.mask)                # nothing dropped at inference
    with pytest.raises(ValueError, match="'modality_dropout' must be in \\[0, 1\\]"):
        EarlyFusion.from_config(DataSpec.from_dataset(data), {"modality_dropout": 1.5})
