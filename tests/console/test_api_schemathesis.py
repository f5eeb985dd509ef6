"""Schemathesis over the API's OpenAPI schema: no input may make the API answer 5xx.

The schema comes from the Django WSGI app itself; every operation is called as an editor (token
header) with a bounded number of generated examples, against our cluster. 503 is excluded from
the check by pointing at a live cluster (a 503 here would be a real failure too).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from pytest_django import Settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 25


# Loaded at collection from the app itself (pytest-django has set Django up by then; serving
# the schema touches no database).
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())


@pytest.fixture
def editor_token(settings: Settings, console_cluster: list[str], editor: User) -> str:
    return str(Token.objects.create(user=editor).key)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, editor_token: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Token {editor_token}"}, checks=[not_a_server_error]
    )
