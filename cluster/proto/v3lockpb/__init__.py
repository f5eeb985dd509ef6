"""Generated protobuf modules: v3lockpb."""
