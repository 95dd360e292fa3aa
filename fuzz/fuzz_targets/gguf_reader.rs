//! Feeds arbitrary bytes to the GGUF reader: it must return `Ok` or a typed error, never panic,
//! never allocate beyond what the input could hold; every tensor of a file it accepts must
//! decode (when a codec exists) without panicking.
#![no_main]

use burn_quant_export::gguf::{GgufFile, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(data.to_vec()) {
        for info in &file.tensors {
            let bytes = file.tensor_bytes(info);
            let _ = codec::decode(info.ty, bytes);
        }
    }
});
