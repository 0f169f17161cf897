"""All folds of a trial as one stacked model (the method's own module under torch.vmap): the same
fold models as per-fold training, per-fold AdamW, CLIMD's uneven folds, checkpoints that resume
exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.batched import BatchedFolds, StackedAdamW
from trainables.data import Modality, MultimodalDataset
from trainables.members import member_template
from trainables.registry import METHODS
from trainables.trainable import Trial
from trainables.trial_data import TrialData, prepare

pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")

SMALL = {"hidden": 16, "lr": 1e-3}
OMNI = {**SMALL, "K": 2, "ra_latent": 8}


@pytest.fixture(scope="module")
def data(data_dir):
    return prepare("breast-tcga", {})


def _config(method: str, **extra) -> dict:
    return {"method": method, "data": "breast-tcga", "seed": 3, "folds": 3, "epochs": 4,
            **(OMNI if method == "omnifuse" else SMALL), **extra}


def _tokens_data(n: int = 45) -> TrialData:
    """EMR fusion's full input set: a text ([CLS] vector + word tokens with padding), an image
    feature map (tokens) and an EHR vector, each modality missing for some samples."""
    rng = np.random.default_rng(1)
    y = np.arange(n) % 3
    has = {m: rng.random(n) > 0.2 for m in ("report", "image", "ehr")}
    words = np.zeros((n, 6), bool)
    words[np.arange(n), :] = np.arange(6)[None, :] < rng.integers(1, 7, n)[:, None]
    mods = {
        "report.cls": Modality("report.cls", "vector", rng.normal(size=(n, 5)).astype(np.float32) + y[:, None], has["report"]),
        "report.tokens": Modality("report.tokens", "tokens", rng.normal(size=(n, 6, 5)).astype(np.float32), has["report"],
                                  token_mask=words),
        "image.map": Modality("image.map", "tokens", rng.normal(size=(n, 4, 7)).astype(np.float32) - y[:, None, None],
                              has["image"]),
        "ehr": Modality("ehr", "vector", rng.normal(size=(n, 3)).astype(np.float32), has["ehr"]),
    }
    data = MultimodalDataset("tokens", [f"s{i}" for i in range(n)], y, ["a", "b", "c"], mods)
    return TrialData(data, "tokens", "tokens", ("text", "image", "vector"))


def _params(trial: Trial) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in t.model.parameters()] for t in trial.trainers]


def _assert_same_models(a: Trial, b: Trial, atol: float = 1e-5) -> None:
    for k, (pa, pb) in enumerate(zip(_params(a), _params(b))):
        for x, y in zip(pa, pb):
            assert torch.allclose(x, y, rtol=0, atol=atol), f"fold {k}: max diff {(x - y).abs().max():.3g}"
    for ta, tb in zip(a.trainers, b.trainers):  # the same random draws were taken, in the same order
        assert torch.equal(ta._torch_state, tb._torch_state)
        assert ta.np_rng.bit_generator.state == tb.np_rng.bit_generator.state


def _train_both(method: str, data, epochs: int | None = None, **extra) -> tuple[Trial, Trial, list, list]:
    cfg = _config(method, **extra, **({"epochs": epochs} if epochs else {}))
    per_fold, batched = Trial(method, cfg, data, batch_folds=False), Trial(method, cfg, data)
    assert per_fold.batched is None and batched.batched is not None
    ra, rb = [], []
    for _ in range(epochs or cfg["epochs"]):
        ra.append(per_fold.step())
        rb.append(batched.step())
    return per_fold, batched, ra, rb


def _assert_same_reports(ra: list, rb: list) -> None:
    for a, b in zip(ra, rb):
        assert a.keys() == b.keys()
        for key, v in a.items():
            if isinstance(v, float):
                assert b[key] == pytest.approx(v, rel=1e-4, abs=1e-6), key


def test_registry_says_which_methods_batch_their_folds():
    assert {n for n, s in METHODS.items() if s.batches_folds} == {"baseline", "omnifuse", "emrfusion"}


def test_member_template_swaps_dropout_and_refuses_attention_dropout():
    from trainables.members import MemberDropout

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.2), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    template = member_template(model)
    assert [type(m) for m in template.modules()].count(MemberDropout) == 2
    assert [m.p for m in template.modules() if isinstance(m, MemberDropout)] == [0.2, 0.5]
    assert type(model[1]) is torch.nn.Dropout                      # the member's own module is left alone
    with pytest.raises(ValueError, match="attention dropout"):
        member_template(torch.nn.MultiheadAttention(4, 2, dropout=0.1))


def test_torch_adamw_on_stacked_tensors_equals_one_adamw_per_member_while_all_step():
    """AdamW is elementwise: one torch.optim.AdamW over [n, ...] stacked tensors is n separate AdamW as
    long as every member steps (it keeps one step count per tensor, so it cannot skip a member:
    StackedAdamW does, for CLIMD's uneven folds)."""
    g = torch.Generator().manual_seed(2)
    n = 3
    shapes = [(4, 5), (5,)]
    starts = [torch.randn(n, *s, generator=g) for s in shapes]
    stacked = [torch.nn.Parameter(t.clone()) for t in starts]
    singles = [[torch.nn.Parameter(t[f].clone()) for t in starts] for f in range(n)]
    opt = torch.optim.AdamW(stacked, lr=1e-2, weight_decay=1e-2, foreach=True)
    opts = [torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, foreach=True) for ps in singles]
    for _ in range(25):
        grads = [torch.randn(n, *s, generator=g) for s in shapes]
        for p, gr in zip(stacked, grads):
            p.grad = gr.clone()
        opt.step()
        for f in range(n):
            for p, gr in zip(singles[f], grads):
                p.grad = gr[f].clone()
            opts[f].step()
    for j in range(len(shapes)):
        for f in range(n):
            assert torch.allclose(stacked[j].detach()[f], singles[f][j].detach(), rtol=0, atol=1e-7)


