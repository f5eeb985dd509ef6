"""Benchmarks, in the manner of etcd's `benchmark` tool: ``python -m cluster.bench <workload>``."""
