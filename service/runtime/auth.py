"""Bearer-token authentication, the read-only role, and the principal of the running RPC.

With any token configured, every RPC except health checks and reflection must carry
`authorization: Bearer <token>` metadata naming a known token; the token's principal
becomes the audit actor (`service.api.call_context.current_principal`). Principals
listed as read-only may call Get*/List*/Stream*/Watch* methods only.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from service.api.call_context import distrust_claimed_actor, set_principal
from service.api.errors import abort_with
from service.api.handler_layers import Layer, replace_behavior
from service.settings import Settings
from service.storage.errors import PermissionDenied, ServiceError, Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
# Probes and tooling need no token: they reveal the API's shape, never its data.
OPEN_SERVICES = frozenset(
    {health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}
)
READ_PREFIXES = ("Get", "BatchGet", "List", "Stream", "Watch")

Behavior = Callable[[Any, Any], Any]


def is_read(method: str) -> bool:
    """Whether `/package.Service/Method` only reads (Get*, BatchGet*, List*, Stream*, Watch*)."""
    return method.rsplit("/", 1)[-1].startswith(READ_PREFIXES)


@dataclass(frozen=True)
class TokenTable:
    """Known bearer tokens (kept as SHA-256 digests) and the principals they name."""

    entries: tuple[tuple[bytes, str], ...]
    read_only: frozenset[str] = frozenset()

    @classmethod
    def of(cls, tokens: Mapping[str, str], read_only: Iterable[str] = ()) -> TokenTable:
        """A table of `tokens` (token -> principal)."""
        entries = tuple((_digest(token), principal) for token, principal in tokens.items())
        return cls(entries, frozenset(read_only))

    def principal_of(self, token: str) -> str | None:
        """The principal `token` names, or None. Compares fixed-length digests with
        hmac.compare_digest and never stops early, so timing reveals nothing."""
        digest, found = _digest(token), None
        for known, principal in self.entries:
            if hmac.compare_digest(digest, known):
                found = principal
        return found

    def authenticate(self, metadata: Iterable[tuple[str, Any]]) -> str:
        """The principal the call's bearer token names; Unauthenticated if none."""
        principal = self.principal_of(bearer_token(metadata))
        if principal is None:
            raise Unauthenticated("UNAUTHENTICATED", "invalid bearer token")
        return principal

    def authorize(self, method: str, principal: str) -> None:
        """PermissionDenied unless `principal` may call `method`."""
        if principal in self.read_only and not is_read(method):
            name = method.rsplit("/", 1)[-1]
            raise PermissionDenied(
                "PERMISSION_DENIED",
                f"principal {principal} is read-only; {name} is a write",
                principal=principal,
                method=name,
            )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str:
    """The token of the one `authorization: Bearer <token>` entry; Unauthenticated if none."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION_KEY]
    if not values:
        raise Unauthenticated(
            "UNAUTHENTICATED", "authentication required: send authorization: Bearer <token>"
        )
    parts = values[0].split() if len(values) == 1 and isinstance(values[0], str) else []
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthenticated(
            "UNAUTHENTICATED", "send exactly one authorization metadata: Bearer <token>"
        )
    return str(parts[1])


def load_tokens(settings: Settings) -> dict[str, str]:
    """auth_tokens_file merged with auth_tokens; ValueError when malformed or conflicting."""
    file = settings.auth_tokens_file
    tokens = _read_tokens_file(file) if file is not None else {}
    for token, principal in settings.auth_tokens.items():
        if tokens.setdefault(token, principal) != principal:
            raise ValueError("a token of auth_tokens names another principal in auth_tokens_file")
    for token, principal in tokens.items():
        # Never name the token itself in an error: it is a secret.
        if not token.isascii() or not token.isprintable() or len(token.split()) != 1:
            raise ValueError(f"the token of principal {principal!r} is empty or not printable")
        if not principal.strip():
            raise ValueError("every token needs a non-empty principal name")
    return tokens


def _read_tokens_file(path: Path) -> dict[str, str]:
    try:
        tokens = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in tokens.items()
    ):
        raise ValueError(f'{path}: expected a JSON object of "token": "principal"')
    if not tokens:
        # Fail closed: a configured but empty file must not silently turn auth off.
        raise ValueError(f"{path}: no tokens")
    return tokens


def authenticate(table: TokenTable) -> Layer:
    """The handler layer that admits a call only with a known bearer token, and runs it
    as that token's principal; health and reflection stay open."""

    def layer(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method.strip("/").split("/")[0] in OPEN_SERVICES:
            return handler
        return replace_behavior(handler, lambda behavior: _authenticated(behavior, method, table))

    return layer


async def _admit_or_abort(table: TokenTable, method: str, context: Any) -> None:
    """Run the call as its token's principal, or end it UNAUTHENTICATED/PERMISSION_DENIED.

    The principal is recorded before the permission check, so a refused call is logged
    as who made it."""
    distrust_claimed_actor()
    try:
        principal = table.authenticate(context.invocation_metadata())
        set_principal(principal)
        table.authorize(method, principal)
    except ServiceError as error:
        log.info("refused %s: %s", method, error.message)
        await abort_with(context, error)  # raises grpc.aio.AbortError


def _authenticated(behavior: Behavior, method: str, table: TokenTable) -> Behavior:
    """`behavior` behind the token check, with current_principal() set while it runs."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            # Not reset: a generator may be finalised from another context, where reset()
            # fails. grpc.aio runs each RPC in its own task, whose context dies with it.
            await _admit_or_abort(table, method, context)
            async for response in behavior(request, context):
                yield response

        return stream

    async def call(request: Any, context: Any) -> Any:
        # Not reset: each RPC runs in its own task (the value dies with it), and the
        # outer observability layer reads the principal after the handler returns.
        await _admit_or_abort(table, method, context)
        return await behavior(request, context)

    return call


def auth_layers(settings: Settings) -> list[Layer]:
    """The authentication layer; none while no token is configured."""
    tokens = load_tokens(settings)
    if not tokens:
        if settings.read_only_principals:
            log.warning("read_only_principals is set but no token is: authentication is off")
        return []
    unknown = set(settings.read_only_principals) - set(tokens.values())
    if unknown:
        log.warning("read-only principals without any token: %s", ", ".join(sorted(unknown)))
    log.info(
        "authentication on: %d token(s), %d read-only principal(s)",
        len(tokens),
        len(settings.read_only_principals),
    )
    return [authenticate(TokenTable.of(tokens, settings.read_only_principals))]
