"""Every RPC handler wrapped once, when it is registered, by the per-call layers.

The layers (observability, authentication, error translation) used to be grpc.aio
interceptors, which run per call: a coroutine per interceptor and a freshly wrapped
handler each time. Each method's handler is the same for every call, so it is wrapped
once here instead and grpc takes its path without interceptors (the three interceptors
cost ~13% of a GetTask's server CPU in the perf bench).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

# (fully qualified method "/package.Service/Method", its handler) -> the wrapped handler
Layer = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


def stack(*layers: Layer) -> Layer:
    """One layer of `layers`, the first outermost (it sees what all the others did)."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for layer in reversed(layers):
            handler = layer(method, handler)
        return handler

    return wrap


class LayeredRegistration:
    """Stands in for the server in generated `add_*_to_server` functions.

    Wraps each method's handler with `layer` and registers it on the real server, both
    as a registered method (grpc's fast path) and through a generic handler.
    """

    def __init__(self, server: grpc.aio.Server, layer: Layer) -> None:
        self._server = server
        self._layer = layer

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Register generic handlers, their methods' handlers wrapped (once per method)."""
        self._server.add_generic_rpc_handlers(
            tuple(_LayeredGenericHandler(handler, self._layer) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Register a service's method handlers, each wrapped."""
        self._server.add_registered_method_handlers(
            service,
            {name: self._layer(f"/{service}/{name}", h) for name, h in handlers.items()},
        )


class _LayeredGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler, layer: Layer) -> None:
        self._inner = inner
        self._layer = layer
        # Only methods the inner handler knows get cached, so this stays bounded.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = self._layer(method, handler)
        return wrapped


def replace_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Any], Any]
) -> grpc.RpcMethodHandler:
    """`handler` with its one behaviour (whatever its arity) replaced by wrap(behaviour)."""
    for arity in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, arity)
        if behavior is not None:
            return handler._replace(**{arity: wrap(behavior)})
    return handler