def test_stacked_adamw_equals_one_torch_adamw_per_fold():
    g = torch.Generator().manual_seed(0)
    k, P = 4, 37
    start = torch.randn(k, P, generator=g)
    singles = [torch.nn.Parameter(start[f].clone()) for f in range(k)]
    opts = [torch.optim.AdamW([p], lr=1e-2 * (f + 1), weight_decay=1e-2, foreach=bool(f % 2)) for f, p in enumerate(singles)]
    flat = start.clone()
    stacked = StackedAdamW(flat, [lambda o=o: o.param_groups[0] for o in opts])
    rng = np.random.default_rng(0)
    for step in range(30):
        grad = torch.randn(k, P, generator=g)
        active = np.ones(k, bool) if step % 3 == 0 else rng.random(k) < 0.6  # folds skip steps
        for f in range(k):
            if active[f]:
                opts[f].zero_grad()
                singles[f].grad = grad[f].clone()
                opts[f].step()
        stacked.step(grad * torch.as_tensor(active, dtype=torch.float32)[:, None], active)
    assert stacked.steps.tolist() == [float(o.state[p]["step"]) for o, p in zip(opts, singles)]
    assert len(set(stacked.steps.tolist())) > 1
    for f in range(k):
        assert torch.allclose(flat[f], singles[f].detach(), rtol=0, atol=1e-7)
        assert torch.allclose(stacked.exp_avg_sq[f], opts[f].state[singles[f]]["exp_avg_sq"], rtol=1e-6, atol=0)


def test_equal_folds_step_exactly_like_torch_adamw():
    """With every fold active and equal settings the stacked update is torch's fused AdamW, the
    FoldTrainers' optimizer: bit-equal."""
    g = torch.Generator().manual_seed(1)
    k, P = 3, 50
    start = torch.randn(k, P, generator=g)
    singles = [torch.nn.Parameter(start[f].clone()) for f in range(k)]
    opts = [torch.optim.AdamW([p], lr=1e-3, weight_decay=1e-4, fused=True) for p in singles]
    flat = start.clone()
    stacked = StackedAdamW(flat, [lambda o=o: o.param_groups[0] for o in opts])
    for _ in range(20):
        grad = torch.randn(k, P, generator=g)
        for f in range(k):
            singles[f].grad = grad[f].clone()
            opts[f].step()
        stacked.step(grad, np.ones(k, bool))
    assert all(torch.equal(flat[f], singles[f].detach()) for f in range(k))


@pytest.mark.parametrize("extra", [{}, {"modality_dropout": 0.5}, {"modality_dropout": 1.0, "folds": 2}])
def test_baseline_same_seed_same_fold_models(data, extra):
    per_fold, batched, ra, rb = _train_both("baseline", data, epochs=3 if not extra else 2, **extra)
    _assert_same_models(per_fold, batched)
    _assert_same_reports(ra, rb)


@pytest.mark.parametrize("extra", [{}, {"tla_mask": "restrict", "imbalance": "weighted_ce"},
                                   {"dwfuse": False, "imp_backward": False}, {"modality_dropout": 0.3}])
