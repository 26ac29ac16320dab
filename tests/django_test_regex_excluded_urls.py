"""URLconf for tests/test_django_regex_exclusions.py: excluded pages routed
with ``re_path``, whose route text is a regex, not the path it matches."""

from __future__ import annotations

import re

from django.http import HttpResponse
from django.urls import include, path, re_path

#: A hidden admin's secret URL, written into its regex escaped (re.escape).
ADMIN_URL = "canary-7f3a9c.admin/"


def page(request, **kwargs):
    return HttpResponse("page")


admin_pages = [path("", page), path("users/<int:pk>/", page)]

urlpatterns = [
    re_path(r"^" + re.escape(ADMIN_URL), include(admin_pages)),
    re_path(r"^healthz/$", page),  # as DRF's routers and old url() patterns write routes
    path("items/<int:pk>/", page),
]
