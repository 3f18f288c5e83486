"""Where the grpc plugin learns a method's messages: the server's reflection service, or
``.proto`` files compiled at run time with grpcio-tools' protoc.

It opens no connection of its own: reflection runs on the channel the plugin dialled to the
addresses the outbound policy returned (``plugins/grpc/plugin.py``, ``check_outbound``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import grpc
from django.conf import settings
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest
from grpc_reflection.v1alpha.reflection_pb2_grpc import ServerReflectionStub

from plugins.base import PluginError

#: Files a reflection answer may pull in (a service and its imports), at most.
MAX_REFLECTED_FILES = 200


def reflected_pool(
    channel: grpc.Channel, service: str, time_left: Callable[[], float]
) -> DescriptorPool:
    """The descriptors of ``service`` and its imports, asked of the server's reflection.

    grpc_reflection's own client database sets no deadline on its calls; these calls end by the
    step's.
    """
    stub = ServerReflectionStub(channel)
    found: dict[str, FileDescriptorProto] = {}

    def ask(request: ServerReflectionRequest, what: str) -> None:
        try:
            answer = next(stub.ServerReflectionInfo(iter([request]), timeout=time_left()))
        except grpc.RpcError as exc:
            raise _reflection_error(exc) from None
        if answer.WhichOneof("message_response") == "error_response":
            raise PluginError(f"the server's reflection does not know {what}")
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            proto = FileDescriptorProto.FromString(raw)
            found.setdefault(proto.name, proto)

    ask(ServerReflectionRequest(file_containing_symbol=service), f"service {service!r}")
    while missing := [
        dependency
        for proto in list(found.values())
        for dependency in proto.dependency
        if dependency not in found
    ]:
        if len(found) > MAX_REFLECTED_FILES:
            raise PluginError(f"service {service!r} imports more than {MAX_REFLECTED_FILES} files")
        ask(ServerReflectionRequest(file_by_filename=missing[0]), f"file {missing[0]!r}")
    return _pool(found)


def _reflection_error(exc: grpc.RpcError) -> PluginError:
    code = exc.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return PluginError("the server offers no reflection: give the step `protos`")
    retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return PluginError(f"reflection failed: {code.name}: {exc.details()}", retryable=retryable)


def proto_pool(paths: list[str]) -> DescriptorPool:
    """The descriptors of ``.proto`` files under ``ORCHESTRA_GRPC_PROTO_ROOT`` (and imports)."""
    root = Path(settings.ORCHESTRA_GRPC_PROTO_ROOT).resolve()
    stamps = []
    for path in paths:
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root) or resolved.suffix != ".proto":
            raise PluginError(f"protos: {path!r} is not a .proto file under the proto root")
        if not resolved.is_file():
            raise PluginError(f"protos: {path!r} does not exist under the proto root")
        stamps.append((str(resolved.relative_to(root)), resolved.stat().st_mtime_ns))
    return _compiled(str(root), tuple(stamps))


@lru_cache(maxsize=64)
def _compiled(root: str, stamps: tuple[tuple[str, int], ...]) -> DescriptorPool:
    """protoc's descriptor set for the files ``stamps`` names (cached while they are unchanged)."""
    from grpc_tools import protoc

    well_known = files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "set.pb"
        arguments = [
            "protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--descriptor_set_out={output}",
            "--include_imports",
            *(name for name, _ in stamps),
        ]
        if protoc.main(arguments) != 0 or not output.exists():
            # protoc printed its diagnostics to the worker's stderr; the step says which files.
            names = ", ".join(name for name, _ in stamps)
            raise PluginError(f"protos: protoc could not compile {names}")
        descriptor_set = FileDescriptorSet.FromString(output.read_bytes())
    return _pool({proto.name: proto for proto in descriptor_set.file})


def _pool(protos: dict[str, FileDescriptorProto]) -> DescriptorPool:
    """A pool holding ``protos``, each added after the files it imports."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in added or name in chain:
            return
        proto = protos.get(name)
        if proto is None:
            raise PluginError(f"the schema imports {name!r}, which nobody provided")
        for dependency in proto.dependency:
            add(dependency, (*chain, name))
        pool.Add(proto)
        added.add(name)

    for name in protos:
        add(name, ())
    return pool
