"""The Django middleware, through Django's WSGI test client and its ASGI AsyncClient."""

from __future__ import annotations

import asyncio
from typing import Any

import django
import pytest

from reqtelemetry.anonymize import hash_value
from reqtelemetry.telemetry import UNMATCHED_ROUTE


@pytest.fixture
def client(django_telemetry):
    from django.test import Client

    return Client(raise_request_exception=False)


def read(response) -> bytes:
    """The whole body, streaming or not (consuming it is what ends a streaming request)."""
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def spy_on_resolve(monkeypatch) -> list[str]:
    """The paths reqtelemetry resolves from now on (``django.urls.resolve``,
    which Django's own URL resolution does not call), in a list."""
    import django.urls

    resolved: list[str] = []
    real_resolve = django.urls.resolve

    def counting_resolve(path, urlconf=None):
        resolved.append(path)
        return real_resolve(path, urlconf)

    monkeypatch.setattr(django.urls, "resolve", counting_resolve)
    return resolved


def run_async(requests):
    """Run ``[(method, path, kwargs), ...]`` through Django's ASGI handler."""
    from django.test import AsyncClient

    async def go():
        client = AsyncClient(raise_request_exception=False)
        responses = []
        for method, path, kwargs in requests:
            response = await getattr(client, method.lower())(path, **kwargs)
            if response.streaming and response.is_async:
                body = b"".join([chunk async for chunk in response.streaming_content])
            elif response.streaming:
                body = b"".join(response.streaming_content)
            else:
                body = response.content
            responses.append((response, body))
        return responses

    return asyncio.run(go())


def serve_asgi(
    path,
    method="GET",
    client_leaves=False,
    leave_at_body=None,
    chunks=(),
    headers=(),
    application=None,
):
    """Drive Django's own ASGI handler (or ``application`` in front of it) as a
    server would; returns the messages it sent.

    ``chunks`` are the request body's, in one ``http.request`` message each;
    ``headers`` go with the request's own.

    With ``client_leaves`` the client disconnects once the view sets the scope's
    ``test.gate`` (an asyncio.Event); with ``leave_at_body=n`` once Django sends
    the n-th body message, which then never completes. Nothing depends on timing.
    """
    from django.core.asgi import get_asgi_application

    async def go():
        app = application if application is not None else get_asgi_application()
        gate = asyncio.Event()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "test.gate": gate,
        }
        body = list(chunks) or [b""]
        sent = []

        async def receive():
            if body:
                return {"type": "http.request", "body": body.pop(0), "more_body": bool(body)}
            # Django listens for the disconnect; it cancels this once it has answered.
            await (gate.wait() if client_leaves or leave_at_body else asyncio.Event().wait())
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if (
                leave_at_body
                and sum(m["type"] == "http.response.body" for m in sent) == leave_at_body
            ):
                gate.set()
                await asyncio.Event().wait()  # until Django cancels the send

        await app(scope, receive, send)
        return sent

    return asyncio.run(go())


def body_of(messages) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def get_telemetry():
    from reqtelemetry.django import get_telemetry

    return get_telemetry()


def test_get_telemetry_is_the_configured_instance(django_telemetry):
    assert get_telemetry() is django_telemetry
    assert get_telemetry() is get_telemetry()


def test_include_prefixes_give_full_templates(client, django_telemetry, counts):
    for path in [
        "/api/items/",
        "/api/items/1/",
        "/api/items/2/",
        "/api/v2/items/3/",
        "/api/items/archive/2024/",
        "/legacy/some-slug/",
        "/echo/a/b/c",
        "/",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
    assert counts(django_telemetry) == {
        ("GET", "/api/items/", 200): 1,
        ("GET", "/api/items/<int:pk>/", 200): 2,
        ("GET", "/api/v2/items/<int:pk>/", 200): 1,
        # re_path templates are the regex, without its "^" (as Django joins them).
        ("GET", "/api/items/archive/(?P<year>[0-9]{4})/$", 200): 1,
        ("GET", "/legacy/(?P<slug>[-\\w]+)/$", 200): 1,
        ("GET", "/echo/<path:anything>", 200): 1,
        ("GET", "/", 200): 1,
    }


def test_snapshot_through_get_telemetry(client, django_telemetry):
    client.get("/api/items/5/")
    (record,) = get_telemetry().snapshot()
    assert record["route"] == "/api/items/<int:pk>/"
    assert record["count"] == 1


def test_404_is_unmatched(client, django_telemetry, counts):
    for path in ["/nope/", "/api/items/notanint/", "/wp-admin/", "/api/items/archive/99/"]:
        assert client.get(path).status_code == 404
    assert counts(django_telemetry) == {("GET", UNMATCHED_ROUTE, 404): 4}


def test_a_request_a_middleware_around_left_out_is_not_measured(
    django_telemetry_factory, make_telemetry, counts
):
    """A middleware of the same telemetry around Django (a mount's, whose
    path still had the excluded prefix) marks what it leaves out: Django's
    middleware, seeing the path without that prefix, measured it. Another
    telemetry's mark is that telemetry's business: measured here as ever."""
    from django.test import Client

    from reqtelemetry.telemetry import MEASURED_KEY, ExcludedMark

    telemetry = django_telemetry_factory()
    client = Client()
    assert client.get("/api/items/1/", **{MEASURED_KEY: ExcludedMark(telemetry)}).status_code == 200
    assert counts(telemetry) == {}
    other = ExcludedMark(make_telemetry())
    assert client.get("/api/items/2/", **{MEASURED_KEY: other}).status_code == 200
    assert counts(telemetry) == {("GET", "/api/items/<int:pk>/", 200): 1}


def test_answers_before_url_resolution_are_keyed_by_the_route_they_are_for(
    django_telemetry, counts
):
    """``APPEND_SLASH``'s redirect and a CORS preflight answered in
    middleware never reach URL resolution: they were ``<unmatched>`` (a key
    per id with ``group_unmatched`` off), where Flask's and Starlette's
    are keyed by their route. A 404 is still never resolved again."""
    from django.test import Client, override_settings

    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django_test_middleware.AnswersPreflights",
    ]
    with override_settings(MIDDLEWARE=middleware, APPEND_SLASH=True):
        client = Client()
        for pk in range(3):
            assert client.get(f"/api/items/{pk}").status_code == 301
            preflight = client.options(
                f"/api/items/{pk}/", HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT"
            )
            assert preflight.status_code == 200
        assert client.get("/nope").status_code == 404
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 301): 3,
        ("OPTIONS", "/api/items/<int:pk>/", 200): 3,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_an_options_request_django_found_no_route_for_is_not_resolved_again(
    django_telemetry, counts, monkeypatch
):
    """A 404 went through URL resolution already: an ``OPTIONS`` one (a
    scanner's) must not walk the URLconf a second time, as no other 404 does."""
    from django.test import Client

    resolved = spy_on_resolve(monkeypatch)
    assert Client().options("/nowhere/123/").status_code == 404
    assert resolved == []
    assert counts(django_telemetry) == {("OPTIONS", UNMATCHED_ROUTE, 404): 1}


