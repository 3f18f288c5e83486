"""For the protocol plugins' tests: real servers, each on a free 127.0.0.1 port in a thread,
and what a scenario save says about a bad step."""

from __future__ import annotations

import json
import tempfile
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from django.core.exceptions import ValidationError
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from graphql import GraphQLError, build_schema, graphql_sync
from grpc_reflection.v1alpha import reflection
from grpc_tools import protoc
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from runs.definition import DefinitionError
from runs.services import scenario_save

GRAPHQL_SDL = """
type User { id: ID!, name: String! }
type Query {
  user(id: ID!): User
  boom: String
  whoami: String
}
type Mutation { rename(id: ID!, name: String!): User }
"""


class _GraphqlRoot:
    """Resolvers: users held in memory, one that always fails, one that echoes a header."""

    def __init__(self) -> None:
        self.users = {"1": {"id": "1", "name": "Ada"}, "2": {"id": "2", "name": "Grace"}}

    def user(self, info, id: str) -> dict[str, str] | None:
        return self.users.get(id)

    def boom(self, info) -> str:
        raise GraphQLError("boom: the resolver failed")

    def whoami(self, info) -> str:
        return info.context["authorization"]

    def rename(self, info, id: str, name: str) -> dict[str, str] | None:
        if id in self.users:
            self.users[id] = {"id": id, "name": name}
        return self.users.get(id)


class _GraphqlHandler(BaseHTTPRequestHandler):
    server: GraphqlServer

    def log_message(self, format, *args):  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        operation = json.loads(self.rfile.read(length))
        self.server.requests.append({"operation": operation, "headers": dict(self.headers)})
        result = graphql_sync(
            self.server.schema,
            operation["query"],
            root_value=self.server.root,
            context_value={"authorization": self.headers.get("Authorization", "")},
            variable_values=operation.get("variables"),
            operation_name=operation.get("operationName"),
        )
        document: dict[str, Any] = {"data": result.data}
        if result.errors:
            document["errors"] = [error.formatted for error in result.errors]
        body = json.dumps(document).encode()
        # A GraphQL error is an answer like any other: HTTP 200 (graphql-over-http, JSON).
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GraphqlServer(ThreadingHTTPServer):
    """graphql-core behind http.server: a query, a mutation and a resolver that errors."""

    daemon_threads = True

    def __init__(self) -> None:
        self.schema = build_schema(GRAPHQL_SDL)
        self.root = _GraphqlRoot()
        self.requests: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _GraphqlHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/graphql"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _chat_if_offered(connection: ServerConnection, offered: list[str]) -> str | None:
    return "chat.v1" if "chat.v1" in offered else None


class WebSocketServer:
    """A websockets server by path: ``/echo`` answers every message with itself, ``/push?n=N``
    sends N JSON messages ``{"n": i}`` then echoes, ``/close?code=C`` sends one message and
    closes with code C, ``/headers`` sends the request's headers as JSON then echoes.

    ``closed`` lists ``(request path, close code)`` for every connection that ended, as the
    server saw it."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, int | None]] = []
        self._server = serve(self._handle, "127.0.0.1", 0, select_subprotocol=_chat_if_offered)
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _handle(self, connection: ServerConnection) -> None:
        parts = urlsplit(connection.request.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        try:
            if parts.path == "/push":
                for number in range(int(query.get("n", "1"))):
                    connection.send(json.dumps({"n": number}))
            elif parts.path == "/close":
                connection.send(json.dumps({"bye": True}))
                connection.close(int(query["code"]), "server says bye")
                return
            elif parts.path == "/headers":
                connection.send(json.dumps(dict(connection.request.headers.raw_items())))
            for message in connection:
                connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed.append((connection.request.path, connection.close_code))

    def stop(self) -> None:
        self._server.shutdown()


PROTO_ROOT = Path(__file__).resolve().parent / "protos"
GREETER_PROTO = "orchestra_test/greeter.proto"
GREETER = "orchestra.test.Greeter"


def _greeter_pool() -> DescriptorPool:
    """tests/protos' greeter compiled by grpcio-tools' protoc, as descriptors."""
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "greeter.pb"
        status = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={output}", GREETER_PROTO]
        )
        assert status == 0, "protoc could not compile the greeter"
        descriptor_set = FileDescriptorSet.FromString(output.read_bytes())
    pool = DescriptorPool()
    for proto in descriptor_set.file:
        pool.Add(proto)
    return pool


class GrpcServer:
    """The greeter on grpcio: SayHello (unary; echoes the authorization metadata, trailing
    ``x-served-by``), CountTo (server streaming), Fail (INVALID_ARGUMENT without a name,
    NOT_FOUND with one), Slow (answers when cancelled, or after 10 s). ``reflection_enabled``
    turns server reflection on; ``tls`` is ``(private key, certificate)`` in PEM."""

    def __init__(
        self, *, reflection_enabled: bool = True, tls: tuple[bytes, bytes] | None = None
    ) -> None:
        pool = _greeter_pool()
        service = pool.FindServiceByName(GREETER)
        self.messages = {
            name: GetMessageClass(pool.FindMessageTypeByName(f"orchestra.test.{name}"))
            for name in ("HelloRequest", "HelloReply", "CountRequest", "CountReply")
        }
        handlers = {}
        for method in service.methods:
            request = GetMessageClass(method.input_type)
            response = GetMessageClass(method.output_type)
            kind = grpc.unary_stream_rpc_method_handler
            if not method.server_streaming:
                kind = grpc.unary_unary_rpc_method_handler
            handlers[method.name] = kind(
                getattr(self, method.name),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(GREETER, handlers)]
        )
        if reflection_enabled:
            reflection.enable_server_reflection(
                [GREETER, reflection.SERVICE_NAME], self.server, pool
            )
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials([tls])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def SayHello(self, request, context: grpc.ServicerContext):
        metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata([("x-served-by", "greeter")])
        return self.messages["HelloReply"](
            message=f"Hello, {request.name}!", authorization=metadata.get("authorization", "")
        )

    def CountTo(self, request, context: grpc.ServicerContext):
        for number in range(1, request.up_to + 1):
            yield self.messages["CountReply"](n=number)

    def Fail(self, request, context: grpc.ServicerContext):
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name must not be empty")
        context.abort(grpc.StatusCode.NOT_FOUND, f"no greeting for {request.name}")

    def Slow(self, request, context: grpc.ServicerContext):
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        cancelled.wait(10)
        return self.messages["HelloReply"](message="late")

    def stop(self) -> None:
        self.server.stop(grace=None)


def refusal_on_save(step: dict[str, Any]) -> str:
    """The text of the refusal a scenario made of ``step`` meets when it is saved."""
    try:
        scenario_save(name="refused", definition={"steps": [step]})
    except (DefinitionError, ValidationError) as exc:
        return str(exc)
    raise AssertionError(f"the step was saved: {step}")
