"""django-tenants' subfolder mode as it runs: TenantSubfolderMiddleware calls
clear_url_caches() on every request, and its LazyURLConfModule builds a new
URLResolver(TenantPrefixPattern(), ...) for every new root resolver. The
foreign chain is cached by that resolver's identity: one entry per request."""

from __future__ import annotations

import gc
import sys
import types

import pytest

from test_django_tenant_prefix import TenantPrefixPattern, current_tenant


@pytest.fixture
def lazy_tenant_urlconf():
    from django.http import HttpResponse
    from django.test import override_settings
    from django.urls import URLResolver, clear_url_caches, path, reverse

    def order(request, pk):
        reverse("page-150", args=[3])  # as any template's {% url %} does
        return HttpResponse(f"order {pk}")

    base = types.ModuleType("rr3_base_urls")
    base.urlpatterns = [path("orders/<int:pk>/", order, name="order")] + [
        path(f"page{i}/<int:pk>/", order, name=f"page-{i}") for i in range(300)
    ]
    sys.modules[base.__name__] = base

    class LazyURLConfModule(types.ModuleType):  # django_tenants/urlresolvers.py
        def __getattr__(self, attr):
            imported = getattr(base, attr)
            if attr == "urlpatterns":
                return [URLResolver(TenantPrefixPattern(), list(imported))]
            return imported

    sys.modules["rr3_dynamic"] = LazyURLConfModule("rr3_dynamic")
    clear_url_caches()
    with override_settings(ROOT_URLCONF="rr3_dynamic"):
        yield clear_url_caches
    clear_url_caches()
    del sys.modules["rr3_dynamic"], sys.modules[base.__name__]


def test_a_tenant_chain_is_cached_once_not_per_request(
    django_telemetry, records, lazy_tenant_urlconf
):
    from django.test import Client

    from reqtelemetry.integrations.django import TelemetryMiddleware

    # Held, so that the one this test's client makes is told apart from the
    # other tests' (and no id of theirs is reused for it).
    before = [o for o in gc.get_objects() if type(o) is TelemetryMiddleware]
    client = Client()
    current_tenant["name"] = "acme-corp"
    for _ in range(30):
        lazy_tenant_urlconf()  # what TenantSubfolderMiddleware.process_request does
        assert client.get("/clients/acme-corp/orders/7/").status_code == 200
    [middleware] = [
        o
        for o in gc.get_objects()
        if type(o) is TelemetryMiddleware and not any(o is old for old in before)
    ]
    assert list(records(django_telemetry)) == [
        ("GET", "/<TenantPrefixPattern>/orders/<int:pk>/", 200)
    ]
    assert len(middleware._localized_templates) == 1
