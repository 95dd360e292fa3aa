//! Calibration inputs from files: `.npy` round trips and header variants, hostile bytes never
//! panic, PNG decoding of every layout, preprocessing configs, directory loading and batching,
//! and the independent reference — RapidOCR's preprocessing of the PP-OCR images, as written
//! by NumPy and Pillow (`../shared/data/ppocr-onnx`).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};

use crate::dataset::{
    ChannelOrder, DatasetError, Filter, ImageError, Layout, NpyError, Preprocess, Resize, RgbImage,
    decode_png, load_dir, npy_bytes, parse_npy, read_npy, read_png, stack_batches, write_npy,
};

/// A fresh, empty directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burnq-dataset-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The PP-OCR data directory, or `None` with a notice (a panic with `BURNQ_REQUIRE_DATA=1`).
fn ppocr_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ppocr-onnx");
    if dir.join("det_input_0.npy").exists() {
        return Some(dir);
    }
    if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("BURNQ_REQUIRE_DATA=1 but {} is missing", dir.display());
    }
    eprintln!("notice: skipping, {} is absent", dir.display());
    None
}

/// A hand-written `.npy` file: header dict text (padded as given) and data bytes.
fn npy_v(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    npy_v(1, header, data)
}

fn f32s(d: &TensorData) -> Vec<f32> {
    d.as_slice::<f32>().expect("f32 data").to_vec()
}

