"""The library's exceptions. The scripts map them to exit codes (src/cli.py); nothing here
imports anything of ours, so every module can raise them.

  ConfigError       bad options or configuration: nothing was processed (exit 2)
    ModelSpecError  a model spec that cannot be resolved
    CheckpointError a checkpoint that does not fit the architecture
    TableConfigError a table folder written under other settings
    ModelLoadError  the model could not be loaded: the run stops whatever the number of inputs
  InputError        an input file that cannot be read as what it claims to be (exit 2)
  OutputWriteError  an output could not be written (exit 4: finished outputs are intact)
"""
from __future__ import annotations


class ToolkitError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(ToolkitError, ValueError):
    """Bad arguments or configuration: reported in one line, exit code 2."""


# The name the scripts have always used for the same thing.
UsageError = ConfigError


class ModelSpecError(ConfigError):
    """The model spec cannot be resolved (unknown name, unreachable hub id, bad file)."""


class CheckpointError(ConfigError):
    """The checkpoint does not match the architecture (missing/unexpected/mis-shaped keys)."""


class TableConfigError(ConfigError):
    """A table folder holds rows of another model, pooling or width (a usage error, exit 2)."""


class ModelLoadError(ConfigError):
    """The model could not be loaded: the run stops (exit 2), whatever the number of inputs."""


class InputError(ToolkitError, ValueError):
    """An input cannot be read as what it claims to be (exit 2, the file named)."""


class OutputWriteError(ToolkitError, OSError):
    """An output could not be written (disk full, permissions, I/O error): the run must stop."""