def test_omnifuse_same_seed_same_fold_models(data, extra):
    per_fold, batched, ra, rb = _train_both("omnifuse", data, epochs=2, **extra, **({"folds": 2} if extra else {}))
    _assert_same_models(per_fold, batched)
    _assert_same_reports(ra, rb)
    assert all(bool(t.model.lazy.any()) for t in batched.trainers)  # epoch 2 trained with TLA on
    assert all(torch.equal(a.model.lazy, b.model.lazy) for a, b in zip(per_fold.trainers, batched.trainers))


@pytest.mark.parametrize("extra", [{}, {"imbalance": "weighted_ce", "dynamic_weighting": False},
                                   {"alignment": False, "residual": False, "dropout": 0.5}])
def test_emrfusion_same_seed_same_fold_models(data, extra):
    per_fold, batched, ra, rb = _train_both("emrfusion", data, epochs=2, **extra, **({"folds": 2} if extra else {}))
    _assert_same_models(per_fold, batched)
    _assert_same_reports(ra, rb)


@pytest.mark.parametrize("extra", [{}, {"self_attention": False, "imbalance": "focal"}])
def test_emrfusion_token_inputs_and_missing_modalities_same_fold_models(extra):
    """Text attention over padded word tokens (Eq.8-9), channel attention over an image map (Eq.10-12),
    modalities missing per sample: L_align / L_ortho / the probes over different rows in every fold."""
    data = _tokens_data()
    cfg = {"method": "emrfusion", "data": "tokens", "seed": 1, "folds": 3, "epochs": 3, "hidden": 8, "lr": 1e-2,
           "batch_size": 8, "align_weight": 0.5, "ortho_weight": 0.1, **extra}
    per_fold, batched = Trial("emrfusion", cfg, data, batch_folds=False), Trial("emrfusion", cfg, data)
    assert batched.batched is not None
    ra = [per_fold.step() for _ in range(3)]
    rb = [batched.step() for _ in range(3)]
    _assert_same_models(per_fold, batched)
    _assert_same_reports(ra, rb)
    assert ra[-1]["loss_align"] > 0 and ra[-1]["loss_probe"] > 0


@pytest.mark.parametrize("method", ["baseline", "omnifuse", "emrfusion"])
def test_validation_probs_in_one_pass_are_each_fold_models_own(data, method):
    """Every fold's validation probabilities from one vmapped pass (breast-tcga's 4 folds hold 37
    and 38 validation rows: the shorter ones padded; and in chunks of 20 positions) equal its fold
    model's ``predict_proba``, and take no random draw. EMR fusion also on token inputs with
    modalities missing."""
    for trial_data, cfg in ((data, _config(method, folds=4)),
                            *([(_tokens_data(), {"method": method, "data": "tokens", "seed": 1, "folds": 3,
                                                 "epochs": 2, "hidden": 8, "batch_size": 8})]
                              if method == "emrfusion" else [])):
        trial = Trial(method, cfg, trial_data)
        trial.step()
        states = [t._torch_state.clone() for t in trial.trainers]
        if trial_data is data:
            assert sorted({len(t.val) for t in trial.trainers}) == [37, 38]
        for batch_size in (256, 20):
            together = trial.batched.validation_probs(batch_size)
            for t, probs in zip(trial.trainers, together):
                alone = t.predict_proba(t.val)
                assert probs.shape == alone.shape == (len(t.val), len(t.class_names))
                assert np.allclose(probs, alone, rtol=0, atol=1e-6), np.abs(probs - alone).max()
        assert all(torch.equal(a, t._torch_state) for a, t in zip(states, trial.trainers))
        assert trial.batched.template.training


def test_members_are_any_number_of_fold_trainers(data):
    """Repetitions x folds: the folds of two seeds (2 x 2 FoldTrainers) as one BatchedFolds equal
    their per-fold training."""
    cfgs = [_config("omnifuse", seed=seed, folds=2, modality_dropout=0.5) for seed in (3, 11)]
    solo = [Trial("omnifuse", c, data, batch_folds=False) for c in cfgs]
    stacked = [Trial("omnifuse", c, data, batch_folds=False) for c in cfgs]
    members = [t for trial in stacked for t in trial.trainers]
    batched = BatchedFolds(members)
    for _ in range(2):
        ra = [t.train_epoch() for trial in solo for t in trial.trainers]
        rb = batched.train_epoch()
        _assert_same_reports(ra, rb)
    for a, b in zip(solo, stacked):
        _assert_same_models(a, b)


