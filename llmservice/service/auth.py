"""Who is calling and which models they may use: one policy for every surface.

Callers present an API key as gRPC metadata (`authorization: Bearer KEY`; the HTTP
shim forwards its own header unchanged). Keys are compared by SHA-256 digest in
constant time; config holds digests or names the variables that hold the keys. With
no principals configured the service runs in open local mode: everyone is `local`
and may use everything. A model a principal may not use looks absent (NOT_FOUND).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from llmservice.kernel.errors import Unauthenticated
from llmservice.service.settings import AuthSettings

METADATA_KEY = "authorization"


@dataclass(frozen=True)
class Principal:
    name: str
    models: tuple[str, ...] = ("*",)
    admin: bool = False  # may administer models (load, unload, pull, delete)

    def may_use(self, provider: str, model: str) -> bool:
        """Patterns match the model id, or `provider/model`."""
        return any(
            fnmatch.fnmatchcase(model, p) or fnmatch.fnmatchcase(f"{provider}/{model}", p)
            for p in self.models
        )


LOCAL = Principal("local", admin=True)  # open local mode: one operator, who may do everything


class AuthPolicy:
    def __init__(
        self, principals: dict[str, tuple[str, tuple[str, ...]]], admins: frozenset[str] = frozenset()
    ) -> None:
        """`principals`: name -> (hex SHA-256 of its key, model patterns); `admins`: names that
        may administer models."""
        self._by_digest = [
            (bytes.fromhex(digest), Principal(name, models, name in admins))
            for name, (digest, models) in principals.items()
        ]

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> AuthPolicy:
        return cls(
            {name: (p.key_digest(), tuple(p.models)) for name, p in settings.principals.items()},
            frozenset(name for name, p in settings.principals.items() if p.admin),
        )

    def admitting(self, name: str, key: str) -> AuthPolicy:
        """This policy and one more principal, who may use every model (not administer them):
        the other workers' key to the engine worker, when keys are required."""
        if self.open or not key:
            return self
        policy = AuthPolicy({})
        principal = Principal(name)
        policy._by_digest = [*self._by_digest, (hashlib.sha256(key.encode()).digest(), principal)]
        return policy

    @property
    def open(self) -> bool:
        return not self._by_digest

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """The caller behind the request's metadata; Unauthenticated if the key is missing or unknown."""
        if self.open:
            return LOCAL
        presented = next((v for k, v in metadata if k == METADATA_KEY), None)
        if isinstance(presented, bytes):
            presented = presented.decode(errors="replace")
        scheme, _, key = (presented or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("an API key is required: send 'authorization: Bearer <key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for known, principal in self._by_digest:  # every digest compared: timing says nothing
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise Unauthenticated("the API key is not valid")
        return found
