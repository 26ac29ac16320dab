"""Exclusions cover APPEND_SLASH's redirect into a page routed with ``re_path``.

The redirect is answered before URL resolution; its key is the template of
the route it leads to, and that template is the route's regex
(``/canary\\-7f3a9c\\.admin/``, ``/healthz/$``), which no exclusion written as
a path matches: the redirect was recorded, the hidden admin's secret URL in
its key, while with ``path()`` it is left out.
"""

from __future__ import annotations

import json
from typing import Any


def _regex_site() -> Any:
    """Django's settings for tests/django_test_regex_excluded_urls.py: its
    URLconf, and the middleware that answers APPEND_SLASH's redirect. Entered
    inside the test, after the factory's override, so that the two unwind in order."""
    from django.test import override_settings

    return override_settings(
        ROOT_URLCONF="django_test_regex_excluded_urls",
        MIDDLEWARE=[
            "reqtelemetry.django.TelemetryMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    )


def test_redirect_into_an_excluded_regex_route_is_left_out(django_telemetry_factory, counts):
    from django.test import Client

    from django_test_regex_excluded_urls import ADMIN_URL

    telemetry = django_telemetry_factory(
        exclude_prefixes=["/" + ADMIN_URL], exclude_paths=["/healthz/"]
    )
    with _regex_site():
        client = Client(raise_request_exception=False)
        statuses = [
            client.get(path).status_code
            for path in [
                "/" + ADMIN_URL + "users/1/",  # excluded by its path
                "/" + ADMIN_URL.rstrip("/"),  # APPEND_SLASH: 301 into the excluded prefix
                "/healthz/",  # excluded by its path
                "/healthz",  # APPEND_SLASH: 301 to the excluded path
                "/items/1",  # APPEND_SLASH: 301 to a measured route, still recorded
                "/items/1/",
            ]
        ]
    assert statuses == [200, 301, 200, 301, 301, 200]
    assert counts(telemetry) == {
        ("GET", "/items/<int:pk>/", 301): 1,
        ("GET", "/items/<int:pk>/", 200): 1,
    }
    assert "canary" not in json.dumps(telemetry.snapshot())
