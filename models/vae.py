"""InstanceGM's generative model of the noisy label (one per co-trained classifier)
(docs/design.md: The generative model).

Follows CausalNL's ``mylib/models/vae.py`` as modified by InstanceGM: the clean-label classifier is not part
of the VAE but is passed to ``forward``, so that the VAE loss trains it through the Gumbel-softmax sample.

Forward on images ``x`` in [0, 1] with classifier ``f``:
    logits = f(x); y_hat = gumbel_softmax(logits); (mu, log_var) = Enc(x, y_hat);
    z = mu + eps * std; x_hat = sigmoid(Dec(z, y_hat)); noisy_logits = Cls2(x_hat, y_hat).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import VAE_ARCHS, NoisyLabelClassifier, XDecoder, ZEncoder

__all__ = ["InstanceGMVAE", "VAEOutput", "reparameterize", "supported_image_sizes"]


class VAEOutput(NamedTuple):
    """Outputs of ``InstanceGMVAE.forward``, in the original's return order."""

    x_hat: torch.Tensor  # (N, 3, H, W) continuous-Bernoulli parameter lambda
    noisy_logits: torch.Tensor  # (N, K) logits of p(y_noisy | x_hat, y_hat)
    mu: torch.Tensor  # (N, d)
    log_var: torch.Tensor  # (N, d)
    logits: torch.Tensor  # (N, K) clean-label classifier logits
    y_hat: torch.Tensor  # (N, K) soft Gumbel-softmax sample of the clean label


def supported_image_sizes() -> tuple[int, ...]:
    return tuple(sorted(VAE_ARCHS))


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, gaussian: bool = False) -> torch.Tensor:
    """z = mu + eps * exp(log_var / 2), eps ~ Uniform[0, 1) by default or N(0, 1) if ``gaussian``."""
    std = torch.exp(0.5 * log_var)
    if gaussian:
        # DIVERGES(original): the standard Gaussian reparameterisation, only with gaussian_reparam=True.
        eps = torch.randn_like(std)
    else:
        # NOTE(original): uniform noise (rand_like), a biased, non-Gaussian sample; InstanceGM
        # mylib/models/vae.py _z_reparameterize, inherited from CausalNL.
        eps = torch.rand_like(std)
    return mu + eps * std


class InstanceGMVAE(nn.Module):
    """Encoder q(z|x,y), decoder p(x|z,y) and noisy-label classifier p(y_noisy|x_hat,y) for one resolution.

    Args:
        image_size: 32 (CIFAR, Red Mini-ImageNet; 28x28 data zero-padded to 32), 64 (Animal-10N) or
            224 (Clothing1M).
        num_classes: K.
        z_dim: latent size d.
        gaussian_reparam: sample z with N(0, 1) noise instead of the original's Uniform[0, 1).
        single_sigmoid: skip the original's second sigmoid on the decoder output.
        gumbel_tau: Gumbel-softmax temperature (original: 1).
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        z_dim: int,
        *,
        gaussian_reparam: bool = False,
        single_sigmoid: bool = False,
        gumbel_tau: float = 1.0,
    ) -> None:
        super().__init__()
        if image_size not in VAE_ARCHS:
            raise ValueError(
                f"InstanceGMVAE has architectures for image_size in {supported_image_sizes()}, "
                f"got {image_size}; 28x28 data (e.g. Fashion-MNIST) is zero-padded to 32 before use."
            )
        arch = VAE_ARCHS[image_size]
        self.image_size = image_size
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.gaussian_reparam = gaussian_reparam
        self.single_sigmoid = single_sigmoid
        self.gumbel_tau = gumbel_tau
        # DIVERGES(original): no `y_encoder` ResNet (ResNet-34/50/101 in VAE_*); the original builds it but
        # never calls it, so it never affects training. The discarded MLP parts of BaseVAE are also not built.
        # Both only shift the RNG stream used to initialise the three parts below.
        self.z_encoder = ZEncoder(arch, num_classes, z_dim)
        self.x_decoder = XDecoder(arch, num_classes, z_dim)
        self.t_decoder = NoisyLabelClassifier(arch, num_classes)

    def forward(
        self,
        x: torch.Tensor,
        classifier: Callable[[torch.Tensor], torch.Tensor],
        y_cond: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Run the generative model on images ``x`` (N, 3, H, W) in [0, 1].

        ``classifier`` is called on ``x`` with gradient, in whatever train/eval mode the caller left it.
        ``y_cond`` (N, K), if given, replaces ``y_hat`` as the encoder's conditioning only (e.g. the one-hot
        noisy label: q(z | x, y_noisy) as in the paper's figure); the decoder and the noisy-label classifier
        always get ``y_hat``.
        """
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(x.shape)}")
        logits = classifier(x)
        # Soft (not straight-through) sample: the VAE loss reaches the classifier through y_hat. Drawn in fp32
        # whatever the autocast dtype: bf16 noise -log(-log U) is cut at about 5.5 and coarsely rounded.
        y_hat = F.gumbel_softmax(logits.float(), tau=self.gumbel_tau, hard=False, dim=1)
        # NOTE(original): the encoder is conditioned on y_hat (the code's choice), while the paper's figure
        # has q(Z | X, Y_noisy); y_cond gives the latter.
        mu, log_var = self.z_encoder(x, y_hat if y_cond is None else y_cond)
        z = reparameterize(mu.float(), log_var.float(), gaussian=self.gaussian_reparam)  # fp32 noise, as y_hat
        x_hat = self.x_decoder(z, y_hat)
        if not self.single_sigmoid:
            # NOTE(original): second sigmoid on a decoder that already ends in Sigmoid (InstanceGM
            # mylib/models/vae.py forward), so x_hat lies in (0.5, 0.7311). fp32, like the first.
            x_hat = torch.sigmoid(x_hat.float())
        # The noisy-label classifier sees the reconstruction, not the input image (as in the original).
        noisy_logits = self.t_decoder(x_hat, y_hat)
        return VAEOutput(x_hat, noisy_logits, mu, log_var, logits, y_hat)
