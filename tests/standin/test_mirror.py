"""The loopback mirror: what pacman's downloader needs, and the access log tests read.

No root, no VM: a throwaway tree in tmp_path, fetched with urllib.
"""

from __future__ import annotations

import email.message
import email.utils
import http.client
import os
import pathlib
import selectors
import subprocess
import sys
import urllib.error
import urllib.request
from typing import IO

import pytest

from tests.standin.mirror import Mirror, Request, load_log

ROOT = pathlib.Path(__file__).parents[2]
DB = "/core/os/x86_64/core.db.tar.gz"
DB_BYTES = bytes(range(256)) * 8  # 2048 bytes, not text


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    repodir = tmp_path / "root/core/os/x86_64"
    repodir.mkdir(parents=True)
    (repodir / "core.db.tar.gz").write_bytes(DB_BYTES)
    # As repo-add leaves it, and as mirrors publish it.
    (repodir / "core.db").symlink_to("core.db.tar.gz")
    (tmp_path / "secret").write_text("outside the root\n")
    (tmp_path / "root/escape").symlink_to(tmp_path / "secret")
    return tmp_path / "root"


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes, email.message.Message]:
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310 (loopback test URL)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def test_serves_a_database_and_logs_the_request(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, body, headers = fetch(m.url + DB)
        requests = m.requests()
    assert (status, body) == (200, DB_BYTES)
    assert headers["Content-Length"] == str(len(DB_BYTES))
    assert headers["Last-Modified"]
    assert requests == [Request("GET", DB, 200, len(DB_BYTES), None, "127.0.0.1", requests[0].time)]


def test_urls_for_host_and_guest(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        assert m.port > 0
        assert m.url == f"http://127.0.0.1:{m.port}"
        # QEMU user networking: the guest reaches the host's loopback at 10.0.2.2.
        assert m.guest_url == f"http://10.0.2.2:{m.port}"


def test_missing_paths_are_404_and_logged(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        for path in ("/core/os/x86_64/core.db.sig", "/extra/os/x86_64/extra.db", "/escape", "/core/../../secret"):
            status, _, _ = fetch(m.url + path)
            assert status == 404, path
        assert [(r.method, r.status) for r in m.requests()] == [("GET", 404)] * 4


def test_path_traversal_stays_inside_the_root(tree: pathlib.Path) -> None:
    # urllib normalises "..": send the raw request line.
    with Mirror(tree) as m:
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
        conn.request("GET", "/core/os/../../../secret")
        response = conn.getresponse()
        assert response.status == 404
        assert b"outside" not in response.read()
        conn.close()


def test_symlinks_inside_the_root_are_followed(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, body, _ = fetch(m.url + "/core/os/x86_64/core.db")
    assert (status, body) == (200, DB_BYTES)


def test_head_sends_headers_only(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, body, headers = fetch(m.url + DB, method="HEAD")
        (request,) = m.requests()
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(DB_BYTES)))
    assert (request.method, request.status, request.bytes) == ("HEAD", 200, 0)


def test_range_resumes_and_past_the_end_is_416(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, body, headers = fetch(m.url + DB, headers={"Range": "bytes=1000-"})
        assert (status, body) == (206, DB_BYTES[1000:])
        assert headers["Content-Range"] == f"bytes 1000-2047/{len(DB_BYTES)}"
        status, body, _ = fetch(m.url + DB, headers={"Range": "bytes=10-19"})
        assert (status, body) == (206, DB_BYTES[10:20])
        status, body, _ = fetch(m.url + DB, headers={"Range": "bytes=-5"})
        assert (status, body) == (206, DB_BYTES[-5:])
        status, _, headers = fetch(m.url + DB, headers={"Range": f"bytes={len(DB_BYTES)}-"})
        assert status == 416
        assert headers["Content-Range"] == f"bytes */{len(DB_BYTES)}"
        # Several ranges: ignored, the whole file.
        status, body, _ = fetch(m.url + DB, headers={"Range": "bytes=0-1,5-6"})
        assert (status, body) == (200, DB_BYTES)
        log = m.requests()
    assert [(r.status, r.bytes, r.range) for r in log] == [
        (206, 1048, "bytes=1000-"),
        (206, 10, "bytes=10-19"),
        (206, 5, "bytes=-5"),
        (416, 0, f"bytes={len(DB_BYTES)}-"),
        (200, len(DB_BYTES), "bytes=0-1,5-6"),
    ]


def test_if_modified_since_answers_304(tree: pathlib.Path) -> None:
    """pacman -Sy sends the local database's time: an unchanged one is not sent again."""
    mtime = (tree / DB.lstrip("/")).stat().st_mtime
    with Mirror(tree) as m:
        status, body, _ = fetch(m.url + DB, headers={"If-Modified-Since": email.utils.formatdate(mtime + 60, usegmt=True)})
        assert (status, body) == (304, b"")
        status, body, _ = fetch(m.url + DB, headers={"If-Modified-Since": email.utils.formatdate(mtime - 3600, usegmt=True)})
        assert (status, body) == (200, DB_BYTES)


def test_directories_redirect_then_list(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, body, _ = fetch(m.url + "/core/os/x86_64")  # urllib follows the 301
        assert status == 200
        assert b'href="core.db.tar.gz"' in body
        assert [r.status for r in m.requests()] == [301, 200]


def test_other_methods_are_refused_and_logged(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        status, _, _ = fetch(m.url + DB, method="POST")
        assert status == 501
        assert [(r.method, r.status) for r in m.requests()] == [("POST", 501)]


def test_log_file_holds_the_same_records(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "access.jsonl"
    with Mirror(tree, log=log) as m:
        fetch(m.url + DB)
        fetch(m.url + "/nothing")
        in_memory = m.requests()
    assert load_log(log) == in_memory
    assert [(r.path, r.status) for r in in_memory] == [(DB, 200), ("/nothing", 404)]


def test_stopped_mirror_refuses_connections(tree: pathlib.Path) -> None:
    with Mirror(tree) as m:
        url = m.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + DB, timeout=5)  # noqa: S310


def test_command_line_serves_a_directory(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "cli.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standin.mirror", str(tree), "--log", str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        url = readline(proc.stdout).strip()
        assert url.startswith("http://127.0.0.1:")
        assert "serving" in readline(proc.stderr)
        status, body, _ = fetch(url + DB)
        assert (status, body) == (200, DB_BYTES)
        # One line per request on stderr, once the answer is out.
        assert f'"GET {DB}" 200 {len(DB_BYTES)}' in readline(proc.stderr)
    finally:
        proc.terminate()  # SIGTERM: a clean stop, like Ctrl-C
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert [(r.path, r.status) for r in load_log(log)] == [(DB, 200)]


def readline(stream: IO[str], timeout: float = 10.0) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no line in {timeout}s")
    return stream.readline()
