"""Swagger UI and ReDoc are served from orchestra's own static files: they work offline."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.conftest import make_api_client
from tests.integration import test_browser

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


# The browser of tests/integration/test_browser.py (Playwright driving Debian's chromium).
page = test_browser.page


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "title"),
    [("/api/docs/", ".swagger-ui .info .title"), ("/api/redoc/", "h1")],
    ids=["swagger-ui", "redoc"],
)
def test_docs_render_in_a_browser_that_can_reach_only_our_server(
    live_server, page, path, title, tmp_path
):
    ours = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_ours(route):
        if urlsplit(route.request.url).netloc in (ours, ""):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.set_viewport_size({"width": 1280, "height": 800})
    page.route("**/*", only_ours)
    page.goto(live_server.url + path)
    page.wait_for_selector(f"{title}:has-text('orchestra API')", timeout=20_000)
    page.screenshot(path=str(tmp_path / "docs.png"))

    assert elsewhere == []
    assert (tmp_path / "docs.png").stat().st_size > 10_000
    csp = page.evaluate("fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert "default-src 'self'" in csp
