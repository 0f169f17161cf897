"""EMR fusion: hand-computed losses and attentions, switches, missing modalities."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.backbone import Batch, DataSpec, InputSpec
from trainables.emrfusion import (
    EMRFusion,
    EMRFusionConfig,
    alignment_loss,
    attention_pooling,
    channel_attention,
    orthogonality_loss,
)

D_TXT, L_TXT, D_IMG, HW, D_EHR, C = 6, 5, 4, 9, 3, 3


def make_spec() -> DataSpec:
    return DataSpec(
        (InputSpec("report.cls", "vector", D_TXT), InputSpec("report.tokens", "tokens", D_TXT, L_TXT),
         InputSpec("image.pooled", "vector", D_IMG), InputSpec("image.map", "tokens", D_IMG, HW),
         InputSpec("ehr", "vector", D_EHR)),
        C, ("a", "b", "c"),
    )


def make_batch(b: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        inputs={
            "report.cls": torch.randn(b, D_TXT, generator=g),
            "report.tokens": torch.randn(b, L_TXT, D_TXT, generator=g),
            "image.pooled": torch.randn(b, D_IMG, generator=g),
            "image.map": torch.rand(b, HW, D_IMG, generator=g),
            "ehr": torch.randn(b, D_EHR, generator=g),
        },
        token_masks={"report.tokens": torch.arange(L_TXT).expand(b, L_TXT) < torch.randint(1, L_TXT + 1, (b, 1), generator=g)},
        mask=torch.ones(b, 3, dtype=torch.bool),
        y=torch.randint(0, C, (b,), generator=g),
        index=torch.arange(b),
    )


def model(**kw) -> EMRFusion:
    torch.manual_seed(0)
    return EMRFusion(make_spec(), EMRFusionConfig(**{"hidden": 8, "dropout": 0.0, **kw})).eval()


def test_alignment_loss_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    # S = [[1/sqrt2, 0], [1/sqrt2, 1]]; ||S - I||_F^2 = (1 - 1/sqrt2)^2 + 1/2
    assert alignment_loss(a, b).item() == pytest.approx((1 - 1 / math.sqrt(2)) ** 2 + 0.5, rel=1e-6)
    assert alignment_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_orthogonality_loss_hand_computed():
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    b = torch.tensor([[3.0, 1.0], [0.0, -4.0]])
    # per sample: <[1,2],[3,1]> = 5, |<[0,1],[0,-4]>| = 4
    assert orthogonality_loss(a, b).item() == pytest.approx(9.0)
    assert orthogonality_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])).item() == 0.0


def test_attention_pooling_hand_computed():
    h = torch.tensor([[1.0, 0.0]])
    e = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, False]])
    # scores = [2, 0] / sqrt(2); the padding token is ignored
    w = torch.softmax(torch.tensor([2 / math.sqrt(2), 0.0]), 0)
    expected = w[0] * e[0, 0] + w[1] * e[0, 1]
    assert torch.allclose(attention_pooling(h, e, valid)[0], expected)
    assert torch.equal(attention_pooling(h, e, torch.zeros_like(valid)), torch.zeros(1, 2))


def test_channel_attention_hand_computed():
    x = torch.tensor([[[0.0, 2.0], [2.0, 2.0], [7.0, 7.0]]])
    valid = torch.tensor([[True, True, False]])
    z = torch.tensor([1.0, 2.0])                      # Eq.10 channel means over valid cells
    beta = torch.exp(z) / torch.exp(z).sum()          # Eq.11
    assert torch.allclose(channel_attention(x, valid)[0], 2 * beta * z)


def test_backbone_contract_shapes():
    m, b = model(), make_batch()
    out = m(b)
    assert m.modalities == ["report", "image", "ehr"]
    assert out.logits.shape == (8, C) and out.unimodal_logits.shape == (3, 8, C)
    assert out.embeddings.shape == (3, 8, 8)
    assert out.extras["alpha"].shape == (8, 3)


def _variant(full: EMRFusion, **kw) -> EMRFusion:
    v = model(**kw)
    v.load_state_dict(full.state_dict(), strict=False)  # same weights for every shared layer
    return v


@pytest.mark.parametrize("switch", ["self_attention", "residual", "dynamic_weighting"])
def test_each_forward_switch_changes_the_computation(switch):
    full, b = model(), make_batch()
    off = _variant(full, **{switch: False})
    assert not torch.allclose(full(b).logits, off(b).logits)


def test_switch_semantics():
    full, b = model(), make_batch()
    assert torch.equal(_variant(full, dynamic_weighting=False)(b).extras["alpha"], torch.ones(8, 3))
    # without self-attention the text tokens and the image map are not read at all
    plain = _variant(full, self_attention=False)
    b2 = make_batch()
    b2.inputs["report.tokens"] += 1.0
    b2.inputs["image.map"] *= 3.0
    assert torch.equal(plain(b).logits, plain(b2).logits)
    assert not torch.allclose(full(b).logits, full(b2).logits)
    # residual: H_final differs by exactly H_weighted, so the logits differ by W_c H_weighted
    res_off = _variant(full, residual=False)
    diff = full(b).logits - res_off(b).logits
    u = full(b).embeddings
    u_tilde = u / u.pow(2).sum(dim=(0, 2)).sqrt().unsqueeze(-1)
    h = (full(b).extras["alpha"].T.unsqueeze(-1) * u_tilde).sum(0)
    assert torch.allclose(diff, h @ full.W_c.weight.T, atol=1e-6)


def test_alignment_switch_and_loss_composition():
    b = make_batch(b=16)
    on = model(align_weight=0.5, ortho_weight=0.2)
    loss, parts = on.loss(on(b), b, F.cross_entropy)
    parts = {k: float(v) for k, v in parts.items()}
    assert parts["loss_align"] > 0 and parts["loss_ortho"] > 0
    expected = parts["loss_ce"] + 0.5 * parts["loss_align"] + 0.2 * parts["loss_ortho"] + parts["loss_probe"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    off = _variant(on, alignment=False, align_weight=0.5, ortho_weight=0.2)
    loss_off, parts_off = off.loss(off(b), b, F.cross_entropy)
    assert parts_off["loss_align"] == 0.0
    assert loss_off.item() == pytest.approx(loss.item() - 0.5 * parts["loss_align"], rel=1e-5)
    # L_align by hand for the pairs of the batch: mean over the 3 modality pairs of ||S - I||_F^2 / n
    u = on(b).embeddings
    hand = sum(alignment_loss(u[i], u[j]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 16 / 3
    assert parts["loss_align"] == pytest.approx(hand.item(), rel=1e-5)


def test_missing_modality_is_ignored_through_the_mask():
    m, b = model(), make_batch()
    b.mask[0, 2] = False          # sample 0 has no EHR
    b.mask[1, 0] = False          # sample 1 has no report
    out = m(b)
    assert torch.isfinite(out.logits).all()
    assert out.extras["alpha"][0, 2] == 0 and torch.equal(out.embeddings[2, 0], torch.zeros(8))
    b2 = make_batch()
    b2.mask.copy_(b.mask)
    b2.inputs["ehr"][0] = 50.0
    b2.inputs["report.cls"][1] = -50.0
    assert torch.allclose(m(b2).logits[:2], out.logits[:2])
    loss, _ = m.loss(out, b, F.cross_entropy)
    assert torch.isfinite(loss)


def test_sample_without_any_modality_gives_finite_gradients():
    m, b = model().train(), make_batch()
    b.mask[0] = False                                   # sample 0: nothing available
    b.token_masks["report.tokens"][0] = False
    loss, _ = m.loss(m(b), b, F.cross_entropy)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_from_config_and_errors():
    spec = make_spec()
    m = EMRFusion.from_config(spec, {"hidden": 4, "residual": False, "optimizer": "x"})
    assert not m.residual and m.W_f.in_features == 4 and m.align_weight == EMRFusionConfig.align_weight
    with pytest.raises(ValueError, match="at least 2 modalities"):
        EMRFusion(DataSpec((InputSpec("ehr", "vector", 3),), 2, ("a", "b")))
    with pytest.raises(ValueError, match="report.cls"):
        EMRFusion(DataSpec((InputSpec("report.tokens", "tokens", 4, 3), InputSpec("ehr", "vector", 3)), 2, ("a", "b")))
    # two vector modalities (e.g. omics tables) are enough
    two = EMRFusion(DataSpec((InputSpec("mrna", "vector", 5), InputSpec("meth", "vector", 4)), 2, ("a", "b")))
    g = torch.Generator().manual_seed(0)
    out = two(Batch({"mrna": torch.randn(4, 5, generator=g), "meth": torch.randn(4, 4, generator=g)}, {},
                    torch.ones(4, 2, dtype=torch.bool), torch.tensor([0, 1, 0, 1]), torch.arange(4)))
    assert out.logits.shape == (4, 2)
