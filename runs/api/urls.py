from django.urls import path
from rest_framework.routers import SimpleRouter

from runs.api.stats import ScenarioStatsView
from runs.api.views import DeadLetterViewSet, PluginListView, RunViewSet, ScenarioViewSet

router = SimpleRouter()
router.register("scenarios", ScenarioViewSet, basename="scenario")
router.register("runs", RunViewSet, basename="run")
router.register("dead-letters", DeadLetterViewSet, basename="dead-letter")
urlpatterns = [
    path("plugins/", PluginListView.as_view(), name="plugins"),
    path("scenarios/<int:pk>/stats/", ScenarioStatsView.as_view(), name="scenario-stats"),
    *router.urls,
]
