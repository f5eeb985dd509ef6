"""Websocket routes (served by daphne; see console/asgi.py for the auth and origin checks)."""

from django.urls import URLPattern, URLResolver, path

from console.consumers import ClusterConsumer, ServicesConsumer, WatchConsumer

websocket_urlpatterns: list[URLPattern | URLResolver] = [
    path("ws/watch/", WatchConsumer.as_asgi()),
    path("ws/services/", ServicesConsumer.as_asgi()),
    path("ws/cluster/", ClusterConsumer.as_asgi()),
]
