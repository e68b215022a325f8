"""Jinja environment over the templates, and the rendered files for the target root.

``templates/rootfs/<path>.j2`` renders to ``/<path>`` in the installed system. The
templates ship inside the wheel as ``provisioner/templates``; in a source checkout they
are read from the top-level ``templates/`` directory.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path, PurePosixPath

import jinja2

from provisioner.config import Config

ROOTFS = "rootfs/"
SUFFIX = ".j2"


def templates_dir() -> Path:
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML: escaping would corrupt them
    )


def template_names() -> list[str]:
    return sorted(environment().list_templates(extensions=[SUFFIX.lstrip(".")]))


def render(name: str, cfg: Config) -> str:
    return environment().get_template(name).render(cfg=cfg)


def rootfs_files(cfg: Config) -> dict[PurePosixPath, str]:
    """Every file the templates put into the target: absolute guest path -> content."""
    return {
        PurePosixPath("/") / name.removeprefix(ROOTFS).removesuffix(SUFFIX): render(name, cfg)
        for name in template_names()
        if name.startswith(ROOTFS)
    }
