"""The configuration: one TOML file → frozen dataclasses (`model`), strictly checked.

`load(path)` returns a `Config` or raises `ConfigError` listing every problem;
`diff(old, new)` lists what a reload changes; `summary(config)` prints it.
"""

from relay.config.diff import KINDS, ConfigChange, diff, lost_access
from relay.config.loader import ConfigError, Problem, check_files, load, load_text
from relay.config.model import Config
from relay.config.summary import summary

__all__ = [
    "KINDS",
    "Config",
    "ConfigChange",
    "ConfigError",
    "Problem",
    "check_files",
    "diff",
    "load",
    "load_text",
    "lost_access",
    "summary",
]
