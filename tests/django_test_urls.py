"""URLconf for the Django tests (``ROOT_URLCONF``), with its views."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from asgiref.sync import async_to_sync
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path, re_path


def item_detail(request, pk):
    return JsonResponse({"pk": pk})


class CountedJoins(HttpResponse):
    """An HttpResponse that counts how often its chunks are joined (``content``)."""

    joins = 0

    @property
    def content(self):
        CountedJoins.joins += 1
        return super().content

    @content.setter
    def content(self, value):
        HttpResponse.content.fset(self, value)


def many_chunks(request):
    # What csv.writer into an HttpResponse makes: one chunk per row.
    response = CountedJoins(content_type="text/csv")
    for _ in range(1000):
        response.write(b"row,1,2\r\n")
    return response


def item_list(request):
    if request.method == "POST":
        return HttpResponse(f"created {len(request.body)} bytes", status=201)
    return JsonResponse({"items": []})


def archive(request, year):
    return HttpResponse(f"archive {year}")


def boom(request):
    raise RuntimeError("the django view failed")


def created(request):
    """Its status set as ``HTTPStatus.CREATED``: Django keeps what a view assigns."""
    response = HttpResponse(b"made")
    response.status_code = HTTPStatus.CREATED
    return response


def echo(request, **kwargs):
    return HttpResponse(f"echo {request.method}")


def stream(request):
    return StreamingHttpResponse(f"line {i}\n".encode() for i in range(10))


def stream_boom(request):
    def chunks():
        yield b"before the failure\n"
        raise RuntimeError("the django stream failed")

    return StreamingHttpResponse(chunks())


def download(request):
    """A real file, which a WSGI server may send with its ``wsgi.file_wrapper``."""
    return FileResponse(open(__file__, "rb"))  # FileResponse closes it


async def async_item(request, pk):
    await asyncio.sleep(0)
    return JsonResponse({"pk": pk, "async": True})


async def async_stream(request):
    async def chunks():
        for i in range(5):
            await asyncio.sleep(0)
            yield f"async {i}\n".encode()

    return StreamingHttpResponse(chunks())


async def async_hang(request):
    """Sets the scope's ``test.gate`` (the test's client then leaves), then waits forever."""
    request.scope["test.gate"].set()
    await asyncio.Event().wait()


async def async_stream_hang(request):
    """Sends one chunk, sets the scope's ``test.gate``, then waits forever."""

    async def chunks():
        yield b"first\n"
        request.scope["test.gate"].set()
        await asyncio.Event().wait()

    return StreamingHttpResponse(chunks())


def sync_stream_hang(request):
    """A sync body that sends one chunk, then awaits through ``async_to_sync``
    (as a channel layer's sync API does) after setting the scope's ``test.gate``."""
    gate = request.scope["test.gate"]

    async def wait_forever():
        gate.set()
        await asyncio.Event().wait()

    def chunks():
        yield b"first\n"
        async_to_sync(wait_forever)()
        yield b"never\n"

    return StreamingHttpResponse(chunks())


async def async_boom(request):
    raise RuntimeError("the async django view failed")


item_patterns = [
    path("", item_list),
    path("<int:pk>/", item_detail),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", archive),
]

v2_patterns = [
    path("items/", include(item_patterns)),
    path("async/<int:pk>/", async_item),
]

api_patterns = [
    path("items/", include(item_patterns)),
    path("v2/", include(v2_patterns)),
]

urlpatterns = [
    path("api/", include(api_patterns)),
    re_path(r"^legacy/(?P<slug>[-\w]+)/$", echo),
    path("boom/", boom),
    path("async-boom/", async_boom),
    path("stream/", stream),
    path("async-stream/", async_stream),
    path("stream-boom/", stream_boom),
    path("download/", download),
    path("async-hang/", async_hang),
    path("async-stream-hang/", async_stream_hang),
    path("sync-stream-hang/", sync_stream_hang),
    path("echo/<path:anything>", echo),
    path("health/", echo),
    path("made/", created),
    path("many-chunks/", many_chunks),
    path("", echo),
]
