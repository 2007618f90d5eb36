"""Tests for models/: classifiers, the registry, and the InstanceGM generative model (CPU, small batches)."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import (
    InstanceGMVAE,
    Normalize,
    PreActBlock,
    PretrainedWeightsMissing,
    build_classifier,
    build_vae,
    imagenet_resnet50_path,
    preact_resnet18,
    preact_resnet34,
    reparameterize,
    resnet50,
    vgg19_bn,
)

# ---------------------------------------------------------------- PreAct ResNet


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_preact_resnet18_shape_and_param_count():
    torch.manual_seed(0)
    net = preact_resnet18(num_classes=10)
    assert abs(_num_params(net) - 11.17e6) / 11.17e6 < 0.01
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_preact_resnet18_narrow_width():
    torch.manual_seed(0)
    net = preact_resnet18(num_classes=7, width=16)
    assert _num_params(net) < _num_params(preact_resnet18(num_classes=7)) / 10
    assert net.linear.in_features == 8 * 16
    assert net(torch.rand(3, 3, 32, 32)).shape == (3, 7)


def test_preact_resnet34_shape_and_depth():
    torch.manual_seed(0)
    net = preact_resnet34(num_classes=5, width=8)
    assert [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 6, 3]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def _randomise_bn(bn: nn.BatchNorm2d) -> None:
    # Non-trivial running statistics and affine parameters, so relu(bn(x)) differs clearly from x.
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.3, 0.3)


def test_preact_identity_shortcut_takes_preactivated_tensor():
    torch.manual_seed(0)
    block = PreActBlock(16, 16, stride=1)
    assert len(block.shortcut) == 0  # identity
    _randomise_bn(block.bn1)
    nn.init.zeros_(block.conv2.weight)  # main path contributes exactly 0
    block.eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
        preact = F.relu(block.bn1(x))
    torch.testing.assert_close(out, preact)
    assert not torch.allclose(out, x, atol=1e-2)  # the textbook x + F(x) would give x here


def test_preact_projection_shortcut_is_bare_conv_on_preactivated_tensor():
    torch.manual_seed(0)
    block = PreActBlock(8, 16, stride=2)
    (proj,) = block.shortcut
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.stride == (2, 2)
    assert proj.bias is None
    _randomise_bn(block.bn1)
    nn.init.zeros_(block.conv2.weight)
    block.eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        out = block(x)
        expected = proj(F.relu(block.bn1(x)))
    assert out.shape == (2, 16, 4, 4)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- torchvision backbones


def test_vgg19_bn_at_64px():
    torch.manual_seed(0)
    net = vgg19_bn(num_classes=10).eval()
    assert net.classifier[6].in_features == 4096 and net.classifier[6].out_features == 10
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 10)


@pytest.fixture(scope="module")
def resnet50_state_file(tmp_path_factory):
    """One random-init ResNet-50 (pretrained=False), checked at 224 and saved as a stand-in weight file."""
    torch.manual_seed(0)
    net = resnet50(num_classes=14).eval()
    assert net.fc.in_features == 2048 and net.fc.out_features == 14
    with torch.no_grad():
        assert net(torch.rand(2, 3, 224, 224)).shape == (2, 14)
    path = tmp_path_factory.mktemp("weights") / "resnet50_source.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point torchvision's hub cache at an empty temporary dir and make any download attempt fail the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a network download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def test_resnet50_weights_path_round_trip(resnet50_state_file):
    source = torch.load(resnet50_state_file, map_location="cpu", weights_only=True)
    net = resnet50(num_classes=5, weights_path=str(resnet50_state_file))
    torch.testing.assert_close(net.conv1.weight, source["conv1.weight"])
    torch.testing.assert_close(net.layer4[2].bn3.running_var, source["layer4.2.bn3.running_var"])
    assert net.fc.out_features == 5  # the file's 14-class fc was dropped


def test_resnet50_pretrained_reads_hub_cache(resnet50_state_file, empty_hub):
    expected = imagenet_resnet50_path()
    assert expected.startswith(str(empty_hub)) and expected.endswith("resnet50-0676ba61.pth")
    os.makedirs(os.path.dirname(expected))
    shutil.copy(resnet50_state_file, expected)
    net = build_classifier("resnet50", 14, pretrained=True)
    source = torch.load(resnet50_state_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.layer1[0].conv2.weight, source["layer1.0.conv2.weight"])


def test_resnet50_pretrained_missing_gives_clear_error(empty_hub):
    with pytest.raises(PretrainedWeightsMissing) as info:
        resnet50(num_classes=14, pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert imagenet_resnet50_path() in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "--no-pretrained" in message
    assert "\n" not in message


def test_resnet50_rejects_wrong_weight_file(tmp_path):
    path = tmp_path / "not_resnet50.pth"
    torch.save(preact_resnet18(10, width=4).state_dict(), path)
    with pytest.raises(RuntimeError, match="not a torchvision ResNet-50"):
        resnet50(num_classes=14, weights_path=str(path))


# ---------------------------------------------------------------- registry and normalisation


def test_registry_unknown_name_lists_names():
    with pytest.raises(ValueError) as info:
        build_classifier("resnet18", 10)
    for name in ("preact_resnet18", "preact_resnet34", "vgg19_bn", "resnet50"):
        assert name in str(info.value)
    assert models.classifier_names() == sorted(models.CLASSIFIERS)


def test_registry_builds_by_name_and_rejects_inapplicable_options():
    net = build_classifier("preact_resnet34", 3, width=4)
    assert isinstance(net, models.PreActResNet) and len(net.layer3) == 6 and net.linear.in_features == 32
    with pytest.raises(ValueError, match="width"):
        build_classifier("vgg19_bn", 10, width=16)
    with pytest.raises(ValueError, match="pretrained"):
        build_classifier("preact_resnet18", 10, pretrained=True)


def test_normalize_wrapper_feeds_normalised_input():
    torch.manual_seed(0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    wrapped = build_classifier("preact_resnet18", 10, width=4, normalize=(mean, std)).eval()
    norm = wrapped.normalize
    assert isinstance(norm, Normalize)
    assert list(norm.parameters()) == [] and {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    x = torch.rand(2, 3, 32, 32)
    expected_input = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected_input)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), wrapped.net(expected_input))
    assert not isinstance(build_classifier("preact_resnet18", 10, width=4), nn.Sequential)  # off by default


# ---------------------------------------------------------------- generative model

# (encoder flat size, decoder linear output size) per resolution, docs/design.md: The generative model.
_VAE_TABLE = {32: (1024, 1024), 64: (4096, 1024), 224: (8192, 8192)}
# (channels, spatial size) after each encoder block, and after each decoder upsampling block.
_VAE_MAPS = {
    32: ([(32, 16), (64, 8), (128, 4), (256, 2)], [(128, 4), (64, 8), (32, 16), (32, 32)]),
    64: ([(32, 32), (64, 16), (128, 8), (256, 4)], [(128, 4), (64, 8), (32, 16), (32, 32), (32, 64)]),
    224: (
        [(32, 110), (64, 53), (128, 25), (256, 11), (512, 4)],
        [(256, 11), (128, 25), (64, 53), (32, 109), (32, 224)],
    ),
}


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("image_size", [32, 64, 224])
def test_vae_output_shapes_and_ranges(image_size):
    torch.manual_seed(0)
    num_classes, z_dim, n = 14, 9, 2
    vae = build_vae(image_size, num_classes, z_dim)
    enc_flat, dec_flat = _VAE_TABLE[image_size]
    assert vae.z_encoder.fc_mu.in_features == enc_flat and vae.z_encoder.fc_logvar.in_features == enc_flat
    assert vae.t_decoder.fc.in_features == enc_flat and vae.t_decoder.fc.out_features == num_classes
    assert vae.x_decoder.decoder_input.in_features == z_dim + num_classes
    assert vae.x_decoder.decoder_input.out_features == dec_flat
    assert vae.z_encoder.embed_class.out_features == image_size**2

    maps = {"enc": [], "dec": []}

    def record(key):
        return lambda mod, args, output: maps[key].append((output.shape[1], output.shape[-1]))

    for block in vae.z_encoder.encoder:
        block.register_forward_hook(record("enc"))
    upsampling = [*vae.x_decoder.decoder, *vae.x_decoder.final_layer[:-2]]  # all but Conv(32->3), Sigmoid
    for block in upsampling:
        block.register_forward_hook(record("dec"))

    x = torch.rand(n, 3, image_size, image_size)
    with torch.no_grad():
        out = vae(x, TinyClassifier(num_classes))
    assert (maps["enc"], maps["dec"]) == _VAE_MAPS[image_size]
    assert models.VAE_ARCHS[image_size].dec_out_size == image_size
    assert out.x_hat.shape == x.shape
    assert out.mu.shape == out.log_var.shape == (n, z_dim)
    assert out.noisy_logits.shape == out.logits.shape == out.y_hat.shape == (n, num_classes)
    torch.testing.assert_close(out.y_hat.sum(dim=1), torch.ones(n))
    # Double sigmoid: x_hat = sigmoid(s) with s in (0, 1).
    assert out.x_hat.min() >= 0.5 and out.x_hat.max() <= 1 / (1 + math.exp(-1))


def test_vae_has_only_the_three_parts_and_not_the_classifier():
    vae = build_vae(32, 10, 4)
    assert {name for name, _ in vae.named_children()} == {"z_encoder", "x_decoder", "t_decoder"}
    for module in vae.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert module.bias is not None
        if isinstance(module, nn.LeakyReLU):
            assert module.negative_slope == 0.01
    clf = TinyClassifier(10)
    vae(torch.rand(2, 3, 32, 32), clf)
    vae_params = {id(p) for p in vae.parameters()}
    assert not any(id(p) in vae_params for p in clf.parameters())


def test_single_sigmoid_switch():
    torch.manual_seed(0)
    vae = build_vae(32, 10, 8, single_sigmoid=True)
    assert vae.single_sigmoid
    clf, x = TinyClassifier(10), torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    single = vae(x, clf).x_hat.detach()
    assert single.min() > 0 and single.max() < 1 and single.min() < 0.5
    vae.single_sigmoid = False
    torch.manual_seed(1)  # same Gumbel and reparameterisation draws
    double = vae(x, clf).x_hat.detach()
    torch.testing.assert_close(double, torch.sigmoid(single))


def test_classifier_gets_gradient_from_reconstruction_alone():
    torch.manual_seed(0)
    vae, clf = build_vae(32, 10, 8), TinyClassifier(10)
    out = vae(torch.rand(4, 3, 32, 32), clf)
    out.x_hat.sum().backward()
    assert clf.fc.weight.grad is not None and clf.fc.weight.grad.abs().sum() > 0
    assert vae.t_decoder.fc.weight.grad is None  # x_hat does not depend on the noisy-label head


def test_reparameterize_uniform_and_gaussian_noise():
    torch.manual_seed(0)
    mu, log_var = torch.zeros(20000), torch.zeros(20000)
    z = reparameterize(mu, log_var, gaussian=False)
    assert z.min() >= 0 and z.max() < 1 and abs(z.mean().item() - 0.5) < 0.02
    g = reparameterize(mu, log_var, gaussian=True)
    assert g.min() < -1 and abs(g.mean().item()) < 0.05 and abs(g.std().item() - 1) < 0.05
    shifted = reparameterize(torch.ones(1000), torch.full((1000,), math.log(4.0)))  # 1 + 2 * U[0, 1)
    assert shifted.min() >= 1 and shifted.max() < 3


@pytest.mark.parametrize("gaussian", [False, True])
def test_vae_uses_its_reparameterisation_switch(monkeypatch, gaussian):
    calls = []

    def spy(mu, log_var, gaussian=False):
        calls.append(gaussian)
        return reparameterize(mu, log_var, gaussian)

    monkeypatch.setattr(models.vae, "reparameterize", spy)
    vae = InstanceGMVAE(32, 10, 4, gaussian_reparam=gaussian)
    vae(torch.rand(2, 3, 32, 32), TinyClassifier(10))
    assert calls == [gaussian]


def _record_inputs(module: nn.Module, store: dict, key: str) -> None:
    module.register_forward_hook(lambda mod, args, output: store.__setitem__(key, args))


@pytest.mark.parametrize("use_noisy_label", [False, True])
def test_conditioning_of_each_part(use_noisy_label):
    torch.manual_seed(0)
    vae, seen = build_vae(32, 10, 4), {}
    for key in ("z_encoder", "x_decoder", "t_decoder"):
        _record_inputs(getattr(vae, key), seen, key)
    y_noisy = F.one_hot(torch.tensor([3, 7]), 10).float()
    x = torch.rand(2, 3, 32, 32)
    out = vae(x, TinyClassifier(10), y_cond=y_noisy if use_noisy_label else None)
    enc_x, enc_y = seen["z_encoder"]
    assert enc_x is x
    assert enc_y is (y_noisy if use_noisy_label else out.y_hat)
    assert seen["x_decoder"][1] is out.y_hat  # the decoder always gets the Gumbel sample
    t_x, t_y = seen["t_decoder"]
    assert t_x is out.x_hat and t_y is out.y_hat  # the noisy-label head sees the reconstruction


def test_gumbel_temperature_switch():
    torch.manual_seed(0)
    vae = build_vae(32, 10, 4, gumbel_tau=1e-3)
    y_hat = vae(torch.rand(8, 3, 32, 32), TinyClassifier(10)).y_hat
    assert torch.all(y_hat.max(dim=1).values > 0.99)  # near one-hot at a tiny temperature


def test_vae_rejects_unknown_sizes():
    with pytest.raises(ValueError) as info:
        InstanceGMVAE(28, 10, 25)
    message = str(info.value)
    assert all(str(s) in message for s in (32, 64, 224)) and "padded" in message
    with pytest.raises(ValueError, match="32x32"):
        build_vae(32, 10, 4)(torch.rand(2, 3, 64, 64), TinyClassifier(10))
