"""The README's option table is the option table's, word for word (exit codes: test_errors)."""

from __future__ import annotations

from pathlib import Path

from provisioner.config import defaults_shown

README = Path(__file__).parents[2] / "README.md"


def options_table() -> str:
    """The README's option table as the option table (config.py) says it must read."""
    lines = ["| option | config key | default | meaning |", "| --- | --- | --- | --- |"]
    for row, default in defaults_shown():
        metavar = f" {row.option.metavar}" if row.option.metavar else ""
        flags = (", ".join(f"`{flag}`" for flag in row.flags) + metavar).replace("|", "\\|")
        if not row.option.in_cli:
            flags = "(config file only)"
        if row.option.envvar:
            flags += f" / `{row.option.envvar}`"
        key = f"`{row.name}`" if row.option.in_file else "(command line only)"
        meaning = row.option.help.replace("|", "\\|")
        lines.append(f"| {flags} | {key} | {f'`{default}`' if default else ''} | {meaning} |")
    return "\n".join(lines)


def test_readme_lists_every_option_as_the_code_defines_it() -> None:
    expected = options_table()
    assert expected in README.read_text(), f"README's option table must read:\n\n{expected}\n"
