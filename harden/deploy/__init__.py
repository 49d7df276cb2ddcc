"""Deployment: ONNX export with parity, INT8, latency, the gate, the HTTP server and the Triton repository."""
