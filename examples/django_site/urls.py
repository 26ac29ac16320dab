"""The site's URLs: the shop's API under ``/api/`` (``include()``), and a health check."""

from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("api/", include("examples.django_site.shop.urls")),
    path("healthz", healthz),
]
