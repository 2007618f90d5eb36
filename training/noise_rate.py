"""Sample selection by an estimated noise rate (Garg et al., ECCV 2024, arXiv 2305.19486): ``--selection noise_rate``.

A graphical model of the noisy training set is fitted by EM next to the classifiers: the clean label y of an
image x has the classifier's distribution p(y | x) (fixed here: the network being divided, in eval mode), and
the observed label is

    p(ŷ | x, y) = (1 - ε) · δ(ŷ = y) + ε · f(x, y)[ŷ]

with f(x, y) a distribution over the *other* classes (a flip model) and ε the noise rate. Each epoch the
(1 - ε̂) fraction of samples with the smallest DivideMix criterion (the normalised per-sample loss the GMM sees)
becomes the labeled set; the label-refinement weights stay the GMM clean probabilities.

Decisions (README "Noise-rate estimated sample selection" explains them):

- x is the classifier's penultimate feature vector (the input of its last linear layer), detached, captured
  during the divide's own evaluation pass, so no extra forward pass is made and Clothing1M's per-epoch subset
  is the one the divide ranks.
- f excludes ŷ = y. With a flexible f that may also put mass on y, any part of 1 - ε can move into f and ε is
  not identifiable; restricted to flips, ε is exactly the probability that a label differs from the clean one.
- E-step: the exact posterior q(y | x, ŷ) ∝ p(y | x) p(ŷ | x, y) over the K classes, which is the optimum of
  the variational bound (an amortised network, as in the authors' estimator, can only approximate it).
- M-step: ε has the closed form mean_i q_i(y ≠ ŷ_i); f takes Adam steps on its q-weighted log-likelihood.
- EM runs once per epoch at the divide (``EM_ROUNDS`` rounds), warm-started from the previous epoch: the
  estimate is consumed once per epoch, the features are detached anyway, and the training step stays the
  original one. The estimator draws from its own generator, so it leaves the run's random streams untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

INITIAL_RATE = 0.5  # ε before the first fit (the authors' estimator starts at sigmoid(0))
RATE_BOUNDS = (1e-4, 1 - 1e-4)  # ε = 0 and ε = 1 are fixed points of EM: never step onto them
EM_ROUNDS = 10  # E-step + M-step rounds per epoch
HIDDEN = 64  # hidden units of the flip model f(x, y)
LR = 1e-3  # Adam learning rate of f
BATCH = 256  # samples per Adam step of f (one pass over the set per M-step)


# ---------------------------------------------------------------- features ---------------------------------
class HeadCapture:
    """Records the input (penultimate features) and output (logits) of a network's last linear layer.

    Used as a context manager around an evaluation pass; a no-op when ``enabled`` is False.
    """

    def __init__(self, net: nn.Module, enabled: bool = True):
        self.net, self.enabled = net, enabled
        self.features: list[Tensor] = []
        self.logits: list[Tensor] = []
        self.indices: Tensor | None = None  # the samples of the rows, set by the caller after the pass
        self._handle: RemovableHandle | None = None

    def __enter__(self) -> HeadCapture:
        if self.enabled:
            head = last_linear(self.net)
            self._handle = head.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, _module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.features.append(inputs[0].detach().float().flatten(1).cpu())
        self.logits.append(output.detach().float().cpu())

    def rows(self) -> Tensor:
        """(N, D + K): features then logits, one row per evaluated sample in loader order."""
        return torch.cat([torch.cat(self.features), torch.cat(self.logits)], dim=1)


def last_linear(net: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` registered in the network (PreAct ResNet, ResNet-50, VGG)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear head; --selection noise_rate needs one")
    return linears[-1]


# ---------------------------------------------------------------- the model --------------------------------
class FlipModel(nn.Module):
    """f(x, y): where a label flips to, given the image features and the clean label (never to y itself).

    One hidden layer on the concatenation [x, onehot(y)], written as ``relu(A x + B[y])`` so that A x is
    computed once for all K values of y.
    """

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = HIDDEN):
        super().__init__()
        self.num_classes = num_classes
        self.x_proj = nn.Linear(feature_dim, hidden)
        self.y_embed = nn.Parameter(torch.zeros(num_classes, hidden))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """log f(x, y)[c] for every y and c: shape (N, K, K), -inf on the diagonal c = y."""
        h = torch.relu(self.x_proj(x)[:, None, :] + self.y_embed[None])  # (N, K, H)
        logits = self.out(h)
        diagonal = torch.eye(self.num_classes, dtype=torch.bool, device=x.device)
        return torch.log_softmax(logits.masked_fill(diagonal, -math.inf), dim=-1)


def log_noisy_label_likelihood(log_flip: Tensor, noisy: Tensor, rate: float | Tensor) -> Tensor:
    """log p(ŷ | x, y) for every clean label y: (N, K). ``log_flip`` is FlipModel's (N, K, K) output."""
    rate = torch.as_tensor(rate, dtype=log_flip.dtype, device=log_flip.device)
    k = log_flip.size(1)
    observed = log_flip.gather(2, noisy.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2)  # log f(x, y)[ŷ]
    flipped = torch.log(rate) + observed
    same = F.one_hot(noisy, k).bool()
    return torch.where(same, torch.log1p(-rate).expand_as(flipped), flipped)


