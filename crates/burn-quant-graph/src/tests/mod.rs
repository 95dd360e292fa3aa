//! Tests of capture, the interpreter and the graph passes.

pub mod models;

mod capture;
mod dataset;
mod equalize;
mod quantize;
mod stage2;
