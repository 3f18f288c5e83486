from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


class OrchestraAdminConfig(admin_apps.AdminConfig):
    """Django's admin with orchestra's site (a dashboard on the index page)."""

    default = False  # listed by its path in INSTALLED_APPS, in place of django.contrib.admin
    default_site = "orchestra.admin.OrchestraAdminSite"


class OrchestraConfig(AppConfig):
    default = True
    name = "orchestra"
    verbose_name = "orchestra"

    def ready(self) -> None:
        # Runs once per migrate, after every app's tables exist (sender: the last app).
        post_migrate.connect(_ensure_roles_after_last_app, dispatch_uid="orchestra.roles")
        post_migrate.connect(_ensure_cache_table, dispatch_uid="orchestra.cache_table")


def _ensure_roles_after_last_app(sender, using="default", **kwargs) -> None:
    from django.apps import apps

    from orchestra.roles import ensure_roles

    if sender.label == list(apps.get_app_configs())[-1].label:
        ensure_roles(using=using)


def _ensure_cache_table(sender, using="default", **kwargs) -> None:
    """The shared cache's table (settings.CACHES), made with every migrate: the demo, a
    deployment and each test database get it without a step of their own."""
    from django.core.management import call_command

    if sender.label == "orchestra":
        call_command("createcachetable", database=using, verbosity=0)
