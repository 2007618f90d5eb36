"""The generative half of InstanceGM: the VAE objective added to the DivideMix loss
(docs/design.md: The generative step).

Follows InstanceGM's ``train``/``train_vae`` and CausalNL's ``mylib/models/vae.py`` loss:

    L_vae = w1 * mean(-log CB(x | x_hat))           reconstruction, continuous Bernoulli (l1)
          + w2 * CE(noisy_logits, noisy label)       p(y~ | x_hat, y^), "Classifier-2x" (l2)
          + y_prior term                             "uniform prior on y" (l3, a constant in the original)
          + kl_z term                                Gaussian prior on z (l4, summed over the batch)

The terms are computed in fp32 whatever the autocast setting.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torch.distributions.ContinuousBernoulli's defaults: the Taylor band around 1/2 and the probability clamp.
_CB_LIMS = (0.499, 0.501)


def continuous_bernoulli_log_norm(lam: Tensor) -> Tensor:
    """log C(lam), C(lam) = 2 artanh(1 - 2 lam) / (1 - 2 lam), with C(1/2) = 2.

    Evaluated as torch's ``ContinuousBernoulli`` does: exactly outside (0.499, 0.501), and by the Taylor
    form log 2 + (4/3 + 104/45 s) s with s = (lam - 1/2)^2 inside, where the exact form is 0/0.
    """
    outside = (lam <= _CB_LIMS[0]) | (lam > _CB_LIMS[1])
    safe = torch.where(outside, lam, torch.full_like(lam, _CB_LIMS[0]))
    exact = torch.log(torch.abs(torch.log1p(-safe) - torch.log(safe))) - torch.log(torch.abs(1.0 - 2.0 * safe))
    s = (lam - 0.5) ** 2
    taylor = math.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * s) * s
    return torch.where(outside, exact, taylor)


def continuous_bernoulli_log_prob(x: Tensor, lam: Tensor) -> Tensor:
    """Element-wise log density of x in [0, 1] under CB(lam): x log lam + (1 - x) log(1 - lam) + log C(lam)."""
    eps = torch.finfo(lam.dtype).eps
    lam = lam.clamp(eps, 1.0 - eps)
    return x * torch.log(lam) + (1.0 - x) * torch.log1p(-lam) + continuous_bernoulli_log_norm(lam)


class GenerativeOut(NamedTuple):
    loss: Tensor  # weighted sum added to the DivideMix loss
    recon: Tensor  # l1: mean -log CB(x | x_hat) per pixel entry (unweighted)
    noisy_label_ce: Tensor  # w2 * CE of the noisy-label head
    y_prior: Tensor  # weighted y-prior term
    kl_z: Tensor  # weighted Gaussian prior term on z
    noisy_label_acc: Tensor  # accuracy of the noisy-label head against the noisy labels (monitoring)


def vae_objective(
    x: Tensor,
    x_hat: Tensor,
    noisy_logits: Tensor,
    noisy_targets: Tensor,
    mu: Tensor,
    log_var: Tensor,
    y_hat: Tensor,
    *,
    num_classes: int,
    recon_weight: float = 1.0,
    noisy_label_weight: float = 1.0,
    y_prior_weight: float = 1e-5,
    kl_weight: float = 3e-4,
    kl_reduction: str = "sum",
    y_prior: str = "constant",
) -> GenerativeOut:
    """The four InstanceGM VAE terms with the per-dataset weights (docs/design.md: The generative step)."""
    x, x_hat, mu, log_var, y_hat = x.float(), x_hat.float(), mu.float(), log_var.float(), y_hat.float()
    recon = -continuous_bernoulli_log_prob(x, x_hat).mean()
    noisy_ce = noisy_label_weight * F.cross_entropy(noisy_logits.float(), noisy_targets)
    if y_prior == "constant":
        # NOTE(original): -w3 * mean_i sum_k y^_ik * (-log(1/K + 1e-8)); y^ sums to one, so this equals
        # -w3 * log K and carries no gradient (README Differences #4).
        y_term = -y_prior_weight * torch.mean(torch.sum(y_hat * -math.log(1.0 / num_classes + 1e-8), dim=1))
    else:
        # DIVERGES(original): KL(y^ || uniform) = sum_k y^ log(K y^), which does pull y^ towards the prior.
        y_term = y_prior_weight * torch.mean(torch.sum(y_hat * torch.log(y_hat.clamp_min(1e-8) * num_classes), 1))
    kl_terms = 1.0 + log_var - mu.pow(2) - log_var.exp()  # (N, d)
    if kl_reduction == "sum":
        # NOTE(original): summed over batch and latent dims, unlike l1/l2 which are means (README Differences #4).
        kl = -kl_weight * torch.sum(kl_terms)
    else:
        kl = -kl_weight * torch.sum(kl_terms) / x.size(0)
    loss = recon_weight * recon + noisy_ce + y_term + kl
    with torch.no_grad():
        acc = (noisy_logits.argmax(1) == noisy_targets).float().mean()
    return GenerativeOut(loss, recon, noisy_ce, y_term, kl, acc)


def loss_weights(cfg) -> dict:
    """The objective's weights and variants from a Config (the keyword arguments of :func:`vae_objective`)."""
    return dict(
        recon_weight=cfg.recon_weight,
        noisy_label_weight=cfg.noisy_label_weight,
        y_prior_weight=cfg.y_prior_weight,
        kl_weight=cfg.kl_weight,
        kl_reduction=cfg.kl_reduction,
        y_prior=cfg.y_prior,
    )


def step(
    vae: nn.Module,
    net: nn.Module,
    x: Tensor,
    noisy_y: Tensor,
    *,
    num_classes: int,
    weights: dict,
    encoder_on_noisy_label: bool = False,
    autocast=None,
) -> GenerativeOut:
    """One generative step: VAE forward with ``net`` as the clean-label classifier, then the objective.

    ``weights`` holds recon_weight, noisy_label_weight, y_prior_weight, kl_weight, kl_reduction, y_prior.
    The classifier runs in train mode with gradient: its logits reach the VAE through the Gumbel sample, so
    the VAE loss trains the classifier too (one joint backward with the DivideMix loss).
    """
    y_cond = F.one_hot(noisy_y, num_classes).float() if encoder_on_noisy_label else None
    if autocast is not None:
        with autocast():
            out = vae(x, net, y_cond=y_cond)
    else:
        out = vae(x, net, y_cond=y_cond)
    return vae_objective(
        x,
        out.x_hat,
        out.noisy_logits,
        noisy_y,
        out.mu,
        out.log_var,
        out.y_hat,
        num_classes=num_classes,
        **weights,
    )
