"""The one co-training engine of InstanceGM (DivideMix + generative model), shared by every entry script."""

from training.config import Config, ConfigError, parse_cli
from training.launch import main_run, run

__all__ = ["Config", "ConfigError", "main_run", "parse_cli", "run"]
