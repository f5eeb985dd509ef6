import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

USERNAME = "admin"


class Command(BaseCommand):
    help = (
        "Create the superuser 'admin' if it does not exist. The password comes from "
        "CONSOLE_ADMIN_PASSWORD, or is generated and printed once. An existing user is "
        "left unchanged."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(username=USERNAME).exists():
            self.stdout.write(f"superuser '{USERNAME}' already exists")
            return
        password = os.environ.get("CONSOLE_ADMIN_PASSWORD") or ""
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=USERNAME, email="", password=password)
        if generated:
            self.stdout.write(
                self.style.SUCCESS(
                    f"created superuser '{USERNAME}' with password: {password} "
                    "(shown once; set CONSOLE_ADMIN_PASSWORD to choose it)"
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"created superuser '{USERNAME}' (password from CONSOLE_ADMIN_PASSWORD)"
                )
            )