/// Deterministic xorshift64* bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn npy_round_trip_every_written_dtype() {
    let dir = scratch("roundtrip");
    let cases = [
        TensorData::new(
            vec![1.5f32, -2.25, f32::MAX, f32::MIN_POSITIVE, 0.0, -0.0],
            [2, 3],
        ),
        TensorData::new(vec![i64::MIN, -1, 0, 1, i64::MAX], [5]),
        TensorData::new(vec![-7i32, 8, 9, i32::MAX], [1, 2, 2]),
        TensorData::new(vec![0u8, 255, 17], [3, 1]),
        TensorData::new(vec![-128i8, 127], [2]),
        TensorData::new(vec![true, false, true, true], [2, 2]),
        TensorData::new(vec![3.0f32], Vec::<usize>::new()),
        TensorData::new(Vec::<f32>::new(), [0, 4]),
        TensorData::new(
            (0..3 * 7 * 5).map(|v| v as f32 * 0.1).collect::<Vec<_>>(),
            [1, 3, 7, 5],
        ),
    ];
    for (i, data) in cases.iter().enumerate() {
        let path = dir.join(format!("case_{i}.npy"));
        write_npy(&path, data).expect("write");
        let bytes = std::fs::read(&path).expect("read back");
        // np.save's layout: format 1.0, header padded so the data starts at a multiple of 64.
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "case {i}");
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        let back = read_npy(&path).expect("parse");
        assert_eq!(back.shape(), data.shape(), "case {i}");
        assert_eq!(back.dtype(), data.dtype(), "case {i}");
        assert_eq!(back.as_bytes(), data.as_bytes(), "case {i}");
    }
    // No temporary files are left behind by the atomic writes.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".npy") && !n.starts_with('.')),
        "{names:?}"
    );
    assert_eq!(names.len(), cases.len());
    // A 1-d shape is written as numpy writes it: `(5,)`.
    let one_d = npy_bytes(&TensorData::new(vec![0i64; 5], [5])).expect("bytes");
    assert!(String::from_utf8_lossy(&one_d).contains("'shape': (5,)"));
    // Unsupported dtypes are a typed error.
    let f64s = TensorData::new(vec![1.0f64], [1]);
    assert!(matches!(
        npy_bytes(&f64s),
        Err(DatasetError::UnsupportedWriteDtype { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn npy_header_variants() {
    let four_f32: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // Quote styles, spacing, key order, no trailing comma, no padding, trailing newline.
    for header in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }          \n",
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,2)}",
        "{ 'shape' : ( 2 , 2 , ) , 'fortran_order' : False , 'descr' : '<f4' }\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 2L), }\n", // Python 2
    ] {
        let d = parse_npy(&npy(header, &four_f32)).unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(d.shape().as_slice(), &[2, 2]);
        assert_eq!(f32s(&d), [1.0, 2.0, 3.0, 4.0]);
    }
    // Format 2.0 and 3.0 (UTF-8 header) carry a 4-byte header length.
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n";
    for major in [2, 3] {
        let d = parse_npy(&npy_v(major, h, &four_f32)).expect("v2/v3");
        assert_eq!(f32s(&d), [1.0, 2.0, 3.0, 4.0]);
    }
    // Big-endian, half, double, small ints, bool.
    let be: Vec<u8> = [1.5f32, -3.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let d = parse_npy(&npy(
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,)}",
        &be,
    ))
    .expect(">f4");
    assert_eq!(f32s(&d), [1.5, -3.0]);
    let halves: Vec<u8> = [0x3C00u16, 0xC000, 0x3555]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let d = parse_npy(&npy(
        "{'descr': '<f2', 'fortran_order': False, 'shape': (3,)}",
        &halves,
    ))
    .expect("<f2");
    assert_eq!(d.dtype(), DType::F32);
    assert_eq!(f32s(&d)[..2], [1.0, -2.0]);
    assert!((f32s(&d)[2] - 1.0 / 3.0).abs() < 1e-3);
    let doubles: Vec<u8> = [0.1f64, -1e300]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let d = parse_npy(&npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,)}",
        &doubles,
    ))
    .expect("<f8");
    assert_eq!(f32s(&d), [0.1f32, f32::NEG_INFINITY]);
    let d = parse_npy(&npy(
        "{'descr': '|u1', 'fortran_order': False, 'shape': (3,)}",
        &[0, 7, 255],
    ))
    .expect("|u1");
    assert_eq!(d.dtype(), DType::U8);
    assert_eq!(d.as_slice::<u8>().expect("u8"), &[0, 7, 255]);
    let d = parse_npy(&npy(
        "{'descr': '|i1', 'fortran_order': False, 'shape': (2,)}",
        &[0xff, 5],
    ))
    .expect("|i1");
    assert_eq!(d.as_slice::<i8>().expect("i8"), &[-1, 5]);
    let i4: Vec<u8> = [-5i32, 1 << 30]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let d = parse_npy(&npy(
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}",
        &i4,
    ))
    .expect("<i4");
    assert_eq!(d.as_slice::<i32>().expect("i32"), &[-5, 1 << 30]);
    let i8s: Vec<u8> = [-5i64, 1 << 40]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let d = parse_npy(&npy(
        "{'descr': '>i8', 'fortran_order': False, 'shape': (1, 2)}",
        &i8s,
    ))
    .expect(">i8");
    assert_eq!(d.as_slice::<i64>().expect("i64"), &[-5, 1 << 40]);
    let d = parse_npy(&npy(
        "{'descr': '|b1', 'fortran_order': False, 'shape': (3,)}",
        &[1, 0, 1],
    ))
    .expect("|b1");
    assert_eq!(d.try_to_vec::<bool>().expect("bool"), [true, false, true]);
    // 0-d and empty arrays.
    let d = parse_npy(&npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
        &four_f32[..4],
    ))
    .expect("0-d");
    assert_eq!(d.shape().as_slice(), &[] as &[usize]);
    let d = parse_npy(&npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3)}",
        &[],
    ))
    .expect("empty");
    assert_eq!(d.num_elements(), 0);

    // Typed errors.
    let err = |header: &str, data: &[u8]| parse_npy(&npy(header, data)).expect_err(header);
    assert_eq!(
        err(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &four_f32
        ),
        NpyError::FortranOrder
    );
    for descr in ["<c8", "<U4", "|f4", "<f16", "O", "", "<M8[ns]"] {
        let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (4,), }}");
        assert!(
            matches!(err(&h, &four_f32), NpyError::UnsupportedDtype { .. }),
            "{descr}"
        );
    }
    assert!(matches!(
        err(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
            &four_f32
        ),
        NpyError::UnsupportedDtype { .. }
    ));
    for bad in [
        "{'descr': '<f4', 'shape': (4,), }", // missing key
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", // extra key
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}", // twice
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4)}", // int, not tuple
        "{'descr': '<f4', 'fortran_order': False, 'shape': [4]}", // list
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-4,)}", // negative
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4.0,)}", // float
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}", // not a bool
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} junk", // trailing
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)", // unclosed
        "{'descr: '<f4', 'fortran_order': False, 'shape': (4,)}", // quotes
        "('descr', '<f4')",                  // not a dict
        "",
    ] {
        assert!(
            matches!(err(bad, &four_f32), NpyError::BadHeader(_)),
            "{bad}"
        );
    }
    let deep = format!("{}{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(matches!(err(&deep, &[]), NpyError::BadHeader(_)));
    // Absurd shapes: element or byte counts beyond usize, digits beyond u64.
    for shape in [
        "(18446744073709551615, 2)",
        "(4611686018427387904,)",
        "(4294967296, 4294967296)",
        "(99999999999999999999999999999999999999999999,)",
    ] {
        let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        assert!(
            matches!(err(&h, &four_f32), NpyError::ShapeOverflow { .. }),
            "{shape}"
        );
    }
    // Data shorter or longer than the shape says.
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
    assert!(matches!(
        err(h, &four_f32[..15]),
        NpyError::ByteCount {
            expected: 16,
            got: 15,
            ..
        }
    ));
    let mut long = four_f32.clone();
    long.push(0);
    assert!(matches!(
        err(h, &long),
        NpyError::ByteCount {
            expected: 16,
            got: 17,
            ..
        }
    ));
    // Versions and magic.
    let mut v4 = npy(h, &four_f32);
    v4[6] = 4;
    assert_eq!(
        parse_npy(&v4).expect_err("v4"),
        NpyError::UnsupportedVersion { major: 4, minor: 0 }
    );
    v4[6] = 1;
    v4[7] = 1;
    assert!(matches!(
        parse_npy(&v4),
        Err(NpyError::UnsupportedVersion { .. })
    ));
    assert_eq!(
        parse_npy(b"\x89PNG\r\n\x1a\n....").expect_err("png"),
        NpyError::BadMagic
    );
    assert_eq!(parse_npy(b"hi").expect_err("short"), NpyError::BadMagic);
    // A v3 header must be UTF-8.
    let mut bad_utf8 = npy_v(3, h, &four_f32);
    bad_utf8[12] = 0xff;
    assert!(matches!(parse_npy(&bad_utf8), Err(NpyError::BadHeader(_))));
}

