"""The README and docs/ say what the code does: the option table is the option table's, word
for word (docs/options.md), the exit-code table the errors module's (docs/exit-codes.md);
every docs page is linked from the README, every relative link resolves, and every
`make TARGET` they tell you to run is a Makefile target.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from provisioner.cli import app
from provisioner.config import BootConfig, Config, defaults_shown
from provisioner.errors import EXIT_CODES, ExitCode

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def options_table(of: type = Config) -> str:
    """An option table (the install's, or boot's and run's) as config.py says it must read."""
    key_column = "config key" if of is Config else "[boot] key"
    lines = [f"| option | {key_column} | default | meaning |", "| --- | --- | --- | --- |"]
    for row, default in defaults_shown(of):
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


@pytest.mark.parametrize("of", [Config, BootConfig])
def test_options_page_lists_every_option_as_the_code_defines_it(of: type) -> None:
    expected = options_table(of)
    page = DOCS / "options.md"
    assert expected in page.read_text(), f"{page.relative_to(ROOT)}'s option table must read:\n\n{expected}\n"


def test_options_page_names_every_option_of_every_command() -> None:
    """Each command's own options (--print, --user, --json …) as well as the tables'."""
    page = (DOCS / "options.md").read_text()
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    for name, command in group.commands.items():
        for param in command.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("-") and flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, f"docs/options.md does not name `{name} {flag}`"


def test_exit_codes_page_documents_every_exit_code() -> None:
    text = (DOCS / "exit-codes.md").read_text()
    assert "| code | meaning |\n| --- | --- |\n" in text
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \|$", text, re.M)
    assert [int(code) for code, _ in rows] == sorted(int(code) for code in ExitCode)
    assert dict(rows) == {str(int(code)): meaning for code, meaning in EXIT_CODES.items()}


# Links: [text](target), outside code. Fenced blocks, indented blocks and inline code are
# dropped first, so that `[[users]]` or a link in an example is not taken for one.
LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            continue
        out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slugs(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to -."""
    found: set[str] = set()
    for line in prose(page.read_text().replace("`", "")).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            n, candidate = 0, slug
            while candidate in found:
                n += 1
                candidate = f"{slug}-{n}"
            found.add(candidate)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


def linked_pages(page: Path) -> set[Path]:
    return {(page.parent / target.partition("#")[0]).resolve() for target in LINK.findall(prose(page.read_text()))}


def test_readme_links_every_docs_page() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [page.name for page in pages if page.resolve() not in linked_pages(README)]
    assert not missing, f"README.md does not link to: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"


def test_link_checks_catch_what_they_should(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A `b` page: here\n\n[ok](b.md#c-d) [self](#a-b-page-here) [x](https://x)\n")
    (tmp_path / "b.md").write_text("# C d\n\n```\n[not a link](nowhere.md)\n```\n")
    assert broken_links(tmp_path / "a.md") == []
    assert broken_links(tmp_path / "b.md") == []
    (tmp_path / "c.md").write_text("[gone](gone.md) [bad anchor](b.md#e) `[code](gone.md)`\n")
    assert broken_links(tmp_path / "c.md") == [
        f"gone.md (no {(tmp_path / 'gone.md').resolve()})",
        "b.md#e (no heading #e in b.md)",
    ]


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):(?!=)", (ROOT / "Makefile").read_text(), re.M))


def make_commands(page: Path) -> set[str]:
    """`make TARGET` as a command in the page's code (not `make -C DIR`, not prose)."""
    text = page.read_text()
    code = re.findall(r"`([^`\n]+)`", text)
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            code.append(line)
    return {target for line in code for target in re.findall(r"(?:^|[;&|:`-])\s*make ([a-z][\w-]*)", line.strip())}


def test_readme_gives_a_newcomer_the_two_commands() -> None:
    """Quick start: one command that sets up and builds a box, one that sets up and tests."""
    quick_start = README.read_text().partition("\n## Quick start")[2].partition("\n## ")[0]
    commands = [line.strip() for line in quick_start.splitlines() if line.startswith("    ")]
    assert [command.split()[:2] for command in commands] == [["make", "run"], ["make", "test"]]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_make_targets_exist(page: Path) -> None:
    assert make_commands(page) <= make_targets(), f"{page.relative_to(ROOT)}: no such make target"
