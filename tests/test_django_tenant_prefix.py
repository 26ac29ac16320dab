"""django-tenants' subfolder mode (``TenantSubfolderMiddleware``)
resolves every request through ``URLResolver(TenantPrefixPattern(), urls)``, a
pattern whose text is the current tenant's subfolder (``clients/<tenant>/``):
Django's ``resolver_match.route`` then holds the tenant's name, and it was sent
as the key. The pattern class below is django-tenants' own
(django_tenants/urlresolvers.py), with the tenant read from a variable instead
of the database connection."""

from __future__ import annotations

import re
import sys
import types

import pytest

current_tenant = {"name": None}


class TenantPrefixPattern:
    converters: dict = {}

    @property
    def tenant_prefix(self):
        return f"clients/{current_tenant['name']}/"

    @property
    def regex(self):
        return re.compile(self.tenant_prefix)

    def match(self, path):
        tenant_prefix = self.tenant_prefix
        if path.startswith(tenant_prefix):
            return path[len(tenant_prefix) :], (), {}
        return None

    def check(self):
        return []

    def describe(self):
        return f"'{self}'"

    def __str__(self):
        return self.tenant_prefix


@pytest.fixture
def tenant_urlconf():
    from django.http import HttpResponse
    from django.test import override_settings
    from django.urls import URLResolver, clear_url_caches, path

    def order(request, pk):
        return HttpResponse(f"order {pk}")

    module = types.ModuleType("review_tenant_urls")
    module.urlpatterns = [URLResolver(TenantPrefixPattern(), [path("orders/<int:pk>/", order)])]
    sys.modules[module.__name__] = module
    clear_url_caches()
    with override_settings(ROOT_URLCONF=module.__name__):
        yield
    clear_url_caches()
    del sys.modules[module.__name__]


def test_a_tenant_prefix_is_not_sent_as_part_of_the_key(django_telemetry, records, tenant_urlconf):
    from django.test import Client

    client = Client()
    for tenant in ("acme-corp", "globex"):
        current_tenant["name"] = tenant
        assert client.get(f"/clients/{tenant}/orders/7/").status_code == 200
    keys = list(records(django_telemetry))
    assert not any("acme-corp" in route or "globex" in route for _, route, _ in keys), keys
    assert keys == [("GET", "/<TenantPrefixPattern>/orders/<int:pk>/", 200)]
