"""The shop's URLs, two levels of ``include()`` deep: ``/api/orders/<int:pk>/lines/<int:line>/``."""

from django.urls import include, path

from . import views

orders = [
    path("", views.create_order),
    path("<int:pk>/", views.order_detail),
    path("<int:pk>/lines/<int:line>/", views.order_line),
]

urlpatterns = [
    path("orders/", include(orders)),
    path("customers/<str:handle>/", views.customer),
    path("search/", views.search),
    path("export/", views.export),
    path("crash/", views.crash),
]
