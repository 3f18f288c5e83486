"""The ``grpc`` plugin: one unary or server-streaming call, its schema from server reflection or
from ``.proto`` files, checked by status code, JSON and trailing metadata."""

from plugins.grpc.plugin import GrpcPlugin

__all__ = ["GrpcPlugin"]