#[test]
fn npy_hostile_bytes_never_panic() {
    let valid = npy_bytes(&TensorData::new(
        (0..24).map(|v| v as f32).collect::<Vec<_>>(),
        [2, 3, 4],
    ))
    .expect("bytes");
    // Every truncation is an error: truncated (inside magic/length/header) or a byte count.
    for n in 0..valid.len() {
        match parse_npy(&valid[..n]) {
            Err(NpyError::Truncated { .. }) => assert!(n < 128, "{n}"),
            Err(NpyError::ByteCount {
                expected: 96, got, ..
            }) => assert_eq!(got + 128, n),
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
    assert!(parse_npy(&valid).is_ok());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Random byte strings, with and without a valid magic.
    for i in 0..3000 {
        let len = rng.below(300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && len >= 8 {
            bytes[..6].copy_from_slice(b"\x93NUMPY");
            bytes[6] = 1 + (rng.below(3) as u8);
            bytes[7] = 0;
        }
        let _ = parse_npy(&bytes);
    }
    // Mutations of a valid file: flipped header and length bytes, printable header noise.
    let alphabet = b"{}()[],:'\" 0123456789-LTrueFalsNone<>|f4i8u1b1descrshape\n\\";
    for _ in 0..5000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(128);
            bytes[at] = if rng.below(2) == 0 {
                rng.next() as u8
            } else {
                alphabet[rng.below(alphabet.len())]
            };
        }
        let cut = bytes.len() - rng.below(8);
        let _ = parse_npy(&bytes[..cut]);
    }
    // The same for PNG: truncations, random bytes and flipped bytes of a valid file.
    let image = png_bytes(
        5,
        4,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &(0..60).collect::<Vec<u8>>(),
    );
    assert!(decode_png(&image).is_ok());
    // Every cut before the end of the image data fails (the trailing 12-byte IEND chunk is
    // not needed to decode); no cut panics.
    for n in 0..image.len() {
        let decoded = decode_png(&image[..n]);
        assert!(n >= image.len() - 12 || decoded.is_err(), "png prefix {n}");
    }
    for _ in 0..2000 {
        let mut bytes = image.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
        }
        let _ = decode_png(&bytes);
        let random: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        let _ = decode_png(&random);
    }
    // A header claiming a huge image is refused before allocating it.
    let huge = png_header_only(1 << 30, 1 << 30);
    assert!(decode_png(&huge).is_err());
}