def test_climd_uneven_folds_group_by_size_and_skip_steps(data):
    """CLIMD gives folds different subsets; with 4 folds (112/113 training samples) and batch size 28
    the folds' epochs have different numbers of batches, so some steps leave a fold out: it must
    get no AdamW step (its step count stays that of per-fold training)."""
    per_fold, batched, ra, rb = _train_both("baseline", data, epochs=3, folds=4, batch_size=28, curriculum="climd",
                                            imbalance="focal")
    steps = batched.batched.optimizer.steps
    assert len(set(steps.tolist())) > 1
    batched.batched.sync()
    for t_pf, t_b in zip(per_fold.trainers, batched.trainers):
        s_pf = t_pf.optimizer.state_dict()["state"][0]["step"]
        assert float(s_pf) == float(t_b.optimizer.state_dict()["state"][0]["step"])
    _assert_same_models(per_fold, batched)
    _assert_same_reports(ra, rb)


def test_checkpoint_round_trip_resumes_identically(data, tmp_path):
    cfg = _config("omnifuse", curriculum="climd", epochs=3, folds=2)
    whole = Trial("omnifuse", cfg, data)
    for _ in range(3):
        last = whole.step()
    first = Trial("omnifuse", cfg, data)
    first.step(), first.step()
    first.state(tmp_path)
    resumed = Trial("omnifuse", cfg, data)
    resumed.restore(tmp_path)
    assert resumed.epoch == 2
    again = resumed.step()
    assert again == last
    for pa, pb in zip(_params(whole), _params(resumed)):
        assert all(torch.equal(x, y) for x, y in zip(pa, pb))


def test_batched_trial_builds_torchs_adamw_only_for_a_checkpoint_with_moments(data, tmp_path):
    """Batched folds step with StackedAdamW: torch's AdamW (whose first build imports torch._dynamo,
    about 1 s in a fresh Ray worker) is built for a mid-training checkpoint, not for training or
    the finished trial's checkpoint (no moments)."""
    cfg = _config("baseline", epochs=2, folds=2)
    trial = Trial("baseline", cfg, data)
    trial.step()
    assert not any(t.has_optimizer for t in trial.trainers)
    trial.step()
    trial.state(tmp_path)
    assert not any(t.has_optimizer for t in trial.trainers)
    assert "optimizer" not in torch.load(tmp_path / "state.pt", weights_only=True)["folds"][0]
    mid = Trial("baseline", cfg, data)
    mid.step()
    mid.state(tmp_path)
    assert all(t.has_optimizer for t in mid.trainers)
    assert all(float(t.optimizer.state_dict()["state"][0]["step"]) == float(s)
               for t, s in zip(mid.trainers, mid.batched.optimizer.steps))


def test_settings_given_before_the_optimizer_is_built_are_its_own(data):
    trial = Trial("baseline", _config("baseline", epochs=1, folds=2), data)
    t = trial.trainers[0]
    group = t.param_group
    group["lr"] = 0.25
    assert not t.has_optimizer
    assert t.optimizer.param_groups[0]["lr"] == 0.25 and group is t.optimizer.param_groups[0]
    expected = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True).param_groups[0]
    assert {k: v for k, v in t.param_group.items() if k not in ("params", "lr", "weight_decay")} == \
        {k: v for k, v in expected.items() if k not in ("params", "lr", "weight_decay")}


def test_per_fold_checkpoint_resumes_batched(data, tmp_path):
    """The checkpoint format is the per-fold one: a per-fold trial's state continues batched."""
    cfg = _config("baseline", epochs=3, folds=2)
    per_fold = Trial("baseline", cfg, data, batch_folds=False)
    per_fold.step(), per_fold.step()
    per_fold.state(tmp_path)
    batched = Trial("baseline", cfg, data)
    batched.restore(tmp_path)
    ra, rb = per_fold.step(), batched.step()
    _assert_same_reports([ra], [rb])
    _assert_same_models(per_fold, batched)


def test_fold_models_are_views_of_the_stacked_weights(data):
    trial = Trial("baseline", _config("baseline", folds=2), data)
    stack: BatchedFolds = trial.batched
    before = [p.detach().clone() for p in trial.trainers[1].model.parameters()]
    trial.step()
    after = list(trial.trainers[1].model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # prediction sees the trained weights
    name = stack.names[0]
    assert torch.equal(stack.params[name][1], dict(trial.trainers[1].model.named_parameters())[name])
