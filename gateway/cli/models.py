"""``palisade models …``: the model aliases and what serves them."""

from __future__ import annotations

import click

from gateway.cli.common import emit_json, settings_or_exit
from gateway.inference.factory import default_models, load_models_file


@click.group()
def models() -> None:
    """Model aliases and their endpoints."""


@models.command("list")
def models_list() -> None:
    """Model aliases the models file (or the built-in default) defines, one JSON object a line."""
    settings = settings_or_exit()
    specs = load_models_file(settings.models_file) if settings.models_file else default_models(settings)
    for spec in specs:
        emit_json(spec)
