"""VAE oversampling (CLIMD Table 2): the ELBO's terms by hand, seeded determinism, class counts,
training-fold-only statistics, and a trial end to end with it."""

import math

import numpy as np
import pytest
import torch

from test_engine import FAST, toy
from trainables.data.errors import DataError
from trainables.engine import FoldTrainer
from trainables.resampling import RESAMPLERS, VAE, VAEConfig, gaussian_kl, reconstruction, vae_loss, vae_oversample
from trainables.trainable import Trial
from trainables.trial_data import prepare

torch.set_num_threads(1)
SMALL = {"vae_steps": 60, "vae_hidden": 16, "vae_latent": 4}


def test_kl_of_a_gaussian_to_the_standard_normal_by_hand():
    # mu = (1, 0), sigma^2 = (1, 4): 1/2 [(1 + 1 - 1 - 0) + (0 + 4 - 1 - log 4)]
    kl = gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]]))
    torch.testing.assert_close(kl, torch.tensor([0.5 * 1.0 + 0.5 * (3.0 - math.log(4.0))]))
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0  # q = prior


def test_reconstruction_term_by_hand():
    # values (1, 2, 3); the third belongs to a missing modality and is not reconstructed
    x, mean = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    value_mask = torch.tensor([[1.0, 1.0, 0.0]])
    bits, logits = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    # Gaussian: 1/2 (1 + 1); Bernoulli: -log sigmoid(0) - log(1 - sigmoid(log 3)) = log 2 + log 4
    expected = 0.5 * 2.0 + math.log(2.0) + math.log(4.0)
    torch.testing.assert_close(reconstruction(x, bits, value_mask, mean, logits), torch.tensor([expected]))


def test_negative_elbo_of_a_zeroed_vae_by_hand():
    """All weights and biases 0: q(z|x) = N(0, I) (KL 0), decoder mean 0 and logits 0, so the loss is
    1/2 sum of the available x^2 plus M log 2, whatever eps is."""
    model = VAE(3, 2, VAEConfig(latent=2, hidden=4))
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
    bits = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    value_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, rec, kl = vae_loss(model, x, bits, value_mask, torch.randn(2, 2), beta=0.5)
    per_sample = [0.5 * 14 + 2 * math.log(2), 0.5 * 0.25 + 2 * math.log(2)]
    torch.testing.assert_close(rec, torch.tensor(float(np.mean(per_sample))))
    torch.testing.assert_close(kl, torch.tensor(0.0))
    torch.testing.assert_close(loss, rec)


def test_counts_originals_first_and_availability():
    data = toy()  # classes 30 / 20 / 10; modality b missing for every 7th sample
    out = vae_oversample(data, SMALL, seed=0)
    np.testing.assert_array_equal(out.class_counts(), [30, 30, 30])
    np.testing.assert_array_equal(out.labels[:60], data.labels)
    np.testing.assert_array_equal(out.labels[60:], [1] * 10 + [2] * 20)
    for name, m in data.modalities.items():
        np.testing.assert_array_equal(out.modalities[name].values[:60], m.values)
        np.testing.assert_array_equal(out.modalities[name].mask[:60], m.mask)
    avail = out.availability()[60:]
    assert avail.any(1).all()
    b = out.modalities["b"]
    assert (b.values[60:][~b.mask[60:]] == 0).all()
    assert len(set(out.ids)) == 90 and all(i.startswith("vae-") for i in out.ids[60:])


def test_balanced_data_is_returned_unchanged():
    data = toy().take(np.r_[0:10, 30:40, 50:60])
    assert vae_oversample(data, SMALL, seed=0) is data


def test_seeded_determinism():
    data = toy()
    a, b, c = (vae_oversample(data, SMALL, seed=s) for s in (3, 3, 4))
    for name in data.modalities:
        np.testing.assert_array_equal(a.modalities[name].values, b.modalities[name].values)
        np.testing.assert_array_equal(a.modalities[name].mask, b.modalities[name].mask)
        assert not np.array_equal(a.modalities[name].values, c.modalities[name].values)
    before = torch.get_rng_state()
    vae_oversample(data, SMALL, seed=0)
    assert torch.equal(before, torch.get_rng_state())  # the global torch RNG is not touched


def test_samples_come_from_each_class_of_the_training_fold_only():
    """Each class's synthetic rows sit near that class's *training* mean (classes differ by 1.5 per
    feature); the validation part, shifted far away, changes nothing of the training set."""
    data = toy(n=90)
    out = vae_oversample(data, {**SMALL, "vae_steps": 600}, seed=0)
    x = out.modalities["a"].values
    means = np.stack([x[:90][data.labels == c].mean(0) for c in range(3)])
    for c in (1, 2):
        synth = x[90:][out.labels[90:] == c].mean(0)
        assert np.argmin(np.linalg.norm(means - synth, axis=1)) == c

    train, val = data.take(np.arange(0, 90, 2)), data.take(np.arange(1, 90, 2))
    far = val.with_modalities({k: type(m)(m.name, m.kind, m.values + 100.0, m.mask) for k, m in val.modalities.items()})
    cfg = {**FAST, **SMALL, "imbalance": "vae"}
    t1 = FoldTrainer("baseline", cfg, train, val, seed=0)
    t2 = FoldTrainer("baseline", cfg, train, far, seed=0)
    assert len(t1.train_data.y) == 3 * np.bincount(train.labels).max()
    for name, values in t1.train_data.inputs.items():
        torch.testing.assert_close(values, t2.train_data.inputs[name])
    torch.testing.assert_close(t1.train_data.mask, t2.train_data.mask)


def test_bad_input():
    with pytest.raises(DataError, match="vae.*tokens"):
        FoldTrainer("baseline", {**FAST, "imbalance": "vae"}, toy(tokens=True), seed=0)
    with pytest.raises(DataError, match="vae_latent.*positive"):
        vae_oversample(toy(), {"vae_latent": 0}, seed=0)
    with pytest.raises(DataError, match="vae_steps.*number"):
        vae_oversample(toy(), {"vae_steps": "many"}, seed=0)
    assert "vae" in RESAMPLERS


def test_a_trial_end_to_end_with_vae_oversampling(data_dir):
    data = prepare("breast-tcga", {})
    config = {"method": "baseline", "data": "breast-tcga", "seed": 0, "folds": 2, "epochs": 3, "hidden": 32,
              "lr": 1e-3, "scheduler": "none", "imbalance": "vae", "vae_steps": 100}
    trial = Trial("baseline", config, data)
    reports = [trial.step() for _ in range(3)]
    assert reports[-1]["final"] and 0.0 <= reports[-1]["macro_f1"] <= 1.0
    for t in trial.trainers:
        counts = np.bincount(t.train_data.y.numpy())
        assert (counts == counts.max()).all()
