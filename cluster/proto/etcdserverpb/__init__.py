"""Generated protobuf modules: etcdserverpb."""
