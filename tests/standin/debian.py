"""Cut the test repository's systemd, util-linux, shadow, openssh… packages from Debian.

The installed stand-in system boots real systemd, so its packages carry Debian 13's
binaries. They come from the debootstrap root that the live system is built from
(build.py's ROOTFS_INCLUDE has everything listed here), not from the host: installing
systemd-resolved or openssh-server on the host would take over its resolv.conf or start
an sshd there.

Each ``Part`` names an Arch package, the Debian packages it is cut from and the files it
takes (patterns on the paths ``dpkg -L`` prints); nothing else of those packages is
copied: no docs, man pages, locales, and only the units, rules and binaries a QEMU guest
on a 9p root uses. The shared libraries all of them need are found with ``ldd`` inside
the root and go into packages named after their Arch counterparts (``LIBRARIES``), and so
do the libraries they load with ``dlopen`` that their ``.note.dlopen`` ELF notes mark
required or recommended (systemd 257's libkmod, libzstd), which ``ldd`` does not list.

Paths are moved to Arch's layout: ``/bin``, ``/sbin``, ``/usr/sbin`` -> ``/usr/bin``,
``/lib`` -> ``/usr/lib``, the multiarch directory ``/usr/lib/x86_64-linux-gnu`` ->
``/usr/lib``. Where Debian's binaries have the multiarch path compiled in (the RUNPATH of
systemd's private libraries, libpam's module directory) a compatibility link
``/usr/lib/x86_64-linux-gnu/<dir> -> ../<dir>`` stays. Unit files and D-Bus service files
are rewritten to name the Arch paths.

The result is a manifest per package, read by ``packages/_debian/manifest.sh`` in the
package's PKGBUILD.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import posixpath
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

MULTIARCH = "x86_64-linux-gnu"
CHROOT = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "chroot"
# Debian's multiarch library directories, as dpkg and ldd name them.
LIBDIRS = (f"/lib/{MULTIARCH}", f"/usr/lib/{MULTIARCH}")


@dataclasses.dataclass(frozen=True)
class Part:
    """One Arch package cut from Debian packages."""

    name: str
    debs: tuple[str, ...]
    files: tuple[str, ...]  # fnmatch patterns on Debian paths; each must match something
    desc: str
    depends: tuple[str, ...] = ()  # besides the libraries' packages, found by ldd


_SYSTEMD_UNITS = (
    # targets
    "basic.target", "default.target", "graphical.target", "multi-user.target", "sysinit.target",
    "sockets.target", "timers.target", "paths.target", "slices.target", "local-fs.target",
    "local-fs-pre.target", "remote-fs.target", "remote-fs-pre.target", "network.target",
    "network-pre.target", "network-online.target", "nss-lookup.target", "nss-user-lookup.target",
    "getty.target", "getty-pre.target", "emergency.target", "rescue.target", "shutdown.target",
    "umount.target", "final.target", "reboot.target", "poweroff.target", "halt.target",
    "ctrl-alt-del.target", "swap.target", "time-set.target", "time-sync.target",
    "first-boot-complete.target", "exit.target", "sigpwr.target",
    # slices
    "user.slice", "user-.slice.d/10-defaults.conf",
    # the journal
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-journal-flush.service",
    # udev
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    # early boot
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer", "systemd-sysusers.service",
    "systemd-sysctl.service", "systemd-modules-load.service", "systemd-random-seed.service",
    # (Debian 13's systemd has no utmp units any more.)
    "systemd-remount-fs.service", "systemd-machine-id-commit.service", "modprobe@.service",
    "dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-config.mount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    # logins
    "systemd-logind.service", "dbus-org.freedesktop.login1.service",
    "systemd-user-sessions.service", "user@.service", "user-runtime-dir@.service",
    "getty@.service", "serial-getty@.service", "autovt@.service",
    "emergency.service", "rescue.service",
    # the end
    "systemd-poweroff.service", "systemd-reboot.service", "systemd-halt.service",
    "systemd-exit.service",
    # network, names, host name
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-network-generator.service", "systemd-resolved.service",
    "systemd-hostnamed.service", "dbus-org.freedesktop.hostname1.service",
)  # fmt: skip

_SYSTEMD_LIBEXEC = (
    "systemd", "systemd-journald", "systemd-udevd", "systemd-logind", "systemd-networkd",
    "systemd-networkd-wait-online", "systemd-network-generator", "systemd-resolved",
    "systemd-hostnamed", "systemd-shutdown", "systemd-sulogin-shell", "systemd-remount-fs",
    "systemd-sysctl", "systemd-modules-load", "systemd-random-seed", "systemd-user-sessions",
    "systemd-user-runtime-dir", "resolv.conf",
    # PID 1 runs every unit through it since systemd 255; without it: "Freezing execution."
    "systemd-executor",
    "system-generators/systemd-getty-generator", "system-generators/systemd-fstab-generator",
    "system-generators/systemd-run-generator",  # systemd.run=, which `provision-arch run` uses
    "network/99-default.link",
)  # fmt: skip

_SYSTEMD_BIN = (
    "systemctl", "journalctl", "loginctl", "networkctl", "resolvectl", "hostnamectl", "busctl",
    "udevadm", "systemd-analyze", "systemd-tmpfiles", "systemd-sysusers",
    "systemd-machine-id-setup", "systemd-escape", "systemd-notify", "systemd-ask-password",
    "systemd-tty-ask-password-agent", "systemd-run", "systemd-cat", "systemd-cgls",
    "systemd-detect-virt",
)  # fmt: skip

_USER_UNITS = (
    "basic.target", "default.target", "exit.target", "paths.target", "shutdown.target",
    "sockets.target", "timers.target", "app.slice", "background.slice", "session.slice",
    "systemd-exit.service",
)  # fmt: skip

_UDEV_RULES = (
    # 60-persistent-storage: /dev/disk/by-partuuid (and by-uuid…), by which a disk export's
    # fstab names its partitions and systemd waits for them (without it: emergency mode).
    "50-udev-default.rules", "60-persistent-storage.rules",
    "70-power-switch.rules", "70-uaccess.rules", "71-seat.rules",
    "73-seat-late.rules", "75-net-description.rules", "80-drivers.rules",
    "80-net-setup-link.rules", "99-systemd.rules",
)  # fmt: skip

_DBUS_NAMES = ("login1", "network1", "resolve1", "systemd1", "hostname1")

_PAM_MODULES = (
    "pam_unix", "pam_deny", "pam_permit", "pam_env", "pam_nologin", "pam_limits",
    "pam_loginuid", "pam_keyinit", "pam_shells", "pam_rootok", "pam_umask", "pam_warn",
)  # fmt: skip


def _bins(*names: str) -> tuple[str, ...]:
    """Binaries in /usr/bin or /usr/sbin (Debian's /bin and /sbin match too)."""
    return tuple(f"/usr/bin/{n}|/usr/sbin/{n}" for n in names)


PARTS: tuple[Part, ...] = (
    Part(
        "glibc", ("libc6", "libc-bin"), ("/sbin/ldconfig", "/usr/bin/getent"),
        "GNU C library (Debian 13 build): libc, the loader, ldconfig, getent",
        # As on Arch: so pacman installs the layout (/lib64, /bin links) before anything runs.
        depends=("filesystem", "tzdata"),
    ),
    Part(
        "bash", ("bash",), _bins("bash"),
        "The GNU Bourne Again shell (Debian 13 build; /usr/bin/sh stays busybox)",
    ),
    Part(
        "systemd-libs", ("libnss-systemd",), (f"/lib/{MULTIARCH}/libnss_systemd.so.2",),
        "systemd client libraries and the NSS module (Debian 13 build)",
    ),
    Part(
        "systemd",
        ("systemd", "libsystemd-shared", "systemd-resolved", "udev", "libpam-systemd", "systemd-boot-efi"),
        (
            *(f"/lib/systemd/system/{u}" for u in _SYSTEMD_UNITS),
            "/lib/systemd/system/*.target.wants/*",
            *(f"/lib/systemd/{f}" for f in _SYSTEMD_LIBEXEC),
            *(f"/usr/lib/systemd/user/{u}" for u in _USER_UNITS),
            *_bins(*_SYSTEMD_BIN),
            f"/usr/lib/{MULTIARCH}/systemd/libsystemd-shared-*.so",
            f"/usr/lib/{MULTIARCH}/systemd/libsystemd-core-*.so",
            f"/lib/{MULTIARCH}/security/pam_systemd.so",
            *(f"/lib/udev/rules.d/{r}" for r in _UDEV_RULES),
            "/lib/systemd/system-preset/90-systemd.preset",
            # Arch's systemd ships systemd-boot; `provision-arch export` installs it on the ESP.
            "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "/usr/lib/sysusers.d/systemd-journal.conf",
            "/usr/lib/sysusers.d/systemd-network.conf", "/usr/lib/sysusers.d/systemd-resolve.conf",
            *(f"/usr/lib/tmpfiles.d/{t}.conf" for t in (
                "systemd", "systemd-tmp", "systemd-nologin", "systemd-network", "systemd-resolve",
                "tmp", "var", "home", "legacy", "static-nodes-permissions")),
            *(f"/usr/share/dbus-1/system.d/org.freedesktop.{n}.conf" for n in _DBUS_NAMES),
            *(f"/usr/share/dbus-1/system-services/org.freedesktop.{n}.service" for n in _DBUS_NAMES),
            *(f"/etc/systemd/{c}.conf" for c in (
                "journald", "logind", "networkd", "resolved", "system", "user")),
        ),
        "system and service manager (Debian 13 build, cut to what a QEMU guest uses)",
        # busybox is /usr/bin/sh, which runs the install scriptlet.
        depends=("busybox", "dbus", "kmod", "pam", "util-linux"),
    ),
    Part(
        "systemd-sysvcompat", ("systemd-sysv",), _bins("init", "halt", "poweroff", "reboot", "shutdown"),
        "sysvinit compat for systemd: /usr/bin/init and the power commands", depends=("systemd",),
    ),
    Part(
        "dbus",
        ("dbus", "dbus-daemon", "dbus-system-bus-common"),
        (
            "/usr/bin/dbus-daemon", "/usr/share/dbus-1/system.conf",
            "/usr/lib/sysusers.d/dbus.conf", "/usr/lib/tmpfiles.d/dbus.conf",
            "/lib/systemd/system/dbus.service", "/lib/systemd/system/dbus.socket",
            "/lib/systemd/system/*.target.wants/dbus.*",
        ),
        "freedesktop.org message bus system (Debian 13 build)",
    ),
    Part(
        "util-linux", ("util-linux", "mount", "login"),
        _bins("agetty", "sulogin", "su", "runuser", "findmnt", "mount", "umount", "login", "nologin"),
        "system utilities: agetty, login, mount, su, runuser, sulogin (Debian 13 build)",
        depends=("pam",),
    ),
    Part(
        "shadow", ("passwd",),
        _bins("chpasswd", "passwd", "useradd", "usermod", "userdel", "groupadd", "groupdel",
              "groupmod", "gpasswd", "chage"),
        "password and account management tools (Debian 13 build)", depends=("pam",),
    ),
    Part(
        "pam", ("libpam0g", "libpam-modules", "libpam-modules-bin"),
        (
            *(f"/lib/{MULTIARCH}/security/{m}.so" for m in _PAM_MODULES),
            "/sbin/unix_chkpwd", "/etc/security/limits.conf", "/etc/security/pam_env.conf",
        ),
        "PAM: libpam and the modules the stand-in's PAM stacks use (Debian 13 build)",
        depends=("pambase",),
    ),
    Part(
        "coreutils", ("coreutils",), _bins("install"),
        "install from the GNU core utilities (Debian 13 build; the rest is busybox)",
    ),
    Part(
        "pacman", ("pacman-package-manager",), _bins("pacman", "pacman-conf", "pacman-key"),
        "package manager (Debian 13 build of pacman 7.0; in base, as on Arch)",
    ),
    Part(
        "kmod", ("kmod",), _bins("kmod", "lsmod", "modprobe", "insmod", "rmmod", "depmod", "modinfo"),
        "kernel module tools (Debian 13 build)",
    ),
    Part(
        "iproute2", ("iproute2",), _bins("ip", "ss"),
        "IP routing utilities: ip and ss (Debian 13 build)",
    ),
    Part(
        "openssh", ("openssh-server", "openssh-client", "openssh-sftp-server"),
        # OpenSSH 9.8+ runs each connection in sshd-session, 10.0 authenticates in sshd-auth:
        # without them sshd resets every connection ("kex_exchange_identification").
        (*_bins("sshd", "ssh", "ssh-keygen", "scp"), "/usr/lib/openssh/sftp-server",
         "/usr/lib/openssh/sshd-session", "/usr/lib/openssh/sshd-auth"),
        "SSH client and server (Debian 13 build)",
    ),
    Part(
        "sudo", ("sudo",),
        ("/usr/bin/sudo", "/usr/libexec/sudo/sudoers.so", "/usr/libexec/sudo/libsudo_util.so.0*"),
        "give users root rights for some commands (Debian 13 build)", depends=("pam",),
    ),
)  # fmt: skip

# The shared libraries' Debian packages and the Arch packages that hold them.
LIBRARIES: dict[str, str] = {
    "libc6": "glibc",
    "libsystemd0": "systemd-libs",
    "libudev1": "systemd-libs",
    "libsystemd-shared": "systemd",
    "libpam0g": "pam",
    "libmount1": "util-linux-libs",
    "libblkid1": "util-linux-libs",
    "libuuid1": "util-linux-libs",
    "libsmartcols1": "util-linux-libs",
    "libacl1": "acl",
    "libattr1": "attr",
    "libcap2": "libcap",
    "libcap-ng0": "libcap-ng",
    "libcrypt1": "libxcrypt",
    "libgcrypt20": "libgcrypt",
    "libgpg-error0": "libgpg-error",
    "libip4tc2": "iptables",
    "libkmod2": "kmod",
    "liblz4-1": "lz4",
    "liblzma5": "xz",
    "libzstd1": "zstd",
    "zlib1g": "zlib",
    "libssl3t64": "openssl",
    "libseccomp2": "libseccomp",
    "libaudit1": "audit",
    "libpcre2-8-0": "pcre2",
    "libdbus-1-3": "dbus",
    "libexpat1": "expat",
    "libmnl0": "libmnl",
    "libelf1t64": "libelf",
    "libbpf1": "libbpf",
    "libbsd0": "libbsd",
    "libmd0": "libmd",
    "libtirpc3t64": "libtirpc",
    "libnsl2": "libnsl",
    "libwrap0": "tcp-wrappers",
    "libgssapi-krb5-2": "krb5",
    "libkrb5-3": "krb5",
    "libk5crypto3": "krb5",
    "libkrb5support0": "krb5",
    "libcom-err2": "e2fsprogs",
    "libkeyutils1": "keyutils",
    "sudo": "sudo",
    # Not in Arch (no SELinux or AppArmor there), but Debian's builds link them.
    "libselinux1": "libselinux",
    "libsemanage2": "libselinux",
    "libsepol2": "libselinux",
    "libbz2-1.0": "bzip2",
    "libtinfo6": "ncurses",
    "libapparmor1": "apparmor",
    # pacman's: libalpm, and curl, gpgme, libarchive with what they link.
    "libalpm15": "pacman",
    "libarchive13t64": "libarchive",
    "libcurl4t64": "curl",
    "libgpgme11t64": "gpgme",
    "libassuan9": "libassuan",
    "libbrotli1": "brotli",
    "libffi8": "libffi",
    "libgcc-s1": "gcc-libs",
    "libstdc++6": "gcc-libs",
    "libgmp10": "gmp",
    "libgnutls30t64": "gnutls",
    "libhogweed6t64": "nettle",
    "libnettle8t64": "nettle",
    "libicu76": "icu",
    "libidn2-0": "libidn2",
    "libldap2": "libldap",
    "libnghttp2-14": "libnghttp2",
    "libp11-kit0": "p11-kit",
    "libpsl5t64": "libpsl",
    "librtmp1": "rtmpdump",
    "libsasl2-2": "libsasl",
    "libssh2-1t64": "libssh2",
    "libtasn1-6": "libtasn1",
    "libunistring5": "libunistring",
    "libxml2": "libxml2",
    # New in Debian 13's builds.
    "libnghttp3-9": "libnghttp3",
    "libwtmpdb0": "wtmpdb",
    "liblastlog2-2": "util-linux-libs",
    "libxxhash0": "xxhash",
    "libncursesw6": "ncurses",
    "libsqlite3-0": "sqlite",
}

LIBRARY_DESCRIPTIONS: dict[str, str] = {
    "util-linux-libs": "util-linux runtime libraries (libmount, libblkid, …)",
    "libselinux": "SELinux library (Debian's builds link it; Arch has none)",
    "apparmor": "AppArmor library (Debian's systemd links it; Arch has none)",
}

# Debian's binaries look for these multiarch directories (RUNPATH, libpam's module
# path): links from there to where the files are in Arch's layout, and their packages.
COMPAT_LINKS = {
    f"/usr/lib/{MULTIARCH}/systemd": ("systemd", "../systemd"),
    f"/usr/lib/{MULTIARCH}/security": ("pam", "../security"),
    # Debian's sshd has /usr/lib/openssh/sshd-session and sshd-auth compiled in; Arch's are in /usr/lib/ssh.
    "/usr/lib/openssh": ("openssh", "ssh"),
}

# Arch's modes where Debian's differ (setgid shadow does not exist there).
MODES = {"/usr/bin/unix_chkpwd": 0o4755}

_UNIT_DIRS = ("/usr/lib/systemd/system/", "/usr/lib/systemd/user/", "/usr/share/dbus-1/")
# /sbin/agetty, /bin/kill, !!/lib/systemd/systemd-networkd… in unit files.
_BIN_RE = re.compile(r"(?<![\w./])/(?:usr/)?s?bin/")
_LIB_RE = re.compile(r"(?<![\w./])/lib/(?=systemd/|udev/)")


class DebianError(Exception):
    """The Debian root lacks something a part needs."""


@dataclasses.dataclass
class Entry:
    kind: str  # "f" file, "l" symlink
    mode: int
    dest: str  # Arch path
    source: str  # host path of the content (f) or the link target (l)
    text: str | None = None  # content that replaces the source's (rewritten units)


@dataclasses.dataclass
class Package:
    name: str
    desc: str
    version: str
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    depends: set[str] = dataclasses.field(default_factory=set)

    def add(self, entry: Entry) -> None:
        self.entries[entry.dest] = entry

    def write(self, directory: Path) -> None:
        """Copy the files below directory/files and write directory/manifest.tsv, the
        list that packages/_debian/manifest.sh installs ("f MODE DEST FILE", "l MODE
        DEST TARGET"; FILE relative to directory)."""
        lines = []
        for entry in sorted(self.entries.values(), key=lambda e: e.dest):
            source = entry.source
            if entry.kind == "f":
                copy = directory / "files" / entry.dest.lstrip("/")
                copy.parent.mkdir(parents=True, exist_ok=True)
                if entry.text is not None:
                    copy.write_text(entry.text)
                else:
                    shutil.copyfile(entry.source, copy)
                source = f"files{entry.dest}"
            lines.append(f"{entry.kind}\t{entry.mode:o}\t{entry.dest}\t{source}\n")
        (directory / "manifest.tsv").write_text("".join(lines))


def arch_path(path: str) -> str:
    """Where a Debian path lives in Arch's layout."""
    for prefix in ("/bin/", "/sbin/", "/usr/sbin/", "/usr/bin/"):
        if path.startswith(prefix):
            return "/usr/bin/" + path[len(prefix) :]
    for libdir in LIBDIRS:
        if path.startswith(libdir + "/"):
            return "/usr/lib/" + path[len(libdir) + 1 :]
    if path.startswith("/lib64/"):
        return "/usr/lib/" + path[len("/lib64/") :]
    if path.startswith("/lib/"):
        return "/usr" + path
    if path.startswith("/usr/lib/openssh/"):
        return "/usr/lib/ssh/" + path[len("/usr/lib/openssh/") :]
    return path


def rewrite_unit(text: str) -> str:
    """Debian's paths in a unit or D-Bus service file, as Arch's files spell them."""
    return _LIB_RE.sub("/usr/lib/", _BIN_RE.sub("/usr/bin/", text))


class Root:
    """A Debian root directory: its dpkg database and path resolution inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lists: dict[str, list[str]] = {}
        self._owner: dict[str, str] | None = None

    def listing(self, deb: str) -> list[str]:
        if deb not in self._lists:
            info = self.root / "var/lib/dpkg/info"
            candidates = [info / f"{deb}.list", info / f"{deb}:amd64.list"]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise DebianError(f"Debian package {deb} is not installed in {self.root}")
            self._lists[deb] = [line for line in found.read_text().splitlines() if line and line != "/."]
        return self._lists[deb]

    def version(self, deb: str) -> str:
        out = subprocess.run(
            ["dpkg-query", f"--admindir={self.root}/var/lib/dpkg", "-W", "-f", "${Version}", deb],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return out.strip()

    def resolve(self, path: str) -> str:
        """The path with every symlink inside the root followed (absolute links stay inside)."""
        parts = [p for p in path.split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            if part == ".":
                continue
            candidate = "/" + "/".join([*resolved, part])
            host = self.root / candidate.lstrip("/")
            if host.is_symlink():
                hops += 1
                if hops > 40:
                    raise DebianError(f"symlink loop at {candidate}")
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            resolved.append(part)
        return "/" + "/".join(resolved)

    def host(self, path: str) -> Path:
        return self.root / self.resolve(path).lstrip("/")

    def owner(self, path: str) -> str | None:
        """The Debian package that ships the file at path (after resolving links)."""
        if self._owner is None:
            self._owner = {}
            for listing in sorted((self.root / "var/lib/dpkg/info").glob("*.list")):
                deb = listing.stem.split(":")[0]
                for line in listing.read_text().splitlines():
                    if not line or line == "/.":
                        continue
                    host = self.root / line.lstrip("/")
                    if host.is_symlink() or not host.is_file():
                        continue
                    self._owner.setdefault(self.resolve(line), deb)
        return self._owner.get(self.resolve(path))


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def needed(path: Path) -> list[str]:
    """DT_NEEDED of a 64-bit little-endian ELF file: the libraries it links directly."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise DebianError(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                names.append(data[strtab + value : end].decode())
    return names


# Priorities of a .note.dlopen entry that the stand-in ships (the "suggested" ones are
# optional features a QEMU guest does without).
DLOPEN_PRIORITIES = ("required", "recommended")
NT_FDO_DLOPEN = 0x407C0C0A


def _sections(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, type, offset, size) of each section of a 64-bit little-endian ELF file."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4] if shstrndx < shnum else 0
    result = []
    for name, kind, _flags, _addr, offset, size, _link, _info, _align, _entsize in headers:
        end = data.index(b"\0", strtab + name)
        result.append((data[strtab + name : end].decode(errors="replace"), kind, offset, size))
    return result


def dlopen_sonames(path: Path, priorities: Iterable[str] = DLOPEN_PRIORITIES) -> list[list[str]]:
    """The libraries an ELF file declares it may dlopen (systemd's ``.note.dlopen``, the
    FDO ELF dlopen metadata): for each entry of a wanted priority, its sonames in order
    of preference."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    wanted = set(priorities)
    found: list[list[str]] = []
    for name, _kind, offset, size in _sections(data):
        if name != ".note.dlopen":
            continue
        pos = offset
        while pos + 12 <= offset + size:
            namesz, descsz, kind = struct.unpack_from("<III", data, pos)
            pos += 12
            owner = data[pos : pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos : pos + descsz].rstrip(b"\0")
            pos += (descsz + 3) & ~3
            if owner != b"FDO" or kind != NT_FDO_DLOPEN:
                continue
            for entry in json.loads(desc):
                if entry.get("priority", "recommended") in wanted:
                    found.append(list(entry["soname"]))
    return found


def ldd(root: Root, paths: Iterable[str]) -> dict[str, dict[str, str]]:
    """For each ELF file (a path inside the root): library name -> path inside the root."""
    todo = sorted(set(paths))
    result: dict[str, dict[str, str]] = {}
    for path in todo:
        # One file per call: ldd prints no header for a single file, and a failure
        # (a static binary) is then clearly this file's.
        proc = subprocess.run(
            [CHROOT, str(root.root), "/usr/bin/ldd", path],
            capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )  # fmt: skip
        libs = result.setdefault(path, {})
        if proc.returncode != 0:
            if "not a dynamic executable" in proc.stdout + proc.stderr or "statically linked" in proc.stdout:
                continue
            raise DebianError(f"ldd {path} failed: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            words = line.split()
            if "=>" in words:
                name, target = words[0], words[2]
                if target == "not":
                    # A private library loaded by a program whose RUNPATH names this
                    # directory (libsystemd-core next to libsystemd-shared).
                    sibling = posixpath.join(posixpath.dirname(path), name)
                    if not (root.root / sibling.lstrip("/")).exists():
                        raise DebianError(f"ldd: {name} not found (needed by {path})")
                    target = sibling
                libs[name] = target
            elif words and words[0].startswith("/"):
                libs[posixpath.basename(words[0])] = words[0]
    return result


def _merged(path: str) -> str:
    """Debian 13's usr-merged spelling: dpkg lists some files under /lib, /bin, /sbin."""
    for top in ("/lib/", "/bin/", "/sbin/", "/lib64/"):
        if path.startswith(top):
            return "/usr" + path
    return path


def _select(root: Root, part: Part) -> list[str]:
    """The Debian paths of part's files, in dpkg's spelling; patterns match either spelling."""
    listed = [path for deb in part.debs for path in root.listing(deb)]
    chosen: list[str] = []
    for pattern in part.files:
        # "a|b": either; each pattern must match at least one file.
        alternatives = [_merged(p) for p in pattern.split("|")]
        hits = [path for path in listed if any(fnmatch.fnmatchcase(_merged(path), a) for a in alternatives)]
        if not hits:
            raise DebianError(f"{part.name}: nothing in {', '.join(part.debs)} matches {pattern}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _pkgver(debian_version: str) -> str:
    upstream = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return re.sub(r"[^A-Za-z0-9._]", "_", upstream)


def _link_target(root: Root, debian_path: str, dest: str) -> str:
    """A symlink's target, moved to Arch's layout and made relative to the link."""
    host = root.root / debian_path.lstrip("/")
    target = os.readlink(host)
    absolute = target if target.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(debian_path), target))
    return posixpath.relpath(arch_path(absolute), posixpath.dirname(dest))


