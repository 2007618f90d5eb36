"""DivideMix pieces against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

from training import dividemix as dm


def test_sharpen_matches_formula_and_sums_to_one():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    out = dm.sharpen(p, T=0.5)
    expected = torch.tensor([[0.25, 0.09, 0.04], [0.81, 0.0025, 0.0025]])
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(out, expected)
    assert torch.allclose(out.sum(1), torch.ones(2))
    # T = 1 is the identity on normalised rows
    assert torch.allclose(dm.sharpen(p, 1.0), p)


def test_linear_rampup_fractional_epoch():
    # lambda_u * clip((epoch + i/num_iter - warm_up) / 16, 0, 1)
    assert dm.linear_rampup(10.0, warm_up=10, lambda_u=25) == 0.0
    assert dm.linear_rampup(9.0, warm_up=10, lambda_u=25) == 0.0
    assert dm.linear_rampup(14.0, warm_up=10, lambda_u=25) == pytest.approx(25 * 4 / 16)
    assert dm.linear_rampup(12 + 0.5, warm_up=10, lambda_u=25) == pytest.approx(25 * 2.5 / 16)
    assert dm.linear_rampup(100.0, warm_up=10, lambda_u=25) == 25.0


def test_mixmatch_lambda_at_least_half_and_mixing_formula():
    rng = np.random.RandomState(0)
    inputs = torch.arange(12.0).view(4, 3)
    targets = torch.eye(4)
    g = torch.Generator().manual_seed(1)
    mixed_x, mixed_t, lam = dm.mixmatch(inputs, targets, alpha=4.0, rng=rng, generator=g)
    assert 0.5 <= lam <= 1.0
    # recover the permutation from the targets: row i = lam * e_i + (1 - lam) * e_perm(i)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed_x, lam * inputs + (1 - lam) * inputs[perm])
    assert torch.allclose(mixed_t, lam * targets + (1 - lam) * targets[perm])
    lam0 = np.random.RandomState(0).beta(4.0, 4.0)
    assert lam == pytest.approx(max(lam0, 1 - lam0))


def test_semi_loss_hand_computed():
    logits_x = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    targets_x = torch.tensor([[0.5, 0.5]])
    logits_u = torch.tensor([[0.0, 0.0]])  # softmax = [0.5, 0.5]
    targets_u = torch.tensor([[1.0, 0.0]])
    out = dm.semi_loss(logits_x, targets_x, logits_u, targets_u, lambda_u=3.0)
    assert out.lx.item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    assert out.lu.item() == pytest.approx(0.25)  # mean of (0.5-1)^2 and (0.5-0)^2
    assert out.lambda_u == 3.0
    # zero when predictions equal targets (Lu)
    same = dm.semi_loss(logits_x, targets_x, logits_u, torch.tensor([[0.5, 0.5]]), 1.0)
    assert same.lu.item() == pytest.approx(0.0)


def test_uniform_prior_penalty_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))  # mean prediction [0.7, 0.3]
    expected = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    assert dm.uniform_prior_penalty(logits, 2).item() == pytest.approx(expected, rel=1e-5)
    assert dm.uniform_prior_penalty(torch.zeros(3, 4), 4).item() == pytest.approx(0.0, abs=1e-7)


def test_neg_entropy_and_warmup_loss():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    assert dm.neg_entropy(logits).item() == pytest.approx(expected, rel=1e-5)
    y = torch.tensor([1])
    loss, ce = dm.warmup_loss(logits, y, confidence_penalty=False)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-5) and loss is ce
    loss_p, _ = dm.warmup_loss(logits, y, confidence_penalty=True)
    assert loss_p.item() == pytest.approx(-math.log(0.75) + expected, rel=1e-5)


class _Fixed(nn.Module):
    """A 'network' returning fixed logits per input row (first feature = row id)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_co_guess_and_refine_targets_hand_computed():
    net = _Fixed(torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]])))
    peer = _Fixed(torch.log(torch.tensor([[0.4, 0.6], [0.2, 0.8]])))
    u1 = torch.zeros(1, 1, 1, 1)
    u2 = torch.ones(1, 1, 1, 1)
    q = (torch.tensor([0.8, 0.2]) + torch.tensor([0.6, 0.4]) + torch.tensor([0.4, 0.6]) + torch.tensor([0.2, 0.8])) / 4
    assert torch.allclose(dm.co_guess_targets(net, peer, u1, u2, T=1.0)[0], q)
    w = torch.tensor([0.25])
    y = torch.tensor([[0.0, 1.0]])
    px = (torch.tensor([0.8, 0.2]) + torch.tensor([0.6, 0.4])) / 2
    refined = 0.25 * y[0] + 0.75 * px
    sharp = refined**2 / (refined**2).sum()
    assert torch.allclose(dm.refine_labeled_targets(net, u1, u2, y, w, T=0.5)[0], sharp)


