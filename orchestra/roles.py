"""The two API roles as Django groups: ``viewers`` read, ``operators`` also start, cancel,
retry and edit. Kept up to date after every ``migrate`` (and every test-database flush)."""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.management import create_permissions

ROLE_APPS = ["runs", "queue_catalog", "launches", "orchestra"]
VIEWERS, OPERATORS = "viewers", "operators"
# What each role is checked for, in the API and the admin.
VIEW_PERMISSION = "runs.view_testrun"
OPERATE_PERMISSION = "runs.operate"


def ensure_roles(*, using: str = "default") -> None:
    """Create or complete the ``viewers`` and ``operators`` groups (a post_migrate receiver)."""
    # Permissions are created per app after migrations; make sure ours exist already.
    for label in ROLE_APPS:
        create_permissions(apps.get_app_config(label), verbosity=0, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = list(
        Permission.objects.using(using).filter(
            codename__startswith="view_", content_type__app_label__in=ROLE_APPS
        )
    )
    operate = Permission.objects.using(using).get(
        codename="operate", content_type__app_label="runs"
    )
    viewers, _ = Group.objects.using(using).get_or_create(name=VIEWERS)
    viewers.permissions.add(*view)
    operators, _ = Group.objects.using(using).get_or_create(name=OPERATORS)
    operators.permissions.add(*view, operate)
