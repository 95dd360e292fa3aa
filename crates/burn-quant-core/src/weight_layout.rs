//! [`WeightLayout`]: how a layer kind stores its weight, so that a spec written by role ("per
//! output channel", "groups along the input") finds the right tensor axis.
//!
//! A [`Granularity`](crate::Granularity) with an explicit axis assumes one layout; the role
//! forms ([`Granularity::PerOutputChannel`](crate::Granularity::PerOutputChannel),
//! [`Granularity::PerInputGroup`](crate::Granularity::PerInputGroup)) are resolved against the
//! layout of the layer they are applied to with
//! [`Granularity::resolve`](crate::Granularity::resolve), which also checks explicit axes.

use serde::{Deserialize, Serialize};

/// The storage of a layer's weight: which axis holds the output channels and which the inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightLayout {
    /// Burn's `Linear` (and every projection built on it: attention, recurrent gates):
    /// `[d_input, d_output]`; output axis 1, input axis 0.
    Linear,
    /// A convolution (`Conv1d/2d/3d`, `DeformConv2d`): `[channels_out, channels_in / groups,
    /// k...]`; output axis 0, input axis 1, the kernel axes after them.
    Conv,
    /// A transposed convolution (`ConvTranspose1d/2d/3d`): `[channels_in, channels_out /
    /// groups, k...]`; output axis 1, input axis 0, the kernel axes after them.
    ConvTranspose,
    /// An embedding table `[n_embedding, d_model]`: the output is the row looked up (one
    /// token, axis 0); the input axis is 1, the axis GGUF blocks run along.
    Embedding,
}

impl WeightLayout {
    /// The axis of the output channels (one scale each under per-output-channel).
    pub const fn output_axis(self) -> usize {
        match self {
            WeightLayout::Linear | WeightLayout::ConvTranspose => 1,
            WeightLayout::Conv | WeightLayout::Embedding => 0,
        }
    }

    /// The axis of the inputs (the axis groups run along under per-input-group).
    pub const fn input_axis(self) -> usize {
        match self {
            WeightLayout::Linear | WeightLayout::ConvTranspose => 0,
            WeightLayout::Conv | WeightLayout::Embedding => 1,
        }
    }

    /// Whether a weight of this layout can have rank `rank` (2 for `Linear` and `Embedding`,
    /// 3 or more for convolutions: two channel axes and at least one kernel axis).
    pub const fn fits_rank(self, rank: usize) -> bool {
        match self {
            WeightLayout::Linear | WeightLayout::Embedding => rank == 2,
            WeightLayout::Conv | WeightLayout::ConvTranspose => rank >= 3,
        }
    }

    /// The layout of the weight of a module, from the `container_type` Burn's `Module` derive
    /// passes to `ModuleVisitor::enter_module` for the fields of that module
    /// (`"Struct:<TypeName>"`; the bare type name is accepted too).
    ///
    /// Recognised: `burn::nn`'s `Linear`, `Conv1d`, `Conv2d`, `Conv3d`, `DeformConv2d`,
    /// `ConvTranspose1d`, `ConvTranspose2d`, `ConvTranspose3d` and `Embedding` (attention and
    /// recurrent layers hold `Linear`s), and burn-quant's `QuantLinear`, `QuantConv1d`,
    /// `QuantConv2d`, `QuantConvTranspose2d` and `QuantEmbedding` (attention and recurrent
    /// layers hold `QuantLinear`s). Only the type name is known to the visitor, so a user type
    /// of the same name is taken for Burn's. Anything else is `None`.
    pub fn from_module_type(container_type: &str) -> Option<Self> {
        let name = container_type
            .strip_prefix("Struct:")
            .unwrap_or(container_type);
        match name {
            "Linear" | "QuantLinear" => Some(WeightLayout::Linear),
            "Conv1d" | "Conv2d" | "Conv3d" | "DeformConv2d" | "QuantConv1d" | "QuantConv2d" => {
                Some(WeightLayout::Conv)
            }
            "ConvTranspose1d" | "ConvTranspose2d" | "ConvTranspose3d" | "QuantConvTranspose2d" => {
                Some(WeightLayout::ConvTranspose)
            }
            "Embedding" | "QuantEmbedding" => Some(WeightLayout::Embedding),
            _ => None,
        }
    }

