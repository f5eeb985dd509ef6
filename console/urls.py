from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from console.views import errors, home
from console.views import keys as key_views
from console.views.login import RateLimitedLoginView

register_converter(key_views.KeyConverter, "key")

key_patterns = [
    path("", key_views.tree, name="tree"),
    path("new/", key_views.create, name="create"),
    path("folder/delete/", key_views.delete_folder, name="delete_folder"),
    path("export/", key_views.export, name="export"),
    path("import/", key_views.import_keys, name="import"),
    path("import/apply/", key_views.import_apply, name="import_apply"),
    path("lease/<int:lease_id>/", key_views.lease_ttl, name="lease"),
    path("k/<key:key>/", key_views.detail, name="detail"),
    path("k/<key:key>/edit/", key_views.edit, name="edit"),
    path("k/<key:key>/delete/", key_views.delete, name="delete"),
    path("k/<key:key>/history/", key_views.history, name="history"),
    path("k/<key:key>/diff/", key_views.diff, name="diff"),
    path("k/<key:key>/restore/", key_views.restore, name="restore"),
]

urlpatterns = [
    path("", home.index, name="index"),
    path("healthz", home.healthz, name="healthz"),
    path("keys/", include((key_patterns, "keys"))),
    path("login/", RateLimitedLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("console.api.urls")),
]

handler403 = errors.permission_denied
handler404 = errors.not_found
