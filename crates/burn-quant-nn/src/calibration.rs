//! Calibration sessions and model-wide quantization settings.
//!
//! Two kinds of setting reach every quantizer of a model — the [`Quantizer`](crate::Quantizer)s
//! of our layers and the weight quantizers that [`crate::reparam::attach_weight_quantizers`]
//! attaches to any Burn model ([`WeightFakeQuant`](crate::reparam::WeightFakeQuant)):
//!
//! - **Model-wide state** ([`QuantMode`]): [`set_quantization`] switches every quantizer off
//!   (the identity: float reference runs) or on again, and [`set_rounding`] makes every
//!   quantizer round with one rule instead of its spec's. The setting is stored *in* each
//!   quantizer (a small `Module` leaf, like Burn's own `Param<Flag>`, with no parameters and
//!   nothing in records), so it travels with `clone`, `fork` and `to_device`: burn-train's
//!   multi-device and DDP workers, which fork the model onto their device and run it on their own
//!   thread, see it. Use these for anything that runs on more than one thread.
//! - **Scopes on the calling thread**: [`without_quantization`] (every quantizer on this thread
//!   is the identity while a closure runs, whatever model it belongs to — convenient for a float
//!   reference pass in single-threaded code) and [`calibrate`] (calibration is single-threaded:
//!   the closure pushes batches through the model on this thread). The deprecated
//!   [`with_rounding`] scope is superseded by a rule named in the spec
//!   (`Rounding::Custom`, registered with `burn_quant_core::register_rounding`) or by
//!   [`set_rounding`]. A scope does not reach other threads: burn-train's multi-device workers
//!   never see it.
//!
//! A quantizer is active when its own `enabled` field, its model-wide [`QuantMode`] and the
//! calling thread's scope all allow it. Its rounding rule is, in order: a [`with_rounding`]
//! scope, the model-wide [`QuantMode::rounding`], the spec's own rule.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId,
};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant_core::{Observer, QuantSpec, Rounding, RoundingFn};

use crate::error::{NnError, Result};

/// The model-wide settings every quantizer holds: whether it quantizes, and a rounding rule
/// that replaces its spec's.
///
/// A `Module` leaf without parameters: it is cloned by `clone`, `fork` and `to_device` (so
/// every device and worker thread sees it), left alone by `valid`/`train`/`freeze` and by
/// every other mapper, and absent from records. Only [`set_quantization`] and
/// [`set_rounding`] change it, for a whole model at once; [`quant_modes`] reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantMode {
    /// `false`: the quantizer is the identity.
    pub enabled: bool,
    /// A rule used instead of the spec's rounding (`None`: the spec's).
    pub rounding: Option<Rounding>,
}

impl Default for QuantMode {
    fn default() -> Self {
        Self {
            enabled: true,
            rounding: None,
        }
    }
}

impl QuantMode {
    /// The rounding rule in effect for `spec` (this mode's, or the spec's own).
    pub fn rounding_for(&self, spec: &QuantSpec) -> Rounding {
        self.rounding.unwrap_or(spec.rounding)
    }
}

/// A change that [`set_quantization`] or [`set_rounding`] carries to every [`QuantMode`] of a
/// model during one `Module::map` on the calling thread.
#[derive(Clone, Copy)]
enum ModeUpdate {
    Enabled(bool),
    Rounding(Option<Rounding>),
}

thread_local! {
    /// Set only while `set_quantization` / `set_rounding` maps a model on this thread.
    static MODE_UPDATE: Cell<Option<ModeUpdate>> = const { Cell::new(None) };
    /// Set only while `quant_modes` visits a model on this thread.
    static MODE_READ: RefCell<Option<Vec<QuantMode>>> = const { RefCell::new(None) };
}

impl Module for QuantMode {
    fn collect_devices(&self, devices: Devices) -> Devices {
        devices
    }

    fn fork(self, _device: &Device) -> Self {
        self
    }

