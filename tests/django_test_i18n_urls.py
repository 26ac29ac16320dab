"""URLconf for the Django i18n tests: ``i18n_patterns`` and routes translated with
``gettext_lazy``, with the translations they need (``write_catalogs``)."""

from __future__ import annotations

import struct
from pathlib import Path

from django.conf.urls.i18n import i18n_patterns
from django.http import HttpResponse
from django.urls import include, path, re_path
from django.utils.translation import gettext_lazy as _

#: The languages of the tests; "es" has no translation of these routes.
LANGUAGES = [("en", "English"), ("fr", "French"), ("de", "German"), ("es", "Spanish")]

#: msgid -> translation, per language.
TRANSLATIONS = {
    "fr": {
        "account/": "compte/",
        "shop/": "boutique/",
        "basket/<int:pk>/": "panier/<int:pk>/",
        r"^news/(?P<slug>[-\w]+)/$": r"^actualites/(?P<slug>[-\w]+)/$",
        "help/": "aide/",
    },
    "de": {
        "account/": "konto/",
        "shop/": "laden/",
        "basket/<int:pk>/": "korb/<int:pk>/",
        r"^news/(?P<slug>[-\w]+)/$": r"^nachrichten/(?P<slug>[-\w]+)/$",
        "help/": "hilfe/",
    },
}


def page(request, **kwargs):
    return HttpResponse("page")


localized = [
    path("about/<int:pk>/", page),
    path(_("account/"), page),
    path(_("shop/"), include([path(_("basket/<int:pk>/"), page)])),
    re_path(_(r"^news/(?P<slug>[-\w]+)/$"), page),
]

urlpatterns = [
    path("api/items/<int:pk>/", page),
    path(_("help/"), page),  # translated, without a language prefix
    *i18n_patterns(*localized),
]


def write_catalogs(locale_dir: Path) -> None:
    """Compiled gettext catalogs of ``TRANSLATIONS``, for ``settings.LOCALE_PATHS``.

    Written by the test itself, so that the suite needs neither ``msgfmt`` nor
    binary files in the repository.
    """
    for language, messages in TRANSLATIONS.items():
        target = locale_dir / language / "LC_MESSAGES" / "django.mo"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_mo_file(messages))


def _mo_file(messages: dict[str, str]) -> bytes:
    """The GNU ``.mo`` layout: a header, two tables of (length, offset), then
    the NUL-terminated strings; msgids sorted, no hash table."""
    entries = {"": "Content-Type: text/plain; charset=UTF-8\n", **messages}
    keys = sorted(entries)
    originals = [key.encode() for key in keys]
    translated = [entries[key].encode() for key in keys]
    count = len(keys)
    header_size = 7 * 4
    tables_end = header_size + 2 * count * 8
    # The originals' table, then the translations', each entry (length, offset).
    entries_table, strings = b"", b""
    for text in originals + translated:
        entries_table += struct.pack("<2I", len(text), tables_end + len(strings))
        strings += text + b"\0"
    header = struct.pack(
        "<7I", 0x950412DE, 0, count, header_size, header_size + count * 8, 0, tables_end
    )
    return header + entries_table + strings
