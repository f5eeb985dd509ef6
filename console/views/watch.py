"""The live watch viewer page (``/watch/``).

The stream itself is ``console.consumers.WatchConsumer`` over the websocket ``/ws/watch/``,
driven by static/console/watch.js.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

MAX_ROWS = 1000
"""Rows the table keeps (older ones are dropped and counted)."""
MAX_CAPTURED = 10000
"""Events kept for the JSON download."""


@login_required
@require_GET
def watch(request: HttpRequest) -> HttpResponse:
    """The form (key or prefix, start revision, filter, previous values) and the event table;
    ``?key=&prefix=1&rev=&filter=&prev_kv=1`` fill the form in and start at once."""
    q = request.GET
    chosen = q.get("filter", "all")
    form = {
        "key": q.get("key", ""),
        "prefix": q.get("prefix", "") in {"1", "true", "on"},
        "rev": q.get("rev", ""),
        "filter": chosen if chosen in {"all", "puts", "deletes"} else "all",
        "prev_kv": q.get("prev_kv", "") in {"1", "true", "on"},
    }
    config = {
        "ws": "/ws/watch/",
        "key_url": reverse("keys:tree") + "k/",
        "max_rows": MAX_ROWS,
        "max_captured": MAX_CAPTURED,
        "autostart": "key" in q or "prefix" in q,
    }
    return render(request, "console/watch/watch.html", {"form": form, "config": config})
