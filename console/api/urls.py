"""Routes of the REST API, mounted at ``/api/v1/`` by ``console.urls``.

Key ids and lease / member ids are matched loosely (any path segment) so a malformed one gets
the API's 400 error body rather than Django's HTML 404.
"""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from console.api import views

urlpatterns = [
    path("keys/", views.KeyListView.as_view(), name="api-keys"),
    re_path(r"^keys/(?P<key_id>[^/]*)/$", views.KeyDetailView.as_view(), name="api-key"),
    re_path(
        r"^keys/(?P<key_id>[^/]*)/history/$",
        views.KeyHistoryView.as_view(),
        name="api-key-history",
    ),
    path("tree/", views.TreeView.as_view(), name="api-tree"),
    path("leases/", views.LeaseListView.as_view(), name="api-leases"),
    re_path(r"^leases/(?P<lease_id>[^/]+)/$", views.LeaseDetailView.as_view(), name="api-lease"),
    path("cluster/members/", views.MemberListView.as_view(), name="api-members"),
    re_path(
        r"^cluster/members/(?P<member_id>[^/]+)/status/$",
        views.MemberStatusView.as_view(),
        name="api-member-status",
    ),
    path("cluster/status/", views.ClusterStatusView.as_view(), name="api-cluster-status"),
    path("me/", views.MeView.as_view(), name="api-me"),
    path("auth/token/", views.ThrottledObtainAuthToken.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", views.DocsView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"", views.NoSuchEndpointView.as_view(), name="api-not-found"),  # keep last
]
