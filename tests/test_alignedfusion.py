"""AlignedFusion and the self-attention baseline on small random tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.alignedfusion import (
    AlignedFusion,
    AlignedFusionConfig,
    SelfAttentionConfig,
    SelfAttentionFusion,
    reconstruction_loss,
)
from trainables.backbone import Batch, DataSpec, InputSpec

A, D_TEXT, P, D_IMG, D_EHR, C = 4, 6, 9, 5, 3, 3


def make_spec() -> DataSpec:
    return DataSpec(
        (InputSpec("report.attributes", "tokens", D_TEXT, A), InputSpec("image.patches", "tokens", D_IMG, P),
         InputSpec("ehr", "vector", D_EHR)),
        C, ("a", "b", "c"),
    )


def make_batch(b: int = 8, seed: int = 0, present_p: float = 0.7) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        inputs={
            "report.attributes": torch.randn(b, A, D_TEXT, generator=g),
            "image.patches": torch.randn(b, P, D_IMG, generator=g),
            "ehr": torch.randn(b, D_EHR, generator=g),
        },
        token_masks={"report.attributes": torch.rand(b, A, generator=g) < present_p},
        mask=torch.ones(b, 3, dtype=torch.bool),
        y=torch.randint(0, C, (b,), generator=g),
        index=torch.arange(b),
    )


def model(**kw) -> AlignedFusion:
    torch.manual_seed(0)
    return AlignedFusion(make_spec(), AlignedFusionConfig(**{"hidden": 16, "heads": 2, "dropout": 0.0, **kw})).eval()


def with_new_image(batch: Batch) -> Batch:
    g = torch.Generator().manual_seed(99)
    patches = batch.inputs["image.patches"] + torch.randn(batch.inputs["image.patches"].shape, generator=g)
    inputs = dict(batch.inputs, **{"image.patches": patches})
    return Batch(inputs, batch.token_masks, batch.mask, batch.y, batch.index)


def test_backbone_contract_shapes():
    m, b = model(), make_batch()
    out = m(b)
    assert out.logits.shape == (8, C)
    assert out.unimodal_logits.shape == (3, 8, C)
    assert out.embeddings.shape == (3, 8, 16)
    assert m.modalities == ["report", "image", "ehr"]
    assert torch.isfinite(out.logits).all()


def test_report_tokens_see_image_only_through_intermediate_token():
    b, b2 = make_batch(), with_new_image(make_batch())
    # One layer: report tokens have only seen the initial t_int, so they cannot depend on the image ...
    m = model(depth=1)
    assert torch.equal(m(b).embeddings[0], m(b2).embeddings[0])
    assert not torch.allclose(m(b).logits, m(b2).logits)  # ... while t_int (in t_cls) does.
    # Two layers: the averaged t_int carries image information into the report tokens ...
    m = model(depth=2)
    assert not torch.allclose(m(b).embeddings[0], m(b2).embeddings[0])
    # ... and cutting that one bridge (report side keeps its own copy) removes every dependence.
    m.merge_intermediate = lambda t_int_r, t_int_v: t_int_r
    assert torch.equal(m(b).embeddings[0], m(b2).embeddings[0])


def test_without_intermediate_token_information_flows_through_attention():
    m = model(depth=1, intermediate_token=False)
    b, b2 = make_batch(), with_new_image(make_batch())
    assert not hasattr(m, "t_int")
    assert not torch.allclose(m(b).embeddings[0], m(b2).embeddings[0])


def test_masking_rate_matches_mask_p_and_only_touches_present_tokens():
    m = model(mask_p=0.3).train()
    torch.manual_seed(1)
    b = make_batch(b=4000, present_p=0.6)
    out = m(b)
    masked, present = out.extras["masked"], out.extras["present"]
    assert not (masked & ~present).any()
    rate = masked.sum().item() / present.sum().item()
    assert abs(rate - 0.3) < 0.015  # ~9600 present tokens: binomial sd ~0.005


def test_nothing_masked_in_eval_mode():
    m = model(mask_p=0.5)
    b = make_batch(b=64)
    out = m(b)
    assert not out.extras["masked"].any()
    assert torch.equal(out.logits, m(b).logits)


def test_masked_token_value_is_replaced_by_UN():
    m = model(mask_p=0.5).train()
    b = make_batch(b=32)
    torch.manual_seed(3)
    out = m(b)
    masked = out.extras["masked"]
    assert masked.any()
    tokens = b.inputs["report.attributes"].clone()
    tokens[masked] = 100.0  # different values at the masked positions only
    b2 = Batch(dict(b.inputs, **{"report.attributes": tokens}), b.token_masks, b.mask, b.y, b.index)
    torch.manual_seed(3)  # same mask
    assert torch.equal(m(b2).logits, out.logits)


def test_reconstruction_loss_hand_computed():
    # Attribute 0 has two distinct value tokens e0, e1 in the batch; only sample 0 is masked.
    tokens = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    present = torch.tensor([[True], [True], [True]])
    masked = torch.tensor([[True], [False], [False]])
    t_hat = torch.tensor([[[2.0, 1.0]], [[5.0, -5.0]], [[0.0, 9.0]]])
    loss = reconstruction_loss(t_hat, tokens, present, masked, torch.nn.Identity())
    # classes sorted by torch.unique: [0,1] -> e1, [1,0] -> e0; logits for sample 0 = [1, 2]; target e0.
    expected = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_counts_masked_tokens_only():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2, (10, A, 1), generator=g).float().expand(10, A, 4).contiguous()  # 2 values per attribute
    present = torch.rand(10, A, generator=g) < 0.8
    masked = present & (torch.rand(10, A, generator=g) < 0.5)
    t_hat = torch.randn(10, A, 4, generator=g, requires_grad=True)
    embed = torch.nn.Linear(4, 4)
    loss = reconstruction_loss(t_hat, tokens, present, masked, embed)
    loss.backward()
    assert (t_hat.grad[~masked] == 0).all()
    assert (t_hat.grad[masked].abs().sum(-1) > 0).all()
    changed = t_hat.detach().clone()
    changed[~masked] = 7.0
    assert reconstruction_loss(changed, tokens, present, masked, embed).item() == pytest.approx(loss.item())
    # Nothing masked -> zero loss.
    assert reconstruction_loss(t_hat, tokens, present, torch.zeros_like(masked), embed).item() == 0.0


def test_total_loss_is_l_d_plus_weighted_l_rec():
    b = make_batch(b=32)
    for w in (0.0, 2.0):
        m = model(mask_p=0.5, rec_weight=w).train()
        torch.manual_seed(5)
        out = m(b)
        loss, parts = m.loss(out, b, F.cross_entropy)
        parts = {k: float(v) for k, v in parts.items()}
        assert parts["loss_rec"] > 0
        assert loss.item() == pytest.approx(parts["loss_d"] + w * parts["loss_rec"] + parts["loss_probe"], rel=1e-5)


def test_missing_modalities_are_handled_through_the_mask():
    m = model()
    b = make_batch()
    b.mask[0, 0] = False  # no report: every attribute is UN
    b.mask[1, 1] = False  # no image
    b.mask[2, 1:] = False  # report only
    out = m(b)
    assert torch.isfinite(out.logits).all()
    present, _ = m._report_unknown(b)
    assert not present[0].any()
    assert torch.equal(out.embeddings[1, 1], torch.zeros(16))
    # A missing report behaves exactly like a report with no attribute mentioned.
    b2 = make_batch()
    b2.token_masks["report.attributes"][0] = False
    b2.mask[1, 1] = False
    b2.mask[2, 1:] = False
    assert torch.allclose(m(b2).logits[0], out.logits[0])


def test_self_attention_baseline_mixes_tokens_directly():
    torch.manual_seed(0)
    m = SelfAttentionFusion(make_spec(), SelfAttentionConfig(hidden=16, depth=1, heads=2, dropout=0.0)).eval()
    b, b2 = make_batch(), with_new_image(make_batch())
    out = m(b)
    assert out.logits.shape == (8, C) and out.embeddings.shape == (3, 8, 16)
    assert not torch.allclose(out.embeddings[0], m(b2).embeddings[0])
    loss, parts = m.loss(out, b, F.cross_entropy)
    assert set(parts) == {"loss_d", "loss_probe"}


def test_from_config_and_errors():
    spec = make_spec()
    m = AlignedFusion.from_config(spec, {"hidden": 8, "heads": 2, "depth": 3, "intermediate_token": False, "lr": 1.0})
    assert len(m.report_blocks) == 3 and not m.intermediate_token
    assert AlignedFusion.from_config(spec, {}).mask_p == AlignedFusionConfig.mask_p == 0.3
    with pytest.raises(ValueError, match="mask_p"):
        AlignedFusionConfig(mask_p=1.0)
    with pytest.raises(ValueError, match="attributes"):
        AlignedFusion(DataSpec((InputSpec("image.patches", "tokens", 5, 9),), 2, ("a", "b")))


def _attribute_dataset(n: int = 50):
    import numpy as np

    from trainables.data.dataset import Modality, MultimodalDataset

    rng = np.random.default_rng(0)
    token_mask = rng.random((n, A)) < 0.7
    report_ok = np.arange(n) % 10 != 0
    token_mask &= report_ok[:, None]
    values = rng.normal(size=(n, A, D_TEXT)).astype(np.float32) * token_mask[..., None]
    states = np.where(token_mask, rng.integers(0, 2, (n, A)), -1).astype(np.int8)
    mods = {
        "report.attributes": Modality("report.attributes", "tokens", values, report_ok, token_mask=token_mask),
        "ehr": Modality("ehr", "vector", rng.normal(size=(n, D_EHR)).astype(np.float32), np.ones(n, bool)),
    }
    return MultimodalDataset("toy", [f"s{i}" for i in range(n)], rng.integers(0, C, n), ["a", "b", "c"], mods,
                             meta={"attribute_states": states})


def test_drop_attributes_exact_rate_seeded_and_consistent():
    import numpy as np

    from trainables.attribute_missing import apply_protocol, drop_attributes
    from trainables.data.errors import DataError

    data = _attribute_dataset()
    before = data.modalities["report.attributes"]
    n_mentioned = int(before.token_mask.sum())
    out = drop_attributes(data, 0.3, seed=1)
    after = out.modalities["report.attributes"]
    dropped = before.token_mask & ~after.token_mask
    assert dropped.sum() == round(0.3 * n_mentioned)
    assert not (after.token_mask & ~before.token_mask).any()          # only mentioned cells are dropped
    assert (after.values[dropped] == 0).all() and np.array_equal(after.values[~dropped], before.values[~dropped])
    assert (out.meta["attribute_states"][dropped] == -1).all()
    assert (data.meta["attribute_states"][dropped] != -1).all()       # input untouched
    assert np.array_equal(drop_attributes(data, 0.3, seed=1).modalities["report.attributes"].token_mask, after.token_mask)
    assert not np.array_equal(drop_attributes(data, 0.3, seed=2).modalities["report.attributes"].token_mask, after.token_mask)
    assert drop_attributes(data, 0.0, seed=1).modalities["report.attributes"].token_mask.sum() == n_mentioned
    train, test = apply_protocol(data, data, "M-Tr+C-Te", 0.5, seed=0)
    assert train.modalities["report.attributes"].token_mask.sum() < n_mentioned
    assert test.modalities["report.attributes"].token_mask.sum() == n_mentioned
    with pytest.raises(DataError, match="protocol"):
        apply_protocol(data, data, "M-Tr", 0.5, seed=0)
    with pytest.raises(DataError, match="rate"):
        drop_attributes(data, 1.5, seed=0)
