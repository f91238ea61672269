"""`llmservice models pull|list|rm` against a local HTTP server that honours Range and can cut
a download midway: resumed where it stopped, verified by sha256, a corrupted file rejected."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmservice.cli import main
from llmservice.providers.llamacpp import store

BLOB = bytes(range(256)) * 4096 * 3  # 3 MB: several blocks
SHA = hashlib.sha256(BLOB).hexdigest()


@dataclass
class Files:
    url: str
    cut_next: int | None = None  # the next GET sends this many bytes of its body, then hangs up
    ranges: list[str | None] = field(default_factory=list)
    body: bytes = BLOB


@pytest.fixture
def files() -> Iterator[Files]:
    state = Files("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_an_interrupted_download_resumes_where_it_stopped(files: Files, tmp_path: Path) -> None:
    files.cut_next = 1_000_000
    with pytest.raises(store.StoreError, match="pull again to resume"):
        store.pull(f"{files.url}/m.gguf", tmp_path, sha256=SHA)
    assert (tmp_path / "m.gguf.partial").stat().st_size == 1_000_000
    seen: list[tuple[int, int | None]] = []
    path = store.pull(f"{files.url}/m.gguf", tmp_path, sha256=SHA, progress=lambda d, t: seen.append((d, t)))
    assert files.ranges == [None, "bytes=1000000-"]
    assert path.read_bytes() == BLOB
    assert seen[-1] == (len(BLOB), len(BLOB))
    assert not (tmp_path / "m.gguf.partial").exists()


def test_a_corrupted_file_is_rejected_and_deleted(files: Files, tmp_path: Path) -> None:
    files.body = BLOB[:-1] + b"\x00"
    with pytest.raises(store.StoreError, match="sha256 mismatch") as raised:
        store.pull(f"{files.url}/m.gguf", tmp_path, sha256=SHA)
    assert "deleted" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_partial_is_caught_after_resuming(files: Files, tmp_path: Path) -> None:
    (tmp_path / "m.gguf.partial").write_bytes(b"\xff" * 1000)  # not the file's first bytes
    with pytest.raises(store.StoreError, match="sha256 mismatch"):
        store.pull(f"{files.url}/m.gguf", tmp_path, sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_a_whole_partial_is_verified_without_downloading_again(files: Files, tmp_path: Path) -> None:
    (tmp_path / "m.gguf.partial").write_bytes(BLOB)
    assert store.pull(f"{files.url}/m.gguf", tmp_path, sha256=SHA).read_bytes() == BLOB
    assert files.ranges == [f"bytes={len(BLOB)}-"]


def test_an_http_error_and_a_bad_name_say_so(files: Files, tmp_path: Path) -> None:
    with pytest.raises(store.StoreError, match="HTTP 404"):
        store.pull(f"{files.url}/missing.txt", tmp_path, name="x.gguf")
    for name in ("../x.gguf", "x.bin", ".hidden.gguf"):
        with pytest.raises(store.StoreError, match="plain file name"):
            store.pull(f"{files.url}/m.gguf", tmp_path, name=name)


def test_the_cli_pulls_lists_and_removes(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--set", f"llamacpp.cache_dir={tmp_path}"]
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
