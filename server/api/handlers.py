"""Builds the gRPC handlers of a service from its descriptor, once, at start-up.

Every behavior is wrapped here, the one interception point for unary and
streaming RPCs alike. A grpc.aio ServerInterceptor would not do: it sees no
servicer context (so no client certificate for mTLS, no peer) and
re-creates the handler on each call. The wrapper admits the call (guard.py:
authentication, the RPC's rule from permissions.py, the call context the
use cases and the audit read), turns errors into a status with rich details
(the table in `status.py`), logs anything unexpected with its traceback and
answers INTERNAL without leaking internals, and leaves one access-log line
with method, status, duration and request id (and, with telemetry on, hands
the same to `observe`: telemetry.py's RPC latency histogram).

Before all that, the call passes the gate (flow.py): refused at once,
unauthenticated and unlogged but for its access-log line, when the server is
over its limits or stopping. A server stream writes its messages itself,
through a `Stream` that can be ended while it waits for its client.

Responses may be returned pre-serialized as bytes (a cached answer): the
serializer passes bytes through. Requests are parsed by `_decoder`: bytes
that are not the RPC's message (corrupt wire format, a string that is not
UTF-8, nesting past the parser's depth) become an `Undecodable` marker, so
that the call is admitted like any other — authenticated first, logged,
audited and throttled as a refusal — and answered INVALID_ARGUMENT, never
UNKNOWN with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from ..access_log import ACCESS_LOG
from ..calls import Call, current_call
from ..errors import InvalidArgument, RegistryError
from ..usecases.access import Identity
from .bounds import check_items, has_items
from .context import Context
from .flow import WATCH_METHODS, Gate, Streams, current_stream
from .guard import Guard, current_identity, identity
from .permissions import RULES, Rule
from .status import code_for, to_status

log = logging.getLogger("dspy_registry.rpc")

Behavior = Callable[..., Any]
Observe = Callable[[str, grpc.StatusCode, float], None]  # (method, code, seconds) of each finished call


def _serialize(response: Message | bytes) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


@dataclass(frozen=True)
class Undecodable:
    """A request message whose bytes did not parse; refused once the caller is authenticated."""

    type_name: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument([], f"the request is not a valid {self.type_name}: {self.reason}")


def _decoder(request_type: Any) -> Callable[[bytes], Any]:
    name = request_type.DESCRIPTOR.name
    parse = request_type.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            # The parser's reason ("Wire format was corrupt", "String field had bad UTF-8", ...)
            # after its "Error parsing message with type '…': " prefix.
            return Undecodable(name, str(exc).rsplit(": ", 1)[-1] or "its bytes do not parse")

    return decode


def _decoded(request: Any) -> Any:
    """The request, checked: it parsed, and no list or map in it is absurdly long (bounds.py)."""
    if isinstance(request, Undecodable):
        raise request.error()
    if request is not None:
        check_items(request)
    return request


def _parsed(request: Any) -> Any:
    """`_decoded` for a message type that holds no list nor map: it parsed."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


async def _decoded_stream(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in stream:
        yield _decoded(message)


def _code(exc: Exception, context: Context) -> grpc.StatusCode:
    """The status code a failed call ends with, for the log line."""
    if isinstance(exc, grpc.aio.AbortError):  # the behavior aborted by itself
        code: grpc.StatusCode | None = context.code()
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, RegistryError):
        return code_for(exc)
    return grpc.StatusCode.INTERNAL


def _ending(exc: Exception, method: str) -> grpc.Status | None:
    """The status a call that failed with `exc` ends with; None when the behavior aborted the call
    itself (grpc holds its status). Called inside the `except`: an unexpected error is logged with
    its traceback here."""
    if isinstance(exc, grpc.aio.AbortError):
        return None
    if isinstance(exc, RegistryError) and code_for(exc) != grpc.StatusCode.INTERNAL:
        return to_status(exc)
    # A bug of ours or a store error (a corrupt file, a driver's complaint): the log has it whole,
    # the client a status that leaks nothing of the server's insides.
    log.exception("unhandled error in %s", method)
    return _INTERNAL


