"""The ``graphql`` plugin: one GraphQL operation over HTTP, checked by status, JSON and errors."""

from plugins.graphql.plugin import GraphqlPlugin

__all__ = ["GraphqlPlugin"]
