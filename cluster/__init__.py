"""etcd-style Raft-replicated key-value store speaking etcd's v3 gRPC API."""