/// An encoded PNG of the given layout.
fn png_bytes(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().expect("png header");
        writer.write_image_data(data).expect("png data");
    }
    out
}

/// A PNG signature and IHDR chunk only (valid CRC), for a `w` × `h` RGBA16 image.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn png_layouts_decode_to_rgb() {
    use png::{BitDepth, ColorType};
    // Gray 8: replicated.
    let img = decode_png(&png_bytes(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Eight,
        &[10, 200],
    ))
    .expect("gray8");
    assert_eq!((img.width, img.height, img.bit_depth), (2, 1, 8));
    assert_eq!(img.samples, [10, 10, 10, 200, 200, 200]);
    // Gray 1-bit expands to 0/255.
    let img = decode_png(&png_bytes(
        3,
        1,
        ColorType::Grayscale,
        BitDepth::One,
        &[0b1010_0000],
    ))
    .expect("gray1");
    assert_eq!(img.samples, [255, 255, 255, 0, 0, 0, 255, 255, 255]);
    // Gray 16 stays 16-bit (big-endian in the file).
    let img = decode_png(&png_bytes(
        1,
        1,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        &[0x12, 0x34],
    ))
    .expect("gray16");
    assert_eq!((img.bit_depth, img.max_value()), (16, 65535));
    assert_eq!(img.samples, [0x1234; 3]);
    // RGB 16.
    let img = decode_png(&png_bytes(
        1,
        1,
        ColorType::Rgb,
        BitDepth::Sixteen,
        &[0, 1, 0xff, 0xff, 0x80, 0],
    ))
    .expect("rgb16");
    assert_eq!(img.samples, [1, 65535, 0x8000]);
    // RGBA 8 composites over white: opaque keeps, transparent is white, half mixes.
    let img = decode_png(&png_bytes(
        3,
        1,
        ColorType::Rgba,
        BitDepth::Eight,
        &[10, 20, 30, 255, 10, 20, 30, 0, 0, 100, 255, 128],
    ))
    .expect("rgba8");
    let mix = |v: u32| ((v * 128 + 255 * 127 + 127) / 255) as u16;
    assert_eq!(
        img.samples,
        [10, 20, 30, 255, 255, 255, mix(0), mix(100), mix(255)]
    );
    // Gray+alpha.
    let img = decode_png(&png_bytes(
        1,
        1,
        ColorType::GrayscaleAlpha,
        BitDepth::Eight,
        &[0, 0],
    ))
    .expect("graya");
    assert_eq!(img.samples, [255; 3]);
    // Palette.
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 1);
        enc.set_color(ColorType::Indexed);
        enc.set_depth(BitDepth::Eight);
        enc.set_palette(vec![1, 2, 3, 250, 251, 252]);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[1, 0]).expect("data");
    }
    let img = decode_png(&out).expect("palette");
    assert_eq!(img.samples, [250, 251, 252, 1, 2, 3]);
    // Not a PNG.
    assert!(matches!(
        decode_png(b"not a png"),
        Err(ImageError::Decode(_))
    ));
}

fn gray_ramp(w: usize, h: usize) -> RgbImage {
    let rgb: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let v = (i * 255 / (w * h - 1).max(1)) as u8;
            [v, v / 2, 255 - v]
        })
        .collect();
    RgbImage::from_rgb8(w, h, &rgb).expect("image")
}

