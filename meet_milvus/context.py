"""The `meet-milvus` command line's shared context: the global flags, and settings built from
them on first use. Its own module so command modules need not import the entry point."""

from __future__ import annotations

from pathlib import Path

import click

from meet_milvus.config import Settings, load_settings


class Context:
    """Carries the global flags; settings are built on first use so `--help` stays instant."""

    def __init__(self, config_file: Path | None, overrides: dict) -> None:
        self.config_file = config_file
        self.overrides = overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file, **self.overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


def current_settings() -> Settings:
    """The settings of the command being run."""
    return click.get_current_context().find_object(Context).settings
