//! Unit tests of the ONNX exporters.
