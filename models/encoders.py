"""Convolutional parts of the InstanceGM generative model, one architecture per input resolution.

Follows CausalNL's ``mylib/models/encoders.py`` as copied into InstanceGM (docs/design.md: The generative model):

* ``ZEncoder`` -- q(z | x, y_hat): "label-as-channel" conv encoder with ``fc_mu`` / ``fc_logvar`` heads;
* ``XDecoder`` -- p(x | z, y_hat): linear -> transposed-conv stack -> conv to 3 channels -> Sigmoid;
* ``NoisyLabelClassifier`` -- p(y_noisy | x_hat, y_hat): same conv encoder pattern, ``Linear(flat, K)`` head.

The per-resolution differences of the original (``*_CIFAR`` 32 px, ``*_ANIMAL`` 64 px, ``*_CLOTH1M`` 224 px)
are data: one ``VAEArch`` entry per image size in ``VAE_ARCHS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VAE_ARCHS", "NoisyLabelClassifier", "UpBlock", "VAEArch", "XDecoder", "ZEncoder"]

LEAKY_SLOPE = 0.01  # nn.LeakyReLU() default, as in the original


@dataclass(frozen=True)
class UpBlock:
    """One ConvTranspose2d(stride 2) -> BN -> LeakyReLU block of the decoder's final part."""

    kernel: int
    padding: int
    output_padding: int


@dataclass(frozen=True)
class VAEArch:
    """Layer plan of the three VAE parts for one input resolution (docs/design.md: The generative model)."""

    image_size: int
    enc_channels: tuple[int, ...]  # stride-2 conv stack of the encoder and of the noisy-label classifier
    enc_kernel: int
    enc_padding: int
    dec_channels: tuple[int, ...]  # dec_channels[0] x dec_start x dec_start is the decoder's linear output
    dec_start: int
    dec_kernel: int
    dec_padding: int
    dec_output_padding: int
    dec_final: tuple[UpBlock, ...]  # 32 -> 32 channel blocks before the last Conv(32 -> 3) + Sigmoid

    @property
    def enc_out_size(self) -> int:
        """Spatial size after the encoder's conv stack."""
        size = self.image_size
        for _ in self.enc_channels:
            size = (size + 2 * self.enc_padding - self.enc_kernel) // 2 + 1
        return size

    @property
    def enc_flat(self) -> int:
        return self.enc_channels[-1] * self.enc_out_size**2

    @property
    def dec_flat(self) -> int:
        return self.dec_channels[0] * self.dec_start**2

    @property
    def dec_out_size(self) -> int:
        """Spatial size of the decoder output (must equal ``image_size``)."""
        size = self.dec_start
        for _ in self.dec_channels[1:]:
            size = (size - 1) * 2 - 2 * self.dec_padding + self.dec_kernel + self.dec_output_padding
        for up in self.dec_final:
            size = (size - 1) * 2 - 2 * up.padding + up.kernel + up.output_padding
        return size


VAE_ARCHS: dict[int, VAEArch] = {
    # CIFAR-10/100, Red Mini-ImageNet (CONV_Encoder_CIFAR / CONV_Decoder_CIFAR / CONV_T_Decoder).
    # Encoder 32 -> 16 -> 8 -> 4 -> 2 (flat 1024); decoder 2 -> 4 -> 8 -> 16 -> 32.
    32: VAEArch(
        image_size=32,
        enc_channels=(32, 64, 128, 256),
        enc_kernel=3,
        enc_padding=1,
        dec_channels=(256, 128, 64, 32),
        dec_start=2,
        dec_kernel=3,
        dec_padding=1,
        dec_output_padding=1,
        dec_final=(UpBlock(kernel=3, padding=1, output_padding=1),),
    ),
    # Animal-10N (*_ANIMAL). Encoder 64 -> 32 -> 16 -> 8 -> 4 (flat 4096); the decoder starts from the same
    # 256x2x2 as the 32 px one and adds a k2 s2 transposed conv: 2 -> 4 -> 8 -> 16 -> 32 -> 64.
    64: VAEArch(
        image_size=64,
        enc_channels=(32, 64, 128, 256),
        enc_kernel=3,
        enc_padding=1,
        dec_channels=(256, 128, 64, 32),
        dec_start=2,
        dec_kernel=3,
        dec_padding=1,
        dec_output_padding=1,
        dec_final=(
            UpBlock(kernel=3, padding=1, output_padding=1),
            UpBlock(kernel=2, padding=0, output_padding=0),
        ),
    ),
    # Clothing1M (*_CLOTH1M). Encoder k7: 224 -> 110 -> 53 -> 25 -> 11 -> 4 (flat 8192);
    # decoder k7 without output padding 4 -> 11 -> 25 -> 53 -> 109, then k9 op1 109 -> 224.
    224: VAEArch(
        image_size=224,
        enc_channels=(32, 64, 128, 256, 512),
        enc_kernel=7,
        enc_padding=1,
        dec_channels=(512, 256, 128, 64, 32),
        dec_start=4,
        dec_kernel=7,
        dec_padding=1,
        dec_output_padding=0,
        dec_final=(UpBlock(kernel=9, padding=1, output_padding=1),),
    ),
}


