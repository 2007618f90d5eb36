"""Command line: original flag spellings, preset selection, precedence, booleans, validation."""

import json

import pytest

import instanceGM
from training.config import Config, ConfigError, bool_flag, parse_cli

P = instanceGM.PRESETS


def test_original_commands_parse_unchanged():
    cfg = parse_cli(P, "cifar10", ["--r", "0.5"])
    assert (cfg.dataset, cfg.num_classes, cfg.r, cfg.warm_up, cfg.data_path) == (
        "cifar10",
        10,
        0.5,
        10,
        "./cifar-10",
    )
    cfg = parse_cli(
        P, "cifar10", ["--num_class", "100", "--data_path", "./cifar-100", "--dataset", "cifar100", "--r", "0.5"]
    )
    assert (cfg.dataset, cfg.num_classes, cfg.warm_up, cfg.data_path) == ("cifar100", 100, 30, "./cifar-100")
    # every DivideMix/InstanceGM flag of the original argparse, original spelling
    cfg = parse_cli(
        P,
        "cifar10",
        [
            "--batch_size",
            "32",
            "--lr",
            "0.01",
            "--noise_mode",
            "instance",
            "--alpha",
            "2",
            "--lambda_u",
            "0",
            "--p_threshold",
            "0.6",
            "--T",
            "0.4",
            "--num_epochs",
            "20",
            "--seed",
            "7",
            "--gpuid",
            "0",
            "--z_dim",
            "16",
            "--vae_lr",
            "0.0005",
            "--id",
            "myrun",
        ],
    )
    assert (
        cfg.batch_size,
        cfg.lr,
        cfg.alpha,
        cfg.lambda_u,
        cfg.p_threshold,
        cfg.T,
        cfg.num_epochs,
        cfg.seed,
        cfg.z_dim,
        cfg.vae_lr,
        cfg.run_name,
    ) == (32, 0.01, 2.0, 0.0, 0.6, 0.4, 20, 7, 16, 0.0005, "myrun")


def test_precedence_default_preset_cli():
    assert Config().warm_up == 10
    assert P["cifar100"].warm_up == 30
    assert parse_cli(P, "cifar10", ["--dataset", "cifar100", "--warm_up", "5"]).warm_up == 5


@pytest.mark.parametrize("text,value", [("True", True), ("false", False), ("0", False), ("yes", True)])
def test_bool_flags_parse_like_a_person_writes_them(text, value):
    assert bool_flag(text) is value
    cfg = parse_cli(P, "cifar10", ["--saved", text])
    assert cfg.saved is value  # the original's type=bool made "--saved False" true


def test_bare_boolean_and_no_prefix():
    assert parse_cli(P, "cifar10", ["--smoke"]).smoke is True
    assert parse_cli(P, "cifar10", ["--no-saved"]).saved is False


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--r", "1.5"], "--r 1.5"),
        (["--method", "coteaching"], "--method"),
        (["--noise_mode", "human"], "--noise_file"),
        (["--dataset", "mnist"], "--dataset 'mnist'"),
        (["--warm_up", "400"], "--warm_up 400"),
        (["--amp", "fp8"], "--amp"),
    ],
)
def test_bad_input_gets_one_line_error(argv, needle):
    with pytest.raises(ConfigError) as err:
        parse_cli(P, "cifar10", argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_round_trip_json_and_run_name():
    cfg = parse_cli(P, "cifar10", ["--r", "0.45"])
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.default_run_name() == "cifar10_instance0.45_instancegm_seed123"
    assert cfg.replace(r=0.5).default_run_name() != cfg.default_run_name()
