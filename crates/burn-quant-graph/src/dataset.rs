//! Calibration and evaluation inputs from files (being written).
