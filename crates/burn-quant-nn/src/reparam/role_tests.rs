//! Role-aware specs through plans: every layer kind quantized along its own axis, explicit
//! axes checked against known layers, roles refused where no layout is known.

use super::*;
use crate::plan::{ParamSite, Rule};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::Device;
use burn_quant_core::{Granularity, WeightLayout};

/// A parameter in a module type no layout is known for.
#[derive(Module, Debug)]
struct Custom {
    weight: Param<Tensor<2>>,
}

/// One of each layer kind, with different lengths on every axis so that a wrong axis gives
/// different scales.
#[derive(Module, Debug)]
struct Zoo {
    /// `[16, 12]`: outputs on axis 1.
    fc: Linear,
    /// `[6, 8, 3, 3]`: outputs on axis 0.
    conv: Conv2d,
    /// `[8, 6, 3, 3]`: outputs on axis 1.
    deconv: ConvTranspose2d,
    /// `[32, 16]`: one row per token on axis 0.
    emb: Embedding,
    /// `[10, 4]`.
    custom: Custom,
}

impl Zoo {
    fn new(device: &Device) -> Self {
        Self {
            fc: LinearConfig::new(16, 12).init(device),
            conv: Conv2dConfig::new([8, 6], [3, 3]).init(device),
            deconv: ConvTranspose2dConfig::new([8, 6], [3, 3]).init(device),
            emb: EmbeddingConfig::new(32, 16).init(device),
            custom: Custom {
                weight: Param::from_tensor(Tensor::random(
                    [10, 4],
                    burn::tensor::Distribution::Default,
                    device,
                )),
            },
        }
    }
}

fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// `(path, layout, output axis, input axis)` of the zoo's weights with a layout.
const LAYERS: [(&str, WeightLayout, usize, usize); 4] = [
    ("fc.weight", WeightLayout::Linear, 1, 0),
    ("conv.weight", WeightLayout::Conv, 0, 1),
    ("deconv.weight", WeightLayout::ConvTranspose, 1, 0),
    ("emb.weight", WeightLayout::Embedding, 0, 1),
];

/// Fake-quant of the zoo's weight at `path` (before quantization) with `spec`.
fn expected(zoo: &Zoo, path: &str, spec: &QuantSpec) -> Vec<u32> {
    let fq = |w: Tensor<2>| bits(fake_quant(w, spec).expect("fits"));
    let fq4 = |w: Tensor<4>| bits(fake_quant(w, spec).expect("fits"));
    match path {
        "fc.weight" => fq(zoo.fc.weight.val()),
        "conv.weight" => fq4(zoo.conv.weight.val()),
        "deconv.weight" => fq4(zoo.deconv.weight.val()),
        "emb.weight" => fq(zoo.emb.weight.val()),
        other => panic!("no weight {other}"),
    }
}

fn weight_bits(zoo: &Zoo, path: &str) -> Vec<u32> {
    match path {
        "fc.weight" => bits(zoo.fc.weight.val()),
        "conv.weight" => bits(zoo.conv.weight.val()),
        "deconv.weight" => bits(zoo.deconv.weight.val()),
        "emb.weight" => bits(zoo.emb.weight.val()),
        other => panic!("no weight {other}"),
    }
}

