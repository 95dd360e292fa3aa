"""Imports every verifier package: proves the venv is complete."""
import gguf, onnx, onnxruntime, qonnx, numpy  # noqa: F401
print(onnx.__version__, onnxruntime.__version__)
