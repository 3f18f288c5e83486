"""orchestra's admin site: Django's, with a dashboard on its index page."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from orchestra.dashboard import dashboard_summary
from orchestra.roles import VIEW_PERMISSION


class OrchestraAdminSite(admin.AdminSite):
    site_header = _("orchestra administration")
    site_title = _("orchestra")
    index_template = "admin/orchestra_index.html"
    # The app list beside every page takes a quarter of a 1280 px screen from the list pages'
    # columns; the breadcrumbs and the index lead to every page as well.
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        """The app list, and above it the dashboard (for users who may see the runs)."""
        context = {"flower_url": settings.ORCHESTRA_FLOWER_URL, **(extra_context or {})}
        if request.user.has_perm(VIEW_PERMISSION):
            context["dashboard"] = dashboard_summary()
        return super().index(request, extra_context=context)