def _per_site_cache() -> Any:
    """Django's per-site cache (in memory), around the middleware, as its docs place it."""
    from django.test import override_settings

    return override_settings(
        MIDDLEWARE=[
            "reqtelemetry.django.TelemetryMiddleware",
            "django.middleware.cache.UpdateCacheMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.cache.FetchFromCacheMiddleware",
        ],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        CACHE_MIDDLEWARE_SECONDS=600,
    )


def test_pages_the_cache_answers_are_keyed_by_their_route(django_telemetry, counts):
    """A site cached per page answers every hit in FetchFromCacheMiddleware,
    before URL resolution: the hits were ``<unmatched>``, or a key per id
    with ``group_unmatched`` off, filling ``max_keys``."""
    from django.test import Client

    with _per_site_cache():
        from django.core.cache import cache

        cache.clear()
        client = Client()
        for pk in (1, 2, 1, 2, 1):
            response = client.get(f"/api/items/{pk}/")
            assert response.status_code == 200
            assert response.has_header("Expires")  # from the cache middleware
        assert client.get("/nope/").status_code == 404
        cache.clear()
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 5,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_cached_pages_outside_ascii_are_resolved_each_time_not_remembered(
    django_telemetry, counts, monkeypatch
):
    """The paths remembered for cached pages are bounded in bytes: a path
    outside ASCII may take 4 bytes a character in memory, so it is resolved
    at each hit instead, to the same route; an ASCII path is resolved once."""
    from django.test import Client

    with _per_site_cache():
        from django.core.cache import cache

        cache.clear()
        client = Client()
        for path in ("/legacy/caf%C3%A9/", "/legacy/plain/"):
            assert client.get(path).status_code == 200  # a miss: resolved by Django
        resolved = spy_on_resolve(monkeypatch)
        for _ in range(3):
            for path in ("/legacy/caf%C3%A9/", "/legacy/plain/"):
                assert client.get(path).status_code == 200  # hits
        cache.clear()
    assert resolved == ["/legacy/caf\u00e9/", "/legacy/plain/"] + ["/legacy/caf\u00e9/"] * 2
    assert counts(django_telemetry) == {("GET", "/legacy/(?P<slug>[-\\w]+)/$", 200): 8}


def test_other_methods_the_cache_passes_on_are_not_resolved_again(
    django_telemetry, counts, monkeypatch
):
    """The cache middleware marks every method but GET and HEAD as it marks a
    hit; those go on to URL resolution, and a 404 among them must not pay
    for a second walk of the URLconf (nor leave its path remembered)."""
    from django.test import Client

    with _per_site_cache():
        client = Client()
        resolved = spy_on_resolve(monkeypatch)
        for pk in range(3):
            assert client.post(f"/nowhere/{pk}/").status_code == 404
    assert resolved == []
    assert counts(django_telemetry) == {("POST", UNMATCHED_ROUTE, 404): 3}


def test_view_exception_is_500(client, django_telemetry, counts):
    response = client.get("/boom/")
    assert response.status_code == 500
    assert counts(django_telemetry) == {("GET", "/boom/", 500): 1}


def test_view_exception_reraised_by_test_client_is_500(django_telemetry, counts):
    from django.test import Client

    with pytest.raises(RuntimeError, match="the django view failed"):
        Client().get("/boom/")
    assert counts(django_telemetry) == {("GET", "/boom/", 500): 1}


def test_request_and_response_bytes(client, django_telemetry, records):
    response = client.post("/api/items/", data=b"x" * 777, content_type="application/octet-stream")
    assert response.status_code == 201
    record = records(django_telemetry)["POST", "/api/items/", 201]
    assert record["request_bytes"] == 777
    assert record["response_bytes"] == len(response.content)