_INTERNAL = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the server log has the details")
)


async def _end(context: Context, ending: grpc.Status | None) -> None:
    """End the call with `ending` (this raises, as grpc's abort does).

    Called after the `except` that caught the failure, never inside it: an abort raised there
    would chain the failure and its traceback, whose frames hold the request, into a cycle that
    only the garbage collector frees (a flood of refused megabyte requests grew the server by a
    gigabyte, the collector being tuned to run rarely: serve.py).
    """
    if ending is None:
        raise grpc.aio.AbortError()
    await context.abort_with_status(ending)  # type: ignore[attr-defined]


# How long a stream's last status may take to leave. A client that reads nothing never takes it:
# the status stays queued in the transport (delivered if it reads again) and the call ends here.
STATUS_SECONDS = 1.0


async def _end_stream(context: Context, ending: grpc.Status | None) -> None:
    """`_end` for a server stream, whose status may wait behind messages its client does not read."""
    try:
        async with asyncio.timeout(STATUS_SECONDS):  # not wait_for: see background.Loop._sleep
            await _end(context, ending)
    except TimeoutError:
        pass  # the abort is recorded: grpc ends the call with it once this handler returns


async def _refuse(
    context: Context, exc: RegistryError, method: str, start: float, observe: Observe | None
) -> None:
    """A call the gate did not let in: its status and access-log line, nothing else."""
    _log(method, code_for(exc), start, "", observe)
    await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]


def _log(method: str, code: grpc.StatusCode, start: float, request_id: str, observe: Observe | None) -> None:
    seconds = time.perf_counter() - start
    # `_name_`, not `.name`: an enum member's `.name` is a Python-level property, read on every call.
    ACCESS_LOG.record(method, code._name_, seconds * 1000, request_id)
    if observe is not None:
        observe(method, code, seconds)


class _Admission:
    """One call's way in: authenticate, then authorize by the RPC's rule; the call context."""

    def __init__(
        self,
        guard: Guard,
        method: str,
        rule: Rule,
        observe: Observe | None,
        request_id: Callable[[Any], str] = lambda request: "",
    ) -> None:
        self.guard = guard
        self.method = method
        self.rule = rule
        self.observe = observe
        self.request_id = request_id
        self.resolve = rule.resolver()

    def open(self, context: Context) -> Call:
        """This call's context, set before anything of it can fail (a refusal's audit reads it)."""
        # Each RPC runs in a task of its own: what is set here is this call's alone.
        # The peer is only wanted by the audit log: mutations, and refusals (see refused()).
        address = self.guard.peer(context) if self.rule.mutation else ""
        call = Call(
            method=self.method,
            principal="",
            token="",
            resource="",
            request_id="",
            peer=address,
            mutation=self.rule.mutation,
        )
        current_call.set(call)
        return call

    def identify(self, call: Call, who: Identity) -> Identity:
        call.principal = who.principal.name
        call.token = who.token_name
        current_identity.set(who)
        return who

    def known(self, context: Context) -> Call | None:
        """`authenticate` without a wait: the call, its caller named by a token verified lately
        (`Guard.known`); None: await `authenticate`. The serving path's reads come here, and in the
        server a coroutine per call is measurable there."""
        who = self.guard.known(context)
        if who is None:
            return None
        call = self.open(context)
        self.identify(call, who)
        return call

    async def authenticate(self, context: Context) -> Call:
        """Who calls, from metadata or certificate alone: nothing of the request is read yet (a token
        verified lately is known without reading the store: `Guard.authenticate` asks first)."""
        call = self.open(context)
        self.identify(call, await self.guard.authenticate(context))
        return call

    def names(self, call: Call, request: Any) -> Sequence[str]:
        """The resources the RPC's rule names in `request` (the call's resource and request id noted)."""
        if request is None:
            return ()
        call.request_id = self.request_id(request)
        try:
            names, call.resource = self.resolve(request)
        except (AttributeError, ValueError) as exc:  # a rule naming a field the request lacks: a bug
            raise RuntimeError(f"the permission rule of {self.method} cannot read the request") from exc
        return names

    def allowed(self, call: Call, request: Any) -> bool:
        """`authorize` without a wait: whether the grants read lately let the caller do this to what
        `request` names (`Guard.allows`); False: await `authorize`, which reads them or refuses."""
        return self.guard.allows(identity(), self.rule, self.names(call, request))

    async def authorize(self, call: Call, request: Any) -> None:
        """May the caller do this to what `request` names: `Guard.authorize`, which asks the grants
        read lately first (`Guard.allows`), else reads them (or refuses)."""
        await self.guard.authorize(identity(), self.rule, self.names(call, request))

    async def refused(self, call: Call, exc: Exception, context: Context) -> None:
        call.peer = call.peer or self.guard.peer(context)
        await self.guard.audit_refusal(call, exc, self.rule)


