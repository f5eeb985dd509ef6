"""Generated protobuf modules: authpb."""