def test_streaming_response(client, django_telemetry, records):
    response = client.get("/stream/")
    assert django_telemetry.snapshot() == []  # not finished until the body has gone out
    body = read(response)
    assert body == b"".join(f"line {i}\n".encode() for i in range(10))
    record = records(django_telemetry)["GET", "/stream/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body)


def test_streaming_closed_early_is_499(client, django_telemetry, records):
    response = client.get("/stream/")
    iterator = iter(response.streaming_content)
    first = next(iterator)
    response.close()  # the server stops early: the client went away
    record = records(django_telemetry)["GET", "/stream/", 499]
    assert record["response_bytes"] == len(first)


def test_streaming_error_is_500(client, django_telemetry, records):
    response = client.get("/stream-boom/")
    with pytest.raises(RuntimeError, match="the django stream failed"):
        read(response)
    record = records(django_telemetry)["GET", "/stream-boom/", 500]
    assert record["count"] == 1
    assert record["response_bytes"] == len(b"before the failure\n")


def test_streaming_head_is_recorded_once(client, django_telemetry, records):
    """The test client empties a streaming body for HEAD: the stream is never started."""
    response = client.head("/stream/")
    assert response.status_code == 200
    assert read(response) == b""
    record = records(django_telemetry)["HEAD", "/stream/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == 0


def test_streaming_closed_before_the_first_chunk_is_recorded_once(
    client, django_telemetry, records
):
    response = client.get("/stream/")
    response.close()  # the server closes the response without ever iterating it
    response.close()
    assert len(django_telemetry.snapshot()) == 1
    record = records(django_telemetry)["GET", "/stream/", 200]  # the status it answered
    assert record["count"] == 1
    assert record["response_bytes"] == 0


def test_streaming_exhausted_then_closed_is_recorded_once(client, django_telemetry, counts):
    response = client.get("/stream/")
    read(response)  # the test client closes the response at the end
    response.close()
    assert counts(django_telemetry) == {("GET", "/stream/", 200): 1}


def test_file_response(client, django_telemetry, records):
    from pathlib import Path

    import django_test_urls

    size = Path(django_test_urls.__file__).stat().st_size
    response = client.get("/download/")
    assert int(response["Content-Length"]) == size
    assert django_telemetry.snapshot() == []  # recorded at close, when the file is sent
    assert len(read(response)) == size
    record = records(django_telemetry)["GET", "/download/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == size  # the length Django declared
    assert django_telemetry.internal_errors == 0


def test_file_response_head_is_recorded_once(client, django_telemetry, records):
    response = client.head("/download/")
    assert read(response) == b""
    record = records(django_telemetry)["HEAD", "/download/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == 0
    assert django_telemetry.internal_errors == 0


def test_file_response_keeps_the_wsgi_servers_file_wrapper(django_telemetry, records):
    """A real WSGI server (wsgiref) gets the file in its own ``wsgi.file_wrapper``,
    the object a server such as gunicorn sends with ``sendfile()``."""
    import threading
    import urllib.request
    from pathlib import Path
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.core.wsgi import get_wsgi_application

    import django_test_urls

    django_application = get_wsgi_application()
    returned = []

    def application(environ, start_response):
        result = django_application(environ, start_response)
        returned.append((result, environ["wsgi.file_wrapper"]))
        return result

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, application, handler_class=QuietHandler)
    serving = threading.Thread(target=server.handle_request)  # one request, closed at its end
    serving.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/download/"
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = answer.read()
    finally:
        serving.join()
        server.server_close()
    assert body == Path(django_test_urls.__file__).read_bytes()
    ((result, file_wrapper),) = returned
    assert isinstance(result, file_wrapper)
    record = records(django_telemetry)["GET", "/download/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body)
    assert django_telemetry.internal_errors == 0


def test_head(client, django_telemetry, records):
    response = client.head("/api/items/1/")
    assert response.status_code == 200
    assert response.content == b""
    record = records(django_telemetry)["HEAD", "/api/items/<int:pk>/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == 0  # no body goes out in answer to HEAD


def test_unknown_method_is_other(client, django_telemetry, counts):
    response = client.generic("BREW", "/echo/pot")
    assert response.status_code == 200
    assert counts(django_telemetry) == {("_OTHER", "/echo/<path:anything>", 200): 1}


def test_excluded_paths(django_telemetry_factory, counts):
    from django.test import Client

    telemetry = django_telemetry_factory(exclude_paths=["/health/"], exclude_prefixes=["/echo/"])
    client = Client()
    assert client.get("/health/").status_code == 200
    assert client.get("/echo/x").status_code == 200
    assert telemetry.snapshot() == []
    assert client.get("/api/items/").status_code == 200
    assert counts(telemetry) == {("GET", "/api/items/", 200): 1}


def test_opted_out(django_telemetry_factory):
    from django.test import Client

    telemetry = django_telemetry_factory(opt_out=True)
    assert Client().get("/api/items/1/").status_code == 200
    assert telemetry.snapshot() == []


@pytest.mark.parametrize("opt_out", [True, False])
def test_opted_out_middleware_leaves_the_chain(django_telemetry_factory, opt_out):
    """Opted out, Django drops the middleware when it builds the chain: no cost per request."""
    from django.core.exceptions import MiddlewareNotUsed
    from django.core.handlers.base import BaseHandler

    from reqtelemetry.django import TelemetryMiddleware

    django_telemetry_factory(opt_out=opt_out)
    if opt_out:
        with pytest.raises(MiddlewareNotUsed, match="opt_out"):
            TelemetryMiddleware(lambda request: None)
    handler = BaseHandler()
    handler.load_middleware()
    chain, kinds = handler._middleware_chain, []
    while chain is not None:  # each wrapper names its middleware; each middleware the next
        chain = getattr(chain, "__wrapped__", chain)
        kinds.append(type(chain).__name__)
        chain = getattr(chain, "get_response", None)
    assert ("TelemetryMiddleware" in kinds) is not opt_out
    assert kinds[-1] == "method"  # the walk reached the handler's own _get_response


def test_settings_dict_options(django_telemetry, monkeypatch, counts):
    """``settings.REQTELEMETRY`` as plain options builds the shared instance itself."""
    from django.test import Client, override_settings

    from reqtelemetry.django import reset_telemetry

    for variable in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        monkeypatch.delenv(variable, raising=False)
    with override_settings(REQTELEMETRY={"exclude_paths": ["/health/"], "app_name": "dj"}):
        reset_telemetry()
        try:
            client = Client()
            client.get("/health/")
            client.get("/api/items/")
            telemetry = get_telemetry()
            assert telemetry is not django_telemetry
            assert telemetry.config.app_name == "dj"
            assert counts(telemetry) == {("GET", "/api/items/", 200): 1}
        finally:
            reset_telemetry()


def test_many_clients_share_one_telemetry(django_telemetry, counts):
    from django.test import Client

    for _ in range(3):
        Client().get("/api/items/1/")
    assert counts(django_telemetry) == {("GET", "/api/items/<int:pk>/", 200): 3}


# -- ASGI (AsyncClient) -----------------------------------------------------------------


def test_async_client_templates_and_statuses(django_telemetry, counts):
    responses = run_async(
        [
            ("GET", "/api/v2/async/7/", {}),
            ("GET", "/api/items/3/", {}),  # a sync view under ASGI
            ("GET", "/api/v2/items/archive/2020/", {}),
            ("GET", "/nope/", {}),
            ("GET", "/async-boom/", {}),
            ("GET", "/boom/", {}),
            ("HEAD", "/api/v2/async/8/", {}),
        ]
    )
    assert [r.status_code for r, _ in responses] == [200, 200, 200, 404, 500, 500, 200]
    assert responses[0][1] == b'{"pk": 7, "async": true}'
    assert counts(django_telemetry) == {
        ("GET", "/api/v2/async/<int:pk>/", 200): 1,
        ("GET", "/api/items/<int:pk>/", 200): 1,
        ("GET", "/api/v2/items/archive/(?P<year>[0-9]{4})/$", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
        ("GET", "/async-boom/", 500): 1,
        ("GET", "/boom/", 500): 1,
        ("HEAD", "/api/v2/async/<int:pk>/", 200): 1,
    }


def test_async_streaming(django_telemetry, records):
    ((response, body),) = run_async([("GET", "/async-stream/", {})])
    assert response.status_code == 200
    assert body == b"".join(f"async {i}\n".encode() for i in range(5))
    record = records(django_telemetry)["GET", "/async-stream/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body)


def test_sync_streaming_under_asgi(django_telemetry, records):
    ((_, body),) = run_async([("GET", "/stream/", {})])
    assert body == b"".join(f"line {i}\n".encode() for i in range(10))
    assert records(django_telemetry)["GET", "/stream/", 200]["response_bytes"] == len(body)


def test_async_streaming_under_wsgi(client, django_telemetry, records):
    import warnings

    response = client.get("/async-stream/")
    with warnings.catch_warnings():  # Django warns that it must consume an async iterator
        warnings.simplefilter("ignore")
        body = b"".join(response)
    assert body == b"".join(f"async {i}\n".encode() for i in range(5))
    assert records(django_telemetry)["GET", "/async-stream/", 200]["response_bytes"] == len(body)


def test_async_streaming_head_is_recorded_once(django_telemetry, records):
    ((response, body),) = run_async([("HEAD", "/async-stream/", {})])
    assert response.status_code == 200
    assert body == b""
    record = records(django_telemetry)["HEAD", "/async-stream/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == 0


#: Django cancels a request whose client left from 5.0 on; before, its view runs
#: on (Django 4.2 reads ``http.disconnect`` only while it reads the body), and
#: a test that waits for the cancel would wait forever.
needs_django_5 = pytest.mark.skipif(
    django.VERSION < (5, 0), reason="Django cancels requests from 5.0 on"
)


@needs_django_5
def test_asgi_client_leaving_during_the_view_is_499(django_telemetry, counts):
    """Django cancels the request's task when the client leaves: that is no 500."""
    sent = serve_asgi("/async-hang/", client_leaves=True)
    assert sent == []
    assert counts(django_telemetry) == {("GET", "/async-hang/", 499): 1}


@needs_django_5
def test_asgi_client_leaving_with_a_sync_middleware_after_ours_is_499(django_telemetry, counts):
    """A sync-only middleware after ours makes Django run ours in sync mode: the
    cancellation then reaches it as ``CancelledError`` through a worker thread."""
    from django.test import override_settings

    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django_test_middleware.SyncOnlyMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware):
        sent = serve_asgi("/async-hang/", client_leaves=True)
    assert sent == []
    assert counts(django_telemetry) == {("GET", "/async-hang/", 499): 1}


@needs_django_5
def test_asgi_client_leaving_mid_stream_is_499(django_telemetry, records):
    sent = serve_asgi("/async-stream-hang/", client_leaves=True)
    assert sent[0]["status"] == 200
    assert body_of(sent) == b"first\n"
    assert len(django_telemetry.snapshot()) == 1
    record = records(django_telemetry)["GET", "/async-stream-hang/", 499]
    assert record["count"] == 1
    assert record["response_bytes"] == len(b"first\n")


@needs_django_5
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_asgi_client_leaving_inside_a_sync_stream_is_499(django_telemetry, records):
    """Django consumes a sync body in a worker thread; a cancellation that reaches
    the body (through ``async_to_sync``) arrives there as ``CancelledError``."""
    sent = serve_asgi("/sync-stream-hang/", client_leaves=True)
    assert body_of(sent) == b""  # Django sends a sync body only once it has all of it
    assert len(django_telemetry.snapshot()) == 1
    record = records(django_telemetry)["GET", "/sync-stream-hang/", 499]
    assert record["count"] == 1
    assert record["response_bytes"] == len(b"first\n")


@needs_django_5
def test_asgi_client_leaving_during_a_send_is_499(django_telemetry, records):
    """Cancelled in the server's send, outside the body: recorded at the response's close."""
    sent = serve_asgi("/async-stream/", leave_at_body=2)
    assert body_of(sent) == b"async 0\nasync 1\n"
    assert len(django_telemetry.snapshot()) == 1
    record = records(django_telemetry)["GET", "/async-stream/", 499]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body_of(sent))


def test_asgi_streaming_through_djangos_handler(django_telemetry, records):
    sent = serve_asgi("/async-stream/")
    assert body_of(sent) == b"".join(f"async {i}\n".encode() for i in range(5))
    record = records(django_telemetry)["GET", "/async-stream/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body_of(sent))


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_file_response_under_asgi(django_telemetry, records):
    """Django's ASGI handler streams a FileResponse itself: its bytes are counted as they pass."""
    from pathlib import Path

    import django_test_urls

    sent = serve_asgi("/download/")
    assert sent[0]["status"] == 200
    assert body_of(sent) == Path(django_test_urls.__file__).read_bytes()
    record = records(django_telemetry)["GET", "/download/", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == len(body_of(sent))
    assert django_telemetry.internal_errors == 0


def test_async_request_bytes(django_telemetry, records):
    ((response, body),) = run_async(
        [("POST", "/api/items/", {"data": b"y" * 99, "content_type": "application/octet-stream"})]
    )
    assert response.status_code == 201
    record = records(django_telemetry)["POST", "/api/items/", 201]
    assert record["request_bytes"] == 99
    assert record["response_bytes"] == len(body)


def test_a_chunked_upload_under_asgi_counts_its_bytes(django_telemetry, records):
    """Without a declared ``Content-Length`` (a chunked upload, which Django's
    ASGI handler reads whole before the view) the body's size is what arrived:
    it was 0."""
    chunks = [b"z" * 70_000] * 3
    sent = serve_asgi(
        "/api/items/", "POST", chunks=chunks, headers=[(b"transfer-encoding", b"chunked")]
    )
    assert sent[0]["status"] == 201 and body_of(sent) == b"created 210000 bytes"
    record = records(django_telemetry)["POST", "/api/items/", 201]
    assert record["request_bytes"] == 210_000


def test_route_less_django_request_is_anonymized_when_not_grouped(django_telemetry_factory, counts):
    from django.test import Client

    telemetry = django_telemetry_factory(group_unmatched=False, allowed_path_segments=["nope"])
    Client().get("/nope/secret-42/")
    salt = telemetry.anonymizer._salt
    assert counts(telemetry) == {("GET", f"/nope/{hash_value('secret-42', salt)}/", 404): 1}


# -- i18n: i18n_patterns and translated routes -------------------------------------------


@pytest.fixture
def localized_site(django_telemetry, tmp_path):
    """``site(urlconf)``: settings for a localized site (four languages, ``LocaleMiddleware``,
    the test translations in ``LOCALE_PATHS``), as a context manager."""
    from django.test import override_settings

    import django_test_i18n_urls

    django_test_i18n_urls.write_catalogs(tmp_path)

    def site(urlconf="django_test_i18n_urls"):
        return override_settings(
            ROOT_URLCONF=urlconf,
            LANGUAGE_CODE="en",
            LANGUAGES=django_test_i18n_urls.LANGUAGES,
            LOCALE_PATHS=[str(tmp_path)],
            MIDDLEWARE=[
                "reqtelemetry.django.TelemetryMiddleware",
                "django.middleware.locale.LocaleMiddleware",
            ],
        )

    return site


def get_all(paths, **headers):
    """GET each path through Django's test client; the statuses, in order."""
    from django.test import Client

    client = Client(raise_request_exception=False)
    return [client.get(path, **headers).status_code for path in paths]


def assert_no_language_in(routes):
    """No segment of a key may tell a language apart: a code or a translation."""
    from django_test_i18n_urls import LANGUAGES, TRANSLATIONS

    telling = {code for code, _ in LANGUAGES} | {
        part
        for translations in TRANSLATIONS.values()
        for translated in translations.values()
        for part in translated.strip("^$").split("/")
        if part and "<" not in part
    }
    for route in routes:
        assert not set(route.split("/")) & telling, route


def test_i18n_patterns_give_one_key_per_endpoint(localized_site, django_telemetry, counts):
    with localized_site():
        assert (
            get_all(["/en/about/7/", "/fr/about/7/", "/de/about/8/", "/es/about/9/"]) == [200] * 4
        )
    assert counts(django_telemetry) == {("GET", "/<language-code>/about/<int:pk>/", 200): 4}


def test_translated_routes_are_keyed_in_the_default_language(
    localized_site, django_telemetry, counts
):
    paths = {
        "/<language-code>/account/": ["/en/account/", "/fr/compte/", "/de/konto/", "/es/account/"],
        "/<language-code>/shop/basket/<int:pk>/": [
            "/en/shop/basket/1/",
            "/fr/boutique/panier/2/",
            "/de/laden/korb/3/",
        ],
        "/<language-code>/news/(?P<slug>[-\\w]+)/$": ["/fr/actualites/a/", "/de/nachrichten/b/"],
    }
    with localized_site():
        for requested in paths.values():
            assert get_all(requested) == [200] * len(requested), requested
        # Without a language prefix the language comes from the request's headers.
        assert get_all(["/aide/"], HTTP_ACCEPT_LANGUAGE="fr") == [200]
        assert get_all(["/hilfe/"], HTTP_ACCEPT_LANGUAGE="de") == [200]
        assert get_all(["/help/"]) == [200]
    expected = {("GET", route, 200): len(requested) for route, requested in paths.items()}
    assert counts(django_telemetry) == {**expected, ("GET", "/help/", 200): 3}
    assert_no_language_in(route for _, route, _ in counts(django_telemetry))


def test_the_redirect_to_a_language_prefix_is_keyed_by_its_target(
    localized_site, django_telemetry, counts
):
    """``LocaleMiddleware`` redirects ``/about/7/`` to ``/en/about/7/`` before
    URL resolution: it was ``<unmatched>``, a key per id with
    ``group_unmatched`` off. The redirect's target on this site is resolved."""
    with localized_site():
        assert get_all(["/about/7/", "/about/8/"]) == [302, 302]
        assert get_all(["/about/7/"], HTTP_ACCEPT_LANGUAGE="fr") == [302]
    assert counts(django_telemetry) == {("GET", "/<language-code>/about/<int:pk>/", 302): 3}


def test_a_redirect_to_a_language_prefix_and_a_slash_is_keyed_by_its_target(
    localized_site, django_telemetry, counts
):
    """``/about/4`` goes to ``/fr/about/4/``: LocaleMiddleware adds the slash
    too (``APPEND_SLASH``), and the target is still the same path under a
    language prefix."""
    with localized_site():
        assert get_all(["/about/4"], HTTP_ACCEPT_LANGUAGE="fr") == [302]
        assert get_all(["/about/5"]) == [302]
    assert counts(django_telemetry) == {("GET", "/<language-code>/about/<int:pk>/", 302): 2}


def _redirected_to_https_first():
    """SecurityMiddleware ahead of LocaleMiddleware, as Django's default
    ``MIDDLEWARE`` orders them: its HTTPS redirect answers before any
    language is activated for the request."""
    from django.test import override_settings

    return override_settings(
        SECURE_SSL_REDIRECT=True,
        MIDDLEWARE=[
            "reqtelemetry.django.TelemetryMiddleware",
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.locale.LocaleMiddleware",
        ],
    )


def test_redirects_before_locale_middleware_resolve_in_the_paths_language(
    localized_site, django_telemetry, counts
):
    """Resolved in whatever language the thread's last request left active,
    ``/fr/about/2/`` was unmatched, and ``/en/about/5/`` too after it."""
    paths = ["/fr/about/2/", "/en/about/5/", "/de/konto/", "/es/about/6/", "/fr/compte/"]
    with localized_site(), _redirected_to_https_first():
        assert get_all(paths) == [301] * 5
    assert counts(django_telemetry) == {
        ("GET", "/<language-code>/about/<int:pk>/", 301): 3,
        ("GET", "/<language-code>/account/", 301): 2,
    }


def test_redirects_before_locale_middleware_under_asgi(localized_site, django_telemetry, counts):
    """Under ASGI every request starts in the default language: only
    ``/en/...`` was keyed by its route."""
    with localized_site(), _redirected_to_https_first():
        responses = run_async([("GET", "/fr/about/2/", {}), ("GET", "/de/laden/korb/3/", {})])
    assert [response.status_code for response, _ in responses] == [301, 301]
    assert counts(django_telemetry) == {
        ("GET", "/<language-code>/about/<int:pk>/", 301): 1,
        ("GET", "/<language-code>/shop/basket/<int:pk>/", 301): 1,
    }


def test_an_unprefixed_default_language_path_resolves_in_the_default_language(
    localized_site, django_telemetry, counts
):
    """``prefix_default_language=False``: a path without a prefix is the
    default language's, as LocaleMiddleware decides, whatever the thread's
    last request left active."""
    with localized_site("django_test_i18n_unprefixed_urls"), _redirected_to_https_first():
        assert get_all(["/fr/about/7/", "/about/7/", "/de/konto/", "/account/"]) == [301] * 4
    assert counts(django_telemetry) == {
        ("GET", "/<language-code>/about/<int:pk>/", 301): 2,
        ("GET", "/<language-code>/account/", 301): 2,
    }


def test_files_served_before_resolution_are_not_resolved_again(
    django_telemetry, counts, monkeypatch
):
    """Answers other than redirects and ``OPTIONS`` (a WhiteNoise's files,
    200 and 304) stay unmatched without a walk of the URLconf each: resolving
    them took a static file from 1.2 to 22.9 µs (a diff review's count)."""
    from django.test import Client, override_settings

    resolved = spy_on_resolve(monkeypatch)
    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django_test_middleware.ServesStaticFiles",
    ]
    with override_settings(MIDDLEWARE=middleware):
        client = Client()
        assert client.get("/static/site.css").status_code == 200
        assert client.get("/static/site.css", HTTP_IF_NONE_MATCH='"x"').status_code == 304
    assert resolved == []
    assert counts(django_telemetry) == {
        ("GET", UNMATCHED_ROUTE, 200): 1,
        ("GET", UNMATCHED_ROUTE, 304): 1,
    }


def test_a_redirect_elsewhere_before_resolution_stays_unmatched(django_telemetry, counts):
    """A middleware moving an old path to a route's: the request was not for
    that route (Flask's ``redirect_to`` stays unmatched too)."""
    from django.test import Client, override_settings

    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django_test_middleware.MovesOldPaths",
    ]
    with override_settings(MIDDLEWARE=middleware):
        response = Client().get("/old/items/5/")
    assert response.status_code == 301
    assert response["Location"] == "/api/items/5/"
    assert counts(django_telemetry) == {("GET", UNMATCHED_ROUTE, 301): 1}


def test_unprefixed_default_language_shares_the_key(localized_site, django_telemetry, counts):
    """``prefix_default_language=False``: the default language has no prefix, same endpoint."""
    with localized_site("django_test_i18n_unprefixed_urls"):
        assert get_all(["/about/7/", "/fr/about/7/", "/de/about/8/"]) == [200] * 3
        assert get_all(["/account/", "/fr/compte/", "/de/konto/"]) == [200] * 3
    assert counts(django_telemetry) == {
        ("GET", "/<language-code>/about/<int:pk>/", 200): 3,
        ("GET", "/<language-code>/account/", 200): 3,
    }


def test_plain_routes_next_to_localized_ones_are_unchanged(
    localized_site, django_telemetry, counts
):
    with localized_site():
        assert get_all(["/api/items/1/", "/fr/about/1/", "/api/items/2/", "/fr/nope/"]) == [
            200,
            200,
            200,
            404,
        ]
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 2,
        ("GET", "/<language-code>/about/<int:pk>/", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_i18n_patterns_under_asgi(localized_site, django_telemetry, counts):
    with localized_site():
        responses = run_async([("GET", "/fr/boutique/panier/4/", {}), ("GET", "/de/about/5/", {})])
    assert [response.status_code for response, _ in responses] == [200, 200]
    assert counts(django_telemetry) == {
        ("GET", "/<language-code>/shop/basket/<int:pk>/", 200): 1,
        ("GET", "/<language-code>/about/<int:pk>/", 200): 1,
    }


def test_a_match_without_its_chain_keeps_djangos_route(django_telemetry):
    """A custom resolver may leave ``tried`` out: Django's route text is the key."""
    from types import SimpleNamespace

    from reqtelemetry.django import TelemetryMiddleware

    middleware = TelemetryMiddleware(lambda request: None)
    for tried in (None, [], [[]]):
        match = SimpleNamespace(route="^fr/about/<int:pk>/", tried=tried)
        assert middleware._template_of(match) == "/fr/about/<int:pk>/"


def test_without_django_the_import_error_names_the_extra():
    """Without Django its dependency asgiref is the first import to fail, and
    "No module named 'asgiref'" did not say what to install."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['asgiref'] = None  # as if Django (and asgiref with it) were not installed\n"
        "import reqtelemetry.django\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: reqtelemetry's Django integration needs Django: "
        "pip install 'reqtelemetry[django]'"
    )


# -- how the middleware is listed, and settings.REQTELEMETRY --------------------------------


def _middleware_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "reqtelemetry" and "settings.MIDDLEWARE" in r.getMessage()
    ]


def test_listed_twice_counts_each_request_once_and_says_so(
    django_telemetry, counts, records, caplog
):
    # Listed twice, every request was counted twice, silently.
    from django.test import Client, override_settings

    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django.middleware.common.CommonMiddleware",
        "reqtelemetry.django.TelemetryMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware), caplog.at_level("WARNING"):
        client = Client()
        for pk in range(3):
            assert client.get(f"/api/items/{pk}/").status_code == 200
        run_async([("GET", "/api/v2/async/5/", {})])
        body = read(Client().get("/stream/"))
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 3,
        ("GET", "/api/v2/async/<int:pk>/", 200): 1,
        ("GET", "/stream/", 200): 1,
    }
    assert records(django_telemetry)["GET", "/stream/", 200]["response_bytes"] == len(body)
    warned = _middleware_warnings(caplog)
    assert len(warned) == 1  # once per list, however many chains are built
    assert "2 times" in warned[0]


def test_a_middleware_of_the_same_telemetry_around_django_leaves_it_the_request(
    django_telemetry, django_telemetry_factory, counts
):
    """``WSGIMiddleware`` or ``ASGIMiddleware`` around Django, and the middleware
    in ``settings.MIDDLEWARE``: Django's measures, with its route, each request once."""
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from werkzeug.test import Client as WerkzeugClient

    from reqtelemetry import ASGIMiddleware, WSGIMiddleware

    wsgi = WerkzeugClient(WSGIMiddleware(get_wsgi_application(), telemetry=django_telemetry))
    assert wsgi.get("/api/items/1/").data == b'{"pk": 1}'
    asgi = ASGIMiddleware(get_asgi_application(), telemetry=django_telemetry)
    sent = serve_asgi("/api/v2/async/5/", application=asgi)
    assert (sent[0]["status"], body_of(sent)) == (200, b'{"pk": 5, "async": true}')
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 1,
        ("GET", "/api/v2/async/<int:pk>/", 200): 1,
    }

    # A copy of the environ or scope between them changes nothing.
    copying_wsgi = get_wsgi_application()
    wsgi = WerkzeugClient(
        WSGIMiddleware(lambda e, s: copying_wsgi(dict(e), s), telemetry=django_telemetry)
    )
    assert wsgi.get("/api/items/3/").data == b'{"pk": 3}'
    copying_asgi = get_asgi_application()

    async def copying(scope, receive, send):
        await copying_asgi(dict(scope), receive, send)

    sent = serve_asgi(
        "/api/v2/async/6/", application=ASGIMiddleware(copying, telemetry=django_telemetry)
    )
    assert sent[0]["status"] == 200
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 2,
        ("GET", "/api/v2/async/<int:pk>/", 200): 2,
    }

    # Another telemetry's middleware around Django measures for its own maintainer.
    inner = django_telemetry_factory()  # what the Django middleware now uses
    wrapped = WerkzeugClient(WSGIMiddleware(get_wsgi_application(), telemetry=django_telemetry))
    assert wrapped.get("/api/items/2/").data == b'{"pk": 2}'
    assert counts(inner) == {("GET", "/api/items/<int:pk>/", 200): 1}
    assert sum(counts(django_telemetry).values()) == 5


def test_listed_after_another_middleware_is_warned_of(django_telemetry, counts, caplog):
    from django.test import Client, override_settings

    middleware = [
        "django.middleware.common.CommonMiddleware",
        "reqtelemetry.django.TelemetryMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware, APPEND_SLASH=True), caplog.at_level("WARNING"):
        client = Client()
        assert client.get("/api/items/1").status_code == 301
        assert client.get("/api/items/1/").status_code == 200
    # What the warning is about: the 301 the client got is the 404 ours saw.
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }
    (warned,) = _middleware_warnings(caplog)
    assert "after django.middleware.common.CommonMiddleware" in warned


def test_listed_first_and_once_is_not_warned_of(django_telemetry, caplog):
    from django.test import Client, override_settings

    middleware = [
        "reqtelemetry.django.TelemetryMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware), caplog.at_level("WARNING"):
        assert Client().get("/api/items/1/").status_code == 200
    assert _middleware_warnings(caplog) == []


def test_a_telemetry_instance_beside_other_keys_is_refused(django_telemetry):
    # The other keys were silently ignored: the instance has its options.
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from reqtelemetry.django import reset_telemetry

    settings = {"telemetry": django_telemetry, "exclude_paths": ["/health/"]}
    with override_settings(REQTELEMETRY=settings):
        reset_telemetry()
        with pytest.raises(ImproperlyConfigured, match="exclude_paths"):
            get_telemetry()
    reset_telemetry()


def test_a_buffered_body_of_many_chunks_is_sized_as_it_goes_out(client, django_telemetry, records):
    # Sized by joining its chunks, it was copied once more on every request
    # (500,000 csv rows: 36 ms and 55 MB); a server never joins them.
    from django_test_urls import CountedJoins

    CountedJoins.joins = 0
    response = client.get("/many-chunks/")
    assert CountedJoins.joins == 0  # before the test reads the body itself
    assert response.status_code == 200
    record = records(django_telemetry)["GET", "/many-chunks/", 200]
    assert record["response_bytes"] == len(response.content) == 1000 * len(b"row,1,2\r\n")


def _lifespan_shutdown(application) -> list:
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message["type"])

    asyncio.run(application({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    return sent


def test_lifespan_flush_closes_the_instance_the_middleware_uses(django_telemetry, monkeypatch):
    from reqtelemetry.django import LifespanFlush, get_telemetry

    assert get_telemetry() is django_telemetry
    closed = []
    monkeypatch.setattr(django_telemetry, "close", lambda timeout=None: closed.append(1) or True)
    sent = _lifespan_shutdown(LifespanFlush(None))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed == [1]


def test_lifespan_flush_of_an_opted_out_instance_starts_no_thread(
    django_telemetry_factory, monkeypatch
):
    """Opted out, nothing starts: the final flush, which sends nothing, was
    still handed to the event loop's executor, whose thread started for it."""
    import threading

    from reqtelemetry.django import LifespanFlush, get_telemetry

    telemetry = django_telemetry_factory(opt_out=True)
    assert get_telemetry() is telemetry
    closed = []
    monkeypatch.setattr(telemetry, "close", lambda timeout=None: closed.append(1) or True)
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread):
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    sent = _lifespan_shutdown(LifespanFlush(None))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed == []
    assert started == []


def test_lifespan_flush_passes_lifespan_on_to_an_app_that_takes_it(django_telemetry, monkeypatch):
    """A Starlette app mounting Django, with startup and shutdown hooks of its
    own: answered by the wrapper, its hooks never ran (its health check
    answered 503 for ever). The flush comes as the app's shutdown ends."""
    from contextlib import asynccontextmanager

    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from reqtelemetry.django import LifespanFlush

    ran: list[str] = []
    monkeypatch.setattr(django_telemetry, "close", lambda timeout=None: ran.append("flush") or True)

    @asynccontextmanager
    async def lifespan(app):
        ran.append("startup")
        yield
        ran.append("shutdown")

    app = Starlette(routes=[Mount("/django", get_asgi_application())], lifespan=lifespan)
    sent = _lifespan_shutdown(LifespanFlush(app))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert ran == ["startup", "shutdown", "flush"]


def test_lifespan_flush_says_why_when_the_apps_startup_failed(
    django_telemetry, monkeypatch, caplog
):
    """An app that reads the startup and raises failed its startup: answered
    here, so that the final report still goes, but never silently (unwrapped,
    the server logs it, and with --lifespan on stops)."""
    from reqtelemetry.django import LifespanFlush

    monkeypatch.setattr(django_telemetry, "close", lambda timeout=None: True)

    async def failing_startup(scope, receive, send):
        await receive()
        raise RuntimeError("cannot connect to the cache at startup")

    async def no_lifespan(scope, receive, send):
        raise ValueError("No application configured for scope type 'lifespan'")

    with caplog.at_level("INFO", logger="reqtelemetry"):
        _lifespan_shutdown(LifespanFlush(failing_startup))
        _lifespan_shutdown(LifespanFlush(no_lifespan))
    [failed] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "startup failed" in failed.getMessage()
    assert "cannot connect to the cache" in str(failed.exc_info[1])
    assert [r for r in caplog.records if "takes no lifespan" in r.getMessage()]


def test_lifespan_flush_answers_for_an_app_that_refuses_lifespan(django_telemetry, monkeypatch):
    """Django's handler, or a router that has no lifespan application (as
    Channels' raises): answered here, with the final flush."""
    from django.core.asgi import get_asgi_application

    from reqtelemetry.django import LifespanFlush

    async def router_without_lifespan(scope, receive, send):
        raise ValueError(f"No application configured for scope type {scope['type']!r}")

    async def taking_startup_then_refusing(scope, receive, send):
        await receive()
        raise ValueError("lifespan is not for me")

    async def failing_after_its_startup(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("its background task died")

    async def returning_after_its_startup(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})

    for application in (
        get_asgi_application(),
        router_without_lifespan,
        taking_startup_then_refusing,
        failing_after_its_startup,  # the server serves on: the flush must still come
        returning_after_its_startup,
    ):
        closed: list[int] = []
        monkeypatch.setattr(
            django_telemetry, "close", lambda timeout=None, c=closed: c.append(1) or True
        )
        sent = _lifespan_shutdown(LifespanFlush(application))
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"], application
        assert closed == [1]


def test_lifespan_flush_builds_no_telemetry_where_none_was_used(django_telemetry_factory):
    # Without the middleware, none was built: building one at shutdown
    # announced telemetry as the app stopped.
    from reqtelemetry.django import LifespanFlush, reset_telemetry
    from reqtelemetry.integrations import django as integration

    django_telemetry_factory()
    reset_telemetry()
    sent = _lifespan_shutdown(LifespanFlush(None))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert integration._existing_telemetry() is None


def test_a_django_head_whose_stream_the_server_stops_sending_is_not_499(django_telemetry, counts):
    """As above, through Django's WSGI handler: Django leaves a HEAD's
    streaming body to the server (its runserver drains it; uWSGI writes it)."""
    from django.core.wsgi import get_wsgi_application
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path="/stream/", method="HEAD").get_environ()
    response = get_wsgi_application()(environ, lambda *a: None)
    iterator = iter(response)
    next(iterator)
    response.close()
    assert counts(django_telemetry) == {("HEAD", "/stream/", 200): 1}


@needs_django_5
def test_a_django_head_whose_client_closed_after_the_headers_is_not_499_under_asgi(
    django_telemetry, counts
):
    """d5825a4 made a HEAD whose body the server stopped sending a 200 under
    WSGI (its answer is complete with its headers). Under ASGI Django streams
    the body itself; a client that closes after a HEAD's headers (uvicorn
    drops the body) gets Django to cancel the stream: recorded 499. A GET
    cut so stays 499."""
    sent = serve_asgi("/async-stream-hang/", method="HEAD", client_leaves=True)
    assert sent[0]["status"] == 200  # the headers went out: the HEAD's whole answer
    assert body_of(sent) == b"first\n"  # what uvicorn drops for a HEAD
    serve_asgi("/async-stream-hang/", client_leaves=True)
    assert counts(django_telemetry) == {
        ("HEAD", "/async-stream-hang/", 200): 1,
        ("GET", "/async-stream-hang/", 499): 1,
    }


def test_a_django_status_set_as_httpstatus_is_sent_as_that_status(client, django_telemetry):
    """A view that sets ``response.status_code = HTTPStatus.CREATED`` was sent
    as status 0, which the payload keeps for statuses outside 0-999, and
    took the route's plain 201s with it (their key is the same)."""
    from test_payload_schema import wire_records

    assert client.get("/made/").status_code == 201
    assert wire_records(django_telemetry) == [("GET", "/made/", 201)]
