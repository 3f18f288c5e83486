from __future__ import annotations

import ipaddress
import json
import threading
import time
from typing import Any

import grpc
from django.conf import settings
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.bodies import summarize_text
from plugins.grpc.schemas import proto_pool, reflected_pool
from plugins.pushback import host_rate_target

CODES = [code.name for code in grpc.StatusCode]
#: Codes that say the server may answer otherwise later: an error that may be retried.
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
#: Responses of one server-streaming call, at most.
MAX_STREAM_MESSAGES = 10000
#: How often a waiting call looks at the run's stop event.
POLL_SECONDS = 0.1


class GrpcPlugin(ProtocolPlugin):
    """Calls one unary or server-streaming gRPC method with grpcio.

    ``with``: target (host:port), method (``package.Service/Method``), request (JSON), metadata,
    deadline (seconds, capped by the step's), tls, protos (``.proto`` paths under
    ``ORCHESTRA_GRPC_PROTO_ROOT``; without them the schema comes from server reflection).
    ``expect``: code (a status code name; OK unless told), json (JSONPath over the response, or
    the list of responses of a streaming call), trailing_metadata (name -> exact value).

    A status other than the expected one ends the step in :meth:`check`: a ``FAILED``
    assertion when ``expect.code`` names a code, otherwise an error (retryable for UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED; permanent for the others).
    """

    name = "grpc"
    params_schema = {
        "type": "object",
        "required": ["target", "method"],
        "additionalProperties": False,
        "properties": {
            "target": {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):\d{1,5}$"},
            "method": {
                "type": "string",
                "pattern": r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*$",
            },
            "request": {"type": "object"},
            "metadata": {
                "type": "object",
                "propertyNames": {"pattern": "^[0-9a-z_.-]+$"},
                "additionalProperties": {"type": "string"},
            },
            "deadline": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "tls": {"type": "boolean"},
            "protos": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": r"\.proto$"},
            },
        },
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "enum": CODES},
            "json": {"type": "object"},
            "trailing_metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }

    example = {
        "name": "greet over gRPC",
        "plugin": "grpc",
        "with": {
            "target": "greeter.test:50051",
            "method": "helloworld.Greeter/SayHello",
            "request": {"name": "Ada"},
            "metadata": {"authorization": "Bearer {{ credentials.GREETER_TOKEN }}"},
        },
        "expect": {"code": "OK", "json": {"$.message": "Hello, Ada"}},
    }

    def rate_target(self, params: dict[str, Any]) -> str | None:
        host, _, port = params.get("target", "").rpartition(":")
        if not host or not port.isdigit():
            return None
        return host_rate_target("grpc", host, int(port))

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        deadline = context.deadline
        if "deadline" in params:
            deadline = min(deadline, time.monotonic() + params["deadline"])

        def time_left() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PluginError(f"{params['method']} timed out", retryable=True)
            return left

        service, method_name = params["method"].split("/")
        with _channel(params, context) as channel:
            if "protos" in params:
                pool = proto_pool(params["protos"])
            else:
                pool = reflected_pool(channel, service, time_left)
            method = _method(pool, service, method_name)
            request_class = GetMessageClass(method.input_type)
            response_class = GetMessageClass(method.output_type)
            try:
                request = json_format.ParseDict(params.get("request", {}), request_class())
            except json_format.ParseError as exc:
                raise PluginError(
                    f"request does not fit {method.input_type.full_name}: {exc}"
                ) from None
            path = f"/{service}/{method_name}"
            serializers = {
                "request_serializer": request_class.SerializeToString,
                "response_deserializer": response_class.FromString,
            }
            metadata = list(params.get("metadata", {}).items())
            if method.server_streaming:
                call = channel.unary_stream(path, **serializers)(
                    request, timeout=time_left(), metadata=metadata
                )
            else:
                call = channel.unary_unary(path, **serializers).future(
                    request, timeout=time_left(), metadata=metadata
                )
            responses = _collect(call, method.server_streaming, context)
        documents = [_document(response) for response in responses]
        data: Any = documents if method.server_streaming else (documents or [None])[0]
        code, details = call.code().name, call.details() or ""
        trailing = _metadata(call.trailing_metadata())
        return PluginResult(
            data=data,
            fields={
                "code": code,
                "details": details,
                "trailing_metadata": trailing,
                "initial_metadata": _metadata(call.initial_metadata()),
                "method": params["method"],
            },
            request={
                "target": params["target"],
                "method": params["method"],
                "metadata": dict(params.get("metadata", {})),
                "request": summarize_text(json.dumps(params.get("request", {}))),
            },
            response={
                "code": code,
                "details": summarize_text(details),
                "trailing_metadata": trailing,
                "body": summarize_text(json.dumps(data, ensure_ascii=False)),
            },
        )

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        code = result.fields["code"]
        expected = expect.get("code", "OK")
        if code != expected and "code" not in expect:
            details = result.fields["details"]
            raise PluginError(
                f"{result.fields['method']} ended {code}: {details}", retryable=code in RETRYABLE
            )
        passed = code == expected
        message = (
            "" if passed else f"code is {code} ({result.fields['details']}), expected {expected}"
        )
        assertions = [Assertion("code", passed, expected, code, message)]
        if "json" in expect:
            if result.data is None:
                assertions.append(Assertion("json", False, expect["json"], None, "no response"))
            else:
                assertions.extend(check_json_paths(expect["json"], result.data))
        trailing = result.fields["trailing_metadata"]
        for name, value in expect.get("trailing_metadata", {}).items():
            actual = trailing.get(name.lower())
            passed = actual == value
            message = (
                "" if passed else f"trailing metadata {name} is {actual!r}, expected {value!r}"
            )
            assertions.append(
                Assertion(f"trailing_metadata {name}", passed, value, actual, message)
            )
        return assertions


