"""Several worker processes behind one gRPC port and one HTTP port (`server.workers`).

Python runs one request at a time per process, so one process uses one core. With
`server.workers = N` (N > 1) `llmservice serve` becomes a supervisor (`workers.supervisor`)
that starts N copies of the service. Each listens on the same gRPC and HTTP ports with
SO_REUSEPORT, and the kernel spreads connections over them. Remote providers run in
every worker. The local engine (llama.cpp) loads its model once, in worker 0, which also
listens on a private Unix socket; in the other workers the local provider is a `grpc`
provider forwarding to that socket (providers.grpc_backend), so a local model costs one
copy of its memory and one scheduler decides its priorities.

What a process keeps in memory is per worker, so several workers need it shared:
sessions, history, stored responses and rate limits in Redis (`cache`), and no
ProviderRegistryService (a registration would reach one worker only).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from llmservice.kernel.settings import SettingsError
from llmservice.service.settings import Settings

KEY_ENV = "_LLMSERVICE_WORKER_KEY"  # the workers' key to the engine worker (not a setting)
MAX_AUTO = 16  # auto never starts more workers than this


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor tells one worker: its index, and where the engine worker listens
    privately (`engine`: a unix: target; "" when the default provider is not local)."""

    index: int
    engine: str = ""

    @property
    def runs_engine(self) -> bool:
        return self.index == 0

    @property
    def forwards_engine(self) -> bool:
        """Whether this worker reaches the local engine through worker 0."""
        return bool(self.engine) and not self.runs_engine

    @property
    def key(self) -> str:
        """The key a worker presents to the engine worker, and the engine worker accepts."""
        return os.environ.get(KEY_ENV, "")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerRole:
        return cls(**json.loads(text))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(settings: Settings) -> tuple[int, str]:
    """How many workers to run and why; SettingsError when several cannot keep what they take."""
    asked = settings.server.workers
    shared = settings.cache.uses_redis
    registry_asked = settings.registry.enabled and "enabled" in settings.registry.model_fields_set
    if asked == 0:
        if not shared:
            return 1, "auto: sessions, history and limits are in this process's memory (no cache.redis_url)"
        if settings.registry.enabled:  # several would take it away from whoever relies on it
            return 1, "auto: the provider registry is on (registry.enabled), which one worker serves"
        n = min(usable_cores(), MAX_AUTO)
        return n, f"auto: one per core ({n})"
    if asked > 1:
        if not shared:
            raise SettingsError(
                f"server.workers = {asked}: sessions, history, stored responses and rate limits would be "
                "kept apart in each worker; set cache.redis_url (cache.type = redis) to share them, "
                "or run one worker"
            )
        if registry_asked:
            raise SettingsError(
                f"server.workers = {asked}: a provider registration (registry.enabled) would reach one "
                "worker only; set registry.enabled = false or run one worker"
            )
    return asked, "server.workers"
