"""The one co-training engine of InstanceGM (DivideMix + generative model), shared by every entry script."""

from typing import Any

from training.config import Config, ConfigError, parse_cli

__all__ = ["Config", "ConfigError", "main_run", "parse_cli", "run"]


def __getattr__(name: str) -> Any:
    # The engine (and torch, ~7 s and ~700 MB to import) loads on first use: the sweep, the report and --help
    # of the tools import this package without needing it.
    if name in ("main_run", "run"):
        from training import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
