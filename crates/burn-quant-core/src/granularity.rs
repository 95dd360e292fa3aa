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
//!
//! A weight granularity can also be written by *role* — [`Granularity::PerOutputChannel`],
//! [`Granularity::PerInputGroup`] — leaving the axis to the layer: [`Granularity::resolve`]
//! turns it into an explicit axis for a [`WeightLayout`] (a `Linear` `[d_in, d_out]` has its
//! outputs on axis 1, a `Conv2d` `[out, in, kh, kw]` on axis 0) and checks explicit axes
//! against that layout. A role has no [`Layout`] until it is resolved.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::weight_layout::WeightLayout;

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
    /// One scale per output channel of a layer's weight, on whatever axis the layer stores
    /// them ([`WeightLayout::output_axis`]). A role: [`Granularity::resolve`] it against the
    /// layer to get [`Granularity::PerChannel`]; a `QuantPlan` and the quant layers do.
    PerOutputChannel,
    /// One scale per `size` consecutive inputs of a layer's weight, for every position of the
    /// other axes (GPTQ and GGUF groups), on whatever axis the layer stores its inputs
    /// ([`WeightLayout::input_axis`]). A role: [`Granularity::resolve`] it against the layer to
    /// get [`Granularity::PerGroup`].
    PerInputGroup {
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
    ///
    /// A role ([`Granularity::PerOutputChannel`], [`Granularity::PerInputGroup`]) has no layout
    /// until it is [resolved](Granularity::resolve) against a layer:
    /// [`QuantError::UnresolvedRole`].
    pub fn layout(&self, shape: &[usize]) -> Result<Layout> {
        let rank = shape.len();
        let (axis, group) = match *self {
            Granularity::PerOutputChannel | Granularity::PerInputGroup { .. } => {
                return Err(QuantError::UnresolvedRole { granularity: *self });
            }
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

    /// The quantization axis, if any (none per tensor, and none for a role until it is
    /// [resolved](Granularity::resolve)).
    pub fn axis(&self) -> Option<usize> {
        match self {
            Granularity::PerTensor
            | Granularity::PerOutputChannel
            | Granularity::PerInputGroup { .. } => None,
            Granularity::PerChannel { axis } | Granularity::PerGroup { axis, .. } => Some(*axis),
        }
    }

    /// The group size of a per-group granularity, explicit or by role.
    pub fn group_size(&self) -> Option<usize> {
        match self {
            Granularity::PerGroup { size, .. } | Granularity::PerInputGroup { size } => Some(*size),
            _ => None,
        }
    }

    /// Whether this names a role ([`Granularity::PerOutputChannel`],
    /// [`Granularity::PerInputGroup`]) rather than a tensor axis.
    pub fn is_role(&self) -> bool {
        matches!(
            self,
            Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }
        )
    }

    /// Roles turned into the axes of `layout` (per output channel → `PerChannel` on
    /// [`WeightLayout::output_axis`], per input group → `PerGroup` along
    /// [`WeightLayout::input_axis`]); explicit granularities unchanged and unchecked.
    ///
    /// For code that knows its weight's layout but accepts any explicit axis on it (the Stage 2
    /// algorithms on `[d_in, d_out]` matrices); layers use the checking [`Granularity::resolve`].
    pub fn resolve_role(self, layout: WeightLayout) -> Granularity {
        match self {
            Granularity::PerOutputChannel => Granularity::PerChannel {
                axis: layout.output_axis(),
            },
            Granularity::PerInputGroup { size } => Granularity::PerGroup {
                axis: layout.input_axis(),
                size,
            },
            explicit => explicit,
        }
    }

    /// This granularity for a weight of `shape` stored as `layout`: a role becomes the layer's
    /// axis ([`Granularity::resolve_role`]); an explicit axis is checked against the layer —
    /// `PerChannel` must be on its output axis, `PerGroup` must run along its input axis — so a
    /// preset written for `Linear`'s `[d_in, d_out]` cannot silently quantize a conv weight
    /// `[out, in, kh, kw]` along the wrong axis. `PerTensor` passes.
    ///
    /// Errors: [`QuantError::AxisMismatch`] (naming the axis, the layout and the shape, and the
    /// role to write instead), also when the rank does not fit the layout.
    ///
    /// ```
    /// use burn_quant_core::{Granularity, WeightLayout};
    ///
    /// let conv = [8, 4, 3, 3];
    /// let g = Granularity::PerOutputChannel.resolve(WeightLayout::Conv, &conv).unwrap();
    /// assert_eq!(g, Granularity::PerChannel { axis: 0 });
    /// // The `Linear` axis on a conv weight is an error, not a silent per-input-channel scale.
    /// assert!(Granularity::PerChannel { axis: 1 }.resolve(WeightLayout::Conv, &conv).is_err());
    /// ```
    pub fn resolve(self, layout: WeightLayout, shape: &[usize]) -> Result<Granularity> {
        if self == Granularity::PerTensor {
            return Ok(self);
        }
        let mismatch = || QuantError::AxisMismatch {
            granularity: self,
            layout,
            shape: shape.to_vec(),
        };
        if !layout.fits_rank(shape.len()) {
            return Err(mismatch());
        }
        let fits = match self {
            Granularity::PerChannel { axis } => axis == layout.output_axis(),
            Granularity::PerGroup { axis, .. } => axis == layout.input_axis(),
            _ => true,
        };
        if fits {
            Ok(self.resolve_role(layout))
        } else {
            Err(mismatch())
        }
    }

    /// The role form of an explicit granularity (per channel → per output channel, per group →
    /// per input group); per tensor and roles unchanged.
    pub fn as_role(self) -> Granularity {
        match self {
            Granularity::PerChannel { .. } => Granularity::PerOutputChannel,
            Granularity::PerGroup { size, .. } => Granularity::PerInputGroup { size },
            other => other,
        }
    }
}

impl std::fmt::Display for Granularity {
    /// `per-tensor`, `per-channel(axis 1)`, `per-group(axis 0, 32)`, `per-output-channel`,
    /// `per-input-group(32)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granularity::PerTensor => f.write_str("per-tensor"),
            Granularity::PerChannel { axis } => write!(f, "per-channel(axis {axis})"),
            Granularity::PerGroup { axis, size } => write!(f, "per-group(axis {axis}, {size})"),
            Granularity::PerOutputChannel => f.write_str("per-output-channel"),
            Granularity::PerInputGroup { size } => write!(f, "per-input-group({size})"),
        }
    }
}

