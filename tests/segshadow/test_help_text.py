"""Every command's --help reads as plain text.

No <int range> or other type tags, no {braces}, no ``double backticks``, no long floats.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer.main
from typer.core import TyperOption
from typer.testing import CliRunner

from segshadow.cli import app

LONG_FLOAT = re.compile(r"\d\.\d{7,}")
TYPE_TAG = re.compile(r"<(?:bool|str|int|float|path|int range|float range|datetime|[a-z]+(?:\|[a-z]+)+)>")


def _commands() -> Iterator[list[str]]:
    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


COMMANDS = list(_commands())


def test_every_command_is_walked() -> None:
    assert len(COMMANDS) > 20 and ["compare"] in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "segshadow")
def test_help_is_plain_text(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="segshadow")
    text = result.output
    assert result.exit_code == 0, text
    assert not TYPE_TAG.search(text), TYPE_TAG.search(text)
    assert "{" not in text and "}" not in text
    assert "``" not in text
    assert not LONG_FLOAT.search(text), LONG_FLOAT.search(text)


def _options() -> Iterator[tuple[str, TyperOption]]:
    for path in COMMANDS:
        command = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        for param in command.params:
            if isinstance(param, TyperOption) and param.name != "help":
                yield " ".join(path) or "segshadow", param


def test_every_option_is_described_and_booleans_read_x_or_no_x() -> None:
    undescribed = [f"{cmd} {p.opts[0]}" for cmd, p in _options() if not p.help]
    one_sided = [f"{cmd} {p.opts[0]}" for cmd, p in _options() if p.is_flag and p.is_bool_flag and not p.secondary_opts]
    assert undescribed == []
    assert one_sided == []
