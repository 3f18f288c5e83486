from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LaunchesConfig(AppConfig):
    name = "launches"
    verbose_name = _("Launches")

    def ready(self) -> None:
        from launches import receivers  # noqa: F401 - connects the signal receivers
