//! Byte-for-byte comparison with ggml's own quantizers.
//!
//! `testdata/ggml_ref/` holds 12 synthetic rows of 512 values (normal, tiny, huge, one-signed,
//! Laplace, zero blocks, values on a grid that make rounding ties, constant, sparse), an
//! importance vector with zeros, and what ggml's C code (commit d99724f, built by
//! `testdata/ggml_ref/gen.c`, see its README) wrote for them: `T.ref` from
//! `quantize_row_<t>_ref`, `T.imatrix` from `quantize_<t>(…, imatrix)`.

use super::super::*;
use crate::gguf::GgmlType;

const COLS: usize = 512;

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gguf/codec/testdata/ggml_ref")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_in(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden(name: &str) -> Vec<u8> {
    read_in(&fixture_dir(), name)
}

fn name(ty: GgmlType) -> String {
    format!("{ty:?}")
}

/// Indices of blocks of `ty` whose input is all zero (below ggml's 1e-15).
fn zero_blocks(ty: GgmlType, x: &[f32]) -> Vec<usize> {
    x.chunks(ty.block_size())
        .enumerate()
        .filter(|(_, b)| b.iter().all(|v| v.abs() < 1e-15))
        .map(|(i, _)| i)
        .collect()
}

/// Compares block by block and reports the first differing blocks with their row.
fn assert_same(ty: GgmlType, what: &str, ours: &[u8], theirs: &[u8], skip: &[usize], cols: usize) {
    assert_eq!(ours.len(), theirs.len(), "{ty:?} {what}: lengths");
    let ts = ty.type_size();
    let per_row = cols / ty.block_size();
    let bad: Vec<usize> = ours
        .chunks(ts)
        .zip(theirs.chunks(ts))
        .enumerate()
        .filter(|(i, (a, b))| a != b && !skip.contains(i))
        .map(|(i, _)| i)
        .collect();
    assert!(
        bad.is_empty(),
        "{ty:?} {what}: {} of {} blocks differ from ggml (first: block {} of row {}: ours {:02x?} ggml {:02x?})",
        bad.len(),
        ours.len() / ts,
        bad[0],
        bad[0] / per_row,
        &ours[bad[0] * ts..(bad[0] + 1) * ts],
        &theirs[bad[0] * ts..(bad[0] + 1) * ts],
    );
}

/// Every type's reference and importance outputs in `dir` against ours.
fn compare_dir(dir: &std::path::Path, cols: usize) {
    let x = f32s(&read_in(dir, "x.f32"));
    let imp = f32s(&read_in(dir, "imp.f32"));
    assert_eq!(imp.len(), cols);
    for &ty in ENCODABLE.iter().filter(|t| **t != GgmlType::F32) {
        let ours = encode(ty, &x).unwrap();
        let theirs = read_in(dir, &format!("{}.ref", name(ty)));
        // ggml's IQ4_NL reference leaves an all-zero block's codes uninitialised; its scale is
        // 0 either way, so only those blocks' codes are exempt.
        let skip = if ty == GgmlType::IQ4_NL {
            zero_blocks(ty, &x)
        } else {
            Vec::new()
        };
        assert_same(ty, "reference", &ours, &theirs, &skip, cols);
        for &b in &skip {
            let s = b * ty.type_size();
            assert_eq!(
                &ours[s..s + 2],
                &theirs[s..s + 2],
                "IQ4_NL zero block {b}: d"
            );
            assert_eq!(&theirs[s..s + 2], &[0, 0]);
        }
        if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
            continue;
        }
        let ours = encode_weighted(ty, &x, cols, &imp).unwrap();
        let theirs = read_in(dir, &format!("{}.imatrix", name(ty)));
        assert_same(ty, "imatrix", &ours, &theirs, &[], cols);
        if !IMPORTANCE_AWARE.contains(&ty) {
            assert_eq!(ours, encode(ty, &x).unwrap(), "{ty:?} ignores importance");
        }
    }
}

#[test]
fn reference_and_importance_encoders_match_ggml_byte_for_byte() {
    compare_dir(&fixture_dir(), COLS);
}

/// The same comparison on a directory made by `gen file …` (e.g. a whole model's weights):
/// `BURNQ_GGML_REF_DIR=dir BURNQ_GGML_REF_COLS=n cargo test --release -p burn-quant-export
/// external_ggml -- --ignored`.
#[test]
#[ignore = "needs BURNQ_GGML_REF_DIR, written by testdata/ggml_ref/gen.c"]
fn external_ggml_outputs_match() {
    let dir = std::env::var("BURNQ_GGML_REF_DIR").expect("BURNQ_GGML_REF_DIR");
    let cols = std::env::var("BURNQ_GGML_REF_COLS")
        .expect("BURNQ_GGML_REF_COLS")
        .parse()
        .expect("BURNQ_GGML_REF_COLS is a number");
    compare_dir(std::path::Path::new(&dir), cols);
}

#[test]
fn golden_data_covers_special_blocks() {
    // The fixtures are only worth what they exercise: an all-zero super-block, zero 32- and
    // 16-blocks, a constant row, one-signed rows and a zero-importance sub-block.
    let x = f32s(&golden("x.f32"));
    let imp = f32s(&golden("imp.f32"));
    assert_eq!(zero_blocks(GgmlType::Q4_K, &x), vec![12]);
    // Row 6's eight + one designed zero 32-blocks, and maybe a chance one in the sparse row.
    assert!(zero_blocks(GgmlType::Q4_0, &x).len() >= 9);
    assert!(x[10 * COLS..11 * COLS].iter().all(|&v| v == 0.3));
    assert!(x[3 * COLS..4 * COLS].iter().all(|&v| v > 0.0));
    assert!(x[4 * COLS..5 * COLS].iter().all(|&v| v < 0.0));
    assert!(imp[320..336].iter().all(|&v| v == 0.0));
    // …and the zero-importance sub-block decodes to zero where the importance path is used.
    let q3 = Q3_K::decode(&golden("Q3_K.imatrix")).unwrap();
    assert!(
        q3[320..336].iter().all(|&v| v == 0.0),
        "{:?}",
        &q3[320..336]
    );
}