def _request_id_reader(request_type: Any) -> Callable[[Any], str]:
    """How to read a request's id as the logs and the audit keep it: its `request_id`, else its
    header's, at most the 128 characters a valid one has (a refused call's id was never checked, and
    a megabyte of it must not become one log line). Decided once per RPC from the message's fields:
    asking every request for a field its type lacks raised and caught two AttributeErrors a call."""
    fields = request_type.DESCRIPTOR.fields_by_name
    own = "request_id" in fields
    header = fields.get("header")
    in_header = header is not None and header.message_type is not None
    in_header = in_header and "request_id" in header.message_type.fields_by_name

    def read(request: Any) -> str:
        value = request.request_id if own else ""
        if not value and in_header:
            value = request.header.request_id
        return str(value)[:128]

    return read


def _unary(
    admission: _Admission,
    behavior: Behavior,
    streaming_request: bool,
    gate: Gate,
    decoded: Callable[[Any], Any] = _decoded,
) -> Behavior:
    method = admission.method
    rule = admission.rule

    async def call(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        if (closed := gate.refusal(False)) is not None:
            request = None
            await _refuse(context, closed, method, start, admission.observe)
        ending: grpc.Status | None = None
        try:
            try:
                # Known caller and grants cost no await (the serving path); else the store is read.
                current = admission.known(context) or await admission.authenticate(context)
                if streaming_request:
                    # The resource is in the first message (the header): read it (only now,
                    # once the caller is known), then hand the behavior the stream with it in front.
                    first, request = await _peek(_decoded_stream(request))
                    await admission.authorize(current, first)
                elif not admission.allowed(current, decoded(request)):
                    await admission.authorize(current, request)
                response = await behavior(request, context)
                if rule.by_servicer and not current.authorized:
                    raise RuntimeError(f"{method} answered without authorizing its resource")
                return response
            except asyncio.CancelledError:  # the client went away or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = _code(exc, context)
                await admission.refused(current_call.get() or _unknown(method), exc, context)
                ending = _ending(exc, method)
            request = None  # see _end: nothing of a refused request outlives its call
            await _end(context, ending)
        finally:
            gate.release(False)
            call_ = current_call.get()
            _log(method, code, start, call_.request_id if call_ else "", admission.observe)

    return call


def _server_streaming(
    admission: _Admission, behavior: Behavior, gate: Gate, streams: Streams, *, intercepted: bool
) -> Behavior:
    method = admission.method
    rule = admission.rule
    watch = method in WATCH_METHODS

    # It writes its messages itself rather than yield them to grpc: a send that waits for a client
    # that reads nothing must be interruptible (flow.py). So it is a coroutine, which grpc awaits;
    # see below for when it is wrapped in a generator.
    async def call(request: Any, context: Context) -> None:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        if (closed := gate.refusal(watch)) is not None:
            request = None
            await _refuse(context, closed, method, start, admission.observe)
        stream = streams.open()
        current_stream.set(stream)  # each call runs in a task of its own: this is this call's
        ending: grpc.Status | None = None
        try:
            try:
                current = await admission.authenticate(context)
                await admission.authorize(current, _decoded(request))
                items = behavior(request, context)

                def check_first() -> None:  # the servicer authorizes its resource before it sends
                    if rule.by_servicer and not current.authorized:
                        raise RuntimeError(f"{method} streamed without authorizing its resource")

                try:
                    await stream.pump(context, items, check_first)
                finally:
                    await items.aclose()  # now, not when collected: a watch leaves its hub
                return
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = _code(exc, context)
                await admission.refused(current_call.get() or _unknown(method), exc, context)
                ending = _ending(exc, method)
            request = None  # see _end
            await _end_stream(context, ending)
        finally:
            streams.close(stream)
            gate.release(watch)
            call_ = current_call.get()
            _log(method, code, start, call_.request_id if call_ else "", admission.observe)

    if not intercepted:
        return call

    # The telemetry interceptor (OpenTelemetry's, when tracing) iterates a server stream's handler,
    # so there it is a generator that yields nothing. Without one, grpc awaits the coroutine: a
    # generator layer is one more step on each of a watch's two wake-ups per message (its next
    # change, its send's completion) at 10 000 streams.
    async def iterated(request: Any, context: Context) -> AsyncIterator[Any]:
        if False:  # pragma: no cover - makes this an async generator; see above
            yield
        await call(request, context)

    return iterated


async def _peek(stream: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """The first message of a request stream, and the stream with it put back in front."""
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return None, stream

    async def again() -> AsyncIterator[Any]:
        yield first
        async for message in stream:
            yield message

    return first, again()


def _unknown(method: str) -> Call:
    return Call(method=method, principal="", token="", resource="", request_id="", peer="", mutation=False)


def method_handler(
    service: ServiceDescriptor,
    method: MethodDescriptor,
    behavior: Behavior,
    guard: Guard,
    observe: Observe | None = None,
    *,
    gate: Gate,
    streams: Streams,
    intercepted: bool = False,
) -> grpc.RpcMethodHandler[Any, Any]:
    """`intercepted`: the server has interceptors, which take a server stream's handler as a generator."""
    name = f"/{service.full_name}/{method.name}"
    rule = RULES.get(name)
    if rule is None:  # deny by default: an RPC without a rule is never served
        raise LookupError(f"{name} has no entry in the permission table (server/api/permissions.py)")
    request_type: Any = GetMessageClass(method.input_type)
    admission = _Admission(guard, name, rule, observe, _request_id_reader(request_type))
    kwargs: dict[str, Any] = {
        "request_deserializer": _decoder(request_type),
        "response_serializer": _serialize,
    }
    if method.client_streaming and method.server_streaming:
        raise NotImplementedError(f"{name}: bidirectional streams are not part of this API")
    if method.server_streaming:
        handler = _server_streaming(admission, behavior, gate, streams, intercepted=intercepted)
        return grpc.unary_stream_rpc_method_handler(handler, **kwargs)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(_unary(admission, behavior, True, gate), **kwargs)
    decoded = _decoded if has_items(request_type.DESCRIPTOR) else _parsed
    return grpc.unary_unary_rpc_method_handler(_unary(admission, behavior, False, gate, decoded), **kwargs)


def service_handler(
    service: ServiceDescriptor,
    servicer: object,
    guard: Guard,
    observe: Observe | None = None,
    *,
    gate: Gate,
    streams: Streams,
    intercepted: bool = False,
) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for every RPC of `service`; the servicer must define each one (no silent gaps).
    `intercepted`: the grpc server was given interceptors (method_handler)."""
    missing = [m.name for m in service.methods if not callable(getattr(servicer, m.name, None))]
    if missing:
        raise TypeError(f"{type(servicer).__name__} does not implement {service.name}: {missing}")
    handlers = {
        m.name: method_handler(
            service,
            m,
            getattr(servicer, m.name),
            guard,
            observe,
            gate=gate,
            streams=streams,
            intercepted=intercepted,
        )
        for m in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
