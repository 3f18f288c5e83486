"""Roles: viewers read; operators also start, cancel, retry and edit. Nothing is anonymous."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from orchestra.roles import OPERATE_PERMISSION, VIEW_PERMISSION


class RolePermission(BasePermission):
    """Reads need the viewer permission, writes the operator permission (Django groups
    ``viewers`` and ``operators`` carry them; superusers have both)."""

    message = "Your role does not allow this operation."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        needed = VIEW_PERMISSION if request.method in SAFE_METHODS else OPERATE_PERMISSION
        return user.has_perm(needed)