class _Harvest:
    """The state of one cut: packages by name, who owns each Arch path, the ELF files."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.packages: dict[str, Package] = {}
        self.owner_of_dest: dict[str, str] = {}
        self.elves: dict[str, str] = {}  # path in the root of each ELF file -> its package

    def place(self, pkg: Package, entry: Entry) -> None:
        other = self.owner_of_dest.get(entry.dest)
        if other is not None and other != pkg.name:
            raise DebianError(f"{entry.dest} would be in both {other} and {pkg.name}")
        # The usr merge folds /bin/ip and its link /sbin/ip onto one path: the file wins.
        if other is not None and entry.kind == "l" and pkg.entries[entry.dest].kind == "f":
            return
        self.owner_of_dest[entry.dest] = pkg.name
        pkg.add(entry)

    def cut(self, part: Part) -> None:
        root = self.root
        pkg = Package(part.name, part.desc, _pkgver(root.version(part.debs[0])), depends=set(part.depends))
        self.packages[part.name] = pkg
        for path in _select(root, part):
            host = root.root / path.lstrip("/")
            dest = arch_path(path)
            if host.is_symlink():
                self.place(pkg, Entry("l", 0o777, dest, _link_target(root, path, dest)))
            elif host.is_file():
                real = root.host(path)
                mode = MODES.get(dest, real.stat().st_mode & 0o7777)
                if mode & 0o2000 and real.stat().st_gid != 0:
                    mode &= ~0o2000  # a setgid group that Arch does not have
                text = None
                if dest.startswith(_UNIT_DIRS) and not dest.endswith(".conf"):
                    original = real.read_text()
                    text = rewrite_unit(original) if rewrite_unit(original) != original else None
                self.place(pkg, Entry("f", mode, dest, str(real), text))
                if is_elf(real):
                    self.elves[path] = part.name
        # Dropped units leave .wants links that point nowhere: keep only links whose
        # target is in this package.
        for dest, entry in list(pkg.entries.items()):
            if entry.kind == "l" and ".target.wants/" in dest:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(dest), entry.source))
                if target not in pkg.entries:
                    del pkg.entries[dest]
                    del self.owner_of_dest[dest]

    def add_libraries(self) -> None:
        """The shared libraries of every ELF file, to a fixed point (libraries need libraries),
        with the ones they dlopen as if linked directly (a package depends on them)."""
        scanned: set[str] = set()
        while todo := sorted(set(self.elves) - scanned):
            scanned.update(todo)
            for path, libs in ldd(self.root, todo).items():
                direct = set(needed(self.root.host(path)))
                for name, lib in libs.items():
                    self._add_library(path, name, lib, direct)
                for sonames in dlopen_sonames(self.root.host(path)):
                    found = self._find_library(sonames)
                    if found is None:
                        raise DebianError(f"{path} dlopens one of {', '.join(sonames)}: none is in the root")
                    self._add_library(path, posixpath.basename(found), found, {posixpath.basename(found)})

    def _find_library(self, sonames: list[str]) -> str | None:
        """The first of the sonames found in the root's library directories (a path inside it)."""
        for soname in sonames:
            for libdir in LIBDIRS:
                candidate = f"{libdir}/{soname}"
                if (self.root.root / candidate.lstrip("/")).exists():
                    return candidate
        return None

    def _add_library(self, user_path: str, name: str, lib: str, direct: set[str]) -> None:
        root = self.root
        deb = root.owner(lib)
        if deb is None:
            raise DebianError(f"no Debian package owns {lib} (needed by {user_path})")
        arch = LIBRARIES.get(deb)
        if arch is None:
            raise DebianError(f"{user_path} needs {lib} from {deb}: add {deb} to LIBRARIES")
        user = self.packages[self.elves[user_path]]
        # Packages depend on what their files link directly, as on Arch.
        if arch != user.name and name in direct:
            user.depends.add(arch)
        libdir = posixpath.dirname(lib)
        public = libdir in LIBDIRS or lib.startswith("/lib64/")
        dest = f"/usr/lib/{name}" if public else arch_path(posixpath.join(libdir, name))
        if dest in self.owner_of_dest:
            return
        if arch not in self.packages:
            desc = LIBRARY_DESCRIPTIONS.get(arch, f"{arch} shared libraries (Debian 13 build)")
            self.packages[arch] = Package(arch, desc, _pkgver(root.version(deb)))
        # Stored under the name the loader looks for (the soname), not the versioned file name.
        libpath = root.resolve(lib)
        self.place(self.packages[arch], Entry("f", 0o755, dest, str(root.root / libpath.lstrip("/"))))
        self.elves[libpath] = arch


