"""`llmservice models pull hf://OWNER/REPO/FILE.gguf` through huggingface_hub, against a local
server speaking the Hub's resolve URLs (HF_ENDPOINT points the real client at it): the LFS
sha256 the Hub reports verifies the download."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmservice.providers.llamacpp import store
from llmservice.providers.llamacpp.pulling import HfFile, parse_hf

BLOB = b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(range(256)) * 64  # a GGUF's header, then bytes
SHA = hashlib.sha256(BLOB).hexdigest()


@dataclass
class Hub:
    url: str
    etag: str = SHA  # what the Hub says the file's sha256 is
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def hub() -> Iterator[Hub]:
    state = Hub("")

    class Handler(BaseHTTPRequestHandler):
        def _head(self) -> bool:
            self.path = self.path.split("?")[0]
            state.paths.append(f"{self.command} {self.path}")
            if self.path != "/owner/repo/resolve/main/sub/model-q4.gguf":
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            self.send_response(200)
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("X-Linked-Etag", f'"{state.etag}"')
            self.send_header("X-Linked-Size", str(len(BLOB)))
            self.send_header("ETag", '"not-the-sha"')
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            return True

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            if self._head():
                self.wfile.write(BLOB)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def pull(hub: Hub, tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [
        sys.executable,
        "-m",
        "llmservice",
        "models",
        "--set",
        f"llamacpp.cache_dir={tmp_path / 'models'}",
        "--set",
        'llamacpp.pull_allowed_hosts=["127.0.0.1"]',  # the local hub
    ]
    return subprocess.run(
        [*command, "pull", source], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_hub_file_is_pulled_and_verified_by_its_lfs_sha256(hub: Hub, tmp_path: Path) -> None:
    done = pull(hub, tmp_path, "hf://owner/repo/sub/model-q4.gguf")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "model-q4.gguf").read_bytes() == BLOB
    assert "sha256 verified" in done.stderr
    assert hub.paths[0] == "HEAD /owner/repo/resolve/main/sub/model-q4.gguf"


def test_a_file_that_does_not_match_the_hubs_sha256_is_deleted(hub: Hub, tmp_path: Path) -> None:
    hub.etag = "0" * 64
    done = pull(hub, tmp_path, "hf://owner/repo/sub/model-q4.gguf")
    assert done.returncode == 1
    assert "sha256 mismatch" in done.stderr
    assert store.list_models(tmp_path / "models") == []


def test_a_file_the_hub_does_not_have_says_so(hub: Hub, tmp_path: Path) -> None:
    done = pull(hub, tmp_path, "hf://owner/repo/missing.gguf@v2")
    assert done.returncode == 1
    assert "the Hub answered 404" in done.stderr
    assert hub.paths == ["HEAD /owner/repo/resolve/v2/missing.gguf"]


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        ("hf://o/r/f.gguf", HfFile("o/r", "f.gguf")),
        ("hf://o/r/dir/f.gguf@rev", HfFile("o/r", "dir/f.gguf", "rev")),
        ("https://example.test/f.gguf", None),
    ],
)
def test_hf_sources_parse(source: str, parsed: HfFile | None) -> None:
    assert parse_hf(source) == parsed


@pytest.mark.parametrize("source", ["hf://o/r", "hf://o//f.gguf", "hf://"])
def test_an_incomplete_hf_source_is_refused(source: str) -> None:
    with pytest.raises(store.StoreError, match=r"hf://OWNER/REPO/FILE\.gguf"):
        parse_hf(source)
