//! Granularity: which elements share a scale.
//!
//! Every granularity is resolved against a concrete shape into a [`Layout`]: the tensor is
//! viewed as `[outer, axis_len, inner]` around the quantization axis, and each element
//! `(o, n, i)` maps to one scale *cell*. Scales are stored in the tensor's own rank with the
//! axis shrunk (per group), kept (per channel) or every dimension set to 1 (per tensor), so
//! they broadcast against the input after a reshape.
//!
//! A group size need not divide the axis: the last group along the axis is then shorter (as
//! Brevitas, GPTQ and ONNX blocked quantization allow; e.g. groups of 128 over SmolLM2's 576
//! inputs are 4 of 128 and one of 64), and the scale tensor has `ceil(len / size)` entries
//! along the axis. Such a layout is *ragged* ([`Layout::is_ragged`]).

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};

/// Which elements share one scale (and zero-point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Granularity {
    /// One scale for the whole tensor.
    #[default]
    PerTensor,
    /// One scale per index along `axis` (e.g. axis 1 of a Burn `Linear` weight
    /// `[d_input, d_output]` = per output channel).
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
    /// One scale per `size` consecutive elements along `axis`, for every position of the other
    /// axes (e.g. axis 0 of a Burn `Linear` weight = groups along the input dimension, as GPTQ
    /// and GGUF use them). When `size` does not divide the axis length, the last group is
    /// shorter.
    PerGroup {
        /// The axis the groups run along.
        axis: usize,
        /// Elements per group.
        size: usize,
    },
}

/// A granularity resolved against a shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Length of the axis.
    pub axis_len: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
    /// Elements per group along the axis (1 for per channel, `axis_len` for per tensor).
    pub group: usize,
    /// The granularity this came from.
    pub granularity: Granularity,
    /// Shape of the scale tensor (same rank as the input).
    pub scale_shape: Vec<usize>,
    /// Shape of the input this layout was resolved against.
    pub shape: Vec<usize>,
}

impl Granularity {
    /// Resolves this granularity against `shape`.
    pub fn layout(&self, shape: &[usize]) -> Result<Layout> {
        let rank = shape.len();
        let (axis, group) = match *self {
            Granularity::PerTensor => (None, 0),
            Granularity::PerChannel { axis } => (Some(axis), 1),
            Granularity::PerGroup { axis, size } => {
                if size == 0 {
                    return Err(QuantError::config(
                        "granularity.size",
                        0,
                        "group size must be at least 1",
                    ));
                }
                (Some(axis), size)
            }
        };
        let Some(axis) = axis else {
            let n: usize = shape.iter().product();
            return Ok(Layout {
                outer: 1,
                axis_len: n,
                inner: 1,
                group: n.max(1),
                granularity: *self,
                scale_shape: vec![1; rank],
                shape: shape.to_vec(),
            });
        };
        if axis >= rank {
            return Err(QuantError::AxisOutOfRange { axis, rank });
        }
        let axis_len = shape[axis];
        let outer = shape[..axis].iter().product();
        let inner = shape[axis + 1..].iter().product();
        let scale_shape = match self {
            Granularity::PerChannel { .. } => {
                let mut s = vec![1; rank];
                s[axis] = axis_len;
                s
            }
            _ => {
                let mut s = shape.to_vec();
                s[axis] = axis_len.div_ceil(group);
                s
            }
        };
        Ok(Layout {
            outer,
            axis_len,
            inner,
            group,
            granularity: *self,
            scale_shape,
            shape: shape.to_vec(),
        })
    }

    /// The quantization axis, if any.
    pub fn axis(&self) -> Option<usize> {
        match self {
            Granularity::PerTensor => None,
            Granularity::PerChannel { axis } | Granularity::PerGroup { axis, .. } => Some(*axis),
        }
    }
}

impl Layout {
    /// Number of scale cells.
    pub fn cells(&self) -> usize {
        self.scale_shape.iter().product()
    }

    /// Number of groups along the axis (the last one may be shorter, see
    /// [`Layout::is_ragged`]).
    pub fn groups(&self) -> usize {
        self.axis_len.div_ceil(self.group)
    }

    /// Whether the last group along the axis is shorter than the others (the group size does
    /// not divide the axis). Such a layout has no [`Layout::view4`]: the tensor paths expand
    /// the scales along the axis instead.
    pub fn is_ragged(&self) -> bool {
        !self.axis_len.is_multiple_of(self.group.max(1))
    }

    /// Number of elements along the axis in group `g` (`group`, or fewer for the last group of
    /// a ragged layout).
    pub fn group_len(&self, g: usize) -> usize {
        self.group.min(self.axis_len.saturating_sub(g * self.group))
    }

    /// Whether every scale cell spans the outer and inner dimensions (per tensor, per channel).
    fn shared_across_outer_inner(&self) -> bool {
        !matches!(self.granularity, Granularity::PerGroup { .. })
    }

