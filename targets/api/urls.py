from rest_framework.routers import SimpleRouter

from targets.api.views import RateKeyViewSet

router = SimpleRouter()
router.register("rate-keys", RateKeyViewSet, basename="rate-key")
urlpatterns = router.urls
