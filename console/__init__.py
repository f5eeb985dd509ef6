"""Django admin console for the etcd-style cluster (one client of it, via cluster.client)."""
