from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class QueueCatalogConfig(AppConfig):
    name = "queue_catalog"
    verbose_name = _("Scenario queue")

    def ready(self) -> None:
        from queue_catalog import receivers  # noqa: F401 - connects the signal receivers