class _channel:
    """A channel to the target's checked address, closed on exit."""

    def __init__(self, params: dict[str, Any], context: StepContext) -> None:
        host, port = _split_target(params["target"])
        addresses = context.check_outbound(host, port)
        address = addresses[0]
        dial = f"ipv4:{address}:{port}" if address.version == 4 else f"ipv6:[{address}]:{port}"
        options = [
            # The target's name, not the address, in :authority and (TLS) for SNI and the
            # certificate check.
            ("grpc.default_authority", params["target"]),
            ("grpc.max_receive_message_length", settings.ORCHESTRA_MAX_RESPONSE_BYTES),
            ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0),
        ]
        if params.get("tls"):
            options.append(("grpc.ssl_target_name_override", host))
            self.channel = grpc.secure_channel(dial, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(dial, options)

    def __enter__(self) -> grpc.Channel:
        return self.channel

    def __exit__(self, *exc_info) -> None:
        self.channel.close()


def _split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not 0 < int(port) < 65536:
        raise PluginError(f"target {target!r} has no valid port")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return host, int(port)


def _method(pool: DescriptorPool, service: str, name: str) -> MethodDescriptor:
    try:
        descriptor = pool.FindServiceByName(service)
    except KeyError:
        raise PluginError(f"the schema has no service {service!r}") from None
    method = descriptor.methods_by_name.get(name)
    if method is None:
        known = ", ".join(sorted(descriptor.methods_by_name)) or "none"
        raise PluginError(f"service {service!r} has no method {name!r} (it has: {known})")
    if method.client_streaming:
        raise PluginError(f"{service}/{name} streams requests: only unary and server streaming")
    return method


def _collect(call: Any, streaming: bool, context: StepContext) -> list[Message]:
    """The call's responses; a stop request cancels it (a watcher thread: iterating blocks)."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(POLL_SECONDS):
            if context.stop.is_set():
                call.cancel()
                return

    threading.Thread(target=watch, name="grpc-stop-watch", daemon=True).start()
    responses: list[Message] = []
    try:
        if streaming:
            for response in call:
                responses.append(response)
                if len(responses) > MAX_STREAM_MESSAGES:
                    call.cancel()
                    raise PluginError(f"the stream sent more than {MAX_STREAM_MESSAGES} responses")
        else:
            responses.append(call.result())
    except grpc.RpcError:
        pass  # the status is the call's code(), judged by check()
    except grpc.FutureCancelledError:
        pass
    finally:
        finished.set()
    if context.stop.is_set():
        raise PluginError("the call was interrupted: the run is stopping")
    return responses


def _document(response: Message) -> Any:
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _metadata(metadata: Any) -> dict[str, str]:
    """Metadata as ``{lower-case name: value}``; binary (``-bin``) values as their length."""
    items = {}
    for key, value in metadata or ():
        items[key.lower()] = value if isinstance(value, str) else f"<{len(value)} bytes>"
    return items