def harvest(root_dir: Path) -> dict[str, Package]:
    """The packages cut from the Debian root, by Arch package name."""
    cut = _Harvest(Root(root_dir))
    for part in PARTS:
        cut.cut(part)
    cut.add_libraries()
    # Libraries in multiarch subdirectories (systemd's private ones, PAM modules) are
    # found there by RUNPATH or a compiled-in path: link the old place to the new one.
    for link, (name, target) in COMPAT_LINKS.items():
        cut.place(cut.packages[name], Entry("l", 0o777, link, target))
    _check_links(cut.packages)
    return cut.packages


def _check_links(packages: dict[str, Package]) -> None:
    """Every symlink points at a file or directory of some package."""
    dests = {dest for pkg in packages.values() for dest in pkg.entries}
    for pkg in packages.values():
        for entry in pkg.entries.values():
            if entry.kind != "l":
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(entry.dest), entry.source))
            if target not in dests and not any(d.startswith(target + "/") for d in dests):
                raise DebianError(f"{pkg.name}: {entry.dest} -> {entry.source} points at nothing packaged")


def busybox_shadowed(packages: dict[str, Package]) -> list[str]:
    """Names in /usr/bin that the Debian-built packages provide: busybox must not link them."""
    return sorted(
        {e.dest.rsplit("/", 1)[1] for p in packages.values() for e in p.entries.values() if e.dest.startswith("/usr/bin/")}
    )