class _LabelAsChannelEncoder(nn.Module):
    """Shared trunk of ``ZEncoder`` and ``NoisyLabelClassifier``.

    The soft label is embedded by ``Linear(K, H*W)`` into one extra image channel, the image goes through a
    1x1 conv, and the 4-channel stack goes through [Conv(stride 2) -> BN -> LeakyReLU] blocks.
    """

    def __init__(self, arch: VAEArch, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.image_size = arch.image_size
        self.embed_class = nn.Linear(num_classes, arch.image_size**2)
        self.embed_data = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        blocks = []
        channels = in_channels + 1
        for out_channels in arch.enc_channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, out_channels, arch.enc_kernel, stride=2, padding=arch.enc_padding),
                    nn.BatchNorm2d(out_channels),
                    nn.LeakyReLU(LEAKY_SLOPE),
                )
            )
            channels = out_channels
        self.encoder = nn.Sequential(*blocks)

    def features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        label_channel = self.embed_class(y).view(-1, 1, size, size)  # (N, 1, H, W)
        h = torch.cat([self.embed_data(x), label_channel], dim=1)  # (N, 4, H, W)
        return self.encoder(h).flatten(1)  # (N, C_last * s * s)


class ZEncoder(_LabelAsChannelEncoder):
    """q(z | x, y): returns ``(mu, log_var)``, each (N, z_dim), with no output activation."""

    def __init__(self, arch: VAEArch, num_classes: int, z_dim: int) -> None:
        super().__init__(arch, num_classes)
        self.fc_mu = nn.Linear(arch.enc_flat, z_dim)
        self.fc_logvar = nn.Linear(arch.enc_flat, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x, y)
        return self.fc_mu(h), self.fc_logvar(h)


class NoisyLabelClassifier(_LabelAsChannelEncoder):
    """p(y_noisy | x, y_hat) ("Classifier-2x" in the paper): returns noisy-label logits (N, K)."""

    def __init__(self, arch: VAEArch, num_classes: int) -> None:
        super().__init__(arch, num_classes)
        self.fc = nn.Linear(arch.enc_flat, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x, y))


def _up_block(in_channels: int, out_channels: int, kernel: int, padding: int, output_padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=2, padding=padding, output_padding=output_padding),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(LEAKY_SLOPE),
    )


class XDecoder(nn.Module):
    """p(x | z, y): maps ``cat(z, y)`` to a 3-channel image in (0, 1) of the arch's size."""

    def __init__(self, arch: VAEArch, num_classes: int, z_dim: int) -> None:
        super().__init__()
        self.start_shape = (arch.dec_channels[0], arch.dec_start, arch.dec_start)
        self.decoder_input = nn.Linear(z_dim + num_classes, arch.dec_flat)
        channels = arch.dec_channels
        self.decoder = nn.Sequential(
            *[
                _up_block(c_in, c_out, arch.dec_kernel, arch.dec_padding, arch.dec_output_padding)
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ]
        )
        last = channels[-1]
        self.final_layer = nn.Sequential(
            *[_up_block(last, last, up.kernel, up.padding, up.output_padding) for up in arch.dec_final],
            nn.Conv2d(last, 3, kernel_size=3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(torch.cat([z, y], dim=1))  # (N, z_dim + K) -> (N, C0 * s * s)
        h = h.view(-1, *self.start_shape)  # (N, C0, s, s)
        h = self.decoder(h)
        *layers, sigmoid = self.final_layer
        for layer in layers:
            h = layer(h)
        # The sigmoid in fp32 under autocast: x_hat is the continuous Bernoulli's parameter, whose log-normaliser
        # is evaluated in fp32 (training/generative.py); bf16 would round it to 8 bits of mantissa first.
        return sigmoid(h.float())  # (N, 3, H, W)
