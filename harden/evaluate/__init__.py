"""Measurements: accuracy and ASR with torch or onnxruntime, trigger stamping (verify only), what was checked."""
