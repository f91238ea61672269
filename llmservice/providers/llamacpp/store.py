"""Local GGUF files in the models cache dir: pull (resumable, sha256-verified), list, remove.

A download goes to NAME.partial; when that exists, the next pull asks for the rest with
an HTTP Range request (a server that answers 200 instead sends it all again). The file
gets its final name only once whole and, when a sha256 was given, verified: a mismatch
deletes it and says so.

Every hop of a download, redirects included, is vetted by the pull's URL policy before it
connects. What arrives must be a GGUF: its magic and header version are checked as the
first bytes come (a file too short for them fails once whole); anything else is deleted,
partial download and all.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from llmservice.kernel.url_policy import UrlPolicy

Progress = Callable[[int, int | None], None]  # bytes so far, total when known
_BLOCK = 1 << 20
# A GGUF begins: magic, version, tensor count, metadata key count (little-endian).
_GGUF = struct.Struct("<4sIQQ")
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # what llama.cpp reads: it refuses version 1 and any newer than 3


class StoreError(Exception):
    """A pull, list or remove that could not be done; the message says why."""


class DownloadFailed(StoreError):
    """The server could not be reached, answered with an error, or the download stopped."""


class NotGguf(StoreError):
    """What the URL holds is not a GGUF model; nothing of it was kept."""


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    path: Path
    size_bytes: int


def pull(
    url: str,
    models_dir: Path,
    *,
    urls: UrlPolicy,
    sha256: str = "",
    name: str = "",
    progress: Progress | None = None,
) -> Path:
    """Download `url` into `models_dir` (resuming a partial download) and return its path.

    `urls` vets each request before it connects (the kernel's errors say why one is refused)."""
    target = models_dir / check_name(name or _name_from(url))
    if target.exists():
        raise StoreError(f"{target.name} is already in {models_dir}; remove it first to pull it again")
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")

    def vet(request: httpx.Request) -> None:  # httpx calls it for every hop, before it connects
        urls.check_blocking(str(request.url), "source")

    hooks = {"request": [vet]}
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0), event_hooks=hooks) as http:
        try:
            digest = _download(http, url, partial, progress or (lambda done, total: None))
        except NotGguf:
            partial.unlink(missing_ok=True)  # not a model: no part of it is kept, to resume or else
            raise
    if sha256 and digest != sha256.lower():
        partial.unlink()
        raise StoreError(
            f"sha256 mismatch for {target.name}: expected {sha256.lower()}, got {digest}; "
            "the download was deleted"
        )
    partial.replace(target)
    return target


def _download(http: httpx.Client, url: str, partial: Path, progress: Progress) -> str:
    """Fetch into `partial`, from where it stopped; the SHA-256 of the whole file."""
    have = partial.stat().st_size if partial.exists() else 0
    head = _head(partial) if have else b""
    _check_gguf(url, head)  # a partial download that began otherwise is no GGUF: ask for no more
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and have:  # nothing left to send: it was whole
                _check_gguf(url, head, whole=True)
                return _sha256(partial)
            if response.status_code not in (200, 206):
                raise DownloadFailed(f"GET {url}: HTTP {response.status_code}")
            resumed = response.status_code == 206
            head = head if resumed else b""
            digest = _sha256_state(partial) if resumed else hashlib.sha256()
            done = have if resumed else 0
            length = response.headers.get("content-length")
            total = done + int(length) if length and length.isdigit() else None
            with partial.open("ab" if resumed else "wb") as out:
                # as it arrives: a chunk size would hold back what came before a cut
                for block in response.iter_bytes():
                    if len(head) < _GGUF.size:  # refused at its first bytes, not after gigabytes
                        head += block[: _GGUF.size - len(head)]
                        _check_gguf(url, head)
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    progress(done, total)
    except httpx.HTTPError as exc:
        raise DownloadFailed(
            f"download of {url} stopped ({type(exc).__name__}); pull again to resume from {partial.name}"
        ) from None
    _check_gguf(url, head, whole=True)
    return digest.hexdigest()


def _check_gguf(url: str, head: bytes, *, whole: bool = False) -> None:
    """Raise NotGguf unless `head`, a file's first bytes so far (all of it, if `whole`), can
    begin a GGUF that llama.cpp reads: its magic, then a version it knows."""
    if head[: len(_MAGIC)] != _MAGIC[: len(head)]:
        raise NotGguf(f"{url} is not a GGUF file: it begins {head[:4]!r}, not {_MAGIC!r}; nothing was kept")
    if len(head) >= _GGUF.size:
        version = _GGUF.unpack_from(head)[1]
        if version not in _VERSIONS:
            raise NotGguf(
                f"{url} is GGUF version {version}; llama.cpp reads versions "
                f"{' and '.join(map(str, _VERSIONS))}; nothing was kept"
            )
    elif whole:
        raise NotGguf(f"{url} is {len(head)} bytes: too short for a GGUF header; nothing was kept")


def _head(path: Path) -> bytes:
    with path.open("rb") as src:
        return src.read(_GGUF.size)


def list_models(models_dir: Path) -> list[StoredModel]:
    """The whole GGUF files in `models_dir` (not partial downloads), by name."""
    if not models_dir.is_dir():
        return []
    return [
        StoredModel(p.name, p, p.stat().st_size) for p in sorted(models_dir.glob("*.gguf")) if p.is_file()
    ]


def remove(models_dir: Path, name: str) -> Path:
    """Delete a model (and any partial download and marker of it); its path."""
    target = models_dir / check_name(name)
    leftovers = [target.with_name(target.name + suffix) for suffix in (".partial", ".verified")]
    if not target.exists() and not any(p.exists() for p in leftovers):
        known = ", ".join(m.name for m in list_models(models_dir)) or "none"
        raise StoreError(f"no model {name!r} in {models_dir}; there: {known}")
    for path in (target, *leftovers):
        path.unlink(missing_ok=True)
    return target


def check_name(name: str) -> str:
    """A plain file name ending in .gguf: no directories, nothing hidden."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".gguf"):
        raise StoreError(f"model name {name!r}: give a plain file name ending in .gguf (--name)")
    return name


def _name_from(url: str) -> str:
    return unquote(Path(urlparse(url).path).name)


def _sha256_state(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
    return digest


def _sha256(path: Path) -> str:
    return _sha256_state(path).hexdigest()