def posterior(log_p_clean: Tensor, log_flip: Tensor, noisy: Tensor, rate: float) -> Tensor:
    """E-step: q(y | x, ŷ) ∝ p(y | x) p(ŷ | x, y), exactly, over the K classes. (N, K)."""
    return torch.softmax(log_p_clean + log_noisy_label_likelihood(log_flip, noisy, rate), dim=1)


def rate_from_posterior(q: Tensor, noisy: Tensor) -> float:
    """M-step for ε: the expected fraction of labels that differ from the clean label, mean_i q_i(y ≠ ŷ_i)."""
    q_same = q.gather(1, noisy.view(-1, 1)).squeeze(1)
    return float((1.0 - q_same.detach()).mean().clamp(*RATE_BOUNDS))


def flip_loss(log_flip: Tensor, q: Tensor, noisy: Tensor) -> Tensor:
    """M-step for f: minus the q-weighted log f(x, y)[ŷ], summed over y ≠ ŷ and averaged over the samples."""
    k = log_flip.size(1)
    observed = log_flip.gather(2, noisy.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2)
    weights = q.masked_fill(F.one_hot(noisy, k).bool(), 0.0)
    return -(weights * observed.masked_fill(~torch.isfinite(observed), 0.0)).sum(1).mean()


# ---------------------------------------------------------------- the estimator ----------------------------
class NoiseRateEstimator:
    """ε and f of one classifier, fitted by EM on the whole (evaluated) training set once per epoch.

    The flip model is built at the first fit (the feature size is known then) from the estimator's own
    generator; ``state_dict`` carries everything, including that generator, for exact resume.
    """

    def __init__(self, num_classes: int, seed: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.rate = INITIAL_RATE
        self.generator = torch.Generator().manual_seed(seed)
        self.flip: FlipModel | None = None
        self.opt: torch.optim.Optimizer | None = None

    def _build(self, feature_dim: int) -> None:
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation draws from the global RNG
            flip = FlipModel(feature_dim, self.num_classes)
        with torch.no_grad():  # re-initialised from the private generator
            for p in flip.parameters():
                fan_in = p.size(-1) if p.dim() > 1 else p.numel()
                bound = 1.0 / math.sqrt(fan_in)
                p.uniform_(-bound, bound, generator=self.generator)
        self.flip = flip.to(self.device)
        self.opt = torch.optim.Adam(self.flip.parameters(), lr=LR)

    @torch.no_grad()
    def _log_flip(self, features: Tensor) -> Tensor:
        return torch.cat([self.flip(chunk) for chunk in features.split(4 * BATCH)])

    def fit(self, features: Tensor, clean_logits: Tensor, noisy: Tensor, rounds: int = EM_ROUNDS) -> float:
        """EM rounds on (x, p(y|x), ŷ); returns the new ε̂. ``clean_logits``: the classifier's logits."""
        if self.flip is None:
            self._build(features.size(1))
        x = features.to(self.device, torch.float32)
        log_p = torch.log_softmax(clean_logits.to(self.device, torch.float32), dim=1)
        noisy = noisy.to(self.device, torch.long)
        for _ in range(rounds):
            q = posterior(log_p, self._log_flip(x), noisy, self.rate)  # E-step
            self.rate = rate_from_posterior(q, noisy)  # M-step: ε in closed form ...
            order = torch.randperm(len(x), generator=self.generator).to(self.device)
            for batch in order.split(BATCH):  # ... and f by gradient steps
                loss = flip_loss(self.flip(x[batch]), q[batch], noisy[batch])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        return self.rate

    def state_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "generator": self.generator.get_state(),
            "feature_dim": None if self.flip is None else self.flip.x_proj.in_features,
            "flip": None if self.flip is None else self.flip.state_dict(),
            "opt": None if self.opt is None else self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate = float(state["rate"])
        if state["flip"] is not None:
            self._build(int(state["feature_dim"]))  # its initial draws are overwritten just below
            self.flip.load_state_dict(state["flip"])
            self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------- selection ---------------------------------
def select_by_rate(scores: Tensor, rate: float) -> Tensor:
    """Boolean mask of the ⌊(1 - rate)·N⌋ samples with the smallest ``scores`` (ties: the lower position)."""
    n = len(scores)
    keep = min(n, max(0, math.floor((1.0 - rate) * n)))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.argsort(scores, stable=True)[:keep]] = True
    return mask


def selection_quality(selected: Tensor, is_clean: Tensor) -> dict[str, float]:
    """Precision and recall of the labeled set as a detector of clean labels."""
    truth = is_clean.bool()
    tp = float((selected & truth).sum())
    return {
        "selected_precision": tp / max(float(selected.sum()), 1.0),
        "selected_recall": tp / max(float(truth.sum()), 1.0),
    }
