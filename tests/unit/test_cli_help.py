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


def test_qvr_llamafactory_help_says_it_takes_llamafactory_cli_arguments(capsys):
    from custom_modules.integrations.llamafactory_cli import main

    with pytest.raises(SystemExit) as exit_status:
        main(["--help"])
    assert exit_status.value.code == 0
    text = capsys.readouterr().out
    assert "qvr-llamafactory train recipe.yaml [key=value ...]" in text and "FORCE_TORCHRUN" in text


@pytest.mark.parametrize("script,subcommand", [("qvr-convert", "coco-caption"), ("qvr-eval", "predict"),
                                               ("qvr-llamafactory", "train"), ("qvr-plan", "RECIPE")])
def test_console_scripts_run_from_any_directory(script, subcommand, lf_bin, tmp_path):
    """`make install` put the project's console scripts into the environment; they need no checkout as cwd."""
    import subprocess

    result = subprocess.run([str(lf_bin / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and subcommand in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
