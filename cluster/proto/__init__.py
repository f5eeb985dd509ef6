"""Our .proto files (etcd's v3 API: etcdserverpb, mvccpb, authpb, v3lockpb,
v3electionpb) and the Python modules generated from them.

The generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` files are
checked in; regenerate them with ``make proto`` (``python -m cluster.proto.generate``)
after editing a .proto file.
"""
