"""`llmservice models pull|list|rm` against a local HTTP server that honours Range and can cut
a download midway: resumed where it stopped, verified by sha256, a corrupted file rejected, a
file that is no GGUF refused at its first bytes, and every hop held to the URL policy."""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmservice.cli import main
from llmservice.kernel.errors import InvalidRequest, PermissionDenied
from llmservice.providers.llamacpp import store
from llmservice.providers.llamacpp.settings import LlamaCppSettings

HEADER = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # version 3, no tensors, no metadata
BLOB = HEADER + bytes(range(256)) * 4096 * 3  # 3 MB: several blocks
SHA = hashlib.sha256(BLOB).hexdigest()
LOCAL = LlamaCppSettings(pull_allowed_hosts=["127.0.0.1"]).pull_policy()  # the test servers' host


@dataclass
class Files:
    url: str
    cut_next: int | None = None  # the next GET sends this many bytes of its body, then hangs up
    ranges: list[str | None] = field(default_factory=list)
    body: bytes = BLOB
    redirect_to: str = ""  # where a GET of /moved.gguf is sent


@pytest.fixture
def files() -> Iterator[Files]:
    state = Files("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved.gguf":
                self.send_response(302)
                self.send_header("Location", state.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not self.path.endswith(".gguf"):
                self.send_error(404)
                return
            wanted = self.headers.get("Range")
            state.ranges.append(wanted)
            start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
            if start >= len(state.body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            part = state.body[start:]
            self.send_response(206 if wanted else 200)
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}")
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            cut, state.cut_next = state.cut_next, None
            self.wfile.write(part if cut is None else part[:cut])
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    yield from serving(state, Handler, "127.0.0.1")


def serving(state: Files, handler: type[BaseHTTPRequestHandler], host: str) -> Iterator[Files]:
    server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://{host}:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[Files]:
    """A server on 127.0.0.2, loopback too but not allowed by LOCAL: it counts the GETs it gets."""
    state = Files("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.ranges.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)

        def log_message(self, format: str, *args: object) -> None:
            pass

    yield from serving(state, Handler, "127.0.0.2")


def test_an_interrupted_download_resumes_where_it_stopped(files: Files, tmp_path: Path) -> None:
    files.cut_next = 1_000_000
    with pytest.raises(store.StoreError, match="pull again to resume"):
        store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA)
    assert (tmp_path / "m.gguf.partial").stat().st_size == 1_000_000
    seen: list[tuple[int, int | None]] = []
    path = store.pull(
        f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA, progress=lambda d, t: seen.append((d, t))
    )
    assert files.ranges == [None, "bytes=1000000-"]
    assert path.read_bytes() == BLOB
    assert seen[-1] == (len(BLOB), len(BLOB))
    assert not (tmp_path / "m.gguf.partial").exists()


def test_a_corrupted_file_is_rejected_and_deleted(files: Files, tmp_path: Path) -> None:
    files.body = BLOB[:-1] + b"\x00"
    with pytest.raises(store.StoreError, match="sha256 mismatch") as raised:
        store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA)
    assert "deleted" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_partial_is_caught_after_resuming(files: Files, tmp_path: Path) -> None:
    (tmp_path / "m.gguf.partial").write_bytes(HEADER + b"\xff" * 1000)  # a GGUF, not this one
    with pytest.raises(store.StoreError, match="sha256 mismatch"):
        store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_a_whole_partial_is_verified_without_downloading_again(files: Files, tmp_path: Path) -> None:
    (tmp_path / "m.gguf.partial").write_bytes(BLOB)
    assert store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA).read_bytes() == BLOB
    assert files.ranges == [f"bytes={len(BLOB)}-"]


def test_a_file_that_is_no_gguf_is_refused_at_its_first_bytes_and_nothing_is_kept(
    files: Files, tmp_path: Path
) -> None:
    files.body = b"\0" * len(BLOB)
    seen: list[tuple[int, int | None]] = []
    with pytest.raises(store.NotGguf, match=r"not a GGUF file: it begins b'\\x00"):
        store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, progress=lambda d, t: seen.append((d, t)))
    assert seen == []  # refused before its first block was counted, let alone the rest
    for body, problem in [
        (b"not a gguf file", "not a GGUF file: it begins b'not '"),  # 15 bytes
        (
            b"GGUF" + struct.pack("<IQQ", 1, 0, 0) + bytes(1000),
            "GGUF version 1; llama.cpp reads versions 2 and 3",
        ),
        (HEADER[:10], "10 bytes: too short for a GGUF header"),
    ]:
        files.body = body
        with pytest.raises(store.NotGguf, match=problem):
            store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL)
        assert list(tmp_path.iterdir()) == []


