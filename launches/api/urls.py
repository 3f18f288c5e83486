from rest_framework.routers import SimpleRouter

from launches.api.schedules import ScheduleViewSet
from launches.api.views import LaunchViewSet

router = SimpleRouter()
router.register("launches", LaunchViewSet, basename="launch")
router.register("schedules", ScheduleViewSet, basename="schedule")
urlpatterns = router.urls
