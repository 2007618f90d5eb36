"""Data side of the fidelity checks: the batched (device) augmentation against the original's torchvision
transforms, per pixel, for the 32-px (CIFAR, Red Mini-ImageNet) and 64-px (Animal-10N) datasets, and the
224-px Clothing1M transforms. (Offsets, flips, zero padding and crop-then-flip are in test_dataloaders.py.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision import transforms as T

from dataloaders import clothing1m
from dataloaders.transforms import AugSpec, device_augment, pil_train_transform, to_float


def pixel_moments(image_chw: torch.Tensor, padding: int, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance of every output pixel of RandomCrop(H, padding) (+ RandomHorizontalFlip): every
    offset of the zero-padded image (and both flips) equally likely."""
    c, h, w = image_chw.shape
    padded = F.pad(image_chw.double(), (padding,) * 4)
    crops = torch.stack(
        [padded[:, i : i + h, j : j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    )
    outcomes = torch.cat([crops, crops.flip(3)]) if flip else crops
    return outcomes.mean(0), outcomes.var(0, unbiased=False)


def chi_square(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> float:
    """Sum over pixels of the squared z-score of the sample mean (about chi-square, one dof per pixel)."""
    n = samples.size(0)
    return float((((samples.double().mean(0) - mean) ** 2) / (var.clamp_min(1e-6) / n)).sum())


def test_per_pixel_distribution_device_vs_torchvision_32px():
    """Every pixel's mean over many draws, device path and the original's per-sample transform, against the
    exact distribution of RandomCrop(32, padding=4) + RandomHorizontalFlip (zero fill)."""
    rs = np.random.RandomState(0)
    img = rs.randint(0, 256, size=(32, 32, 3)).astype(np.uint8)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    mean, var = pixel_moments(chw.float() / 255, 4)
    draws = 1500
    batch = chw.expand(draws, -1, -1, -1).contiguous()
    device = to_float(device_augment(batch, AugSpec(), torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    original = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    pil = Image.fromarray(img)
    tv = torch.stack([original(pil) for _ in range(draws)])
    dof = mean.numel()
    limit = stats.chi2.ppf(1 - 1e-6, dof)
    for out in (device, tv):
        assert chi_square(out, mean, var) < limit
    # the statistic tells a missing flip or another fill value apart from chance
    no_flip = pixel_moments(chw.float() / 255, 4, flip=False)
    other_fill = pixel_moments(chw.float() / 255 - 0.5, 4)[0] + 0.5, var
    assert chi_square(device, *no_flip) > 3 * limit and chi_square(device, *other_fill) > 3 * limit
    # the top-left output pixel is padding unless top >= 4 and (left >= 4, or left <= 4 when mirrored): 56/81
    for out in (device, tv):
        assert abs((out[:, 0, 0, 0] == 0).double().mean().item() - 56 / 81) < 4 * 0.5 / draws**0.5


def test_animal10n_64px_augmentation_is_identity_or_mirror_with_half_probability():
    """Original: RandomCrop(64) (no padding: the identity on 64x64) -> RandomHorizontalFlip -> ToTensor."""
    rs = np.random.RandomState(1)
    img = rs.randint(0, 256, size=(64, 64, 3)).astype(np.uint8)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    spec = AugSpec(crop_padding=0, flip=True)  # dataloaders/animal10n.py
    draws = 400
    device = device_augment(chw.expand(draws, -1, -1, -1).contiguous(), spec, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    original = T.Compose([T.RandomCrop(64), T.RandomHorizontalFlip(), T.ToTensor()])
    project_pil = pil_train_transform(64, spec)
    pil = Image.fromarray(img)
    as_is, mirrored = to_float(chw[None])[0], to_float(chw.flip(2)[None])[0]
    for outs in (to_float(device), [original(pil) for _ in range(draws)], [project_pil(pil) for _ in range(draws)]):
        flipped = []
        for out in outs:
            assert torch.equal(out, as_is) or torch.equal(out, mirrored)  # exact ToTensor values, no shift
            flipped.append(torch.equal(out, mirrored))
        assert abs(np.mean(flipped) - 0.5) < 4 * 0.5 / draws**0.5  # p = 1/2 within 4 standard errors


def test_clothing1m_transforms_are_the_originals():
    """Train: Resize(256) -> RandomCrop(224) -> RandomHorizontalFlip -> ToTensor; test: CenterCrop instead;
    no normalisation (README Datasets). Same torchvision objects, so the same per-pixel distribution."""
    original_train = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    original_test = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    assert repr(clothing1m.train_transform()) == repr(original_train)
    assert repr(clothing1m.eval_transform()) == repr(original_test)
    img = Image.fromarray(np.random.RandomState(2).randint(0, 256, size=(300, 260, 3)).astype(np.uint8))
    torch.manual_seed(5)
    ours = clothing1m.train_transform()(img)
    torch.manual_seed(5)
    assert torch.equal(ours, original_train(img)) and ours.shape == (3, 224, 224)
    assert torch.equal(clothing1m.eval_transform()(img), original_test(img))
