"""Roles for the API: any signed-in user reads; editors and superusers also write."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from console.roles import can_edit

__all__ = ["IsEditorOrReadOnly"]


class IsEditorOrReadOnly(BasePermission):  # type: ignore[misc]  # DRF is untyped
    """Reads for authenticated users (viewers), writes for editors; anonymous is refused."""

    message = "editors only: your account may only read"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        return request.method in SAFE_METHODS or can_edit(user)