    fn to_device(self, _device: &Device) -> Self {
        self
    }

    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        *self
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, _visitor: &mut V) {
        MODE_READ.with(|r| {
            if let Some(modes) = r.borrow_mut().as_mut() {
                modes.push(*self);
            }
        });
    }

    fn map<M: ModuleMapper>(mut self, _mapper: &mut M) -> Self {
        match MODE_UPDATE.get() {
            Some(ModeUpdate::Enabled(enabled)) => self.enabled = enabled,
            Some(ModeUpdate::Rounding(rounding)) => self.rounding = rounding,
            None => {}
        }
        self
    }
}

impl ModuleDisplayDefault for QuantMode {
    fn content(&self, content: Content) -> Option<Content> {
        let state = if self.enabled { "enabled" } else { "disabled" };
        let text = match &self.rounding {
            Some(r) => format!("{state}, rounding {}", r.name()),
            None => state.to_string(),
        };
        content.add_formatted(&text).optional()
    }
}

impl ModuleDisplay for QuantMode {}

/// Maps nothing: the traversal itself carries a [`ModeUpdate`] to every [`QuantMode`].
struct Traverse;

impl ModuleMapper for Traverse {}

/// Visits nothing: the traversal itself collects every [`QuantMode`].
struct Collect;

impl ModuleVisitor for Collect {}

fn update_modes<M: Module>(model: M, update: ModeUpdate) -> M {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            MODE_UPDATE.set(None);
        }
    }
    MODE_UPDATE.set(Some(update));
    let _reset = Reset;
    model.map(&mut Traverse)
}

/// Switches every quantizer of `model` on or off — the [`Quantizer`](crate::Quantizer)s of
/// our layers and the weight quantizers attached by reparameterization — and returns it.
///
/// Unlike [`without_quantization`], the setting is part of the model: it holds on every thread
/// and device the model (or a clone or fork of it) runs on, e.g. burn-train's multi-device
/// workers. A quantizer switched off by its own `enabled` field stays off when the model is
/// switched on.
pub fn set_quantization<M: Module>(model: M, enabled: bool) -> M {
    update_modes(model, ModeUpdate::Enabled(enabled))
}

/// Makes every quantizer of `model` round with `rounding` instead of its spec's rule (`None`
/// restores the specs' rules), on every thread and device, like [`set_quantization`].
///
/// # Errors
/// [`NnError::Core`] with `QuantError::UnknownRounding` when `rounding` names a custom rule
/// that is not registered.
pub fn set_rounding<M: Module>(model: M, rounding: Option<Rounding>) -> Result<M> {
    if let Some(r) = &rounding {
        r.check_registered()?;
    }
    Ok(update_modes(model, ModeUpdate::Rounding(rounding)))
}

/// The [`QuantMode`] of every quantizer of `model`, in traversal order.
pub fn quant_modes<M: Module>(model: &M) -> Vec<QuantMode> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            MODE_READ.with(|r| r.borrow_mut().take());
        }
    }
    MODE_READ.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let _reset = Reset;
    model.visit(&mut Collect);
    MODE_READ
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default()
}

struct Entry {
    observer: Observer,
    zero_id: Option<ParamId>,
}

thread_local! {
    static SESSION: RefCell<Option<HashMap<ParamId, Entry>>> = const { RefCell::new(None) };
    static DISABLED: Cell<u32> = const { Cell::new(0) };
    static ROUNDING: RefCell<Option<Arc<dyn RoundingFn>>> = const { RefCell::new(None) };
}

/// The rounding rule installed by [`with_rounding`] on this thread, if any.
pub fn rounding_override() -> Option<Arc<dyn RoundingFn>> {
    ROUNDING.with(|r| r.borrow().clone())
}

/// Runs `f` with every quantizer on this thread rounding with `rounding` (forward value and
/// surrogate gradient) instead of its spec's rule.
///
/// Only this thread: burn-train's multi-device and DDP workers run the model on threads of
/// their own and never see it. Name the rule in the spec instead (register it with
/// `burn_quant_core::register_rounding` and use the returned `Rounding::Custom`), or set it on
/// a whole model with [`set_rounding`]; both reach every quantizer on every thread and device.
#[deprecated(
    note = "thread-local: register the rule (`burn_quant_core::register_rounding`) and name it \
            in the spec, or use `set_rounding(model, Some(rule))`, which reach every thread"
)]
pub fn with_rounding<R>(rounding: Arc<dyn RoundingFn>, f: impl FnOnce() -> R) -> R {
    struct Guard(Option<Arc<dyn RoundingFn>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let previous = self.0.take();
            ROUNDING.with(|r| *r.borrow_mut() = previous);
        }
    }
    let previous = ROUNDING.with(|r| r.borrow_mut().replace(rounding));
    let _guard = Guard(previous);
    f()
}

