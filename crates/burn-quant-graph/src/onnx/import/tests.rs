//! Unit tests of the ONNX importer on small models built in the test.
