"""URLconf with a hidden admin, its URL a secret, for ``tests/test_privacy.py``:
once at the root, once under ``i18n_patterns``."""

from __future__ import annotations

from django.conf.urls.i18n import i18n_patterns
from django.http import HttpResponse
from django.urls import include, path

#: As cookiecutter-django reads ``DJANGO_ADMIN_URL``: a secret, ending with a slash.
ADMIN_URL = "canary-7f3a9c-admin/"
#: The admin again, under a language prefix.
LOCALIZED_ADMIN_URL = "canary-7f3a9c-console/"
LANGUAGES = [("en", "English"), ("fr", "French")]


def page(request, **kwargs):
    return HttpResponse("page")


admin_pages = [path("", page), path("users/<int:pk>/", page)]

urlpatterns = [
    path(ADMIN_URL, include(admin_pages)),
    path("items/<int:pk>/", page),
    *i18n_patterns(path(LOCALIZED_ADMIN_URL, include(admin_pages))),
]
