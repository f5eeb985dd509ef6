"""Login with bounded password guessing: after ``CONSOLE_LOGIN_ATTEMPTS`` failures for one
user name from one address within ``CONSOLE_LOGIN_WINDOW`` seconds, further attempts get 429
until the window passes (a success clears the count)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def _key(request: HttpRequest) -> str:
    user = str(request.POST.get("username", "")).strip().lower()[:150]
    address = request.META.get("REMOTE_ADDR", "")
    return f"console-login-failures:{address}:{user}"


class RateLimitedLoginView(LoginView):
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        key = _key(request)
        if cache.get(key, 0) >= settings.CONSOLE_LOGIN_ATTEMPTS:
            return render(
                request,
                "registration/login_limited.html",
                {"window": settings.CONSOLE_LOGIN_WINDOW},
                status=429,
            )
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            cache.delete(key)
        else:
            try:
                cache.incr(key)
            except ValueError:  # first failure in this window
                cache.set(key, 1, timeout=settings.CONSOLE_LOGIN_WINDOW)
        return response
