"""WSGI entry point: ``gunicorn -w 2 examples.django_site.wsgi:application``.

Each worker process reports as one instance of the deployment; its final
report is sent at exit (``atexit``), which gunicorn's graceful stop (SIGTERM)
lets happen.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
application = get_wsgi_application()
