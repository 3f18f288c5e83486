"""The ``websocket`` plugin: connect, send, receive and close, in one step or over a session
kept open for the run; listeners that collect a connection's messages in the background."""

from plugins.websocket.plugin import WebSocketListener, WebSocketPlugin, WebSocketSession

__all__ = ["WebSocketListener", "WebSocketPlugin", "WebSocketSession"]
