"""Config files: ``evalledger run --config`` and ``evalledger study --config`` read TOML files of
run options (keys are ``run``'s long flag names) and grids; ``--print-config`` writes them.

Every message about a bad key or value names the file, the line and what is allowed. Relative
paths in a file are read from the file's directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalledger.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first use (see evalledger.lazy)
    from evalledger.configfile.keys import RUN_KEYS, OptionKey
    from evalledger.configfile.run_file import load_run_config, run_config_toml
    from evalledger.configfile.source import TomlSource, key_lines
    from evalledger.configfile.study_file import load_study_config, study_config_toml

__all__ = [
    "RUN_KEYS",
    "OptionKey",
    "TomlSource",
    "key_lines",
    "load_run_config",
    "load_study_config",
    "run_config_toml",
    "study_config_toml",
]

__getattr__, __dir__ = lazy_exports(__name__, __all__, {
    "evalledger.configfile.keys": ("RUN_KEYS", "OptionKey"),
    "evalledger.configfile.run_file": ("load_run_config", "run_config_toml"),
    "evalledger.configfile.source": ("TomlSource", "key_lines"),
    "evalledger.configfile.study_file": ("load_study_config", "study_config_toml"),
})
