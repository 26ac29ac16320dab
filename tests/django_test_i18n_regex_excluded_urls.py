"""URLconf for tests/test_django_i18n_regex_exclusions.py: a hidden admin routed
with ``re_path`` under ``i18n_patterns``, its secret URL escaped in its regex."""

from __future__ import annotations

import re

from django.conf.urls.i18n import i18n_patterns
from django.http import HttpResponse
from django.urls import include, path, re_path

ADMIN_URL = "canary-7f3a9c.console/"
LANGUAGES = [("en", "English"), ("fr", "French")]


def page(request, **kwargs):
    return HttpResponse("page")


admin_pages = [path("", page), path("users/<int:pk>/", page)]

urlpatterns = [
    path("items/<int:pk>/", page),
    *i18n_patterns(re_path(r"^" + re.escape(ADMIN_URL), include(admin_pages))),
]
