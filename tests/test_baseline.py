"""Early-fusion baseline: zeros plus the mask for missing modalities, token pooling, probe heads."""

import numpy as np
import torch

from trainables.backbone import DataSpec, TensorData
from trainables.baseline import EarlyFusion, pool_tokens
from trainables.data.dataset import Modality, MultimodalDataset
from trainables.losses import CrossEntropy

torch.set_num_threads(1)  # small MLPs: one thread is fastest, and robust on a busy 2-core machine


def toy(n=12) -> MultimodalDataset:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    vec_mask = np.arange(n) % 3 != 0
    vec = rng.normal(size=(n, 4)).astype(np.float32)
    vec[~vec_mask] = 0.0
    tokens = rng.normal(size=(n, 5, 3)).astype(np.float32)
    token_mask = np.zeros((n, 5), bool)
    token_mask[:, :3] = True
    return MultimodalDataset("toy", [f"s{i}" for i in range(n)], y, ["neg", "pos"], {
        "ehr": Modality("ehr", "vector", vec, vec_mask),
        "report.tokens": Modality("report.tokens", "tokens", tokens, np.ones(n, bool), token_mask=token_mask),
        "report.cls": Modality("report.cls", "vector", rng.normal(size=(n, 2)).astype(np.float32), np.ones(n, bool)),
    })


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
