"""Settings across gunicorn's reloads: a bad value at SIGHUP must not take the service down.

gunicorn runs gunicorn.conf.py again on SIGHUP, inside the master that is serving, and exits if
the file raises. This module is imported once per master, so it can hold the settings the
master runs with and hand them back when the new ones are bad.
"""

from __future__ import annotations

import logging

from config.settings import Settings, SettingsError, load_settings

logger = logging.getLogger(__name__)


class RunningSettings:
    """The settings a gunicorn master started or last reloaded with."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    def load(self) -> Settings:
        """Read the settings; at a reload with a bad value, log one line and keep the running ones.

        At the first start there are none to keep: the SettingsError stops start-up.
        """
        try:
            self._settings = load_settings()
        except SettingsError as exc:
            if self._settings is None:
                raise
            logger.error("cannot reload: %s; keeping the running settings", exc)
        return self._settings


running_settings = RunningSettings()
"""The master's: one instance per process, outliving each run of gunicorn.conf.py."""