    /// Scale cell of the element at (outer `o`, axis `n`, inner `i`).
    #[inline(always)]
    pub fn cell(&self, o: usize, n: usize, i: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor => 0,
            Granularity::PerChannel { .. } => n,
            Granularity::PerGroup { .. } => (o * self.groups() + n / self.group) * self.inner + i,
        }
    }

    /// Flat indices of the elements of every cell, cell by cell (a gather plan for statistics).
    pub fn members(&self) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); self.cells()];
        let per_cell = (self.outer * self.axis_len * self.inner) / self.cells().max(1);
        for v in out.iter_mut() {
            v.reserve(per_cell);
        }
        for o in 0..self.outer {
            for n in 0..self.axis_len {
                let base = (o * self.axis_len + n) * self.inner;
                for i in 0..self.inner {
                    out[self.cell(o, n, i)].push(base + i);
                }
            }
        }
        out
    }

    /// Shape of the 4-D broadcasting view of the input, `[outer, groups, group, inner]`
    /// (only for layouts that are not [ragged](Layout::is_ragged)).
    pub fn view4(&self) -> [usize; 4] {
        debug_assert!(!self.is_ragged(), "a ragged layout has no 4-D group view");
        [self.outer, self.groups(), self.group, self.inner]
    }

    /// Shape of the 4-D broadcasting view of the scales, matching [`Layout::view4`].
    pub fn scale_view4(&self) -> [usize; 4] {
        if self.shared_across_outer_inner() {
            [1, self.groups(), 1, 1]
        } else {
            [self.outer, self.groups(), 1, self.inner]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_of_each_granularity() {
        let l = Granularity::PerTensor.layout(&[4, 6]).unwrap();
        assert_eq!(
            (l.cells(), l.scale_shape.clone(), l.view4()),
            (1, vec![1, 1], [1, 1, 24, 1])
        );
        let l = Granularity::PerChannel { axis: 1 }.layout(&[4, 6]).unwrap();
        assert_eq!(
            (l.scale_shape.clone(), l.view4(), l.scale_view4()),
            (vec![1, 6], [4, 6, 1, 1], [1, 6, 1, 1])
        );
        assert_eq!(l.cell(3, 5, 0), 5);
        let l = Granularity::PerGroup { axis: 0, size: 2 }
            .layout(&[4, 6])
            .unwrap();
        assert_eq!(
            (l.scale_shape.clone(), l.view4(), l.scale_view4()),
            (vec![2, 6], [1, 2, 2, 6], [1, 2, 1, 6])
        );
        // Element (row 3, col 4) is in group 1 of column 4 → cell 1·6 + 4.
        assert_eq!(l.cell(0, 3, 4), 10);
        let l = Granularity::PerGroup { axis: 1, size: 3 }
            .layout(&[2, 6, 5])
            .unwrap();
        assert_eq!(l.scale_shape, vec![2, 2, 5]);
        let members = l.members();
        assert_eq!(members.len(), 20);
        // Cell (o=1, group=1, i=4) holds axis positions 3..6 of that row.
        assert_eq!(
            members[(2 + 1) * 5 + 4],
            vec![(6 + 3) * 5 + 4, (6 + 4) * 5 + 4, (6 + 5) * 5 + 4]
        );
    }

    #[test]
    fn a_group_size_that_does_not_divide_the_axis_leaves_a_short_last_group() {
        // 576 = 4·128 + 64: SmolLM2's inputs in groups of 128.
        let l = Granularity::PerGroup { axis: 0, size: 128 }
            .layout(&[576, 3])
            .unwrap();
        assert!(l.is_ragged());
        assert_eq!((l.groups(), l.scale_shape.clone()), (5, vec![5, 3]));
        assert_eq!(
            (0..5).map(|g| l.group_len(g)).collect::<Vec<_>>(),
            vec![128, 128, 128, 128, 64]
        );
        assert_eq!(l.cell(0, 575, 2), 4 * 3 + 2);
        let members = l.members();
        assert_eq!(members.iter().map(Vec::len).sum::<usize>(), 576 * 3);
        assert_eq!(members[4 * 3].len(), 64);
        assert_eq!(members[4 * 3][0], 512 * 3);
        // A group larger than the axis is one short group.
        let l = Granularity::PerGroup { axis: 1, size: 8 }
            .layout(&[2, 5])
            .unwrap();
        assert_eq!((l.groups(), l.group_len(0), l.cells()), (1, 5, 2));
        assert!(
            !Granularity::PerGroup { axis: 1, size: 5 }
                .layout(&[2, 10])
                .unwrap()
                .is_ragged()
        );
    }

    #[test]
    fn bad_granularities_are_errors() {
        assert_eq!(
            Granularity::PerChannel { axis: 2 }.layout(&[3, 6]),
            Err(QuantError::AxisOutOfRange { axis: 2, rank: 2 })
        );
        assert!(
            Granularity::PerGroup { axis: 0, size: 0 }
                .layout(&[3, 6])
                .is_err()
        );
    }
}