def test_step_combines_terms_and_backpropagates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    peer = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x1, x2, u1, u2 = (torch.rand(4, 3, 2, 2) for _ in range(4))
    y = torch.tensor([0, 1, 2, 0])
    w = torch.rand(4)
    out = dm.step(net, peer, x1, x2, y, w, u1, u2, num_classes=3, T=0.5, alpha=4.0, lambda_u=2.0)
    assert out.loss.item() == pytest.approx((out.lx + 2.0 * out.lu + out.penalty).item(), rel=1e-6)
    out.loss.backward()
    assert net[1].weight.grad is not None and peer[1].weight.grad is None
    # labeled-only variant (Clothing1M): no Lu; also the path used when the unlabeled set is empty
    out2 = dm.step(net, peer, x1, x2, y, w, u1, u2, num_classes=3, T=0.5, alpha=0.5, lambda_u=2.0, mix_unlabeled=False)
    assert out2.lu.item() == 0.0 and out2.loss.item() == pytest.approx((out2.lx + out2.penalty).item())
    out3 = dm.step(net, peer, x1, x2, y, w, None, None, num_classes=3, T=0.5, alpha=4.0, lambda_u=2.0)
    assert torch.isfinite(out3.loss)


def test_normalise_losses():
    out = dm.normalise_losses(torch.tensor([2.0, 4.0, 3.0]))
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(dm.normalise_losses(torch.full((3,), 7.0)), torch.zeros(3))


def test_gmm_separates_bimodal_losses_and_matches_sklearn():
    rng = np.random.RandomState(0)
    clean = rng.normal(0.1, 0.03, 700)
    noisy = rng.normal(0.8, 0.05, 300)
    losses = dm.normalise_losses(torch.tensor(np.concatenate([clean, noisy]), dtype=torch.float32))
    split = dm.gmm_clean_probability(losses, random_state=0)
    assert not split.degenerate
    assert (split.prob[:700] > 0.5).float().mean() > 0.99
    assert (split.prob[700:] < 0.5).float().mean() > 0.99
    assert split.means[0] < split.means[1]
    ref = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    x = losses.double().reshape(-1, 1).numpy()
    ref.fit(x)
    expected = ref.predict_proba(x)[:, ref.means_.argmin()]
    assert np.allclose(split.prob.numpy(), expected, atol=1e-6)


def test_gmm_degenerate_all_equal_losses_is_recovered():
    split = dm.gmm_clean_probability(torch.zeros(50))
    assert split.degenerate and torch.equal(split.prob, torch.ones(50))


def test_co_divide():
    prob = torch.tensor([0.9, 0.1, 0.6, 0.5])
    idx = torch.tensor([10, 11, 12, 13])
    labeled, lprob, unlabeled = dm.co_divide(prob, idx, 0.5)
    assert labeled.tolist() == [10, 12] and lprob.tolist() == pytest.approx([0.9, 0.6])
    assert unlabeled.tolist() == [11, 13]  # 0.5 is not > 0.5


def test_per_sample_losses_in_loader_order():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    xs = torch.rand(6, 1, 2, 2)
    ys = torch.tensor([0, 1, 0, 1, 1, 0])
    loader = [(xs[:4], ys[:4], torch.arange(4)), (xs[4:], ys[4:], torch.arange(4, 6))]
    losses, idx = dm.per_sample_losses(net, loader)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(net(xs), ys, reduction="none")
    assert torch.allclose(losses, expected) and idx.tolist() == list(range(6))
    assert not net.training  # eval mode, as DivideMix's eval_train
