"""Security headers on every response: Content-Security-Policy, Referrer-Policy, nosniff.

The CSP (setting ``CONSOLE_CONTENT_SECURITY_POLICY``) allows scripts and styles from our own
origin only: no inline scripts or styles, no framing. A view that needs another policy sets the
header itself; this middleware never replaces a header the response already has.
X-Frame-Options DENY comes from Django's ``XFrameOptionsMiddleware`` (``X_FRAME_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """Adds CSP, Referrer-Policy and X-Content-Type-Options unless already present."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        csp = getattr(settings, "CONSOLE_CONTENT_SECURITY_POLICY", DEFAULT_CSP)
        if csp:
            response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault(
            "Referrer-Policy", getattr(settings, "SECURE_REFERRER_POLICY", None) or "same-origin"
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
