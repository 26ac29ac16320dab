"""A middleware for the Django tests, kept apart from the URLconf so that
``MIDDLEWARE`` can name it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SyncOnlyMiddleware:
    """Declares no capabilities, as most third-party middleware does.

    Django then treats it as sync-only, and every middleware before it (ours
    too) runs in sync mode even under ASGI: the case where a client's
    disconnect arrives as ``CancelledError`` through a worker thread.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)


class AnswersPreflights:
    """Answers CORS preflights before URL resolution, as django-cors-headers does."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponse

        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            return HttpResponse(headers={"Access-Control-Allow-Origin": "*"})
        return self.get_response(request)


class MovesOldPaths:
    """Redirects ``/old/items/<pk>/`` to ``/api/items/<pk>/`` before URL resolution."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponsePermanentRedirect

        if request.path_info.startswith("/old/"):
            return HttpResponsePermanentRedirect("/api/" + request.path_info[len("/old/") :])
        return self.get_response(request)


class ServesStaticFiles:
    """Answers ``/static/...`` itself, before URL resolution, as WhiteNoise does."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponse, HttpResponseNotModified

        if request.path_info.startswith("/static/"):
            if "HTTP_IF_NONE_MATCH" in request.META:
                return HttpResponseNotModified()
            return HttpResponse(b"body { color: red }", content_type="text/css")
        return self.get_response(request)
