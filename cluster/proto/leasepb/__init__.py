"""Generated protobuf modules: leasepb."""
