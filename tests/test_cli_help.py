"""--help of every entry script and tool: each option explained, with its default and its allowed values."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import fields

import pytest

from training.config import SECTIONS, Config, HelpFormatter, build_parser, field_help, parse_cli


def test_every_config_field_has_help_text():
    missing = [f.name for f in fields(Config) if not field_help(f).strip()]
    assert not missing, (
        f"Config fields without help text: {', '.join(missing)}. In training/config.py write each as "
        '`name: type = opt(default, "help text")` (the trailing comment becomes the help text).'
    )


def test_sections_start_at_existing_fields_in_order():
    order = [f.name for f in fields(Config)]
    firsts = [first for _title, first, _about in SECTIONS]
    assert all(name in order for name in firsts), firsts
    assert [order.index(n) for n in firsts] == sorted(order.index(n) for n in firsts)
    assert firsts[0] == order[0]  # no field falls outside a section


def test_enumeration_choices_match_the_registries():
    from models import CLASSIFIERS, VAE_ARCHS

    choices = {f.name: f.metadata.get("choices") for f in fields(Config)}
    assert set(choices["backbone"]) == set(CLASSIFIERS)
    assert set(choices["vae_size"]) == set(VAE_ARCHS)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_of(main, monkeypatch, argv) -> argparse.ArgumentParser:
    """The parser a command builds: its first parse_args call is intercepted (nothing runs)."""

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as caught:
        main(argv)
    return caught.value.parser


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not (a.help or "").strip()
    ]


@pytest.mark.parametrize(
    "module, argv",
    [
        ("instanceGM", []),
        ("instanceGM_animal10N", []),
        ("instanceGM_redMini", []),
        ("instanceGM_clothing1M", []),
        ("training.plot", ["RUN"]),
        ("training.predict", ["CKPT"]),
        ("benchmarks.fmnist_idn", []),
        ("benchmarks.label_errors", []),
        ("benchmarks.throughput", []),
    ],
)
def test_every_command_explains_every_option_with_its_default(module, argv, monkeypatch):
    parser = _parser_of(importlib.import_module(module).main, monkeypatch, argv)
    assert issubclass(parser.formatter_class, HelpFormatter)
    assert not _undocumented(parser), f"{module}: options without help text: {_undocumented(parser)}"
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS and action.default not in (None, "==SUPPRESS=="):
            assert action.option_strings[0] in text
            assert "(default: " in action.help or "(default: " in parser._get_formatter()._get_help_string(action)


def test_entry_help_shows_preset_defaults_choices_groups_and_docstring_lines():
    import instanceGM

    text = build_parser(
        instanceGM.PRESETS["fashionmnist"], instanceGM.__doc__, dataset_names=list(instanceGM.PRESETS)
    ).format_help()
    assert "(default: /usr/share/datasets/fashion-mnist)" in text  # the preset's value, not the dataclass's
    assert "{instancegm,dividemix,ce}" in text and "{off,bf16,fp16}" in text and "{32,64,224}" in text
    assert "--smoke [true|false]" in text and "(default: false)" in text
    for title, _first, _about in SECTIONS:
        assert f"\n{title}:\n" in text
    # the docstring's example commands keep their own lines
    assert "\n    python instanceGM.py --dataset fashionmnist --smoke" in text
    assert "this script knows cifar10, cifar100, fashionmnist, imagefolder" in " ".join(text.split())


def test_enumeration_values_are_checked_from_the_same_choices():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="invalid choice: 'median'"):  # argparse, with the allowed values
        parse_cli({"cifar10": Config()}, "cifar10", ["--kl_reduction", "median"])
    with pytest.raises(ConfigError, match="--vae_batch 'x': choose one of random, dm"):
        Config(vae_batch="x").validate()
