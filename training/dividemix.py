"""The discriminative half: DivideMix (Li et al., ICLR 2020) as InstanceGM runs it.

Mirrors DivideMix ``Train_cifar.py`` (``train``, ``warmup``, ``eval_train``, ``SemiLoss``, ``NegEntropy``,
``linear_rampup``), which InstanceGM's scripts copy (docs/design.md: One epoch to The DivideMix step).
Each function is one step of that code,
pure where possible, so it can be tested against hand-computed values.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import Tensor, nn

log = logging.getLogger("training")


# ---------------------------------------------------------------- targets ----------------------------------
def sharpen(p: Tensor, T: float) -> Tensor:
    """Temperature sharpening p^(1/T) / sum_c p^(1/T) (MixMatch eq. 7), row-wise."""
    pt = p ** (1.0 / T)
    return pt / pt.sum(dim=1, keepdim=True)


@torch.no_grad()
def co_guess_targets(net: nn.Module, peer_net: nn.Module, u1: Tensor, u2: Tensor, T: float) -> Tensor:
    """Co-guessing: average the softmax of both nets on both views of the unlabeled batch, then sharpen."""
    q = (
        torch.softmax(net(u1), 1)
        + torch.softmax(net(u2), 1)
        + torch.softmax(peer_net(u1), 1)
        + torch.softmax(peer_net(u2), 1)
    ) / 4
    return sharpen(q.float(), T)


@torch.no_grad()
def refine_labeled_targets(
    net: nn.Module, x1: Tensor, x2: Tensor, y_onehot: Tensor, w_clean: Tensor, T: float
) -> Tensor:
    """Label refinement: w * onehot(noisy label) + (1 - w) * mean prediction of two views, then sharpen.

    ``w_clean`` is the (other net's) GMM clean probability of each labeled sample, shape (B,).
    """
    p = (torch.softmax(net(x1), 1) + torch.softmax(net(x2), 1)).float() / 2
    w = w_clean.view(-1, 1)
    return sharpen(w * y_onehot + (1 - w) * p, T)


def mixmatch(
    inputs: Tensor,
    targets: Tensor,
    alpha: float,
    rng: np.random.RandomState | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float]:
    """MixUp of a concatenated batch with a random permutation of itself (DivideMix ``train``).

    lam ~ Beta(alpha, alpha) from numpy (the original uses numpy's global RNG), lam <- max(lam, 1 - lam) so
    the mixed sample stays closer to its own input; the permutation comes from torch. Returns the mixed
    inputs, mixed targets and lam.
    """
    lam = (rng or np.random).beta(alpha, alpha)
    lam = max(lam, 1 - lam)
    perm = torch.randperm(inputs.size(0), generator=generator).to(inputs.device)
    mixed_input = lam * inputs + (1 - lam) * inputs[perm]
    mixed_target = lam * targets + (1 - lam) * targets[perm]
    return mixed_input, mixed_target, float(lam)


# ---------------------------------------------------------------- losses -----------------------------------
class SemiLossOut(NamedTuple):
    lx: Tensor  # labeled loss: soft-target cross-entropy
    lu: Tensor  # unlabeled loss: mean squared error of probabilities
    lambda_u: float  # ramped weight of lu at this step


def linear_rampup(progress: float, warm_up: int, lambda_u: float, length: float = 16.0) -> float:
    """lambda_u * clip((epoch + batch/num_iter - warm_up) / length, 0, 1) (DivideMix ``linear_rampup``)."""
    return lambda_u * float(np.clip((progress - warm_up) / length, 0.0, 1.0))


def semi_loss(logits_x: Tensor, targets_x: Tensor, logits_u: Tensor, targets_u: Tensor, lambda_u: float) -> SemiLossOut:
    """DivideMix ``SemiLoss``: Lx = -mean_i sum_c t log softmax, Lu = mean over entries of (softmax - t)^2."""
    lx = -torch.mean(torch.sum(F.log_softmax(logits_x.float(), dim=1) * targets_x, dim=1))
    if logits_u.numel() == 0:
        lu = logits_x.new_zeros((), dtype=torch.float32)
    else:
        lu = torch.mean((torch.softmax(logits_u.float(), dim=1) - targets_u) ** 2)
    return SemiLossOut(lx, lu, lambda_u)


def uniform_prior_penalty(logits: Tensor, num_classes: int) -> Tensor:
    """sum_c pi_c log(pi_c / mean_i p_ic) with pi uniform: keeps the mean prediction from collapsing.

    DIVERGES(original): log(mean_i p_ic) is taken in the log domain (log-sum-exp of the log-softmax), not as
    the log of the mean of the softmax: the same value wherever the original's is finite, but finite (with a
    finite gradient) when a class's mean probability underflows to 0, where the original's is inf.
    """
    log_prior = -math.log(num_classes)
    log_pred_mean = torch.logsumexp(F.log_softmax(logits.float(), dim=1), dim=0) - math.log(logits.size(0))
    return torch.sum(math.exp(log_prior) * (log_prior - log_pred_mean))


def neg_entropy(logits: Tensor) -> Tensor:
    """DivideMix ``NegEntropy``: mean_i sum_c p log p. Adding it to the loss maximises prediction entropy.

    DIVERGES(original): log p is the log-softmax, not the log of the softmax, whose 0 * log 0 is NaN when a
    probability underflows; otherwise the same value.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    return torch.mean(torch.sum(log_probs.exp() * log_probs, dim=1))


# ---------------------------------------------------------------- one DivideMix step --------------------------
class DivideMixOut(NamedTuple):
    loss: Tensor  # Lx + lambda_u * Lu + penalty
    lx: Tensor
    lu: Tensor
    penalty: Tensor
    lambda_u: float


def step(
    net: nn.Module,
    peer_net: nn.Module,
    x1: Tensor,
    x2: Tensor,
    y_noisy: Tensor,
    w_clean: Tensor,
    u1: Tensor | None,
    u2: Tensor | None,
    *,
    num_classes: int,
    T: float,
    alpha: float,
    lambda_u: float,
    mix_unlabeled: bool = True,
    generator: torch.Generator | None = None,
) -> DivideMixOut:
    """The DivideMix loss of one labeled batch (x1, x2) and one unlabeled batch (u1, u2)
    (docs/design.md: The DivideMix step).

    ``lambda_u`` is already ramped (see :func:`linear_rampup`). ``u1``/``u2`` may be None (empty unlabeled
    set): the unlabeled part then drops out of the concatenation. With ``mix_unlabeled=False`` (Clothing1M)
    only the labeled rows are mixed and trained on, and there is no Lu term.
    """
    b = x1.size(0)
    y_onehot = F.one_hot(y_noisy, num_classes).float()
    has_u = u1 is not None and u1.size(0) > 0
    # ---- co-guessing, then label refinement (no gradient; BN statistics still update in train mode) ----
    # NOTE(original): co-guessing runs first (net(u1), net(u2), peer(u1), peer(u2), then net(x1), net(x2)).
    # The outputs do not depend on the order, but the trained net's BatchNorm running statistics do.
    targets_u = co_guess_targets(net, peer_net, u1, u2, T) if has_u else None
    targets_x = refine_labeled_targets(net, x1, x2, y_onehot, w_clean, T)
    if has_u:
        all_inputs = torch.cat([x1, x2, u1, u2], dim=0)  # (2b + 2b_u, C, H, W)
        all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)  # (2b + 2b_u, K)
    else:
        all_inputs = torch.cat([x1, x2], dim=0)  # (2b, C, H, W)
        all_targets = torch.cat([targets_x, targets_x], dim=0)
    mixed_input, mixed_target, _ = mixmatch(all_inputs, all_targets, alpha, generator=generator)
    if mix_unlabeled:
        logits = net(mixed_input)
        out = semi_loss(logits[: 2 * b], mixed_target[: 2 * b], logits[2 * b :], mixed_target[2 * b :], lambda_u)
        penalty = uniform_prior_penalty(logits, num_classes)
        loss = out.lx + lambda_u * out.lu + penalty
    else:
        # NOTE(original): DivideMix-Clothing1M mixes the labeled rows with partners drawn from the whole
        # concatenation (unlabeled included) and trains on those 2b rows only: no Lu.
        logits = net(mixed_input[: 2 * b])
        out = semi_loss(logits, mixed_target[: 2 * b], logits[:0], mixed_target[:0], 0.0)
        penalty = uniform_prior_penalty(logits, num_classes)
        loss = out.lx + penalty
    return DivideMixOut(loss, out.lx, out.lu, penalty, lambda_u)


