"""Callers of traced RPCs: a span of "another service", sent as W3C trace context metadata."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tests.otlp_receiver import ReceivedSpan

# A task id no test creates, distinctive enough to be found if it leaked into a span.
MISSING_ID = 987654321012


@dataclass(frozen=True)
class Caller:
    """A caller's span, as another service would send it in `traceparent`."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @classmethod
    def new(cls, sampled: bool = True) -> Caller:
        """A fresh trace and span id (sampled or not)."""
        return cls(secrets.token_hex(16), secrets.token_hex(8), sampled)

    def metadata(self, **extra: str) -> tuple[tuple[str, str], ...]:
        """traceparent and tracestate, then `extra` (other metadata of the call)."""
        flags = "01" if self.sampled else "00"
        traceparent = f"00-{self.trace_id}-{self.span_id}-{flags}"
        return (("traceparent", traceparent), ("tracestate", "caller=1"), *extra.items())


def assert_no_values(spans: list[ReceivedSpan], *values: str) -> None:
    """None of `values` (a request's parameters) appears anywhere in `spans`."""
    texts = [text for span in spans for text in span.texts()]
    for value in values:
        assert not [text for text in texts if value in text], f"{value!r} leaked into a span"
