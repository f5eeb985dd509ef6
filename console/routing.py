from django.urls import URLPattern, URLResolver

# Websocket routes; the watch and dashboard consumers arrive with the live console.
websocket_urlpatterns: list[URLPattern | URLResolver] = []
