"""The console's two roles, as Django groups: viewers read, editors also write.

A superuser can do everything. The groups are created by the ``0001_roles`` migration;
``make run``'s admin is a superuser. Views use ``@editor_required``; the REST API uses
``IsEditorOrReadOnly`` (console/api).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

VIEWERS = "viewers"
EDITORS = "editors"

_View = TypeVar("_View", bound=Callable[..., HttpResponse])


def can_edit(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not user.is_authenticated:
        return False
    if getattr(user, "is_superuser", False):
        return True
    groups = getattr(user, "groups", None)
    return groups is not None and bool(groups.filter(name=EDITORS).exists())


def editor_required(view: _View) -> _View:
    """403 for a logged-in user who may only read (use under ``login_required``)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not can_edit(request.user):
            raise PermissionDenied("editors only: your account may only read")
        return view(request, *args, **kwargs)

    return wrapped  # type: ignore[return-value]
