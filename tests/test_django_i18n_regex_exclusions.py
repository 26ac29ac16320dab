"""A hidden admin routed with re_path under i18n_patterns, excluded by its
prefix as the README writes it (without a language): never sent."""

from __future__ import annotations

import json


def test_regex_admin_under_i18n_patterns_is_left_out(django_telemetry_factory, counts):
    from django.test import Client, override_settings

    from django_test_i18n_regex_excluded_urls import ADMIN_URL, LANGUAGES

    telemetry = django_telemetry_factory(exclude_prefixes=["/" + ADMIN_URL])
    with override_settings(
        ROOT_URLCONF="django_test_i18n_regex_excluded_urls",
        LANGUAGE_CODE="en",
        LANGUAGES=LANGUAGES,
        MIDDLEWARE=[
            "reqtelemetry.django.TelemetryMiddleware",
            "django.middleware.locale.LocaleMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    ):
        client = Client(raise_request_exception=False)
        statuses = [
            client.get(p).status_code
            for p in [
                "/en/" + ADMIN_URL + "users/1/",  # the page itself
                "/" + ADMIN_URL,  # LocaleMiddleware's 302 into it
                "/fr/" + ADMIN_URL.rstrip("/"),  # APPEND_SLASH's 301 into it
                "/items/1/",
            ]
        ]
    assert statuses == [200, 302, 301, 200]
    sent = json.dumps(telemetry.snapshot())
    assert counts(telemetry) == {("GET", "/items/<int:pk>/", 200): 1}, sent
    assert "canary" not in sent
