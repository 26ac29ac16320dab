"""ASGI entry point: ``uvicorn examples.django_site.asgi:application``.

Django answers no ASGI lifespan events; ``LifespanFlush`` does, so the final
report goes out when the server shuts down (SIGTERM or Ctrl-C alike).
"""

import os

from django.core.asgi import get_asgi_application

from reqtelemetry.django import LifespanFlush

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
application = LifespanFlush(get_asgi_application())