    /// The storage, as in the documentation: `[d_input, d_output]`, `[out, in/groups, k...]`, ...
    pub const fn storage(self) -> &'static str {
        match self {
            WeightLayout::Linear => "[d_input, d_output]",
            WeightLayout::Conv => "[out, in/groups, k...]",
            WeightLayout::ConvTranspose => "[in, out/groups, k...]",
            WeightLayout::Embedding => "[n_embedding, d_model]",
        }
    }

    /// What axis `axis` of a weight of this layout holds: `"output"`, `"input"` or `"kernel"`
    /// (`None` past the rank).
    pub fn axis_role(self, axis: usize, rank: usize) -> Option<&'static str> {
        if axis >= rank {
            None
        } else if axis == self.output_axis() {
            Some("output")
        } else if axis == self.input_axis() {
            Some("input")
        } else {
            Some("kernel")
        }
    }
}

impl std::fmt::Display for WeightLayout {
    /// The layer kind and its storage, e.g. `Conv [out, in/groups, k...]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            WeightLayout::Linear => "Linear",
            WeightLayout::Conv => "Conv",
            WeightLayout::ConvTranspose => "ConvTranspose",
            WeightLayout::Embedding => "Embedding",
        };
        write!(f, "{name} {}", self.storage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_of_each_layout() {
        let axes = |l: WeightLayout| (l.output_axis(), l.input_axis());
        assert_eq!(axes(WeightLayout::Linear), (1, 0));
        assert_eq!(axes(WeightLayout::Conv), (0, 1));
        assert_eq!(axes(WeightLayout::ConvTranspose), (1, 0));
        assert_eq!(axes(WeightLayout::Embedding), (0, 1));
        assert_eq!(WeightLayout::Conv.axis_role(2, 4), Some("kernel"));
        assert_eq!(WeightLayout::Conv.axis_role(4, 4), None);
        assert!(WeightLayout::Conv.fits_rank(3) && !WeightLayout::Conv.fits_rank(2));
        assert!(WeightLayout::Linear.fits_rank(2) && !WeightLayout::Linear.fits_rank(1));
    }

    #[test]
    fn module_types_of_burn_and_burn_quant_layers() {
        use WeightLayout::*;
        for (ty, want) in [
            ("Struct:Linear", Some(Linear)),
            ("Struct:QuantLinear", Some(Linear)),
            ("Struct:Conv1d", Some(Conv)),
            ("Struct:Conv2d", Some(Conv)),
            ("Struct:Conv3d", Some(Conv)),
            ("Struct:DeformConv2d", Some(Conv)),
            ("Struct:QuantConv1d", Some(Conv)),
            ("Struct:QuantConv2d", Some(Conv)),
            ("Struct:ConvTranspose1d", Some(ConvTranspose)),
            ("Struct:ConvTranspose2d", Some(ConvTranspose)),
            ("Struct:ConvTranspose3d", Some(ConvTranspose)),
            ("Struct:QuantConvTranspose2d", Some(ConvTranspose)),
            ("Struct:Embedding", Some(Embedding)),
            ("Struct:QuantEmbedding", Some(Embedding)),
            ("Conv2d", Some(Conv)),
            ("Struct:BatchNorm", None),
            ("Struct:MultiHeadAttention", None),
            ("Vec", None),
            ("Reparameterization", None),
            ("", None),
        ] {
            assert_eq!(WeightLayout::from_module_type(ty), want, "{ty}");
        }
    }

    #[test]
    fn layouts_serialize_by_name() {
        let json = serde_json::to_string(&WeightLayout::ConvTranspose).unwrap();
        assert_eq!(json, "\"conv_transpose\"");
        assert_eq!(
            serde_json::from_str::<WeightLayout>(&json).unwrap(),
            WeightLayout::ConvTranspose
        );
    }
}
