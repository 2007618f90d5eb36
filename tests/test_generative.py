"""The InstanceGM VAE objective: every term against a hand-computed value or torch's reference."""

import math

import pytest
import torch
from torch.distributions import ContinuousBernoulli

from training import generative as gen


@pytest.mark.parametrize("lam", [1e-4, 0.1, 0.3, 0.4995, 0.5, 0.5005, 0.5005001, 0.6, 0.7311, 0.9, 1 - 1e-4])
def test_continuous_bernoulli_matches_torch(lam):
    x = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    lam_t = torch.full_like(x, lam)
    ours = gen.continuous_bernoulli_log_prob(x, lam_t)
    ref = ContinuousBernoulli(probs=lam_t, validate_args=False).log_prob(x)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_continuous_bernoulli_normaliser_closed_form():
    lam = torch.tensor([0.2, 0.7], dtype=torch.float64)
    c = 2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)
    assert torch.allclose(gen.continuous_bernoulli_log_norm(lam), torch.log(c))
    assert gen.continuous_bernoulli_log_norm(torch.tensor([0.5])).item() == pytest.approx(math.log(2.0))


def test_continuous_bernoulli_gradient_is_finite_in_taylor_band():
    lam = torch.tensor([0.5, 0.5003, 0.62], requires_grad=True)
    gen.continuous_bernoulli_log_prob(torch.tensor([0.1, 0.9, 0.5]), lam).sum().backward()
    assert torch.isfinite(lam.grad).all()


def _terms(**kw):
    torch.manual_seed(0)
    n, k, d = 4, 10, 5
    x = torch.rand(n, 3, 8, 8)
    x_hat = torch.rand(n, 3, 8, 8) * 0.2 + 0.5
    noisy_logits = torch.randn(n, k)
    targets = torch.randint(0, k, (n,))
    mu, log_var = torch.randn(n, d), torch.randn(n, d) * 0.1
    y_hat = torch.softmax(torch.randn(n, k), 1)
    out = gen.vae_objective(x, x_hat, noisy_logits, targets, mu, log_var, y_hat, num_classes=k, **kw)
    return out, (x, x_hat, noisy_logits, targets, mu, log_var, y_hat)


def test_vae_objective_terms_hand_computed():
    w = dict(recon_weight=1.0, noisy_label_weight=0.7, y_prior_weight=1e-5, kl_weight=3e-4)
    out, (x, x_hat, nl, t, mu, lv, _yh) = _terms(**w)
    recon = -ContinuousBernoulli(probs=x_hat).log_prob(x).mean()
    assert out.recon.item() == pytest.approx(recon.item(), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(nl, t)
    assert out.noisy_label_ce.item() == pytest.approx(0.7 * ce.item(), rel=1e-6)
    # the original's "uniform prior" is the constant -w3 * log K
    assert out.y_prior.item() == pytest.approx(-1e-5 * -math.log(0.1 + 1e-8), rel=1e-5)
    kl = -3e-4 * torch.sum(1 + lv - mu**2 - lv.exp())  # summed over the batch
    assert out.kl_z.item() == pytest.approx(kl.item(), rel=1e-5)
    total = out.recon + out.noisy_label_ce + out.y_prior + out.kl_z
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    for name, value in out._asdict().items():
        assert torch.isfinite(value), name


def test_kl_is_zero_at_standard_normal_and_mean_reduction_divides_by_batch():
    n, d = 6, 3
    zeros = torch.zeros(n, d)
    out = gen.vae_objective(
        torch.rand(n, 3, 4, 4),
        torch.full((n, 3, 4, 4), 0.6),
        torch.zeros(n, 2),
        torch.zeros(n, dtype=torch.long),
        zeros,
        zeros,
        torch.full((n, 2), 0.5),
        num_classes=2,
    )
    assert out.kl_z.item() == 0.0
    s, _ = _terms(kl_reduction="sum")
    m, _ = _terms(kl_reduction="mean")
    assert m.kl_z.item() == pytest.approx(s.kl_z.item() / 4, rel=1e-6)


def test_y_prior_constant_has_no_gradient_but_kl_variant_does():
    y_hat = torch.softmax(torch.randn(4, 5), 1).requires_grad_(True)
    args = (
        torch.rand(4, 3, 2, 2),
        torch.full((4, 3, 2, 2), 0.6),
        torch.zeros(4, 5),
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, 2),
        torch.zeros(4, 2),
    )
    const = gen.vae_objective(*args, y_hat, num_classes=5)
    (g,) = torch.autograd.grad(const.y_prior, y_hat, allow_unused=True)
    # d/dy of -w3 * sum_k y_k * c is a constant vector: its projection on the simplex (sum-zero) is zero
    assert torch.allclose(g - g.mean(1, keepdim=True), torch.zeros_like(g))
    kl = gen.vae_objective(*args, y_hat, num_classes=5, y_prior="kl")
    expected = 1e-5 * torch.mean(torch.sum(y_hat * torch.log(y_hat * 5), 1))
    assert kl.y_prior.item() == pytest.approx(expected.item(), rel=1e-5) and kl.y_prior.item() > 0
    (g_kl,) = torch.autograd.grad(kl.y_prior, y_hat)
    assert (g_kl - g_kl.mean(1, keepdim=True)).abs().max() > 0
    uniform = gen.vae_objective(*args, torch.full((4, 5), 0.2), num_classes=5, y_prior="kl")
    assert uniform.y_prior.item() == pytest.approx(0.0, abs=1e-9)