#[test]
fn preprocess_configs_layouts_and_padding() {
    // Presets (de)serialize and print; invalid fields are typed errors.
    for p in [Preprocess::ppocr_det(), Preprocess::ppocr_cls()] {
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(
            serde_json::from_str::<Preprocess>(&json).expect("json back"),
            p
        );
        let text = toml::to_string(&p).expect("toml");
        assert_eq!(toml::from_str::<Preprocess>(&text).expect("toml back"), p);
        assert!(format!("{p:?}").contains("mean"));
    }
    let from_toml: Preprocess = toml::from_str(
        "channel_order = \"rgb\"\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n\
         resize = { kind = \"exact\", h = 8, w = 6 }\n",
    )
    .expect("toml with defaults");
    assert_eq!(from_toml.layout, Layout::Nchw);
    assert_eq!(from_toml.filter, Filter::PilBilinear);
    assert!(
        toml::from_str::<Preprocess>(
            "channel_order = \"rgb\"\nmean=[0,0,0]\nstd=[1,1,1]\nresize={kind=\"none\"}\nextra=1\n"
        )
        .is_err()
    );
    let img = gray_ramp(5, 3);
    let mut bad = Preprocess::ppocr_det();
    bad.std[1] = 0.0;
    assert!(
        matches!(bad.apply(&img), Err(ImageError::InvalidPreprocess { field, .. }) if field == "std[1]")
    );
    bad = Preprocess::ppocr_det();
    bad.resize = Resize::None {
        multiple_of: 0,
        pad_value: 0.0,
    };
    assert!(matches!(
        bad.apply(&img),
        Err(ImageError::InvalidPreprocess { .. })
    ));
    bad.resize = Resize::Exact { h: 0, w: 3 };
    assert!(matches!(
        bad.apply(&img),
        Err(ImageError::InvalidPreprocess { .. })
    ));
    bad.resize = Resize::Exact {
        h: 1 << 20,
        w: 1 << 20,
    };
    assert!(matches!(bad.apply(&img), Err(ImageError::TooLarge { .. })));
    bad.resize = Resize::None {
        multiple_of: usize::MAX,
        pad_value: 0.0,
    };
    assert!(matches!(bad.apply(&img), Err(ImageError::TooLarge { .. })));
    let broken = RgbImage {
        width: 2,
        height: 2,
        bit_depth: 8,
        samples: vec![0; 5],
    };
    assert!(matches!(
        Preprocess::ppocr_det().apply(&broken),
        Err(ImageError::PixelCount { .. })
    ));
    assert!(RgbImage::from_rgb8(2, 2, &[0; 11]).is_err());
    let odd = RgbImage {
        width: 1,
        height: 1,
        bit_depth: 12,
        samples: vec![0; 3],
    };
    assert!(matches!(
        Preprocess::ppocr_det().apply(&odd),
        Err(ImageError::Unsupported(_))
    ));
    let over = RgbImage {
        width: 1,
        height: 1,
        bit_depth: 8,
        samples: vec![0, 256, 0],
    };
    assert!(matches!(
        Preprocess::ppocr_det().apply(&over),
        Err(ImageError::Unsupported(_))
    ));

    // None + multiple_of pads bottom/right with the pad value; BGR swaps channels.
    let pre = Preprocess {
        layout: Layout::Nchw,
        channel_order: ChannelOrder::Bgr,
        mean: [0.0; 3],
        std: [1.0; 3],
        resize: Resize::None {
            multiple_of: 4,
            pad_value: -9.0,
        },
        filter: Filter::PilBilinear,
    };
    let t = pre.apply(&img).expect("apply");
    assert_eq!(t.shape().as_slice(), &[1, 3, 4, 8]);
    let v = f32s(&t);
    let at = |c: usize, y: usize, x: usize| v[(c * 4 + y) * 8 + x];
    for y in 0..4 {
        for x in 0..8 {
            for c in 0..3 {
                if y < 3 && x < 5 {
                    let p = img.samples[(y * 5 + x) * 3 + (2 - c)];
                    assert_eq!(at(c, y, x), f32::from(p) / 255.0);
                } else {
                    assert_eq!(at(c, y, x), -9.0);
                }
            }
        }
    }
    // NHWC holds the same values.
    let nhwc = Preprocess {
        layout: Layout::Nhwc,
        ..pre.clone()
    }
    .apply(&img)
    .expect("nhwc");
    assert_eq!(nhwc.shape().as_slice(), &[1, 4, 8, 3]);
    let w = f32s(&nhwc);
    for y in 0..4 {
        for x in 0..8 {
            for c in 0..3 {
                assert_eq!(w[(y * 8 + x) * 3 + c], at(c, y, x));
            }
        }
    }
    // 16-bit images normalize by 65535.
    let img16 = RgbImage {
        width: 1,
        height: 1,
        bit_depth: 16,
        samples: vec![65535, 0, 32768],
    };
    let rgb = Preprocess {
        channel_order: ChannelOrder::Rgb,
        ..pre.clone()
    };
    let t = Preprocess {
        resize: Resize::None {
            multiple_of: 1,
            pad_value: 0.0,
        },
        ..rgb.clone()
    }
    .apply(&img16)
    .expect("16-bit");
    assert_eq!(f32s(&t), [1.0, 0.0, 32768.0 / 65535.0]);

    // Resizing a constant image gives the constant with every filter and depth.
    let flat = RgbImage::from_rgb8(7, 5, &[77u8; 7 * 5 * 3]).expect("flat");
    let flat16 = RgbImage {
        bit_depth: 16,
        samples: vec![77 * 257; 7 * 5 * 3],
        ..flat.clone()
    };
    for filter in [Filter::PilBilinear, Filter::Bilinear] {
        for (h, w) in [(3, 4), (10, 13), (5, 2), (1, 1)] {
            let p = Preprocess {
                resize: Resize::Exact { h, w },
                filter,
                ..rgb.clone()
            };
            for image in [&flat, &flat16] {
                let t = p.apply(image).expect("exact");
                assert_eq!(t.shape().as_slice(), &[1, 3, h, w]);
                for v in f32s(&t) {
                    assert!((v - 77.0 / 255.0).abs() < 1e-6, "{filter:?} {h}x{w}: {v}");
                }
            }
        }
    }
    // FitHeight: width ceil(h*w0/h0), capped, padded right.
    let p = Preprocess {
        resize: Resize::FitHeight {
            h: 6,
            max_w: 10,
            pad_value: 5.0,
        },
        ..rgb.clone()
    };
    let t = p.apply(&flat).expect("fit"); // ceil(6*7/5) = 9
    assert_eq!(t.shape().as_slice(), &[1, 3, 6, 10]);
    let v = f32s(&t);
    assert!((v[8] - 77.0 / 255.0).abs() < 1e-6 && v[9] == 5.0);
    let wide = RgbImage::from_rgb8(40, 2, &[0u8; 40 * 2 * 3]).expect("wide");
    let v = f32s(&p.apply(&wide).expect("capped"));
    assert!(v.iter().all(|&x| x == 0.0), "capped at max_w, no padding");
}

