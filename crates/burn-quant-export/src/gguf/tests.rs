#![allow(clippy::type_complexity)]

use super::*;

fn all_types_metadata() -> Vec<(String, MetadataValue)> {
    use MetadataArray as A;
    use MetadataValue as V;
    vec![
        ("t.u8".into(), V::U8(200)),
        ("t.i8".into(), V::I8(-100)),
        ("t.u16".into(), V::U16(60000)),
        ("t.i16".into(), V::I16(-30000)),
        ("t.u32".into(), V::U32(4_000_000_000)),
        ("t.i32".into(), V::I32(-2_000_000_000)),
        ("t.f32".into(), V::F32(-1.5e-3)),
        ("t.bool_t".into(), V::Bool(true)),
        ("t.bool_f".into(), V::Bool(false)),
        ("t.string".into(), V::String("héllo, ✓ gguf".into())),
        ("t.empty_string".into(), V::String(String::new())),
        ("t.u64".into(), V::U64(u64::MAX - 7)),
        ("t.i64".into(), V::I64(i64::MIN + 3)),
        ("t.f64".into(), V::F64(std::f64::consts::PI)),
        ("a.u8".into(), V::Array(A::U8(vec![0, 1, 255]))),
        ("a.i8".into(), V::Array(A::I8(vec![-128, 0, 127]))),
        ("a.u16".into(), V::Array(A::U16(vec![1, 65535]))),
        ("a.i16".into(), V::Array(A::I16(vec![-32768, 32767]))),
        ("a.u32".into(), V::Array(A::U32(vec![7, u32::MAX]))),
        ("a.i32".into(), V::Array(A::I32(vec![-1, 1, 3]))),
        ("a.f32".into(), V::Array(A::F32(vec![0.5, -0.25, 1e30]))),
        ("a.bool".into(), V::Array(A::Bool(vec![true, false, true]))),
        (
            "a.string".into(),
            V::Array(A::String(vec!["a".into(), "".into(), "ζ".into()])),
        ),
        ("a.u64".into(), V::Array(A::U64(vec![u64::MAX]))),
        ("a.i64".into(), V::Array(A::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f64".into(), V::Array(A::F64(vec![1e-300, -2.0]))),
        ("a.empty".into(), V::Array(A::F32(vec![]))),
        (
            "a.nested".into(),
            V::Array(A::Array(vec![
                A::U8(vec![1, 2]),
                A::String(vec!["x".into()]),
                A::Array(vec![A::I64(vec![-5]), A::Bool(vec![])]),
                A::Array(vec![]),
            ])),
        ),
    ]
}

fn writer_with(meta: &[(String, MetadataValue)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    w
}

#[test]
fn metadata_round_trip_every_type() {
    let meta = all_types_metadata();
    let w = writer_with(&meta);
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::parse(bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, DEFAULT_ALIGNMENT);
    assert_eq!(
        f.metadata, meta,
        "metadata (and its order) must survive a round trip"
    );
    assert!(f.tensors.is_empty());
    assert_eq!(f.get("t.u16"), Some(&MetadataValue::U16(60000)));
}

/// Counts and ids read as u64 whatever integer type a tool wrote them with; negative values and
/// non-integers are not counts.
#[test]
fn as_unsigned_accepts_every_non_negative_integer() {
    use MetadataValue as V;
    for v in [
        V::U8(7),
        V::U16(7),
        V::U32(7),
        V::U64(7),
        V::I8(7),
        V::I16(7),
        V::I32(7),
        V::I64(7),
    ] {
        assert_eq!(v.as_unsigned(), Some(7), "{v:?}");
    }
    assert_eq!(V::U64(u64::MAX).as_unsigned(), Some(u64::MAX));
    for v in [
        V::I8(-1),
        V::I32(-7),
        V::I64(i64::MIN),
        V::F32(7.0),
        V::Bool(true),
    ] {
        assert_eq!(v.as_unsigned(), None, "{v:?}");
    }
    assert_eq!(V::String("7".into()).as_unsigned(), None);
}

fn sample_writer(
    alignment: Option<u32>,
) -> (GgufWriter, Vec<(String, Vec<u64>, GgmlType, Vec<f32>)>) {
    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .unwrap();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    let vals = |n: usize, k: f32| {
        (0..n)
            .map(|i| ((i as f32) * 0.37 + k).sin())
            .collect::<Vec<_>>()
    };
    let tensors = vec![
        (
            "norm.weight".to_string(),
            vec![7u64],
            GgmlType::F32,
            vals(7, 0.0),
        ),
        (
            "a.weight".to_string(),
            vec![64, 3],
            GgmlType::Q8_0,
            vals(192, 1.0),
        ),
        (
            "b.weight".to_string(),
            vec![32, 5],
            GgmlType::Q4_0,
            vals(160, 2.0),
        ),
        (
            "c.weight".to_string(),
            vec![3, 3],
            GgmlType::F16,
            vals(9, 3.0),
        ),
        (
            "d.weight".to_string(),
            vec![32, 2, 1, 2],
            GgmlType::Q4_1,
            vals(128, 4.0),
        ),
        (
            "e.weight".to_string(),
            vec![96],
            GgmlType::Q5_0,
            vals(96, 5.0),
        ),
        (
            "f.weight".to_string(),
            vec![32, 1, 3],
            GgmlType::Q5_1,
            vals(96, 6.0),
        ),
    ];
    for (name, dims, ty, v) in &tensors {
        w.add_tensor_f32(name.clone(), dims, *ty, v).unwrap();
    }
    (w, tensors)
}

fn check_layout(bytes: &[u8], f: &GgufFile) {
    let a = f.alignment as u64;
    assert_eq!(f.data_start % a, 0, "data section aligned");
    let mut running = 0u64;
    for t in &f.tensors {
        assert_eq!(t.offset % a, 0, "{} offset aligned", t.name);
        assert_eq!(
            t.offset, running,
            "{} offset = running sum of padded sizes",
            t.name
        );
        let end = f.data_start + t.offset + t.size;
        let padded_end = f.data_start + running + t.size.div_ceil(a) * a;
        assert!(
            bytes[end as usize..padded_end as usize]
                .iter()
                .all(|&b| b == 0),
            "zero padding"
        );
        running += t.size.div_ceil(a) * a;
    }
    assert_eq!(
        bytes.len() as u64,
        f.data_start + running,
        "file ends after the last padded tensor"
    );
}

#[test]
fn tensors_round_trip_with_alignment_and_offset_invariants() {
    for align in [None, Some(1), Some(8), Some(64), Some(256)] {
        let (w, tensors) = sample_writer(align);
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::parse(bytes.clone()).unwrap();
        assert_eq!(f.alignment, align.unwrap_or(32));
        check_layout(&bytes, &f);
        assert_eq!(f.tensors.len(), tensors.len());
        // Quantized tensors present → quantization version 2 added.
        assert_eq!(
            f.get("general.quantization_version"),
            Some(&MetadataValue::U32(2))
        );
        for (info, (name, dims, ty, v)) in f.tensors.iter().zip(&tensors) {
            assert_eq!(&info.name, name);
            assert_eq!(&info.dims, dims);
            assert_eq!(info.ty, *ty);
            let expect = codec::decode(*ty, &codec::encode(*ty, v).unwrap()).unwrap();
            assert_eq!(f.tensor_f32(name).unwrap(), expect, "{name}");
            assert_eq!(
                f.tensor_bytes(info),
                codec::encode(*ty, v).unwrap().as_slice()
            );
        }
    }
}

#[test]
fn header_bytes_and_dims_order() {
    let mut w = GgufWriter::new();
    // A row-major [4, 32] matrix is written with ggml dims [32, 4].
    w.add_tensor_f32("w", &[32, 4], GgmlType::F32, &[1.0; 128])
        .unwrap();
    let b = w.to_bytes().unwrap();
    assert_eq!(&b[0..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
    assert_eq!(
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
        1,
        "tensor count"
    );
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        0,
        "kv count (F32 only: no qv)"
    );
    // name "w": len u64 + 1 byte, then n_dims = 2, dims 32, 4, type 0, offset 0
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 1);
    assert_eq!(b[32], b'w');
    assert_eq!(u32::from_le_bytes(b[33..37].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(b[37..45].try_into().unwrap()), 32);
    assert_eq!(u64::from_le_bytes(b[45..53].try_into().unwrap()), 4);
    assert_eq!(u32::from_le_bytes(b[53..57].try_into().unwrap()), 0);
    assert_eq!(u64::from_le_bytes(b[57..65].try_into().unwrap()), 0);
    assert!(b[65..96].iter().all(|&x| x == 0));
    assert_eq!(b.len(), 96 + 512);
}

#[test]
fn atomic_write_file() {
    let dir = std::env::temp_dir().join(format!("burnq-gguf-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let (w, _) = sample_writer(None);
    w.write_file(&path).unwrap();
    let f = GgufFile::read(&path).unwrap();
    assert_eq!(f.tensors.len(), 7);
    assert_eq!(f.bytes(), w.to_bytes().unwrap().as_slice());
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("model.gguf")],
        "no temp file left"
    );
    // Writing into a missing directory fails without creating the target.
    let bad = dir.join("missing").join("x.gguf");
    assert!(matches!(w.write_file(&bad), Err(GgufError::Io(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hand-built (possibly malformed) files.

#[derive(Default)]
struct Raw {
    version: u32,
    magic: u32,
    kv_count: Option<u64>,
    tensor_count: Option<u64>,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    align: u64,
    data_len: u64,
}

fn s(buf: &mut Vec<u8>, x: &str) {
    buf.extend_from_slice(&(x.len() as u64).to_le_bytes());
    buf.extend_from_slice(x.as_bytes());
}

impl Raw {
    fn new() -> Self {
        Raw {
            version: 3,
            magic: GGUF_MAGIC,
            align: 32,
            ..Default::default()
        }
    }
    fn kv(mut self, key: &str, type_id: u32, value: &[u8]) -> Self {
        let mut b = Vec::new();
        s(&mut b, key);
        b.extend_from_slice(&type_id.to_le_bytes());
        b.extend_from_slice(value);
        self.kvs.push(b);
        self
    }
    fn info(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut b = Vec::new();
        s(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        self.infos.push(b);
        self
    }
    fn data(mut self, n: u64) -> Self {
        self.data_len = n;
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.magic.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(
            &self
                .tensor_count
                .unwrap_or(self.infos.len() as u64)
                .to_le_bytes(),
        );
        b.extend_from_slice(&self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        self.kvs.iter().for_each(|k| b.extend_from_slice(k));
        self.infos.iter().for_each(|k| b.extend_from_slice(k));
        b.resize(
            (b.len() as u64).div_ceil(self.align) as usize * self.align as usize,
            0,
        );
        b.resize(b.len() + self.data_len as usize, 0);
        b
    }
    fn parse(&self) -> Result<GgufFile> {
        GgufFile::parse(self.build())
    }
}

fn u32b(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

#[test]
fn raw_builder_baseline_parses() {
    // Two F32 tensors of 4 and 10 elements: 16 → 32 and 40 → 64 padded bytes.
    let f = Raw::new()
        .kv("k", 4, &u32b(1))
        .info("a", &[4], 0, 0)
        .info("b", &[10], 0, 32)
        .data(96)
        .parse()
        .unwrap();
    assert_eq!(f.tensors[1].offset, 32);
    assert_eq!(f.tensors[1].size, 40);
}

#[test]
fn bad_magic_and_version() {
    let mut r = Raw::new();
    r.magic = 0x4655_4746;
    assert!(matches!(
        r.parse(),
        Err(GgufError::BadMagic { found: 0x4655_4746 })
    ));
    for v in [0u32, 1, 4, u32::MAX] {
        let mut r = Raw::new();
        r.version = v;
        assert!(
            matches!(r.parse(), Err(GgufError::UnsupportedVersion { version }) if version == v),
            "version {v}"
        );
    }
    let mut r = Raw::new();
    r.version = 2;
    assert_eq!(r.parse().unwrap().version, 2);
}

#[test]
fn every_truncation_is_an_error() {
    let (w, _) = sample_writer(Some(64));
    let mut full = writer_with(&all_types_metadata());
    full.add_tensor_f32("x", &[32], GgmlType::Q8_0, &[0.5; 32])
        .unwrap();
    for bytes in [w.to_bytes().unwrap(), full.to_bytes().unwrap()] {
        assert!(GgufFile::parse(bytes.clone()).is_ok());
        for len in 0..bytes.len() {
            let r = GgufFile::parse(bytes[..len].to_vec());
            assert!(
                matches!(
                    r,
                    Err(GgufError::Truncated { .. }
                        | GgufError::CountTooLarge { .. }
                        | GgufError::OutOfBounds { .. })
                ),
                "prefix of {len} bytes: {r:?}"
            );
        }
    }
    assert!(matches!(
        GgufFile::parse(vec![0x47, 0x47]),
        Err(GgufError::Truncated { field: "magic", .. })
    ));
}

#[test]
fn absurd_counts_and_lengths() {
    let mut r = Raw::new();
    r.kv_count = Some(u64::MAX);
    assert!(matches!(
        r.parse(),
        Err(GgufError::CountTooLarge {
            field: "kv_count",
            ..
        })
    ));
    let mut r = Raw::new();
    r.tensor_count = Some(1 << 40);
    assert!(matches!(
        r.parse(),
        Err(GgufError::CountTooLarge {
            field: "tensor_count",
            ..
        })
    ));
    // Key length u64::MAX.
    let mut r = Raw::new().kv("k", 4, &u32b(1));
    r.kvs[0][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        r.parse(),
        Err(GgufError::CountTooLarge {
            field: "metadata key",
            ..
        })
    ));
    // String value length far beyond the file.
    let mut v = (1u64 << 50).to_le_bytes().to_vec();
    v.extend_from_slice(b"abc");
    assert!(matches!(
        Raw::new().kv("k", 8, &v).parse(),
        Err(GgufError::CountTooLarge {
            field: "metadata string value",
            ..
        })
    ));
    // Array of 2^61 u64 elements: must be rejected before allocating.
    let mut v = 10u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u64 << 61).to_le_bytes());
    assert!(matches!(
        Raw::new().kv("k", 9, &v).parse(),
        Err(GgufError::CountTooLarge {
            field: "array length",
            ..
        })
    ));
    // Array of 1000 strings in a tiny file.
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend_from_slice(&1000u64.to_le_bytes());
    assert!(matches!(
        Raw::new().kv("k", 9, &v).parse(),
        Err(GgufError::CountTooLarge { .. })
    ));
}

#[test]
fn unknown_type_ids() {
    assert!(matches!(
        Raw::new().kv("k", 13, &[0; 8]).parse(),
        Err(GgufError::UnknownValueType { ref key, type_id: 13 }) if key == "k"
    ));
    let mut v = 99u32.to_le_bytes().to_vec();
    v.extend_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        Raw::new().kv("arr", 9, &v).parse(),
        Err(GgufError::UnknownValueType { type_id: 99, .. })
    ));
    for id in [4u32, 31, 43, 9999] {
        assert!(
            matches!(
                Raw::new().info("t", &[32], id, 0).data(64).parse(),
                Err(GgufError::UnknownGgmlType { ref tensor, type_id }) if tensor == "t" && type_id == id
            ),
            "ggml type {id}"
        );
    }
}

#[test]
fn duplicates() {
    assert!(matches!(
        Raw::new().kv("dup", 4, &u32b(1)).kv("dup", 4, &u32b(2)).parse(),
        Err(GgufError::DuplicateKey { ref key }) if key == "dup"
    ));
    assert!(matches!(
        Raw::new().info("t", &[8], 0, 0).info("t", &[8], 0, 32).data(64).parse(),
        Err(GgufError::DuplicateTensor { ref name }) if name == "t"
    ));
}

#[test]
fn name_length_and_dims() {
    let ok = "n".repeat(63);
    assert!(Raw::new().info(&ok, &[1], 0, 0).data(32).parse().is_ok());
    let long = "n".repeat(64);
    assert!(matches!(
        Raw::new().info(&long, &[1], 0, 0).data(32).parse(),
        Err(GgufError::NameTooLong { len: 64, .. })
    ));
    assert!(matches!(
        Raw::new()
            .info("t", &[1, 1, 1, 1, 1], 0, 0)
            .data(32)
            .parse(),
        Err(GgufError::BadDimCount { n_dims: 5, .. })
    ));
    assert!(matches!(
        Raw::new().info("t", &[], 0, 0).data(32).parse(),
        Err(GgufError::BadDimCount { n_dims: 0, .. })
    ));
    assert!(matches!(
        Raw::new().info("t", &[1 << 40, 1 << 40], 0, 0).parse(),
        Err(GgufError::DimsOverflow { .. })
    ));
    assert!(matches!(
        Raw::new()
            .info("t", &[48, 2], GgmlType::Q4_0.id(), 0)
            .data(64)
            .parse(),
        Err(GgufError::NotBlockMultiple {
            ne0: 48,
            block_size: 32,
            ..
        })
    ));
    // 4 dims is fine.
    assert!(
        Raw::new()
            .info("t", &[2, 2, 2, 2], 0, 0)
            .data(64)
            .parse()
            .is_ok()
    );
}

#[test]
fn bad_offsets() {
    // Overlap: second tensor placed at 0.
    assert!(matches!(
        Raw::new().info("a", &[8], 0, 0).info("b", &[8], 0, 0).data(64).parse(),
        Err(GgufError::OverlappingOffset { ref name, offset: 0, expected: 32 }) if name == "b"
    ));
    // Unaligned.
    assert!(matches!(
        Raw::new().info("a", &[4], 0, 16).data(64).parse(),
        Err(GgufError::UnalignedOffset {
            offset: 16,
            alignment: 32,
            ..
        })
    ));
    // Gap (llama.cpp requires the running sum).
    assert!(matches!(
        Raw::new()
            .info("a", &[4], 0, 0)
            .info("b", &[4], 0, 64)
            .data(128)
            .parse(),
        Err(GgufError::OffsetGap {
            offset: 64,
            expected: 32,
            ..
        })
    ));
    // A first tensor not at offset 0 leaves a gap.
    assert!(matches!(
        Raw::new().info("a", &[4], 0, 32).data(64).parse(),
        Err(GgufError::OffsetGap { .. })
    ));
    // Out of bounds: 100 f32 need 400 bytes, file has 64.
    assert!(matches!(
        Raw::new().info("a", &[100], 0, 0).data(64).parse(),
        Err(GgufError::OutOfBounds { ref name, end, .. }) if name == "a" && end > 64
    ));
    // Missing padding after the last tensor (llama.cpp reads the padded size).
    let mut b = Raw::new().info("a", &[4], 0, 0).data(32).build();
    b.truncate(b.len() - 16);
    assert!(matches!(
        GgufFile::parse(b),
        Err(GgufError::OutOfBounds { .. })
    ));
    // Offset near u64::MAX must not overflow.
    assert!(matches!(
        Raw::new()
            .info("a", &[4], 0, u64::MAX - 31)
            .data(32)
            .parse(),
        Err(GgufError::OffsetGap { .. })
    ));
}

#[test]
fn bad_values_and_alignment() {
    assert!(matches!(
        Raw::new().kv("b", 7, &[2]).parse(),
        Err(GgufError::InvalidBool { value: 2, .. })
    ));
    let mut v = 7u32.to_le_bytes().to_vec();
    v.extend_from_slice(&2u64.to_le_bytes());
    v.extend_from_slice(&[1, 5]);
    assert!(matches!(
        Raw::new().kv("b", 9, &v).parse(),
        Err(GgufError::InvalidBool { value: 5, .. })
    ));
    let mut v = 2u64.to_le_bytes().to_vec();
    v.extend_from_slice(&[0xFF, 0xFE]);
    assert!(matches!(
        Raw::new().kv("s", 8, &v).parse(),
        Err(GgufError::InvalidUtf8 {
            field: "metadata string value"
        })
    ));
    for a in [0u32, 3, 48] {
        assert!(
            matches!(
                Raw::new().kv(ALIGNMENT_KEY, 4, &u32b(a)).parse(),
                Err(GgufError::BadAlignment { .. })
            ),
            "alignment {a}"
        );
    }
    assert!(matches!(
        Raw::new()
            .kv(ALIGNMENT_KEY, 10, &64u64.to_le_bytes())
            .parse(),
        Err(GgufError::BadAlignment { .. })
    ));
    let mut r = Raw::new()
        .kv(ALIGNMENT_KEY, 4, &u32b(64))
        .info("a", &[4], 0, 0)
        .data(64);
    r.align = 64;
    let f = r.parse().unwrap();
    assert_eq!((f.alignment, f.data_start % 64), (64, 0));
    // Nesting deeper than MAX_ARRAY_DEPTH.
    let mut v = Vec::new();
    for _ in 0..(MAX_ARRAY_DEPTH + 1) {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        Raw::new().kv("deep", 9, &v).parse(),
        Err(GgufError::NestingTooDeep { .. })
    ));
}

#[test]
fn writer_rejects_invalid_input() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", MetadataValue::U8(1)).unwrap();
    assert!(matches!(
        w.add_metadata("k", MetadataValue::U8(2)),
        Err(GgufError::DuplicateKey { .. })
    ));
    assert!(matches!(
        w.set_alignment(24),
        Err(GgufError::BadAlignment { .. })
    ));
    assert!(matches!(
        w.add_metadata(ALIGNMENT_KEY, MetadataValue::U64(32)),
        Err(GgufError::BadAlignment { .. })
    ));
    w.add_tensor_bytes("t", &[4], GgmlType::F32, vec![0; 16])
        .unwrap();
    assert!(matches!(
        w.add_tensor_bytes("t", &[4], GgmlType::F32, vec![0; 16]),
        Err(GgufError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.add_tensor_bytes("u", &[4], GgmlType::F32, vec![0; 15]),
        Err(GgufError::DataSizeMismatch {
            expected: 16,
            actual: 15,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor_bytes("n".repeat(64), &[4], GgmlType::F32, vec![0; 16]),
        Err(GgufError::NameTooLong { .. })
    ));
    assert!(matches!(
        w.add_tensor_bytes("v", &[1; 5], GgmlType::F32, vec![0; 4]),
        Err(GgufError::BadDimCount { n_dims: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor_f32("q", &[16], GgmlType::Q8_0, &[0.0; 16]),
        Err(GgufError::BadLength { .. } | GgufError::NotBlockMultiple { .. })
    ));
    assert!(matches!(
        w.add_tensor_f32("k4", &[256], GgmlType::IQ4_XS, &[0.0; 256]),
        Err(GgufError::UnsupportedType(GgmlType::IQ4_XS))
    ));
    assert!(matches!(
        w.clone()
            .add_metadata("x".repeat(65536), MetadataValue::U8(0)),
        Err(GgufError::KeyTooLong { .. })
    ));
    // A non-u32 quantization version with quantized tensors is refused.
    w.add_metadata("general.quantization_version", MetadataValue::U64(2))
        .unwrap();
    w.add_tensor_f32("q8", &[32], GgmlType::Q8_0, &[0.0; 32])
        .unwrap();
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::MissingQuantizationVersion { .. })
    ));
}

#[test]
fn random_corruption_never_panics() {
    let mut full = writer_with(&all_types_metadata());
    full.add_tensor_f32("x", &[32, 2], GgmlType::Q4_0, &[0.5; 64])
        .unwrap();
    full.add_tensor_f32("y", &[3], GgmlType::F32, &[0.5; 3])
        .unwrap();
    let bytes = full.to_bytes().unwrap();
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 3 {
                0 => 0xFF,
                1 => 0,
                _ => next() as u8,
            };
        }
        if GgufFile::parse(b).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0, "corruption must be detected at least sometimes");
}

/// The checked-in corpus of malformed files (`tests/corpus/gguf-bad/`, also the fuzzer's seeds):
/// (file name, bytes, the `GgufError` variant the reader must return).
fn bad_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut v = vec![];
    let mut r = Raw::new();
    r.magic = u32::from_le_bytes(*b"GGML");
    v.push(("bad-magic.gguf", r.build(), "BadMagic"));
    let mut r = Raw::new();
    r.version = 99;
    v.push(("version-99.gguf", r.build(), "UnsupportedVersion"));
    v.push((
        "truncated-header.gguf",
        Raw::new().build()[..10].to_vec(),
        "Truncated",
    ));
    let full = Raw::new().kv("general.name", 8, &{
        let mut b = 5u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"hello");
        b
    });
    // Header 24 bytes, key 8 + 12, type 4, string length 8: cut 2 bytes into "hello".
    let b = full.build();
    v.push((
        "truncated-in-string.gguf",
        b[..24 + 20 + 4 + 8 + 2].to_vec(),
        "CountTooLarge",
    ));
    v.push((
        "truncated-in-key.gguf",
        b[..24 + 8 + 3].to_vec(),
        "CountTooLarge",
    ));
    v.push((
        "truncated-before-value-type.gguf",
        b[..24 + 20 + 2].to_vec(),
        "Truncated",
    ));
    let mut r = Raw::new();
    r.kv_count = Some(u64::MAX);
    v.push(("absurd-kv-count.gguf", r.build(), "CountTooLarge"));
    let mut r = Raw::new();
    r.tensor_count = Some(1 << 40);
    v.push(("absurd-tensor-count.gguf", r.build(), "CountTooLarge"));
    let mut r = Raw::new().kv("k", 4, &u32b(1));
    r.kvs[0][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    v.push(("absurd-key-length.gguf", r.build(), "CountTooLarge"));
    let mut a = 10u32.to_le_bytes().to_vec();
    a.extend_from_slice(&(1u64 << 61).to_le_bytes());
    v.push((
        "absurd-array-length.gguf",
        Raw::new().kv("k", 9, &a).build(),
        "CountTooLarge",
    ));
    v.push((
        "unknown-value-type.gguf",
        Raw::new().kv("k", 13, &[0; 8]).build(),
        "UnknownValueType",
    ));
    v.push((
        "bool-byte-2.gguf",
        Raw::new().kv("b", 7, &[2]).build(),
        "InvalidBool",
    ));
    v.push((
        "retired-ggml-type.gguf",
        Raw::new().info("t", &[32], 4, 0).data(64).build(),
        "UnknownGgmlType",
    ));
    v.push((
        "duplicate-key.gguf",
        Raw::new()
            .kv("dup", 4, &u32b(1))
            .kv("dup", 4, &u32b(2))
            .build(),
        "DuplicateKey",
    ));
    v.push((
        "duplicate-tensor.gguf",
        Raw::new()
            .info("t", &[8], 0, 0)
            .info("t", &[8], 0, 32)
            .data(64)
            .build(),
        "DuplicateTensor",
    ));
    v.push((
        "name-too-long.gguf",
        Raw::new()
            .info(&"n".repeat(64), &[1], 0, 0)
            .data(32)
            .build(),
        "NameTooLong",
    ));
    v.push((
        "five-dims.gguf",
        Raw::new()
            .info("t", &[1, 1, 1, 1, 1], 0, 0)
            .data(32)
            .build(),
        "BadDimCount",
    ));
    v.push((
        "dims-overflow.gguf",
        Raw::new().info("t", &[1 << 40, 1 << 40], 0, 0).build(),
        "DimsOverflow",
    ));
    v.push((
        "row-not-multiple-of-block.gguf",
        Raw::new()
            .kv("general.quantization_version", 4, &u32b(2))
            .info("t", &[48, 2], GgmlType::Q4_0.id(), 0)
            .data(128)
            .build(),
        "NotBlockMultiple",
    ));
    v.push((
        "overlapping-offsets.gguf",
        Raw::new()
            .info("a", &[8], 0, 0)
            .info("b", &[8], 0, 0)
            .data(64)
            .build(),
        "OverlappingOffset",
    ));
    v.push((
        "unaligned-offset.gguf",
        Raw::new().info("a", &[4], 0, 16).data(64).build(),
        "UnalignedOffset",
    ));
    v.push((
        "gap-between-tensors.gguf",
        Raw::new().info("a", &[4], 0, 32).data(64).build(),
        "OffsetGap",
    ));
    v.push((
        "data-past-end.gguf",
        Raw::new().info("a", &[100], 0, 0).data(64).build(),
        "OutOfBounds",
    ));
    v.push((
        "alignment-not-power-of-two.gguf",
        Raw::new().kv(ALIGNMENT_KEY, 4, &u32b(48)).build(),
        "BadAlignment",
    ));
    let mut deep = vec![];
    for _ in 0..(MAX_ARRAY_DEPTH + 2) {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    deep.extend_from_slice(&4u32.to_le_bytes());
    deep.extend_from_slice(&0u64.to_le_bytes());
    v.push((
        "arrays-too-deep.gguf",
        Raw::new().kv("deep", 9, &deep).build(),
        "NestingTooDeep",
    ));
    let mut s = vec![];
    s.extend_from_slice(&2u64.to_le_bytes());
    s.extend_from_slice(&[0xff, 0xfe]);
    v.push((
        "invalid-utf8-string.gguf",
        Raw::new().kv("s", 8, &s).build(),
        "InvalidUtf8",
    ));
    v
}

/// Every file of the checked-in corpus gives the typed error it is named for (never a panic),
/// and the corpus is exactly what [`bad_corpus`] builds (`BURNQ_WRITE_CORPUS=1` rewrites it).
#[test]
fn checked_in_bad_file_corpus_gives_typed_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/gguf-bad");
    let corpus = bad_corpus();
    if std::env::var("BURNQ_WRITE_CORPUS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes, _) in &corpus {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".gguf"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = corpus.iter().map(|c| c.0.to_string()).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "corpus directory and bad_corpus() differ"
    );
    for (name, bytes, variant) in corpus {
        let file = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(file, bytes, "{name} differs from its generator");
        let err = GgufFile::read(dir.join(name)).expect_err(name);
        let dbg = format!("{err:?}");
        assert!(
            dbg.starts_with(variant),
            "{name}: expected {variant}, got {dbg}"
        );
    }
}