#[test]
fn role_rules_quantize_every_layer_kind_along_its_own_axis() {
    let device = Device::flex();
    let zoo = Zoo::new(&device);
    for role in [
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int4_weight_per_input_group(4),
    ] {
        let explicit = |out: usize, inp: usize| match role.granularity {
            Granularity::PerOutputChannel => {
                role.with_granularity(Granularity::PerChannel { axis: out })
            }
            Granularity::PerInputGroup { size } => {
                role.with_granularity(Granularity::PerGroup { axis: inp, size })
            }
            other => panic!("not a role: {other}"),
        };
        let plan = QuantPlan::new().with_rule(Rule::new("**.weight", role).exclude("custom.*"));

        // The report resolves each weight for its module type, before anything changes.
        let report = plan.report(&zoo);
        report.check().expect("every role resolves");
        for (path, layout, out, inp) in LAYERS {
            let e = report.entry(path).expect("listed");
            assert_eq!(e.layout, Some(layout), "{path}");
            assert_eq!(e.spec(), Some(&role), "{path}");
            assert_eq!(e.resolved, Some(explicit(out, inp)), "{path}");
        }
        assert_eq!(
            report.entry("fc.weight").unwrap().module_type,
            "Struct:Linear"
        );
        assert!(report.to_string().contains("(from per-"), "{report}");

        // PTQ: each weight equals the core's fake-quant along that layer's axis, and differs
        // from the fake-quant along the other channel axis (so the test can tell them apart).
        let q = fake_quantize_weights(zoo.clone(), &plan).unwrap();
        for (path, _, out, inp) in LAYERS {
            let want = expected(&zoo, path, &explicit(out, inp));
            assert_eq!(weight_bits(&q, path), want, "{role} on {path}");
            assert_ne!(
                expected(&zoo, path, &explicit(inp, out)),
                want,
                "{role} on {path}: both axes give the same weight"
            );
        }
        assert_eq!(bits(q.custom.weight.val()), bits(zoo.custom.weight.val()));

        // Export: the codes carry the resolved (explicit) spec and dequantize to the PTQ
        // weights.
        let codes = quantized_weights(&zoo, &plan).unwrap();
        assert_eq!(codes.len(), 4);
        for (c, (path, _, out, inp)) in codes.iter().zip(LAYERS) {
            assert_eq!(c.path, path);
            assert_eq!(*c.tensor.spec(), explicit(out, inp), "{path}");
            // As values (the dequantization gives +0 where fake-quant may give -0).
            let ptq: Vec<f32> = weight_bits(&q, path)
                .into_iter()
                .map(f32::from_bits)
                .collect();
            assert_eq!(c.tensor.dequantize_vec(), ptq, "{path}");
        }

        // QAT: the attached quantizers store the resolved spec and see the same weights.
        let qat = attach_weight_quantizers(zoo.clone(), &plan).unwrap();
        let fq = qat
            .conv
            .weight
            .reparameterization::<WeightFakeQuant>()
            .expect("attached");
        assert_eq!(fq.spec, explicit(0, 1));
        let fq = qat
            .deconv
            .weight
            .reparameterization::<WeightFakeQuant>()
            .expect("attached");
        assert_eq!(fq.spec, explicit(1, 0));
        for (path, _, out, inp) in LAYERS {
            assert_eq!(
                weight_bits(&qat, path),
                expected(&zoo, path, &explicit(out, inp)),
                "{path}"
            );
        }
    }
}

#[test]
fn the_linear_axis_on_a_conv_weight_is_an_error_naming_the_path() {
    let device = Device::flex();
    let zoo = Zoo::new(&device);
    // The old trap: the `Linear` preset (per channel on axis 1) on every weight. Axis 1 of a
    // Conv2d weight [out, in, kh, kw] is its input axis.
    let plan = QuantPlan::new().with_rule(
        Rule::new("**.weight", QuantSpec::int8_weight_per_channel()).exclude("custom.*"),
    );
    let check = |e: PlanError| match e {
        PlanError::ShapeMismatch {
            ref path,
            rule: 0,
            source:
                QuantError::AxisMismatch {
                    granularity: Granularity::PerChannel { axis: 1 },
                    layout: WeightLayout::Conv,
                    ref shape,
                },
            ..
        } => {
            assert_eq!(path, "conv.weight");
            assert_eq!(shape, &[6, 8, 3, 3]);
            let msg = e.to_string();
            assert!(
                msg.starts_with("parameter `conv.weight` (shape [6, 8, 3, 3])"),
                "{msg}"
            );
            assert!(msg.contains("per_output_channel"), "{msg}");
        }
        other => panic!("not the conv's axis error: {other:?}"),
    };
    let report = plan.report(&zoo);
    check(report.check().unwrap_err());
    let entry = report.entry("conv.weight").unwrap();
    assert!(entry.resolved.is_none());
    assert!(matches!(
        entry.problem,
        Some(QuantError::AxisMismatch { .. })
    ));
    // The Linear and the transposed conv (outputs on axis 1) are fine; the embedding's rows
    // are on axis 0, so it is reported too.
    assert!(report.entry("fc.weight").unwrap().problem.is_none());
    assert!(report.entry("deconv.weight").unwrap().problem.is_none());
    assert!(matches!(
        report.entry("emb.weight").unwrap().error(),
        Some(PlanError::ShapeMismatch { ref path, source: QuantError::AxisMismatch { layout: WeightLayout::Embedding, .. }, .. }) if path == "emb.weight"
    ));
    let table = report.to_string();
    assert!(table.contains("error: parameter `conv.weight`"), "{table}");
    assert!(table.contains("error: parameter `emb.weight`"), "{table}");
    // Every verb refuses before changing anything.
    check(fake_quantize_weights(zoo.clone(), &plan).unwrap_err());
    check(attach_weight_quantizers(zoo.clone(), &plan).unwrap_err());
    check(quantized_weights(&zoo, &plan).unwrap_err());
    // Groups along a kernel axis are refused as well.
    let plan = QuantPlan::new().rule(
        "conv.weight",
        QuantSpec::int4_weight_per_group(3).with_axis(2),
    );
    assert!(matches!(
        fake_quantize_weights(zoo, &plan).unwrap_err(),
        PlanError::ShapeMismatch { ref path, source: QuantError::AxisMismatch { granularity: Granularity::PerGroup { axis: 2, size: 3 }, .. }, .. } if path == "conv.weight"
    ));
}

