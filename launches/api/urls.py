from rest_framework.routers import SimpleRouter

from launches.api.views import LaunchViewSet

router = SimpleRouter()
router.register("launches", LaunchViewSet, basename="launch")
urlpatterns = router.urls
