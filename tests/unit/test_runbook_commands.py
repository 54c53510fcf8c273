"""Every `palisade …` command and option the runbook names exists (the runbook must not drift from the CLI)."""

from __future__ import annotations

import re

import click

from tests.support.server import ROOT

#: commands other branches bring (the datasets domain); checked once they are registered
PENDING = {"datasets"}


def _resolve(words: list[str]) -> tuple[click.Command | None, list[str]]:
    from gateway.cli.main import main

    command: click.Command = main
    while isinstance(command, click.Group) and words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
        sub = command.get_command(click.Context(command), words[0])
        if sub is None:
            return None, words
        command, words = sub, words[1:]
    return command, words


def test_runbook_commands_exist():
    text = (ROOT / "docs" / "operations.md").read_text()
    found = re.findall(r"`palisade ([^`]+)`", text)
    assert len(found) > 20
    for line in found:
        words = line.replace("…", "").split()
        if words[0] in PENDING:
            continue
        command, rest = _resolve(words)
        assert command is not None, f"`palisade {line}`: no such command"
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"`palisade {line}`: {word} is not an option"


def test_every_command_loads_under_its_name_and_only_its_own_domain_is_imported():
    """Commands are imported when used (`palisade keys create` does not pay ~0.7 s for every other domain)."""
    import subprocess
    import sys

    from gateway.cli.main import COMMANDS, main

    ctx = click.Context(main)
    assert sorted(main.list_commands(ctx)) == sorted({*COMMANDS, "keyring", "signing-keys", "settings"})
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                assert command.get_command(ctx, sub) is not None, f"palisade {name} {sub}"
    keys = main.get_command(ctx, "keys")
    assert {"rotate", "rotate-signing"} <= set(keys.commands)  # the names from before the split, hidden
    probe = ("import sys; from gateway.cli.main import main; main(['keys', 'list', '--help'], standalone_mode=False);"
             "print(sorted(m for m in ('gateway.services', 'gateway.cli.server', 'gateway.cli.batches', 'litestar')"
             " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
