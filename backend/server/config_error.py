"""The one exception for settings the server refuses (its own module: ``config`` and the modules that
check parts of the settings, ``proxy`` among them, both raise it without importing each other)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The server refuses to start with these settings."""
