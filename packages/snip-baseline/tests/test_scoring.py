"""Connection sensitivity against a hand-written gradient, and the model left as it was."""

from __future__ import annotations

import pytest
import torch
from snip_baseline import connection_sensitivity, eval_mode, fresh_copy, normalize
from snip_helpers import make_batch, make_mlp, reference_scores
from torch import nn


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_children() if isinstance(m, nn.Linear)}


def test_scores_equal_hand_written_w_times_grad(mlp, batch):
    got = connection_sensitivity(mlp, weights_of(mlp), [batch])
    want = reference_scores(mlp, [batch])
    assert list(got) == ["0", "2", "4"]
    for name in want:
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-15)
    assert all(float(s.sum()) > 0 for s in got.values())


def test_several_batches_average_the_gradient(mlp):
    batches = [make_batch(seed=1), make_batch(seed=2), make_batch(seed=3)]
    got = connection_sensitivity(mlp, weights_of(mlp), batches)
    want = reference_scores(mlp, batches)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-15)
    # the mean gradient, not the mean of per-batch scores
    per_batch_mean = sum(reference_scores(mlp, [b])["2"] for b in batches) / 3
    assert not torch.allclose(got["2"], per_batch_mean)


def test_half_precision_weights_score_in_float32():
    model = make_mlp(dtype=torch.bfloat16)
    x, y = make_batch(dtype=torch.bfloat16)
    got = connection_sensitivity(model, weights_of(model), [(x, y)])
    assert all(s.dtype == torch.float32 for s in got.values())


def test_scoring_writes_no_grad_and_keeps_existing_grads(mlp, batch):
    mlp[2].weight.grad = torch.full_like(mlp[2].weight, 7.0)
    connection_sensitivity(mlp, weights_of(mlp), [batch])
    assert mlp[0].weight.grad is None and mlp[0].bias.grad is None and mlp[4].weight.grad is None
    assert torch.equal(mlp[2].weight.grad, torch.full_like(mlp[2].weight, 7.0))


class Probe(nn.Module):
    """BatchNorm + dropout model that records the modes seen during its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(5, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.bn.training, self.drop.training))
        return self.out(self.drop(self.bn(self.fc(x))))


def test_batchnorm_and_dropout_are_in_eval_mode_while_scoring_and_flags_are_restored():
    torch.manual_seed(0)
    model = Probe()
    model.train()
    model.out.eval()  # a mixed-mode model must come back mixed
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked))
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    scores = connection_sensitivity(model, {"fc": model.fc.weight, "out": model.out.weight}, [(x, y)])
    assert model.seen == [(False, False)]
    assert model.training and model.bn.training and model.drop.training and model.fc.training
    assert not model.out.training
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert int(model.bn.num_batches_tracked) == stats[2]
    # eval-mode scoring is deterministic despite dropout
    again = connection_sensitivity(model, {"fc": model.fc.weight, "out": model.out.weight}, [(x, y)])
    assert all(torch.equal(scores[n], again[n]) for n in scores)


def test_eval_mode_restores_flags_when_the_body_raises(mlp):
    mlp.train()
    with pytest.raises(RuntimeError), eval_mode(mlp):
        assert not mlp.training and not mlp[0].training
        raise RuntimeError("boom")
    assert mlp.training and mlp[0].training


def test_custom_loss_and_errors(mlp, batch):
    x, y = batch
    got = connection_sensitivity(mlp, weights_of(mlp), [(x, y)], loss_fn=lambda out, _: out[:, 0].sum())
    # d(sum of logit 0)/dW of the last layer only touches row 0
    assert float(got["4"][1:].abs().sum()) == 0.0 and float(got["4"][0].sum()) > 0
    with pytest.raises(ValueError, match="yielded no batch"):
        connection_sensitivity(mlp, weights_of(mlp), [])
    with pytest.raises(RuntimeError, match="must return a scalar"):
        connection_sensitivity(mlp, weights_of(mlp), [(x, y)], loss_fn=lambda out, _: out)


def test_normalize_sums_to_one_and_keeps_the_order():
    scores = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([4.0, 0.0])}
    norm = normalize(scores)
    assert norm["a"].tolist() == [0.125, 0.375] and norm["b"].tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="every connection sensitivity is zero"):
        normalize({"a": torch.zeros(3)})


def test_fresh_copy_redraws_only_the_named_weights_reproducibly(mlp):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    a = fresh_copy(mlp, ["0", "4"], torch.Generator().manual_seed(5))
    b = fresh_copy(mlp, ["0", "4"], torch.Generator().manual_seed(5))
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in before.items())  # original untouched
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[4].weight, b[4].weight)
    assert not torch.equal(a[0].weight, mlp[0].weight)
    assert torch.equal(a[2].weight, mlp[2].weight) and torch.equal(a[0].bias, mlp[0].bias)
    std = (2.0 / (16 + 32)) ** 0.5  # xavier_normal_ for Linear(16, 32)
    assert abs(float(a[0].weight.detach().std()) - std) < 0.15 * std
