//! Tests of the fused fake-quant against the reference chain.
