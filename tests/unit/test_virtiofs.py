"""virtiofs: finding and telling apart the two virtiofsd daemons, their command lines, QEMU's."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from provisioner import virtiofs
from provisioner.boot import describe
from provisioner.config import Accel, BootConfig, RootFs
from provisioner.errors import HostError
from provisioner.qemu import Hardware, Served, boot_argv
from provisioner.virtiofs import Flavour, Virtiofsd, find_virtiofsd, flavour_of, fuse_opt_value, nofile_limit, virtiofsd_argv
from tests.helpers import installed_box

HW = Hardware(memory=2048, cpus=2, accel=Accel.TCG)
VIRTIOFS, NINEP = (BootConfig(accel=Accel.TCG, fs=fs) for fs in (RootFs.VIRTIOFS, RootFs.NINEP))
# Excerpts of the two daemons' --help: QEMU 7.2's C one (Debian 12), the Rust one (clap).
C_HELP = """usage: /usr/lib/qemu/virtiofsd [options]
    -o sandbox=namespace|chroot
                               sandboxing mode:
    --rlimit-nofile=<num>      set maximum number of file descriptors
    -o source=PATH             shared directory tree
    --socket-path=PATH         path for the vhost-user socket
"""
RUST_HELP = """Usage: virtiofsd [OPTIONS]
      --shared-dir <shared_dir>  Shared directory path
      --socket-path <socket_path>  vhost-user socket path
      --fd <fd>  File descriptor for the listening socket
      --sandbox <sandbox>  Sandbox mechanism [default: namespace]
"""


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


@pytest.mark.parametrize(("text", "expected"), [(C_HELP, Flavour.C), (RUST_HELP, Flavour.RUST), ("usage: sleep NUMBER", None)])
def test_the_help_text_tells_the_daemons_apart(text: str, expected: Flavour | None) -> None:
    assert flavour_of(text) is expected


def test_c_daemon_argv(tmp_path: Path) -> None:
    daemon = Virtiofsd(Path("/usr/lib/qemu/virtiofsd"), Flavour.C)
    assert virtiofsd_argv(daemon, tmp_path / "base", 3, 524288) == [
        "/usr/lib/qemu/virtiofsd", "--fd=3",
        "-o", f"source={tmp_path}/base,cache=auto,xattr",
        "-o", "sandbox=chroot",
        "--rlimit-nofile=524288",
    ]  # fmt: skip


def test_rust_daemon_argv(tmp_path: Path) -> None:
    daemon = Virtiofsd(Path("/usr/libexec/virtiofsd"), Flavour.RUST)
    assert virtiofsd_argv(daemon, tmp_path / "a,b", 5, 4096) == [
        "/usr/libexec/virtiofsd", "--fd=5",
        "--shared-dir", f"{tmp_path}/a,b",
        "--cache", "auto", "--xattr", "--sandbox", "chroot",
        "--rlimit-nofile=4096",
    ]  # fmt: skip


def test_commas_in_the_c_daemons_option_list_are_escaped() -> None:
    assert fuse_opt_value(Path("/srv/a,b\\c")) == "/srv/a\\,b\\\\c"


def test_the_daemon_is_given_the_hard_limit_on_open_files() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert nofile_limit() == (virtiofs.NR_OPEN if hard == resource.RLIM_INFINITY else hard)


def fake_daemon(directory: Path, help_text: str, name: str = "virtiofsd") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\nexec /bin/cat <<'EOF'\n{help_text}EOF\n")
    path.chmod(0o755)
    return path


def test_find_looks_at_the_distributions_places_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_one = fake_daemon(tmp_path / "lib", "usage: something else\n")
    rust = fake_daemon(tmp_path / "libexec", RUST_HELP)
    on_path = fake_daemon(tmp_path / "bin", C_HELP)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_virtiofsd([not_one, tmp_path / "missing", rust], as_root=True) == Virtiofsd(rust, Flavour.RUST)
    assert find_virtiofsd([not_one], as_root=True) == Virtiofsd(on_path, Flavour.C)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    reasons: list[str] = []
    assert find_virtiofsd([not_one], as_root=True, reasons=reasons) is None
    assert reasons == [f"{not_one} --help: usage: something else"]


def test_unprivileged_the_daemon_is_asked_in_a_user_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's C daemon fails even --help outside one (it drops supplementary groups first)."""
    asked: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        return subprocess.CompletedProcess(argv, 0, C_HELP, "")

    monkeypatch.setattr(virtiofs, "run", run)
    assert virtiofs.probe(Path("/usr/lib/qemu/virtiofsd"), as_root=False) == Virtiofsd(Path("/usr/lib/qemu/virtiofsd"), Flavour.C)
    assert asked == [["unshare", "--map-auto", "--map-root-user", "/usr/lib/qemu/virtiofsd", "--help"]]


