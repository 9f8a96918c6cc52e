"""The errors a run is refused with before it trains (exit 2), importable from every layer: this
module imports nothing of ablate, so the config, the data pipeline, the run directory and the job
all raise and catch the same classes without importing one another."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be trained; str(error) is the whole user-facing message."""


class DataError(ValueError):
    """A corpus that cannot be read or is unusable; the message names the config key."""
