"""The localized patterns of ``django_test_i18n_urls`` without a prefix for the
default language (``prefix_default_language=False``)."""

from django.conf.urls.i18n import i18n_patterns

from django_test_i18n_urls import localized

urlpatterns = i18n_patterns(*localized, prefix_default_language=False)
