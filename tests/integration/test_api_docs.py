"""Swagger UI and ReDoc are served from orchestra's own static files: they work offline."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.conftest import make_api_client

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_page_loads_every_asset_from_our_own_server(live_server, page):
    token = make_api_client("viewer")._credentials["HTTP_AUTHORIZATION"]
    with httpx.Client(base_url=live_server.url, headers={"Authorization": token}) as client:
        response = client.get(page)
        assert response.status_code == 200
        html = response.text
        assert "cdn" not in html.lower()
        assets = ASSET.findall(html)
        assert any(asset.endswith(".js") for asset in assets), html
        for asset in assets:
            url = urljoin(live_server.url + page, asset)
            assert urlsplit(url).netloc == urlsplit(live_server.url).netloc, asset
            assert client.get(url).status_code == 200, url
        # The schema the page renders comes from the same server.
        assert client.get("/api/schema/").status_code == 200
