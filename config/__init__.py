"""Settings loading and the shipped TOML data (default hierarchy, certificate profiles)."""

from config.settings import ConfigError, PinSource, ServiceSettings, Settings, load_settings, read_toml

__all__ = ["ConfigError", "PinSource", "ServiceSettings", "Settings", "load_settings", "read_toml"]
