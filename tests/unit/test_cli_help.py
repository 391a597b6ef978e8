"""Every option of every subcommand says what it does and what it defaults to."""
import argparse

import pytest

from converters.__main__ import build_parser as converters_parser
from eval.__main__ import build_parser as eval_parser


def subcommands():
    for name, build in (("converters", converters_parser), ("eval", eval_parser)):
        parser = build()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for command, sub in commands.choices.items():
            yield pytest.param(sub, id=f"{name} {command}")


@pytest.mark.parametrize("parser", subcommands())
def test_every_option_is_documented_with_its_default(parser):
    text = parser.format_help()
    assert parser.description
    undocumented = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        formatted = parser._get_formatter()._expand_help(action) if action.help else ""
        if not formatted.strip():
            undocumented.append(f"{action.dest}: no help")
        elif action.option_strings and not action.required and "default" not in formatted:
            undocumented.append(f"{action.option_strings[0]}: no default in {formatted!r}")
    assert undocumented == [], text
