"""Generated protobuf modules: mvccpb."""
