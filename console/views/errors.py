"""Error pages in the console's layout (403 for viewers attempting writes, 404)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """403: the account may only read (or lacks the permission)."""
    return render(request, "console/403.html", {"reason": str(exception or "")}, status=403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 in the console's layout."""
    return render(request, "console/404.html", status=404)