def test_a_partial_download_that_is_no_gguf_is_deleted_without_asking_for_the_rest(
    files: Files, tmp_path: Path
) -> None:
    (tmp_path / "m.gguf.partial").write_bytes(b"\xff" * 1000)
    with pytest.raises(store.NotGguf, match="not a GGUF file"):
        store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, sha256=SHA)
    assert files.ranges == []
    assert list(tmp_path.iterdir()) == []


def test_every_hop_of_a_download_is_held_to_the_url_policy(
    files: Files, elsewhere: Files, tmp_path: Path
) -> None:
    refused = (
        r"127\.0\.0\.2 is a loopback, private or reserved address; allow it with llamacpp\.pull_allowed_hosts"
    )
    with pytest.raises(PermissionDenied, match=refused):
        store.pull(f"{elsewhere.url}/m.gguf", tmp_path, urls=LOCAL)
    files.redirect_to = f"{elsewhere.url}/m.gguf"
    with pytest.raises(PermissionDenied, match=refused):
        store.pull(f"{files.url}/moved.gguf", tmp_path, urls=LOCAL)
    assert elsewhere.ranges == []  # neither connected
    files.redirect_to = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(PermissionDenied, match="metadata"):
        store.pull(f"{files.url}/moved.gguf", tmp_path, urls=LOCAL)
    assert list(tmp_path.iterdir()) == []
    files.redirect_to = f"{elsewhere.url}/m.gguf"
    loopback = LlamaCppSettings(pull_allowed_hosts=["127.0.0.0/8"]).pull_policy()
    assert store.pull(f"{files.url}/moved.gguf", tmp_path, urls=loopback).read_bytes() == BLOB
    assert elsewhere.ranges == ["/m.gguf"]


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/m.gguf", "http://[fd00:ec2::254]/m.gguf", "http://metadata/m.gguf"]
)
def test_metadata_endpoints_are_refused_before_connecting_whatever_is_allowed(
    url: str, tmp_path: Path
) -> None:
    # Refused by the policy, so before a connection: one tried would fail otherwise (DownloadFailed).
    anything = LlamaCppSettings(pull_allowed_hosts=["0.0.0.0/0", "::/0", "metadata"]).pull_policy()
    with pytest.raises(PermissionDenied, match="metadata endpoint"):
        store.pull(url, tmp_path, urls=anything)
    assert list(tmp_path.iterdir()) == []


def test_only_http_urls_are_pulled(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not an http:// or https:// URL"):
        store.pull("file:///etc/m.gguf", tmp_path, urls=LOCAL)


def test_an_http_error_and_a_bad_name_say_so(files: Files, tmp_path: Path) -> None:
    with pytest.raises(store.StoreError, match="HTTP 404"):
        store.pull(f"{files.url}/missing.txt", tmp_path, urls=LOCAL, name="x.gguf")
    for name in ("../x.gguf", "x.bin", ".hidden.gguf"):
        with pytest.raises(store.StoreError, match="plain file name"):
            store.pull(f"{files.url}/m.gguf", tmp_path, urls=LOCAL, name=name)


def test_the_cli_pulls_lists_and_removes(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--set", f"llamacpp.cache_dir={tmp_path}", "--set", 'llamacpp.pull_allowed_hosts=["127.0.0.1"]']
    url = f"{files.url}/m.gguf"
    assert main(["models", *where, "pull", url, "--sha256", SHA, "--name", "mine.gguf"]) == 0
    assert "sha256 verified" in capsys.readouterr().err
    assert main(["models", *where, "pull", url, "--name", "mine.gguf"]) == 1
    assert "already" in capsys.readouterr().err
    assert main(["models", *where, "list"]) == 0
    assert capsys.readouterr().out == f"mine.gguf\t{len(BLOB)}\t{tmp_path / 'mine.gguf'}\n"
    assert main(["models", *where, "pull", url, "--sha256", "0" * 64, "--name", "bad.gguf"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(["models", *where, "rm", "mine.gguf"]) == 0
    assert main(["models", *where, "rm", "mine.gguf"]) == 1
    assert list(tmp_path.iterdir()) == []
