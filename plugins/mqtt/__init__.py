"""The ``mqtt`` plugin: publish, subscribe and listen on an MQTT broker, with paho-mqtt."""

from plugins.mqtt.plugin import MqttPlugin

__all__ = ["MqttPlugin"]
