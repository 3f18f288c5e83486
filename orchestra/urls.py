from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from orchestra.api.views import ApiRootView, HealthView, MetricsView, RedocView, SwaggerView
from runs.trends import scenario_trend_view

urlpatterns = [
    path(
        "admin/trends/scenario/<int:scenario_id>/",
        scenario_trend_view,
        name="scenario-trend",
    ),
    path("admin/", admin.site.urls),
    path("api/", ApiRootView.as_view(), name="api-root"),
    path("api/health/", HealthView.as_view(), name="health"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", include("runs.api.urls")),
    path("api/", include("queue_catalog.api.urls")),
    path("api/", include("targets.api.urls")),
    path("api/", include("launches.api.urls")),
]

handler404 = "orchestra.api.views.not_found"
