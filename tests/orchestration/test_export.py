"""``provision-arch export --format tar|oci`` on a tree with everything a box has (owners,
setuid and sticky modes, ACLs, extended attributes, file capabilities, links, a FIFO) and
what a guest plants: every entry's owner, mode, type, link and attributes are compared with
the tree, and what is left out is checked to be out."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.errors import ExitCode
from provisioner.export import FRESH_MACHINE_ID, LEFT_OUT
from provisioner.state import State, save
from tests.helpers import installed_box
from tests.tree_view import archived, entries

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tree has files of many owners: run as root")


def box(tmp_path: Path) -> Path:
    """A box's tree as a host sees one: many owners and modes, attributes, links, and plants."""
    base = installed_box(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    for directory in ("etc/ssh", "usr/bin", "usr/lib/systemd", "home/dev/.ssh", "tmp", "var/lib/pacman", "srv/acl"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    (base / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (base / "etc/os-release").write_text('NAME="Arch Linux"\n')
    (base / "etc/ssh/ssh_host_ed25519_key").write_text("private\n")
    (base / "etc/ssh/ssh_host_ed25519_key.pub").write_text("public\n")
    (base / "etc/ssh/sshd_config").write_text("# kept\n")
    (base / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF")
    (base / "usr/bin/sudo").write_bytes(b"setuid")
    os.chmod(base / "usr/bin/sudo", 0o4755)  # noqa: S103 - a setuid file, as a box has
    (base / "usr/bin/ping").write_bytes(b"caps")
    subprocess.run(["setcap", "cap_net_raw+ep", str(base / "usr/bin/ping")], check=True)
    os.setxattr(base / "etc/os-release", "user.origin", b"provision-arch test")
    subprocess.run(["setfacl", "-m", "u:1000:rwx", "-d", "-m", "g:1000:rx", str(base / "srv/acl")], check=True)
    (base / "home/dev/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA\n")
    for path in (base / "home/dev", base / "home/dev/.ssh", base / "home/dev/.ssh/authorized_keys"):
        os.chown(path, 1000, 1000)
    os.chmod(base / "home/dev", 0o700)
    os.chmod(base / "tmp", 0o1777)  # noqa: S103 - a sticky /tmp, as a box has
    os.chown(base / "srv", 65534, 984)
    (base / "usr/bin/sh").symlink_to("bash")
    (base / "etc/absolute").symlink_to("/etc/passwd")
    os.link(base / "usr/bin/sudo", base / "usr/bin/sudoedit")
    os.mkfifo(base / "tmp/fifo")
    (base / "var/lib/pacman/db.lck").write_text("")
    (base / ".provision-arch").symlink_to(victim)  # planted
    (base / ".provision-arch-run").mkdir()
    (base / ".provision-arch-run/x").write_text("planted\n")
    return base


def export(target: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(app, ["export", str(target), "--json", *args], catch_exceptions=False)
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_tar_keeps_every_owner_mode_link_and_attribute_and_leaves_out_the_boxs_own(tmp_path: Path) -> None:
    base = box(tmp_path)
    output = tmp_path / "out/box.tar"
    output.parent.mkdir()
    code, events, stderr = export(base, "--format", "tar", "--output", str(output))
    assert code == 0, stderr
    with tarfile.open(output) as tar:
        got = archived(tar)
        acl = tar.getmember("./srv/acl").pax_headers
    expected = entries(base, LEFT_OUT)
    machine_id = got.pop("./" + FRESH_MACHINE_ID)
    assert machine_id[:4] == [stat.S_IFREG, 0o444, 0, 0] and machine_id[6] == hashlib.sha256(b"").hexdigest()
    expected.pop("./" + FRESH_MACHINE_ID)
    assert got == expected
    # ACLs as the attributes they are, with numeric ids (tar's own records would carry this host's user names)
    assert "SCHILY.xattr.system.posix_acl_default" in acl and not any(key.startswith("SCHILY.acl") for key in acl)
    assert "security.capability" in got["./usr/bin/ping"][5], "the file capability is in the tarball"  # type: ignore[operator]
    assert not {name for name in got if name.startswith(("./.provision-arch", "./etc/ssh/ssh_host"))}
    assert events[-1]["type"] == "result" and events[-1]["paths"]["output"] == str(output)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600, "it holds /etc/shadow: the user's alone"
    assert sorted(p.name for p in output.parent.iterdir()) == ["box.tar"], "no manifest: this tree was not installed"
    assert "has no manifest.json" in " ".join(e.get("message", "") for e in events)
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == [], "the planted link was not followed"


def test_oci_layout_is_one_layer_of_the_same_tree_with_a_systemd_config(tmp_path: Path) -> None:
    base = box(tmp_path)
    layout = tmp_path / "image"
    code, _, stderr = export(base, "--format", "oci", "--output", str(layout))
    assert code == 0, stderr
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    def blob(descriptor: dict[str, Any]) -> bytes:
        digest = str(descriptor["digest"]).removeprefix("sha256:")
        data = (layout / "blobs/sha256" / digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert len(data) == descriptor["size"]
        return data

    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest = json.loads(blob(entry))
    config = json.loads(blob(manifest["config"]))
    (layer,) = manifest["layers"]
    tar = gzip.decompress(blob(layer))
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(tar).hexdigest()}"]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Cmd"] == ["/usr/lib/systemd/systemd"] and config["config"]["StopSignal"] == "SIGRTMIN+3"
    with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        got = archived(opened)
    got.pop("./" + FRESH_MACHINE_ID)
    expected = entries(base, LEFT_OUT)
    expected.pop("./" + FRESH_MACHINE_ID)
    assert got == expected
    assert sorted(p.name for p in layout.parent.iterdir() if p.name.startswith(".")) == [], "no partial output left"


def test_the_same_tree_gives_the_same_layer(tmp_path: Path) -> None:
    base = box(tmp_path)
    layers = []
    for name in ("one", "two"):
        assert export(base, "--format", "oci", "--output", str(tmp_path / name))[0] == 0
        manifest_digest = json.loads((tmp_path / name / "index.json").read_text())["manifests"][0]["digest"]
        manifest = json.loads((tmp_path / name / "blobs/sha256" / manifest_digest.removeprefix("sha256:")).read_text())
        layers.append(manifest["layers"][0]["digest"])
    assert layers[0] == layers[1]


@pytest.mark.parametrize(
    ("where", "args", "said"),
    [
        ("exists", ("--format", "tar"), "exists"),
        ("inside", ("--format", "tar"), "inside the box"),
        ("new", ("--format", "tar", "--size", "8G"), "--size is for a disk image"),
        ("new", ("--format", "raw", "--size", "eight"), "invalid --size"),
        ("no-dir", ("--format", "tar"), "is not a directory"),
    ],
)
def test_a_bad_output_or_option_is_refused_before_anything_is_written(
    where: str, args: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    base = box(tmp_path)
    output = {"exists": base / "boot", "inside": base / "srv/box.tar", "new": tmp_path / "box.tar",
              "no-dir": tmp_path / "nowhere/box.tar"}[where]  # fmt: skip
    if where == "exists":
        output = tmp_path / "there.tar"
        output.write_text("mine\n")
    code, events, _ = export(base, *args, "--output", str(output))
    assert code == ExitCode.USAGE
    assert said in events[-1]["message"] and events[-1]["hint"]
    if where == "exists":
        assert output.read_text() == "mine\n"
    else:
        assert not output.exists()


def test_a_box_whose_update_was_interrupted_is_refused(tmp_path: Path) -> None:
    base = box(tmp_path)
    save(base, State({}, updating=True))
    code, events, _ = export(base, "--format", "tar", "--output", str(tmp_path / "x.tar"))
    assert code == ExitCode.USAGE and "an update of it was interrupted" in events[-1]["message"]
    assert not (tmp_path / "x.tar").exists()


def test_a_directory_that_is_not_a_box_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, events, _ = export(tmp_path / "empty", "--format", "tar", "--output", str(tmp_path / "x.tar"))
    assert code == ExitCode.USAGE and "not an installed system" in events[-1]["message"]
