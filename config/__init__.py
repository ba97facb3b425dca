"""Service settings: one typed class read from the environment and `.env`."""

from config.reloading import RunningSettings, running_settings
from config.settings import Settings, SettingsError, load_settings

__all__ = ["RunningSettings", "Settings", "SettingsError", "load_settings", "running_settings"]
