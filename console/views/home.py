from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """Landing page: the configured cluster endpoints."""
    return render(
        request,
        "console/index.html",
        {"endpoints": list(settings.CONSOLE_ETCD_ENDPOINTS)},
    )


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness of the console process itself (not of the cluster)."""
    return JsonResponse({"status": "ok"})
