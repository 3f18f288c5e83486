"""``manage.py create_api_token USER [--role viewer|operator] [--create]``: print a DRF token."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

ROLE_GROUPS = {"viewer": "viewers", "operator": "operators"}


class Command(BaseCommand):
    help = "Print the API token of USER (created if missing), optionally granting a role."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(ROLE_GROUPS), help="Add USER to the role.")
        parser.add_argument("--create", action="store_true", help="Create USER if missing.")
        parser.add_argument("--reset", action="store_true", help="Replace an existing token.")

    def handle(self, *args, **options):
        User = get_user_model()
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            if not options["create"]:
                raise CommandError(f"no user {options['username']!r} (use --create)")
            user = User.objects.create_user(options["username"])
        if options["role"]:
            user.groups.add(Group.objects.get(name=ROLE_GROUPS[options["role"]]))
        if options["reset"]:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
