from rest_framework.routers import SimpleRouter

from queue_catalog.api.views import QueueRecordViewSet

router = SimpleRouter()
router.register("queue", QueueRecordViewSet, basename="queue-record")
urlpatterns = router.urls
