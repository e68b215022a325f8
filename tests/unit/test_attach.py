"""Shares and forwards: their syntax, the checks before QEMU starts, and the QEMU argv and
kernel arguments they become."""

from __future__ import annotations

import socket
from pathlib import Path, PurePosixPath

import pytest

from provisioner.attach import Forward, Share, check_forwards, check_shares, parse_forward, parse_share
from provisioner.config import Accel
from provisioner.errors import ExitCode, HostError, UsageError
from provisioner.qemu import ROOT_APPEND, Hardware, Served, boot_argv, run_argv

HW = Hardware(memory=1024, cpus=1, accel=Accel.TCG)


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def test_a_share_from_the_command_line_is_resolved_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_share("src:/srv/src") == Share(tmp_path / "src", PurePosixPath("/srv/src"))
    assert parse_share("/data:/mnt/data:ro") == Share(Path("/data"), PurePosixPath("/mnt/data"), readonly=True)
    assert parse_share("/data:/mnt/data:rw") == Share(Path("/data"), PurePosixPath("/mnt/data"))
    # The host path may hold a colon: the guest path, which may not, is the last field.
    assert parse_share("/odd:name:/mnt/x") == Share(Path("/odd:name"), PurePosixPath("/mnt/x"))


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("src", "needs a host directory and a guest path"),
        (":/mnt/x", "needs a host directory"),
        ("src:mnt", "not absolute"),
        ("src:/", "not a normalized"),
        ("src:/mnt/../etc", "not a normalized"),
        ("src:/proc/x", "under /proc"),
        ("src:/etc", "the box needs its own /etc"),
        ("src:/usr/local", "the box needs its own /usr/local"),
        ("src:/var", "the box needs its own /var"),
        ("src:/bin", "the box needs its own /bin"),
        ("src:/mnt/a b", "may hold only"),
        ("src:/mnt/a,b", "may hold only"),
        ("src:/mnt/$(id)", "may hold only"),
        ("src:/mnt/x\n", "control character"),
    ],
)
def test_bad_shares_are_refused_naming_the_flag(spec: str, said: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_share(spec)
    assert said in error.value.message and "--share" in error.value.message


def test_a_config_file_shares_only_what_is_below_it_and_read_only(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert parse_share("src:/src:ro", "shares[0]", tmp_path) == Share(tmp_path / "src", PurePosixPath("/src"), True)
    with pytest.raises(UsageError) as error:
        parse_share("src:/src", "shares[0]", tmp_path)
    assert "only read-only" in error.value.message and "--share src:/src" in error.value.hint
    for outside in ("/home:/h:ro", "../x:/x:ro", "~/x:/x:ro"):
        with pytest.raises(UsageError) as error:
            parse_share(outside, "shares[0]", tmp_path)
        assert "shares[0]" in error.value.message and "inside its own directory" in error.value.hint


@pytest.mark.parametrize(
    ("spec", "forward"),
    [
        ("8080:80", Forward(8080, 80)),
        ("0.0.0.0:5353:53/udp", Forward(5353, 53, "0.0.0.0", "udp")),  # noqa: S104
        ("10.0.0.1:2222:22/tcp", Forward(2222, 22, "10.0.0.1")),
    ],
)
def test_forwards_listen_on_loopback_unless_an_address_is_given(spec: str, forward: Forward) -> None:
    assert parse_forward(spec) == forward
    assert parse_forward(forward.spec) == forward


@pytest.mark.parametrize("spec", ["80", "1:2:3:4", "0:80", "80:70000", "1:2/sctp", "host:1:2", "8080:80,hostfwd=tcp::1-:1", ""])
def test_bad_forwards_are_refused(spec: str) -> None:
    with pytest.raises(UsageError, match="--forward"):
        parse_forward(spec)


def test_a_share_must_exist_be_a_directory_and_stay_clear_of_the_box(tmp_path: Path) -> None:
    box, src = tmp_path / "box", tmp_path / "src"
    (box / "home").mkdir(parents=True)
    src.mkdir()
    (tmp_path / "src2").mkdir()
    (tmp_path / "file").write_text("x")
    guest = PurePosixPath("/mnt/x")
    check_shares([Share(src, guest)], box)
    cases = {
        Share(tmp_path / "missing", guest): "does not exist",
        Share(tmp_path / "file", guest): "is not a directory",
        Share(box, guest): "overlaps the box's root",
        Share(box / "home", guest): "overlaps the box's root",
        Share(tmp_path, guest): "overlaps the box's root",
    }
    for share, said in cases.items():
        with pytest.raises(UsageError, match=said) as error:
            check_shares([share], box)
        assert error.value.exit_code == ExitCode.USAGE
    (box / "esc").symlink_to(src)  # planted by the box: its path leads out, but through the box
    with pytest.raises(UsageError, match="overlaps the box's root"):
        check_shares([parse_share(f"{box}/esc:/mnt/x")], box)
    with pytest.raises(UsageError, match="name the same directory"):
        check_shares([Share(src, guest), Share(src, PurePosixPath("/mnt/y"))], box)
    (src / "inner").mkdir()
    for pair in ([Share(src, guest), Share(src / "inner", PurePosixPath("/mnt/y"))],
                 [Share(src / "inner", guest), Share(src, PurePosixPath("/mnt/y"))]):  # fmt: skip
        with pytest.raises(UsageError, match="one inside the other"):
            check_shares(pair, box)
    with pytest.raises(UsageError, match="name the same directory"):
        check_shares([Share(src, guest), Share(tmp_path / "box/../src2", guest)], box)


def test_a_busy_host_port_is_named_before_qemu_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(HostError) as error:
            check_forwards([Forward(port, 80)])
    assert f"127.0.0.1:{port}/tcp" in error.value.message and "another program is using it" in error.value.message
    assert error.value.exit_code == ExitCode.HOST
    check_forwards([Forward(port, 80)])  # free again
    with pytest.raises(UsageError, match="forwarded twice"):
        check_forwards([Forward(port, 80), Forward(port, 22)])
    check_forwards([Forward(port, 53), Forward(port, 53, protocol="udp")])  # TCP and UDP are two ports


def test_shares_become_devices_and_systemd_mounts(tmp_path: Path) -> None:
    src, data = Share(tmp_path / "src", PurePosixPath("/src")), Share(tmp_path / "d,ata", PurePosixPath("/data"), True)
    argv = boot_argv(HW, tmp_path / "base", served=Served(shares=((src, None), (data, None))))
    fsdevs = option(argv, "-fsdev")
    assert fsdevs[1] == f"local,security_model=passthrough,multidevs=remap,id=fsdev-share0,path={tmp_path}/src"
    assert fsdevs[2] == f"local,security_model=passthrough,multidevs=remap,readonly=on,id=fsdev-share1,path={tmp_path}/d,,ata"
    append = option(argv, "-append")[0].split()
    nine = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap,posixacl"
    assert append[-2:] == [f"systemd.mount-extra=share0:/src:9p:{nine}", f"systemd.mount-extra=share1:/data:9p:{nine},ro"]
    assert "-object" not in argv, "9p alone needs no shared memory"
    # Over virtiofs: a vhost-user device per share, and all memory shareable.
    socket_path = tmp_path / "vfs.sock"
    argv = run_argv(HW, tmp_path / "base", ["systemd.run=/x"], served=Served(shares=((src, socket_path),)))
    assert "vhost-user-fs-pci,chardev=vfs-share0,tag=share0" in option(argv, "-device")
    assert option(argv, "-object") == ["memory-backend-memfd,id=mem,size=1024M,share=on"]
    assert option(argv, "-append")[0].endswith("systemd.run=/x systemd.mount-extra=share0:/src:virtiofs")


def test_a_kernel_command_line_past_the_kernels_limit_is_refused(tmp_path: Path) -> None:
    long = "/mnt/" + "x" * 250
    shares = tuple((Share(tmp_path / f"s{i}", PurePosixPath(f"{long}{i}")), None) for i in range(8))
    with pytest.raises(UsageError, match="kernel command line would be"):
        boot_argv(HW, tmp_path / "base", served=Served(shares=shares))
    assert len(ROOT_APPEND) < 2047