#[test]
fn explicit_axes_on_linear_layers_keep_working_bit_for_bit() {
    let device = Device::flex();
    let zoo = Zoo::new(&device);
    for (explicit, role) in [
        (
            QuantSpec::int8_weight_per_channel(),
            QuantSpec::int8_weight_per_output_channel(),
        ),
        (
            QuantSpec::int4_weight_per_group(4),
            QuantSpec::int4_weight_per_input_group(4),
        ),
    ] {
        let plan = QuantPlan::new().rule("fc.weight", explicit);
        let q = fake_quantize_weights(zoo.clone(), &plan).unwrap();
        let want = bits(fake_quant(zoo.fc.weight.val(), &explicit).unwrap());
        assert_eq!(bits(q.fc.weight.val()), want);
        let by_role =
            fake_quantize_weights(zoo.clone(), &QuantPlan::new().rule("fc.weight", role)).unwrap();
        assert_eq!(bits(by_role.fc.weight.val()), want);
        let codes = quantized_weights(&zoo, &plan).unwrap();
        assert_eq!(*codes[0].tensor.spec(), explicit);
        let direct = burn_quant_core::quantize(zoo.fc.weight.val(), &explicit).unwrap();
        assert_eq!(codes[0].tensor.codes_vec(), direct.codes_vec());
    }
    // On a module type without a layout an explicit axis passes unchecked, as before.
    let spec = QuantSpec::int8_weight_per_channel().with_axis(0);
    let q = fake_quantize_weights(zoo.clone(), &QuantPlan::new().rule("custom.weight", spec)).unwrap();
    assert_eq!(
        bits(q.custom.weight.val()),
        bits(fake_quant(zoo.custom.weight.val(), &spec).unwrap())
    );
}

#[test]
fn a_role_without_a_layout_is_an_error_naming_the_path_and_the_module_type() {
    let device = Device::flex();
    let zoo = Zoo::new(&device);
    let role = QuantSpec::int8_weight_per_output_channel();
    let plan = QuantPlan::new()
        .rule("fc.weight", QuantSpec::int8_weight_per_tensor())
        .rule("custom.weight", role);
    let check = |e: PlanError| {
        assert_eq!(
            e,
            PlanError::UnresolvedRole {
                path: "custom.weight".into(),
                module_type: "Struct:Custom".into(),
                rule: 1,
                spec: role,
            }
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("parameter `custom.weight` (owned by module type `Struct:Custom`)"),
            "{msg}"
        );
        assert!(msg.contains("per-output-channel"), "{msg}");
    };
    check(plan.report(&zoo).check().unwrap_err());
    check(fake_quantize_weights(zoo.clone(), &plan).unwrap_err());
    check(attach_weight_quantizers(zoo.clone(), &plan).unwrap_err());
    check(quantized_weights(&zoo, &plan).unwrap_err());
    // A layer's bias has no weight layout either: a role on it is refused, by path.
    let plan = QuantPlan::new().rule("**.bias", QuantSpec::int4_weight_per_input_group(2));
    match plan.report(&zoo).check().unwrap_err() {
        PlanError::UnresolvedRole {
            path, module_type, ..
        } => assert_eq!(
            (path.as_str(), module_type.as_str()),
            ("fc.bias", "Struct:Linear")
        ),
        other => panic!("{other:?}"),
    }
    // Sites: only the `weight` of a known module type has a layout.
    assert_eq!(
        ParamSite::new("a.b.weight", "Struct:Conv2d").weight_layout(),
        Some(WeightLayout::Conv)
    );
    assert_eq!(
        ParamSite::new("a.b.bias", "Struct:Conv2d").weight_layout(),
        None
    );
    assert_eq!(
        ParamSite::new("a.weight", "Struct:Custom").weight_layout(),
        None
    );
}
