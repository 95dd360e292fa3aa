//! Calibration sessions and switching quantization off, model-wide.
//!
//! Burn has no forward hooks and a model's forward takes `&self`, so — like Brevitas's
//! `calibration_mode` and `disable_enable_quantization` context managers — these are scoped to
//! a closure on the current thread: every [`Quantizer`](crate::Quantizer) that runs inside it
//! reacts, whatever model it belongs to, with no change to the model's code.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use burn_quant_core::{Observer, QuantSpec, RoundingFn};

use crate::error::{NnError, Result};

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
/// surrogate gradient) instead of its spec's rule: how a custom [`RoundingFn`] reaches every
/// quantizer of a model, e.g. for a whole QAT run, without touching the model.
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

/// Runs `f` with every quantizer on this thread acting as the identity (float reference runs).
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
