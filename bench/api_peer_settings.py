"""orchestra's settings with one more URL: the plain Django view of ``bench/api_peer_urls.py``.

Only ``bench/api_latency.py`` serves these, so the peer runs in the same gunicorn workers, on the
same database connection settings and broker as the API it is compared with; orchestra's own
URLconf never has it.
"""

from orchestra.settings import *  # noqa: F403 - everything of orchestra, one setting changed

ROOT_URLCONF = "bench.api_peer_urls"
