from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from console.views import cluster as cluster_views
from console.views import errors, home
from console.views import keys as key_views
from console.views import services as service_views
from console.views import watch as watch_views
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

service_patterns = [
    path("", service_views.service_list, name="list"),
    path("register/", service_views.register, name="register"),
    path("s/<str:service>/", service_views.service_detail, name="detail"),
    path("s/<str:service>/deregister/", service_views.deregister, name="deregister"),
]

cluster_patterns = [
    path("", cluster_views.dashboard, name="dashboard"),
    path("compact/", cluster_views.compact, name="compact"),
    path("move-leader/", cluster_views.move_leader, name="move_leader"),
    path("snapshot/", cluster_views.snapshot, name="snapshot"),
    path("snapshot/download/", cluster_views.snapshot_download, name="snapshot_download"),
    path("members/add/", cluster_views.member_add, name="member_add"),
    path("members/<str:member_id>/defragment/", cluster_views.defragment, name="defragment"),
    path("members/<str:member_id>/remove/", cluster_views.member_remove, name="member_remove"),
    path("members/<str:member_id>/promote/", cluster_views.member_promote, name="member_promote"),
]

urlpatterns = [
    path("", home.index, name="index"),
    path("healthz", home.healthz, name="healthz"),
    path("keys/", include((key_patterns, "keys"))),
    path("watch/", watch_views.watch, name="watch"),
    path("services/", include((service_patterns, "services"))),
    path("cluster/", include((cluster_patterns, "cluster"))),
    path("login/", RateLimitedLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("console.api.urls")),
]

handler403 = errors.permission_denied
handler404 = errors.not_found