/// Pillow's bilinear resampling, checked against values Pillow 13.0.0 computes for a small
/// image (`Image.frombytes("RGB", (5, 3), bytes(range(45))).resize((3, 2), BILINEAR)` and
/// `.resize((8, 4), BILINEAR)`).
#[test]
fn pil_bilinear_matches_pillow_on_a_small_image() {
    let img = RgbImage::from_rgb8(5, 3, &(0u8..45).collect::<Vec<_>>()).expect("image");
    let p = |h, w| Preprocess {
        layout: Layout::Nhwc,
        channel_order: ChannelOrder::Rgb,
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
        resize: Resize::Exact { h, w },
        filter: Filter::PilBilinear,
    };
    let pixels = |h, w| -> Vec<u8> {
        f32s(&p(h, w).apply(&img).expect("resize"))
            .into_iter()
            .map(|v| v.round() as u8)
            .collect()
    };
    assert_eq!(pixels(2, 3), PIL_DOWN);
    assert_eq!(pixels(4, 8), PIL_UP);
}

/// `list(Image.frombytes("RGB", (5, 3), bytes(range(45))).resize((3, 2), Image.BILINEAR).tobytes())`
const PIL_DOWN: [u8; 18] = [
    7, 8, 9, 12, 13, 14, 17, 18, 19, 25, 26, 27, 30, 31, 32, 35, 36, 37,
];
/// The same image `.resize((8, 4), Image.BILINEAR)`.
const PIL_UP: [u8; 96] = [
    0, 1, 2, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12, 13, 12, 13, 14, 9, 10, 11, 10,
    11, 12, 12, 13, 14, 14, 15, 16, 16, 17, 18, 18, 19, 20, 20, 21, 22, 21, 22, 23, 21, 22, 23, 22,
    23, 24, 24, 25, 26, 26, 27, 28, 28, 29, 30, 30, 31, 32, 32, 33, 34, 33, 34, 35, 30, 31, 32, 31,
    32, 33, 33, 34, 35, 35, 36, 37, 37, 38, 39, 39, 40, 41, 41, 42, 43, 42, 43, 44,
];

