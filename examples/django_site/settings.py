"""Settings of the Django example: the smallest site that shows the integration.

Run it from the repository root, under WSGI or ASGI:
``gunicorn -w 2 examples.django_site.wsgi:application`` or
``uvicorn examples.django_site.asgi:application`` (or, for development,
``python -m django runserver --settings=examples.django_site.settings``).
``README.md`` next to this file says what it reports and how to turn that off.
"""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_site.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
USE_TZ = True

MIDDLEWARE = [
    "reqtelemetry.django.TelemetryMiddleware",  # first, so it sees everything
    "django.middleware.common.CommonMiddleware",
]
REQTELEMETRY = {
    "endpoint": os.environ.get("TELEMETRY_ENDPOINT"),  # your collector; unset: nothing is sent
    "app_name": "example-django",
    "app_version": "3.1.0",
    "exclude_paths": ["/healthz"],  # never measured
}