/// Whether quantization is switched off on this thread (inside [`without_quantization`]).
pub fn quantization_disabled() -> bool {
    DISABLED.with(|d| d.get() > 0)
}

/// Runs `f` with every quantizer on this thread acting as the identity (float reference runs),
/// weight quantizers attached by reparameterization included.
///
/// Only this thread, for single-threaded code (a float reference pass in a PTQ pipeline).
/// To switch a model off wherever it runs — burn-train's multi-device workers, DDP — use
/// [`set_quantization`], which stores the setting in the model.
pub fn without_quantization<R>(f: impl FnOnce() -> R) -> R {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            DISABLED.with(|d| d.set(d.get() - 1));
        }
    }
    DISABLED.with(|d| d.set(d.get() + 1));
    let _guard = Guard;
    f()
}

/// Records `x` for the quantizer whose stored scale has id `scale_id`, if a calibration
/// session is running on this thread; returns whether it did.
pub(crate) fn observe<const D: usize>(
    scale_id: ParamId,
    zero_id: Option<ParamId>,
    spec: &QuantSpec,
    x: &Tensor<D>,
) -> Result<bool> {
    SESSION.with(|s| {
        let mut s = s.borrow_mut();
        let Some(session) = s.as_mut() else {
            return Ok(false);
        };
        let entry = match session.entry(scale_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Entry {
                observer: Observer::new(spec)?,
                zero_id,
            }),
        };
        entry.observer.observe(&x.clone().detach())?;
        Ok(true)
    })
}

/// Calibrates every static or learned quantizer of `model`: runs `run(&model)` (which should
/// push calibration batches through the model) with quantizers recording their inputs and
/// passing them through unquantized, then writes each quantizer's statistic into its scale and
/// zero-point `Param`s (same ids). Returns the calibrated model and what `run` returned.
///
/// Quantizers with a per-call scale (weights, dynamic activations) are not affected.
pub fn calibrate<M: Module, R>(model: M, run: impl FnOnce(&M) -> R) -> Result<(M, R)> {
    struct Session;
    impl Drop for Session {
        fn drop(&mut self) {
            SESSION.with(|s| s.borrow_mut().take());
        }
    }
    if SESSION.with(|s| s.borrow().is_some()) {
        return Err(NnError::InvalidConfig {
            field: "calibrate",
            value: "nested".into(),
            reason: "a calibration session is already running on this thread".into(),
        });
    }
    SESSION.with(|s| *s.borrow_mut() = Some(HashMap::new()));
    let session = Session;
    let out = run(&model);
    let entries = SESSION.with(|s| s.borrow_mut().take()).unwrap_or_default();
    drop(session);
    let mut values: HashMap<ParamId, Vec<f32>> = HashMap::new();
    for (scale_id, entry) in entries {
        let p = entry.observer.host_params()?;
        if let (Some(zid), Some(z)) = (entry.zero_id, p.zero_points) {
            values.insert(zid, z);
        }
        values.insert(scale_id, p.scales);
    }
    Ok((write_params(model, &mut values), out))
}

/// Replaces the value of every float parameter (and running state) of `model` whose id is
/// in `values` by those values, row-major in the parameter's own shape, keeping its id and
/// `require_grad`. Written entries are removed from `values`; what remains matched no
/// parameter of `model`.
///
/// # Panics
/// If a value's length differs from its parameter's element count.
pub fn write_params<M: Module>(model: M, values: &mut HashMap<ParamId, Vec<f32>>) -> M {
    model.map(&mut Writer { values })
}

/// Replaces the values of the params whose ids it holds.
struct Writer<'a> {
    values: &'a mut HashMap<ParamId, Vec<f32>>,
}

