"""Generated KEDA External Scaler stubs (see tests/server/gen_keda_pb.py)."""
