"""Requests built from message descriptors, sent to any served RPC, and what a client saw.

Everything here is generic: the RPCs are those of every service in the generated
`taskmanager.v1` modules plus health and reflection, and requests are built by walking
their input messages' descriptors, so an RPC or field added to the protos is fuzzed
without touching the tests. Calls use the synchronous grpc client with its default
limits (8 KiB soft / 16 KiB hard metadata), as most clients run.
"""

from __future__ import annotations

import base64
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import field_behavior_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from hypothesis import strategies as st

import taskmanager.v1

DOMAIN = "taskmanager.v1"
DETAILS_KEY = "grpc-status-details-bin"
# What an error may cost in trailers, as the client's HPACK decoder counts it (name +
# value + 32 per entry): the service promises well under gRPC's 8 KiB soft limit.
TRAILER_BUDGET = 5 * 1024
STATUS_BUDGET = 2048  # serialized google.rpc.Status (service.api.errors.STATUS_BYTES)
UNARY_TIMEOUT = 30.0  # a hang fails the call instead of blocking the run
# A server stream is cancelled after STREAM_RESPONSES responses (one per request when
# the client streams too), or after STREAM_IDLE seconds without one (a watch): cancels
# mid-stream are part of the fuzzing, the server must stay up through them.
STREAM_RESPONSES = 3
STREAM_IDLE = 0.25
# Codes a served call may never end with while the database is up and nothing drains:
# bugs (INTERNAL, UNKNOWN, DATA_LOSS), or a misread database error (UNAVAILABLE).
FORBIDDEN = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
    }
)

# --- the RPCs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One method of a served service, as its descriptor describes it."""

    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def input(self) -> Descriptor:
        return self.method.input_type

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    def __str__(self) -> str:
        return self.path.lstrip("/")


def _generated_modules() -> Iterator[Any]:
    for info in pkgutil.iter_modules(taskmanager.v1.__path__):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(f"taskmanager.v1.{info.name}")
    yield health_pb2
    yield reflection_pb2


