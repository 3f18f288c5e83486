"""The ``amqp`` plugin: publish to, consume from and listen on RabbitMQ, with kombu."""

from plugins.amqp.plugin import AmqpPlugin

__all__ = ["AmqpPlugin"]