/// The message of [`QuantError::AxisMismatch`]: what the axis is in the layer, which axis the
/// layer wants, and the role form that picks it.
pub(crate) fn axis_mismatch_message(
    granularity: &Granularity,
    layout: &WeightLayout,
    shape: &[usize],
) -> String {
    let role = match granularity.as_role() {
        Granularity::PerInputGroup { size } => format!(
            "`{{ kind = \"per_input_group\", size = {size} }}` (`QuantSpec::per_input_group({size})`)"
        ),
        _ => "`{ kind = \"per_output_channel\" }` (`QuantSpec::per_output_channel()`)".to_string(),
    };
    let rank = shape.len();
    let head = format!("{granularity} does not fit a {layout} weight of shape {shape:?}");
    if !layout.fits_rank(rank) {
        return format!("{head}: a {layout} weight cannot have rank {rank}");
    }
    let (axis, wanted, what) = match *granularity {
        Granularity::PerChannel { axis } => (axis, layout.output_axis(), "output channels"),
        Granularity::PerGroup { axis, .. } => {
            (axis, layout.input_axis(), "inputs (groups run along them)")
        }
        _ => return head,
    };
    let is = match layout.axis_role(axis, rank) {
        Some(kind) => format!("axis {axis} is its {kind} axis"),
        None => format!("axis {axis} is beyond its rank {rank}"),
    };
    format!(
        "{head}: {is}, its {what} are on axis {wanted}; write the granularity by role, {role}, \
         and the layer picks the axis"
    )
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
        !matches!(
            self.granularity,
            Granularity::PerGroup { .. } | Granularity::PerInputGroup { .. }
        )
    }

    /// Scale cell of the element at (outer `o`, axis `n`, inner `i`).
    #[inline(always)]
    pub fn cell(&self, o: usize, n: usize, i: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor => 0,
            // Roles never reach a `Layout` built by `Granularity::layout`; a hand-built one
            // with a role maps like the explicit form.
            Granularity::PerChannel { .. } | Granularity::PerOutputChannel => n,
            Granularity::PerGroup { .. } | Granularity::PerInputGroup { .. } => {
                (o * self.groups() + n / self.group) * self.inner + i
            }
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

    #[test]
    fn roles_resolve_to_the_axis_of_each_layout() {
        use WeightLayout::*;
        for (layout, shape, out, inp) in [
            (Linear, vec![64, 16], 1, 0),
            (Conv, vec![16, 64, 3, 3], 0, 1),
            (Conv, vec![16, 64, 3], 0, 1),
            (Conv, vec![16, 64, 3, 3, 3], 0, 1),
            (ConvTranspose, vec![64, 16, 3, 3], 1, 0),
            (Embedding, vec![1000, 64], 0, 1),
        ] {
            assert_eq!(
                Granularity::PerOutputChannel.resolve(layout, &shape),
                Ok(Granularity::PerChannel { axis: out }),
                "{layout} {shape:?}"
            );
            assert_eq!(
                Granularity::PerInputGroup { size: 32 }.resolve(layout, &shape),
                Ok(Granularity::PerGroup {
                    axis: inp,
                    size: 32
                }),
                "{layout} {shape:?}"
            );
            // Explicit axes that fit pass unchanged; per tensor always passes.
            for g in [
                Granularity::PerChannel { axis: out },
                Granularity::PerGroup { axis: inp, size: 8 },
                Granularity::PerTensor,
            ] {
                assert_eq!(g.resolve(layout, &shape), Ok(g), "{layout} {g}");
            }
            assert_eq!(
                Granularity::PerInputGroup { size: 4 }.resolve_role(layout),
                Granularity::PerGroup { axis: inp, size: 4 }
            );
        }
        // A role has no layout until it is resolved: a typed error, not a guessed axis.
        for role in [
            Granularity::PerOutputChannel,
            Granularity::PerInputGroup { size: 32 },
        ] {
            assert_eq!(
                role.layout(&[64, 16]),
                Err(QuantError::UnresolvedRole { granularity: role })
            );
            assert!(role.is_role() && role.axis().is_none());
            let msg = role.layout(&[64, 16]).unwrap_err().to_string();
            assert!(
                msg.contains("names a role") && msg.contains("resolve_for"),
                "{msg}"
            );
        }
        // `resolve_role` leaves explicit axes alone, even ones the layer would refuse.
        let g = Granularity::PerChannel { axis: 0 };
        assert_eq!(g.resolve_role(Linear), g);
    }

    #[test]
    fn explicit_axes_that_do_not_fit_the_layer_are_errors_naming_axis_layout_and_shape() {
        use WeightLayout::*;
        let conv = [8, 4, 3, 3];
        // The Linear preset's output axis on a conv weight: axis 1 is the conv's input axis.
        let g = Granularity::PerChannel { axis: 1 };
        let e = g.resolve(Conv, &conv).unwrap_err();
        assert_eq!(
            e,
            QuantError::AxisMismatch {
                granularity: g,
                layout: Conv,
                shape: conv.to_vec()
            }
        );
        let msg = e.to_string();
        for part in [
            "per-channel(axis 1)",
            "Conv [out, in/groups, k...]",
            "[8, 4, 3, 3]",
            "axis 1 is its input axis",
            "on axis 0",
            "per_output_channel",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // Groups along a kernel axis, along the output axis, and past the rank.
        let msg = Granularity::PerGroup { axis: 2, size: 3 }
            .resolve(Conv, &conv)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("axis 2 is its kernel axis"), "{msg}");
        assert!(msg.contains("per_input_group(3)"), "{msg}");
        let msg = Granularity::PerGroup { axis: 1, size: 32 }
            .resolve(Linear, &[64, 16])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("axis 1 is its output axis"), "{msg}");
        assert!(
            Granularity::PerChannel { axis: 4 }
                .resolve(Conv, &conv)
                .unwrap_err()
                .to_string()
                .contains("beyond its rank 4")
        );
        // Per input channel of a Linear and per-dimension scales of an embedding table.
        for (g, layout) in [
            (Granularity::PerChannel { axis: 0 }, Linear),
            (Granularity::PerChannel { axis: 1 }, Embedding),
            (Granularity::PerChannel { axis: 0 }, ConvTranspose),
            (Granularity::PerGroup { axis: 0, size: 8 }, Embedding),
        ] {
            assert!(
                matches!(
                    g.resolve(layout, &[16, 16, 3]),
                    Err(QuantError::AxisMismatch { .. })
                ) || matches!(
                    g.resolve(layout, &[16, 16]),
                    Err(QuantError::AxisMismatch { .. })
                ),
                "{g} on {layout}"
            );
        }
        // A rank the layout cannot have (a bias handed over as a Linear weight).
        let e = Granularity::PerOutputChannel
            .resolve(Linear, &[16])
            .unwrap_err();
        assert!(matches!(e, QuantError::AxisMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot have rank 1"), "{e}");
        assert_eq!(
            Granularity::PerTensor.resolve(Linear, &[16]),
            Ok(Granularity::PerTensor)
        );
    }

    #[test]
    fn roles_round_trip_through_serde_with_their_kind_names() {
        for (g, json) in [
            (
                Granularity::PerOutputChannel,
                r#"{"kind":"per_output_channel"}"#,
            ),
            (
                Granularity::PerInputGroup { size: 128 },
                r#"{"kind":"per_input_group","size":128}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&g).unwrap(), json);
            assert_eq!(serde_json::from_str::<Granularity>(json).unwrap(), g);
        }
        assert_eq!(
            Granularity::PerInputGroup { size: 32 }.to_string(),
            "per-input-group(32)"
        );
        assert_eq!(
            Granularity::PerOutputChannel.to_string(),
            "per-output-channel"
        );
    }
}
