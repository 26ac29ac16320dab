"""Views of the example shop: parameters, a search, a stream, a failure."""

from __future__ import annotations

from django.http import Http404, HttpRequest, JsonResponse, StreamingHttpResponse

from reqtelemetry.django import get_telemetry

ORDERS = {n: {"id": n, "total": n * 10} for n in range(1, 31)}
CUSTOMERS = {"ada", "grace", "linus"}


def order_detail(request: HttpRequest, pk: int) -> JsonResponse:
    if pk not in ORDERS:
        raise Http404("no such order")
    return JsonResponse(ORDERS[pk])


def order_line(request: HttpRequest, pk: int, line: int) -> JsonResponse:
    return JsonResponse({"order": pk, "line": line})


def create_order(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    get_telemetry().count("feature.checkout")  # an app-defined usage counter
    return JsonResponse({"id": len(ORDERS) + 1}, status=201)


def customer(request: HttpRequest, handle: str) -> JsonResponse:
    if handle not in CUSTOMERS:
        raise Http404("no such customer")
    return JsonResponse({"handle": handle, "orders": 2})


def search(request: HttpRequest) -> JsonResponse:
    query = request.GET.get("q", "")
    hits = [order for order in ORDERS.values() if query and query in str(order["total"])]
    return JsonResponse({"count": len(hits), "hits": hits})


def export(request: HttpRequest) -> StreamingHttpResponse:
    def rows():  # streamed: measured to the last chunk
        yield "id,total\n"
        for order in ORDERS.values():
            yield f"{order['id']},{order['total']}\n"

    return StreamingHttpResponse(rows(), content_type="text/csv")


def crash(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("this view always fails")