impl ModuleMapper for Writer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(v) = self.values.remove(&param.id) else {
            return param;
        };
        param.map(|old| {
            let shape = old.shape();
            let require_grad = old.is_require_grad();
            let t = Tensor::<D>::from_data(TensorData::new(v, shape), &old.device());
            if require_grad { t.require_grad() } else { t }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QuantizerConfig, QuantizerRole};
    use burn::tensor::Device;
    use burn_quant_core::Rounding;

    #[test]
    #[allow(deprecated)]
    fn rounding_override_reaches_quantizers_and_is_scoped() {
        let device = Device::flex();
        let q = QuantizerConfig::for_spec(
            burn_quant_core::QuantSpec::int8_act_per_tensor()
                .with_scale_source(burn_quant_core::ScaleSource::Const(1.0)),
            QuantizerRole::Weight,
        )
        .init(&device)
        .unwrap();
        let x = Tensor::<1>::from_floats([0.4, 1.6, -2.5], &device);
        let host = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(host(q.forward(x.clone())), vec![0.0, 2.0, -2.0]);
        let floor = with_rounding(Arc::new(Rounding::Floor), || host(q.forward(x.clone())));
        assert_eq!(floor, vec![0.0, 1.0, -3.0]);
        assert_eq!(
            host(q.forward(x.clone())),
            vec![0.0, 2.0, -2.0],
            "the override ends with the closure"
        );
        assert_eq!(
            without_quantization(|| host(q.forward(x.clone()))),
            vec![0.4, 1.6, -2.5]
        );
    }

    /// A rule that rounds like floor, has surrogate gradient 0.5, and counts its forward calls.
    #[derive(Debug, Default)]
    struct CountingFloor(std::sync::atomic::AtomicUsize);

    impl RoundingFn for CountingFloor {
        fn name(&self) -> &str {
            "counting_floor"
        }
        fn forward(&self, x: Tensor<1>) -> Tensor<1> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            x.floor()
        }
        fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
            x.ones_like().mul_scalar(0.5)
        }
    }

    /// Our quantizer and a weight quantizer attached to a plain Burn layer, in one model.
    #[derive(burn::module::Module, Debug)]
    struct Net {
        act: crate::Quantizer,
        lin: burn::nn::Linear,
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn net(spec: QuantSpec, device: &Device) -> Net {
        let act = QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
            .init(device)
            .unwrap();
        let mut lin = burn::nn::LinearConfig::new(2, 2)
            .with_bias(false)
            .init(device);
        lin.weight = burn::module::Param::from_tensor(Tensor::<2>::from_floats(
            [[0.4, 1.6], [-2.5, 2.0]],
            device,
        ));
        let plan = crate::plan::QuantPlan::new().rule("lin.weight", spec);
        crate::reparam::attach_weight_quantizers(Net { act, lin }, &plan).unwrap()
    }

    /// The named rule in the spec reaches both kinds of quantizer (forward and surrogate
    /// gradient); `set_quantization` and `set_rounding` reach both, hold on another thread,
    /// and survive `valid`, `fork`, `freeze`, `clone` and a record round trip.
    #[test]
    fn named_rules_and_model_wide_settings_reach_every_quantizer() {
        let rule = Arc::new(CountingFloor::default());
        let named =
            burn_quant_core::register_rounding("nn_test_counting_floor", rule.clone()).unwrap();
        let calls = || rule.0.load(std::sync::atomic::Ordering::SeqCst);
        let spec = QuantSpec::int8_act_per_tensor()
            .with_scale_source(burn_quant_core::ScaleSource::Const(1.0))
            .with_rounding(named);
        let device = Device::flex();
        let model = net(spec, &device);
        let x = Tensor::<1>::from_floats([0.4, 1.6, -2.5], &device);
        let floor_x = vec![0.0, 1.0, -3.0];
        let floor_w = vec![0.0, 1.0, -3.0, 2.0];
        let float_w = vec![0.4, 1.6, -2.5, 2.0];

        let before = calls();
        assert_eq!(host(model.act.forward(x.clone())), floor_x);
        assert_eq!(host(model.lin.weight.val()), floor_w);
        assert_eq!(calls() - before, 2, "the rule ran once per quantizer");
        assert_eq!(quant_modes(&model), vec![QuantMode::default(); 2]);

        // The surrogate gradient reaches the weight through the attached quantizer.
        let ad = Device::flex().autodiff();
        let trained = net(spec, &ad);
        let grads = trained.lin.weight.val().sum().backward();
        let g = trained.lin.weight.base().grad(&grads).unwrap();
        assert_eq!(host(g), vec![0.5; 4]);

        // Off, model-wide: both quantizers are the identity and the rule is not called.
        let off = set_quantization(model, false);
        let modes = quant_modes(&off);
        assert_eq!(modes.len(), 2);
        assert!(modes.iter().all(|m| !m.enabled));
        let before = calls();
        let check_off = |m: &Net| {
            assert_eq!(host(m.act.forward(x.clone())), host(x.clone()));
            assert_eq!(host(m.lin.weight.val()), float_w);
        };
        check_off(&off);
        check_off(&off.valid());
        check_off(&off.clone().fork(&device));
        check_off(&off.clone().freeze());
        let on_thread = off.clone();
        let xt = x.clone();
        let seen = std::thread::spawn(move || {
            (
                host(on_thread.act.forward(xt)),
                host(on_thread.lin.weight.val()),
            )
        })
        .join()
        .unwrap();
        assert_eq!(seen, (host(x.clone()), float_w.clone()));
        // A record does not carry the setting: loading keeps the destination's.
        let loaded = net(spec, &device).load_record(off.clone().into_record());
        assert!(quant_modes(&loaded).iter().all(|m| m.enabled));
        assert_eq!(calls(), before, "no quantizer rounded while off");

        // A quantizer switched off on its own stays off when the model is switched on.
        let mut on = set_quantization(off, true);
        assert_eq!(host(on.lin.weight.val()), floor_w);
        on.act = on.act.with_enabled(false);
        let on = set_quantization(on, true);
        assert_eq!(host(on.act.forward(x.clone())), host(x.clone()));
        let mut on = on;
        on.act = on.act.with_enabled(true);

        // One rule for the whole model, replacing the spec's; `None` restores it.
        let ceil = set_rounding(on, Some(Rounding::Ceil)).unwrap();
        assert_eq!(host(ceil.act.forward(x.clone())), vec![1.0, 2.0, -2.0]);
        assert_eq!(host(ceil.lin.weight.val()), vec![1.0, 2.0, -2.0, 2.0]);
        assert_eq!(
            ceil.act.quantize(x.clone()).unwrap().codes_vec(),
            vec![1, 2, -2]
        );
        let back = set_rounding(ceil, None).unwrap();
        assert_eq!(host(back.act.forward(x.clone())), floor_x);
        let unknown = Rounding::Custom {
            name: burn_quant_core::RoundingName::new("nn_test_unknown").unwrap(),
        };
        let e = set_rounding(back, Some(unknown)).unwrap_err();
        assert!(e.to_string().contains("nn_test_unknown"), "{e}");
        let e = QuantizerConfig::for_spec(spec.with_rounding(unknown), QuantizerRole::Weight)
            .init(&device)
            .unwrap_err();
        assert!(e.to_string().contains("nn_test_unknown"), "{e}");
    }

    /// The thread scope reaches attached weight quantizers too (it did not before).
    #[test]
    fn without_quantization_reaches_attached_weight_quantizers() {
        let device = Device::flex();
        let spec = QuantSpec::int8_act_per_tensor()
            .with_scale_source(burn_quant_core::ScaleSource::Const(1.0));
        let model = net(spec, &device);
        assert_eq!(host(model.lin.weight.val()), vec![0.0, 2.0, -2.0, 2.0]);
        assert_eq!(
            without_quantization(|| host(model.lin.weight.val())),
            vec![0.4, 1.6, -2.5, 2.0]
        );
    }

    #[test]
    fn nested_calibration_is_an_error() {
        let device = Device::flex();
        let q = || {
            QuantizerConfig::for_spec(
                burn_quant_core::QuantSpec::int8_act_per_tensor(),
                QuantizerRole::Activation,
            )
            .init(&device)
            .unwrap()
        };
        let (_, inner) = calibrate(q(), |_| calibrate(q(), |_| ()).map(|_| ())).unwrap();
        assert!(matches!(
            inner,
            Err(NnError::InvalidConfig {
                field: "calibrate",
                ..
            })
        ));
    }
}