def served_rpcs() -> list[Rpc]:
    """Every method of every service the server registers (the same set reflection lists)."""
    return [
        Rpc(method)
        for module in _generated_modules()
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


# --- what the client saw ------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended, as the client saw it."""

    code: grpc.StatusCode
    details: str = ""
    trailers: tuple[tuple[str, Any], ...] = ()
    status: status_pb2.Status | None = None
    responses: int = 0
    stopped_by_client: bool = False  # we cancelled it: enough responses, or idle

    @property
    def trailer_bytes(self) -> int:
        return trailer_bytes(self.details, self.trailers)

    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        if self.status is None:
            return None
        for detail in self.status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
        return None

    def problems(self) -> list[str]:
        """What is wrong with how the call ended (empty: nothing)."""
        if self.code == grpc.StatusCode.OK or self.stopped_by_client:
            return []
        found = []
        if self.code in FORBIDDEN:
            found.append(f"ended {self.code.name}")
        info = self.error_info()
        if info is None:
            found.append(f"{self.code.name} without google.rpc.ErrorInfo ({self.details!r:.200})")
        elif info.domain != DOMAIN or not info.reason:
            found.append(f"ErrorInfo without domain/reason: {info}")
        if self.status is not None and self.status.ByteSize() > STATUS_BUDGET:
            found.append(f"status of {self.status.ByteSize()} bytes > {STATUS_BUDGET}")
        if self.trailer_bytes > TRAILER_BUDGET:
            found.append(f"trailers of {self.trailer_bytes} bytes > {TRAILER_BUDGET}")
        return found


def trailer_bytes(details: str, trailers: Iterable[tuple[str, Any]]) -> int:
    """A call's trailers' size as the client's HPACK decoder counts it (name + value as
    sent + 32 per entry: grpc-message percent-encoded, binary values base64)."""
    size = len("grpc-status") + 2 + 32
    size += len("grpc-message") + len(percent_encoded(details)) + 32
    for key, value in trailers:
        wire = len(base64.b64encode(value)) if key.endswith("-bin") else len(value.encode())
        size += len(key) + wire + 32
    return size


def percent_encoded(text: str) -> bytes:
    """grpc-message on the wire: bytes outside printable ASCII, and '%', as %XX."""
    return b"".join(
        bytes([byte]) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
        for byte in text.encode("utf-8", "replace")
    )


def failed_outcome(error: grpc.RpcError, outcome: Outcome) -> Outcome:
    outcome.code = error.code()
    outcome.details = error.details() or ""
    outcome.trailers = tuple(error.trailing_metadata() or ())
    # rpc_status also checks that the details' code and message match the call's.
    outcome.status = rpc_status.from_call(error)
    return outcome


def call(
    channel: grpc.Channel, rpc: Rpc, requests: list[Any], *, serialized: bool = False
) -> Outcome:
    """Send `requests` (one, unless the RPC streams them too) and read the response, or
    up to STREAM_RESPONSES of a stream, which is then cancelled, as an idle one is."""
    serializer: Callable[[Any], bytes] = (
        (lambda data: data) if serialized else (lambda message: message.SerializeToString())
    )
    deserializer = message_class(rpc.method.output_type).FromString
    kind = ("unary" if not rpc.client_streaming else "stream") + (
        "_stream" if rpc.server_streaming else "_unary"
    )
    multicallable = getattr(channel, kind)(
        rpc.path, request_serializer=serializer, response_deserializer=deserializer
    )
    argument = iter(requests) if rpc.client_streaming else requests[0]
    outcome = Outcome(grpc.StatusCode.OK)
    if not rpc.server_streaming:
        try:
            _, done = multicallable.with_call(argument, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as error:
            return failed_outcome(error, outcome)
        outcome.trailers = tuple(done.trailing_metadata() or ())
        outcome.responses = 1
        return outcome
    enough = len(requests) if rpc.client_streaming else STREAM_RESPONSES
    stream = multicallable(argument, timeout=UNARY_TIMEOUT)
    idle = _Watchdog(stream.cancel)
    try:
        for _ in stream:
            outcome.responses += 1
            if outcome.responses >= enough:
                outcome.stopped_by_client = True
                stream.cancel()
                break
            idle.restart()
    except grpc.RpcError as error:
        failed_outcome(error, outcome)
        outcome.stopped_by_client = idle.fired or outcome.stopped_by_client
    finally:
        idle.stop()
    return outcome


@dataclass
class _Watchdog:
    """Calls `cancel` when not restarted within STREAM_IDLE seconds."""

    cancel: Callable[[], Any]
    fired: bool = False
    _timer: threading.Timer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.restart()

    def _fire(self) -> None:
        self.fired = True
        self.cancel()

    def restart(self) -> None:
        self.stop()
        self._timer = threading.Timer(STREAM_IDLE, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# --- requests from descriptors --------------------------------------------------------


def _vocabulary() -> list[str]:
    """Every field name of every served message: likely paths, orders and filters."""
    names: set[str] = set()
    seen: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for fd in descriptor.fields:
            names.add(fd.name)
            if fd.message_type is not None:
                walk(fd.message_type)

    for rpc in served_rpcs():
        walk(rpc.input)
        walk(rpc.method.output_type)
    return sorted(names)


VOCABULARY = _vocabulary()
# Sizes that broke clients before errors were bounded: 20,000 characters, and UTF-8
# that percent-encoding triples in grpc-message.
HOSTILE_TEXTS = (
    "x" * 20_000,
    "é" * 10_000,
    "\x00" * 7_000,
    "🙂" * 5_000,
    "%" * 9_000,
    "y" * 200,  # a repeated string gets 100 of these
)
INT64 = (0, 1, 2, 3, 7, -1, 2**31 - 1, 2**31, -(2**31), 2**53, 2**63 - 1, -(2**63))
INT32 = (0, 1, 2, 5, 50, 1000, 1001, 5000, 5001, -1, 2**31 - 1, -(2**31))
UINT = (0, 1, 2**31, 2**32 - 1)
UINT64 = (*UINT, 2**63, 2**64 - 1)
# Timestamp's range is 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS = (
    -62_135_596_800,
    -62_135_596_801,
    253_402_300_799,
    253_402_300_800,
    0,
    -1,
    1_700_000_000,
    2**62,
    -(2**62),
)
NANOS = (0, 1, 999, 999_999_000, 999_999_999, 1_000_000_000, -1, 2**31 - 1)


def mostly(
    plausible: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`plausible` three times in four, else `hostile`: enough requests must pass
    validation to reach the database, where other bugs live."""
    return st.sampled_from((True, True, True, False)).flatmap(
        lambda ok: plausible if ok else hostile
    )


_words = st.text(st.sampled_from("abcdefghij klm"), min_size=1, max_size=12).map(
    lambda text: "w" + text
)
_plausible_texts = st.one_of(
    _words,
    st.builds("{}@{}.example".format, _words.map(lambda w: w.replace(" ", "")), _words.map(len)),
    st.sampled_from(VOCABULARY),
    st.builds("{} desc".format, st.sampled_from(VOCABULARY)),
    st.uuids().map(str),
)
_odd_texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "*", "\x00", "a.b", "tags[0]", " x ", "İ", "%", "_"]),
)
_texts = mostly(_plausible_texts, _odd_texts)
TEXTS = mostly(_plausible_texts, st.one_of(_odd_texts, st.sampled_from(HOSTILE_TEXTS)))
# Small numbers (ids that exist, sizes), else extremes or anything in range.
_INT64S = mostly(
    st.integers(1, 12), st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))
)
_INT32S = mostly(
    st.integers(1, 12), st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))
)
_UINT32S = mostly(st.integers(1, 12), st.one_of(st.sampled_from(UINT), st.integers(0, 2**32 - 1)))
_UINT64S = mostly(st.integers(1, 12), st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1)))
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_BYTES: st.one_of(st.binary(max_size=16), st.just(b"\xff" * 20_000)),
    FieldDescriptor.TYPE_INT64: _INT64S,
    FieldDescriptor.TYPE_SINT64: _INT64S,
    FieldDescriptor.TYPE_SFIXED64: _INT64S,
    FieldDescriptor.TYPE_INT32: _INT32S,
    FieldDescriptor.TYPE_SINT32: _INT32S,
    FieldDescriptor.TYPE_SFIXED32: _INT32S,
    FieldDescriptor.TYPE_UINT32: _UINT32S,
    FieldDescriptor.TYPE_FIXED32: _UINT32S,
    FieldDescriptor.TYPE_UINT64: _UINT64S,
    FieldDescriptor.TYPE_FIXED64: _UINT64S,
}
MAX_DEPTH = 3


def _enum_values(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    known = [value.number for value in fd.enum_type.values]
    return mostly(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))


def _well_known(descriptor: Descriptor) -> st.SearchStrategy[Message] | None:
    cls = message_class(descriptor)
    name = descriptor.full_name
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return st.builds(
            cls,
            seconds=mostly(st.integers(0, 2_000_000_000), st.sampled_from(TIMESTAMP_SECONDS)),
            nanos=mostly(st.integers(0, 999_999_999), st.sampled_from(NANOS)),
        )
    if name == "google.protobuf.FieldMask":
        path = mostly(
            st.sampled_from(VOCABULARY),
            st.one_of(
                TEXTS,
                st.builds("{}.{}".format, st.sampled_from(VOCABULARY), st.sampled_from(VOCABULARY)),
            ),
        )
        return st.builds(cls, paths=st.lists(path, max_size=4))
    if name.startswith("google.protobuf."):  # Struct, Value, Any, Empty, wrappers
        return st.just(cls())
    return None


_ABSENT = object()
# How often a field is set, by its google.api.field_behavior: REQUIRED ones nearly
# always, OUTPUT_ONLY ones rarely (the server must ignore them), the rest now and then.
_PRESENCE = {
    field_behavior_pb2.REQUIRED: (True,) * 7 + (False,),
    field_behavior_pb2.OUTPUT_ONLY: (True,) + (False,) * 7,
}
_SOMETIMES = (True, False, False)


def _presence(fd: FieldDescriptor) -> tuple[bool, ...]:
    for behavior in fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
        if behavior in _PRESENCE:
            return _PRESENCE[behavior]
    return _SOMETIMES


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random messages of `descriptor`: every field maybe set, to anything its type holds."""
    known = _well_known(descriptor)
    if known is not None:
        return known
    cls = message_class(descriptor)
    fields = {
        fd.name: st.sampled_from(_presence(fd)).flatmap(
            lambda present, values=values: values if present else st.just(_ABSENT)
        )
        for fd in descriptor.fields
        if (values := _field_values(fd, depth)) is not None
    }

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is not _ABSENT:
                assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries(fields).map(build)


def _field_values(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if _is_map(fd):
        key = _single(fd.message_type.fields_by_name["key"], depth, huge=True)
        value = _single(fd.message_type.fields_by_name["value"], depth + 1, huge=True)
        if key is None or value is None:
            return None
        return st.lists(st.tuples(key, value), max_size=3)
    if fd.is_repeated:
        element = _single(fd, depth + 1, huge=False)
        if element is None:
            return None
        few = st.lists(element, max_size=3)
        if fd.message_type is not None:
            return few
        # Past every per-field limit (many elements, each a violation when it is one), and
        # past what one SQL statement can bind (SQLite: 32,766 parameters).
        many = st.one_of(
            st.lists(element, min_size=60, max_size=80), element.map(lambda e: [e] * 40_000)
        )
        return mostly(few, many)
    return _single(fd, depth, huge=True)


def _single(fd: FieldDescriptor, depth: int, *, huge: bool) -> st.SearchStrategy[Any] | None:
    if fd.message_type is not None:
        if depth >= MAX_DEPTH:
            return None
        return messages(fd.message_type, depth + 1)
    if fd.enum_type is not None:
        return _enum_values(fd)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return TEXTS if huge else _texts
    return _SCALARS[fd.type]


def assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    """Set one field of `message`, whatever its kind."""
    target = getattr(message, fd.name)
    if _is_map(fd):
        value_fd = fd.message_type.fields_by_name["value"]
        for key, item in value:
            if value_fd.message_type is not None:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif fd.is_repeated:
        target.extend(value)
    elif fd.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, fd.name, value)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and bool(fd.message_type.GetOptions().map_entry)


def string_paths(descriptor: Descriptor, depth: int = 0) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every path to a string a request can carry (nested, repeated and FieldMask paths
    included), to `MAX_DEPTH` messages deep. Maps (no request has one) are left to the
    random requests."""
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_STRING:
            yield (fd,)
        elif fd.message_type is not None and not _is_map(fd) and depth < MAX_DEPTH:
            for rest in string_paths(fd.message_type, depth + 1):
                yield (fd, *rest)


def with_string(descriptor: Descriptor, path: tuple[FieldDescriptor, ...], text: str) -> Message:
    """A request of `descriptor` whose only content is `text` at `path`: in one element
    of each repeated message on the way; a repeated string gets 100 copies of a short
    text (a violation each), one of a long one."""
    message = message_class(descriptor)()
    current = message
    for fd in path[:-1]:
        container = getattr(current, fd.name)
        current = container.add() if fd.is_repeated else container
    last = path[-1]
    if last.is_repeated:
        getattr(current, last.name).extend([text] * (100 if len(text) <= 200 else 1))
    else:
        setattr(current, last.name, text)
    return message
