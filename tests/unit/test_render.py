"""Every template renders, with the values the install needs."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import jinja2
import pytest

from provisioner.config import build
from provisioner.render import environment, render, rootfs_files, template_names

CFG = build({"target": Path("/t"), "hostname": "devbox", "locale": "de_DE.UTF-8", "keymap": "de-latin1"})


def shell_array(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"{name}=("))
    return line.removeprefix(f"{name}=(").removesuffix(")").split()


def test_every_template_renders() -> None:
    assert template_names(), "no templates found"
    for name in template_names():
        assert render(name, CFG).strip(), name


def test_mkinitcpio_conf_loads_9p_and_virtiofs_and_has_no_fsck() -> None:
    text = rootfs_files(CFG)[PurePosixPath("/etc/mkinitcpio.conf")]
    # Both roots boot from one image: `provision-arch boot` (9p) and `boot --fs virtiofs`.
    assert shell_array(text, "MODULES") == ["9p", "9pnet", "9pnet_virtio", "virtiofs"]
    hooks = shell_array(text, "HOOKS")
    assert hooks[0] == "base"
    assert "filesystems" in hooks
    assert "block" in hooks, "the block hook carries virtio_pci, the transport 9pnet_virtio needs"
    assert "fsck" not in hooks and "autodetect" not in hooks


def test_network_file_matches_pc_and_q35_interfaces() -> None:
    text = rootfs_files(CFG)[PurePosixPath("/etc/systemd/network/20-wired.network")]
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Match]", "Type=ether", "Kind=!*", "[Network]", "DHCP=yes"]


def test_system_identity_files() -> None:
    files = rootfs_files(CFG)
    assert files[PurePosixPath("/etc/hostname")] == "devbox\n"
    assert "127.0.1.1\tdevbox" in files[PurePosixPath("/etc/hosts")]
    assert files[PurePosixPath("/etc/locale.conf")] == "LANG=de_DE.UTF-8\n"
    assert files[PurePosixPath("/etc/vconsole.conf")] == "KEYMAP=de-latin1\n"


def test_undefined_variables_fail_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("{{ cfg.no_such_field }}").render(cfg=CFG)
