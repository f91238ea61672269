"""Pulls of local GGUF models as a stream of progress, from a URL or a Hugging Face repo.

`hf://OWNER/REPO/PATH/FILE.gguf[@REVISION]` is resolved by `huggingface_hub` (the optional
`hf` extra), which honours HF_ENDPOINT and the caller's Hugging Face token: it gives the
file's resolve URL and, for files stored in LFS, their sha256, which then verifies the
download when the caller gave none. The download itself is `store.pull`'s: resumable,
into llamacpp.cache_dir, where the provider serves it under its file name. Each of its
hops must pass the pull's URL policy (llamacpp.pull_allowed_hosts), and what it fetches
must be a GGUF.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llmservice.kernel.errors import InvalidRequest, Unavailable
from llmservice.kernel.types import PullProgress
from llmservice.kernel.url_policy import UrlPolicy
from llmservice.providers.llamacpp import store

HF_SCHEME = "hf://"
_STEP = 1 << 20  # progress at most once a MB


@dataclass(frozen=True, slots=True)
class HfFile:
    repo_id: str
    filename: str
    revision: str = "main"


def parse_hf(source: str) -> HfFile | None:
    """The repo file an hf:// source names; None for any other source."""
    if not source.startswith(HF_SCHEME):
        return None
    rest, _, revision = source.removeprefix(HF_SCHEME).partition("@")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise store.StoreError(f"{source!r}: expected hf://OWNER/REPO/FILE.gguf, optionally @REVISION")
    return HfFile(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or "main")


@dataclass(frozen=True, slots=True)
class Resolved:
    url: str
    sha256: str  # expected; "" when unknown
    name: str  # file name to store it under; "" for the URL's


def resolve(source: str, sha256: str = "") -> Resolved:
    """Where to download `source` from, and the sha256 to expect (blocking: it may ask the Hub)."""
    hf = parse_hf(source)
    if hf is None:
        return Resolved(source, sha256, "")
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise store.StoreError("hf:// pulls need huggingface_hub: pip install 'llmservice[hf]'") from None
    url = hf_hub_url(hf.repo_id, hf.filename, revision=hf.revision)
    try:
        meta = get_hf_file_metadata(url)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no answer"
        raise store.DownloadFailed(f"{source}: the Hub answered {status} for {url}") from None
    except OSError as exc:  # no network, refused, timed out
        raise store.DownloadFailed(f"{source}: the Hub is not reachable ({type(exc).__name__})") from None
    etag = (meta.etag or "").lower()
    lfs_sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else ""
    return Resolved(url, sha256 or lfs_sha, PurePosixPath(hf.filename).name)


async def pulling(
    source: str, models_dir: Path, *, urls: UrlPolicy, sha256: str = "", name: str = ""
) -> AsyncGenerator[PullProgress]:
    """Pull `source` into `models_dir`, each request vetted by `urls`: "resolving",
    "downloading" steps, then "success" naming the model. Leaving early stops the download
    (the partial file stays, to resume)."""
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()
    stop = threading.Event()
    shown = [-_STEP]

    def progress(done: int, total: int | None) -> None:
        if stop.is_set():
            raise _Stopped
        if done - shown[0] >= _STEP or done == total:
            shown[0] = done
            loop.call_soon_threadsafe(steps.put_nowait, PullProgress("downloading", "", total or 0, done))

    def run() -> None:
        try:
            found = resolve(source, sha256)
            path = store.pull(
                found.url,
                models_dir,
                urls=urls,
                sha256=found.sha256,
                name=name or found.name,
                progress=progress,
            )
            digest = f"sha256:{found.sha256}" if found.sha256 else ""
            size = path.stat().st_size
            done = PullProgress("success", digest, size, size, model=path.stem)
            loop.call_soon_threadsafe(steps.put_nowait, done)
        except _Stopped:
            pass
        except BaseException as exc:
            loop.call_soon_threadsafe(steps.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(steps.put_nowait, None)

    yield PullProgress("resolving")
    worker = threading.Thread(target=run, name="llamacpp-pull", daemon=True)
    worker.start()
    try:
        while (step := await steps.get()) is not None:
            if isinstance(step, BaseException):
                raise _domain_error(step)
            yield step
    finally:
        stop.set()


class _Stopped(Exception):
    """The caller left: the download stops at its next block."""


def _domain_error(exc: BaseException) -> BaseException:
    if isinstance(exc, store.DownloadFailed):
        return Unavailable(str(exc))
    if isinstance(exc, store.StoreError):
        return InvalidRequest("source", str(exc))
    return exc
