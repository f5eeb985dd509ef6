"""Generated protobuf modules: v3electionpb."""