#[test]
fn load_dir_sorts_loads_and_reports() {
    let dir = scratch("loaddir");
    // Created out of order; names sort as b_0 < b_1 < c.
    write_npy(dir.join("c.npy"), &TensorData::new(vec![3.0f32; 6], [1, 6])).expect("c");
    write_npy(dir.join("b_1.npy"), &TensorData::new(vec![2i64; 2], [1, 2])).expect("b1");
    std::fs::write(dir.join("notes.txt"), "ignored").expect("txt");
    std::fs::create_dir(dir.join("sub.npy")).expect("a directory named .npy is ignored");
    let rgb: Vec<u8> = (0..40 * 30 * 3).map(|i| (i % 251) as u8).collect();
    std::fs::write(
        dir.join("b_0.PNG"),
        png_bytes(40, 30, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
    )
    .expect("png");
    match load_dir(&dir, None) {
        Err(DatasetError::NeedsPreprocess { path }) => assert!(path.ends_with("b_0.PNG")),
        other => panic!("{other:?}"),
    }
    let items = load_dir(&dir, Some(&Preprocess::ppocr_det())).expect("load");
    let names: Vec<_> = items
        .iter()
        .map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["b_0.PNG", "b_1.npy", "c.npy"]);
    assert_eq!(items[0].1.shape().as_slice(), &[1, 3, 32, 64]);
    assert_eq!(items[1].1.dtype(), DType::I64);
    assert_eq!(items[2].1.shape().as_slice(), &[1, 6]);
    // The PNG's pixels equal read_png + apply.
    let direct = Preprocess::ppocr_det()
        .apply(&read_png(dir.join("b_0.PNG")).expect("read"))
        .expect("apply");
    assert_eq!(direct.as_bytes(), items[0].1.as_bytes());
    // Malformed files name themselves.
    std::fs::write(dir.join("d.npy"), b"\x93NUMPY\x01\x00").expect("bad npy");
    match load_dir(&dir, Some(&Preprocess::ppocr_det())) {
        Err(e @ DatasetError::Npy { .. }) => assert!(e.to_string().contains("d.npy"), "{e}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(dir.join("d.npy"), b"").expect("empty npy");
    std::fs::write(dir.join("a.png"), b"\x89PNG\r\n\x1a\n").expect("bad png");
    assert!(matches!(
        load_dir(&dir, Some(&Preprocess::ppocr_det())),
        Err(DatasetError::Image { .. })
    ));
    // No inputs, or no directory.
    let empty = scratch("loaddir-empty");
    std::fs::write(empty.join("x.json"), "{}").expect("json");
    assert!(matches!(
        load_dir(&empty, None),
        Err(DatasetError::NoInputs { ignored: 1, .. })
    ));
    assert!(matches!(
        load_dir(empty.join("missing"), None),
        Err(DatasetError::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn stack_batches_concatenates_in_order() {
    let samples: Vec<TensorData> = (0..5)
        .map(|i| TensorData::new(vec![i as f32; 6], [1, 2, 3]))
        .collect();
    let batches = stack_batches(&samples, 2).expect("batches");
    let shapes: Vec<_> = batches
        .iter()
        .map(|b| b.shape().as_slice().to_vec())
        .collect();
    assert_eq!(shapes, [vec![2, 2, 3], vec![2, 2, 3], vec![1, 2, 3]]);
    assert_eq!(f32s(&batches[1])[..7], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0]);
    assert_eq!(f32s(&batches[2]), [4.0; 6]);
    assert!(matches!(
        stack_batches(&samples, 0),
        Err(DatasetError::Batch(_))
    ));
    assert!(matches!(stack_batches(&[], 2), Err(DatasetError::Batch(_))));
    let mut mixed = samples.clone();
    mixed[3] = TensorData::new(vec![0.0f32; 6], [1, 3, 2]);
    assert!(matches!(
        stack_batches(&mixed, 2),
        Err(DatasetError::SampleMismatch { index: 3, .. })
    ));
    mixed[3] = TensorData::new(vec![0i64; 6], [1, 2, 3]);
    assert!(matches!(
        stack_batches(&mixed, 2),
        Err(DatasetError::SampleMismatch { index: 3, .. })
    ));
}

/// The detector's inputs: RapidOCR's `DetPreProcess` as `derive/make_data.py` ran it in NumPy
/// (`float32(p)/255`, `(x-0.5)/0.5`, no resize at 320×224) — the same `f32` operations, so the
/// tensors must be bit-identical.
#[test]
fn ppocr_det_png_reproduces_numpy_inputs_bit_exactly() {
    let Some(dir) = ppocr_dir() else { return };
    for i in 0..4 {
        let png = dir.join(format!("det_input_{i}.png"));
        let ours = Preprocess::ppocr_det()
            .apply(&read_png(&png).expect("png"))
            .expect("preprocess");
        let theirs = read_npy(dir.join(format!("det_input_{i}.npy"))).expect("npy");
        assert_eq!(ours.shape().as_slice(), &[1, 3, 224, 320]);
        assert_eq!(ours.shape(), theirs.shape());
        let (a, b) = (f32s(&ours), f32s(&theirs));
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "det_input_{i}: {differ} elements differ");
    }
}

/// The classifier's inputs: height 48, width `min(ceil(48w/h), 192)` with Pillow's
/// `resize(BILINEAR)` (antialiased on these downscales), normalized, zero-padded. Our
/// `Filter::PilBilinear` ports Pillow's fixed-point resampler, so the tensors are
/// bit-identical too (measured: 0 differing elements out of 4 × 27,648, tolerance 0). For
/// scale: a plain bilinear resize without antialiasing ([`Filter::Bilinear`]) differs from
/// Pillow by up to 0.44 on the normalized `[-1, 1]` scale (measured) on these glyph edges, so
/// no useful tolerance would have covered it; that is why the port exists.
#[test]
fn ppocr_cls_png_reproduces_pillow_inputs_bit_exactly() {
    let Some(dir) = ppocr_dir() else { return };
    let mut plain_max = 0.0f32;
    for i in 0..4 {
        let image = read_png(dir.join(format!("cls_input_{i}.png"))).expect("png");
        let ours = Preprocess::ppocr_cls().apply(&image).expect("preprocess");
        let theirs = read_npy(dir.join(format!("cls_input_{i}.npy"))).expect("npy");
        assert_eq!(ours.shape().as_slice(), &[1, 3, 48, 192]);
        let (a, b) = (f32s(&ours), f32s(&theirs));
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "cls_input_{i}: {differ} elements differ, max |diff| {max}"
        );
        let plain = Preprocess {
            filter: Filter::Bilinear,
            ..Preprocess::ppocr_cls()
        }
        .apply(&image)
        .expect("plain bilinear");
        let pm = f32s(&plain)
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        plain_max = plain_max.max(pm);
    }
    eprintln!("plain bilinear (no antialiasing) vs Pillow: max |diff| {plain_max}");
    assert!(plain_max > 0.01, "the references do exercise antialiasing");
}
