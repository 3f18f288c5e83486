from django.apps import AppConfig


class PluginsConfig(AppConfig):
    name = "plugins"
    verbose_name = "Protocol plugins"

    def ready(self) -> None:
        from plugins.outbound import validate_settings

        # A malformed outbound entry stops start-up rather than the first step that connects.
        validate_settings()