# ---------------------------------------------------------------- warm-up ---------------------------------
def warmup_loss(logits: Tensor, y_noisy: Tensor, confidence_penalty: bool) -> tuple[Tensor, Tensor]:
    """Cross-entropy on the noisy labels (+ NegEntropy for Clothing1M / asymmetric noise). Returns (loss, ce)."""
    ce = F.cross_entropy(logits.float(), y_noisy)
    return (ce + neg_entropy(logits) if confidence_penalty else ce), ce


# ---------------------------------------------------------------- divide ----------------------------------
@torch.no_grad()
def per_sample_losses(net: nn.Module, loader, autocast=None, prep=None) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropy of every (eval-transform) training sample on its noisy label.

    Returns (losses, indices) in loader order, gathered on the device and moved to the CPU once. ``autocast``
    is an optional context factory for the forward pass; the loss itself is computed in fp32. ``prep`` maps
    each input batch to the layout the network runs in (the trainer's channels_last conversion): without it a
    channels_last network gets contiguous batches and pays a layout conversion in every convolution.
    """
    net.eval()
    losses, indices = [], []
    for x, y, idx in loader:
        if prep is not None:
            x = prep(x)
        if autocast is not None:
            with autocast():
                logits = net(x)
        else:
            logits = net(x)
        losses.append(F.cross_entropy(logits.float(), y, reduction="none"))
        indices.append(torch.as_tensor(idx))
    return torch.cat(losses).float().cpu(), torch.cat(indices).cpu()


def normalise_losses(losses: Tensor) -> Tensor:
    """Min-max normalisation to [0, 1] (DivideMix ``eval_train``). All-equal losses map to zeros."""
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if span <= 0:
        return torch.zeros_like(losses)
    return (losses - lo) / span


class GMMSplit(NamedTuple):
    prob: Tensor  # clean probability per sample (posterior of the low-mean component)
    means: tuple[float, float]  # component means (clean, noisy) of the normalised loss
    degenerate: bool  # True when the losses could not be split (all equal): every sample treated as clean


def gmm_clean_probability(
    normalised_losses: Tensor,
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    random_state=None,
) -> GMMSplit:
    """Fit a 2-component GaussianMixture to per-sample losses; clean probability = posterior of the
    component with the smaller mean (DivideMix ``eval_train``; scikit-learn with the original settings).

    NOTE(original): ``random_state=None`` draws the k-means initialisation from numpy's global RNG, as the
    original does; the run seeds (and checkpoints) that RNG, so the fit is reproducible.
    """
    x = normalised_losses.double().reshape(-1, 1).numpy()
    if x.shape[0] < 2 or float(x.max() - x.min()) <= 0.0:
        # Documented recovery: nothing to separate, so no sample is judged noisy this epoch.
        log.warning("GMM split: all %d per-sample losses are equal; treating every sample as clean", x.shape[0])
        return GMMSplit(torch.ones(x.shape[0]), (float(x.mean()), float(x.mean())), True)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=random_state)
    gmm.fit(x)
    post = gmm.predict_proba(x)
    clean = int(gmm.means_.argmin())
    means = (float(gmm.means_[clean, 0]), float(gmm.means_[1 - clean, 0]))
    return GMMSplit(torch.from_numpy(post[:, clean]).float(), means, False)


def co_divide(prob: Tensor, indices: Tensor, p_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Split sample indices by clean probability: (labeled indices, their probabilities, unlabeled indices)."""
    pred = prob > p_threshold
    return indices[pred], prob[pred], indices[~pred]
