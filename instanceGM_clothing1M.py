"""InstanceGM on Clothing1M (1M web images, 14 classes, real noise): ImageNet-pretrained ResNet-50 at 224x224,
DivideMix's Clothing1M protocol (per-epoch class-balanced subsets, best-validation model selection).

    python instanceGM_clothing1M.py --data_path ./clothing1M             # annotation files + images in data_path
    python instanceGM_clothing1M.py --weights_path resnet50-0676ba61.pth # ImageNet weights from a file
    python instanceGM_clothing1M.py --smoke --no-pretrained              # wiring check, tiny run

ImageNet weights come from --weights_path or torchvision's cache (nothing is downloaded); --no-pretrained
trains from scratch. Data layout and sampling: dataloaders/clothing1m.py. summary.json has the test accuracy
of the best-validation weights (test_at_best_val, as DivideMix reports) and of every epoch (test/acc).

Paper (test accuracy %): InstanceGM 74.40 (DivideMix 74.76, CausalNL 72.24).
"""

from __future__ import annotations

from training import Config, run

# The original instanceGM_clothing1M.py argparse defaults and hard-coded values
# (docs/design.md: Hyper-parameters; Clothing1M).
PRESETS = {
    "clothing1m": Config(
        dataset="clothing1m",
        data_path="./clothing1M",
        num_classes=14,
        noise_mode="real",
        backbone="resnet50",
        pretrained=True,
        vae_size=224,
        z_dim=25,
        batch_size=32,
        num_batches=1000,  # subsets of num_batches * 2B (warm-up) and num_batches * B (divide) images
        lr=0.002,
        lr_drop_epoch=40,
        weight_decay=1e-3,
        vae_lr=1e-3,
        num_epochs=80,
        warm_up=1,
        p_threshold=0.5,
        T=0.5,
        alpha=0.5,
        lambda_u=0.0,
        mix_unlabeled=False,  # DivideMix-Clothing1M: MixMatch on the labeled rows only, no Lu term
        warmup_penalty=True,  # NOTE(original): warm-up CE + negative-entropy penalty (README Differences #7)
        select_on_val=True,
        vae_fixed_subset=True,  # NOTE(original): VAE batches from net2's epoch-0 warm-up set (README Differences #10)
        recon_weight=1.0,
        noisy_label_weight=1.0,
        y_prior_weight=6e-6,
        kl_weight=6e-6,
    ),
}


def main(argv: list[str] | None = None) -> dict | None:
    return run(PRESETS, default="clothing1m", argv=argv, description=__doc__)


if __name__ == "__main__":
    main()