def test_boot_argv_on_virtiofs_shares_memory_and_drops_9p(tmp_path: Path) -> None:
    socket = tmp_path / "run/virtiofsd.sock"
    argv = boot_argv(HW, tmp_path / "base", served=Served(socket))
    assert option(argv, "-object") == ["memory-backend-memfd,id=mem,size=2048M,share=on"]
    assert option(argv, "-numa") == ["node,memdev=mem"]
    assert option(argv, "-m") == ["2048"], "the shared backend must be all of the guest's memory"
    assert f"socket,id=vfs-fsRoot,path={socket}" in option(argv, "-chardev")
    assert "vhost-user-fs-pci,chardev=vfs-fsRoot,tag=fsRoot" in option(argv, "-device")
    assert option(argv, "-append") == ["root=fsRoot rw rootfstype=virtiofs console=ttyS0"]
    assert "-fsdev" not in argv and not any(d.startswith("virtio-9p") for d in option(argv, "-device"))
    assert option(argv, "-kernel") == [f"{tmp_path}/base/boot/vmlinuz-linux"]


def test_print_shows_both_commands_and_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = fake_daemon(tmp_path / "bin", C_HELP)
    monkeypatch.setattr(virtiofs, "CANDIDATES", (daemon,))
    text = describe(installed_box(tmp_path), VIRTIOFS, as_root=False)
    comment, daemon_line, qemu_line = text.splitlines()
    assert comment.startswith("# virtiofsd") and "user namespace" in comment
    assert daemon_line.startswith(f"# {daemon} --fd=3 -o source={tmp_path}/base,cache=auto,xattr")
    assert qemu_line.startswith("unshare --map-auto --map-root-user qemu-system-x86_64 ")
    assert "vhost-user-fs-pci" in qemu_line
    assert describe(tmp_path / "base", NINEP, as_root=True).startswith("qemu-system-x86_64 ")


def test_no_daemon_is_a_host_error_with_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(virtiofs, "CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostError) as error:
        describe(tmp_path / "base", VIRTIOFS, as_root=True)
    assert "qemu-system-common" in error.value.hint


def test_a_helper_that_cannot_start_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError) as error:
        virtiofs._spawn([str(tmp_path / "no-such-virtiofsd")], hint="install it")
    assert error.value.message.startswith(f"cannot start {tmp_path}/no-such-virtiofsd: No such file")
    assert error.value.hint == "install it"


def test_each_daemon_is_told_the_cache_mode_in_its_own_words(tmp_path: Path) -> None:
    c, rust = (Virtiofsd(Path("/d"), flavour) for flavour in (Flavour.C, Flavour.RUST))
    assert f"source={tmp_path},cache=none,xattr" in virtiofsd_argv(c, tmp_path, 3, 1024, "never")
    assert f"source={tmp_path},cache=auto,xattr" in virtiofsd_argv(c, tmp_path, 3, 1024, "auto")
    argv = virtiofsd_argv(rust, tmp_path, 3, 1024, "never")
    assert argv[argv.index("--cache") + 1] == "never"
