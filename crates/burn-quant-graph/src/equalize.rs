//! Cross-layer equalization (being written).
