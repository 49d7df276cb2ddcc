"""What a run reads: model architectures and loading (folders, weights files, ONNX, registry URIs), clean data."""
