//! The Burn front-end: record a model's forward with Burn's capture device and lift it into a
//! [`Graph`].
//!
//! `Device::capture_scope` records every backend op of one forward as `burn-ir` operations
//! with static shapes, and keeps every initialized tensor (parameters, inputs, constants). A
//! `ModuleVisitor` run on the model after it moved to the capture device maps parameter paths
//! and `ParamId`s to the tensor ids the ops read. The lifting pass turns each op into one of
//! ours (or a typed error naming it), then fuses the decomposition Burn records for a `Linear`
//! (`reshape → matmul → reshape(bias) → add → reshape`) back into one `Linear` node bound to
//! its parameters.
//!
//! What capture sees is a trace: shapes are those of the sample inputs, Rust control flow is
//! baked in, and a branch on a computed value cannot be recorded (Burn panics inside the
//! scope; we turn that into [`GraphError::Capture`]).

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock};

use burn::backend::ir::{
    ActivationOperationIr, BaseOperationIr, BoolOperationIr, FloatOperationIr, ModuleOperationIr,
    NumericOperationIr, OperationIr, ScalarIr, TensorId, TensorIr,
};
use burn::backend::TensorMetadata;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Bool, Device, Float, Int, Tensor, TensorData};

use crate::GraphError;
use crate::ir::{
    BinaryOp, CompareOp, Graph, GraphConstant, GraphParam, Node, Op, ReduceOp, ScalarOp, UnaryOp, ValueId,
    ValueOrigin,
};

/// One process-wide capture device: Burn never recycles capture device ids (65,536 per
/// process), and a device runs one scope at a time, so captures take turns on it.
fn capture_device() -> &'static Mutex<Device> {
    static DEVICE: OnceLock<Mutex<Device>> = OnceLock::new();
    DEVICE.get_or_init(|| Mutex::new(Device::capture()))
}

/// Tensors a captured forward takes or returns: one tensor (float, int or bool, any rank) or a
/// tuple of them.
pub trait GraphIo: Sized {
    /// Moves the tensors to `device` (as plain data, so autodiff state never reaches the
    /// capture device).
    fn to_device(self, device: &Device) -> Self;
    /// The capture ids of the tensors, in order.
    fn capture_ids(&self) -> Result<Vec<TensorId>, GraphError>;
    /// The tensors as rank-erased dispatch tensors.
    fn into_dispatch(self) -> Vec<burn::backend::DispatchTensor>;
    /// Rebuilds from dispatch tensors (the interpreter's outputs).
    fn from_dispatch(values: Vec<burn::backend::DispatchTensor>) -> Result<Self, GraphError>;
    /// How many tensors.
    fn count() -> usize;
    /// The same inputs with one more batch row (the first row repeated along axis 0), for
    /// [`capture_batched`]'s second trace.
    fn grow_batch(&self) -> Self;
}

/// The capture id of a tensor on the capture device.
fn capture_id<const D: usize>(t: &Tensor<D>) -> Result<TensorId, GraphError> {
    t.clone()
        .try_into_primitive::<burn::backend::capture::CaptureBackend>()
        .map(|p| p.id())
        .map_err(|e| GraphError::Capture(format!("a tensor is not on the capture device: {e:?}")))
}

macro_rules! graph_io_tensor {
    ($kind:ty) => {
        impl<const D: usize> GraphIo for Tensor<D, $kind> {
            fn to_device(self, device: &Device) -> Self {
                Tensor::from_data(self.into_data(), device)
            }
            fn capture_ids(&self) -> Result<Vec<TensorId>, GraphError> {
                self.clone()
                    .try_into_primitive::<burn::backend::capture::CaptureBackend>()
                    .map(|p| vec![p.id()])
                    .map_err(|e| {
                        GraphError::Capture(format!("a tensor is not on the capture device: {e:?}"))
                    })
            }
            fn into_dispatch(self) -> Vec<burn::backend::DispatchTensor> {
                vec![Tensor::into_dispatch(self)]
            }
            fn from_dispatch(
                mut values: Vec<burn::backend::DispatchTensor>,
            ) -> Result<Self, GraphError> {
                if values.len() != 1 {
                    return Err(GraphError::Arity {
                        expected: 1,
                        got: values.len(),
                    });
                }
                let t = values.remove(0);
                let rank = t.shape().num_dims();
                if rank != D {
                    return Err(GraphError::Rank {
                        expected: D,
                        got: rank,
                    });
                }
                Ok(Tensor::from_dispatch(t))
            }
            fn count() -> usize {
                1
            }
            fn grow_batch(&self) -> Self {
                Tensor::cat(vec![self.clone(), self.clone().narrow(0, 0, 1)], 0)
            }
        }
    };
}
graph_io_tensor!(Float);
graph_io_tensor!(Int);
graph_io_tensor!(Bool);

macro_rules! graph_io_tuple {
    ($($t:ident),+) => {
        impl<$($t: GraphIo),+> GraphIo for ($($t,)+) {
            #[allow(non_snake_case)]
            fn to_device(self, device: &Device) -> Self {
                let ($($t,)+) = self;
                ($($t.to_device(device),)+)
            }
            #[allow(non_snake_case)]
            fn capture_ids(&self) -> Result<Vec<TensorId>, GraphError> {
                let ($($t,)+) = self;
                let mut out = Vec::new();
                $(out.extend($t.capture_ids()?);)+
                Ok(out)
            }
            #[allow(non_snake_case)]
            fn into_dispatch(self) -> Vec<burn::backend::DispatchTensor> {
                let ($($t,)+) = self;
                let mut out = Vec::new();
                $(out.extend($t.into_dispatch());)+
                out
            }
            fn from_dispatch(
                values: Vec<burn::backend::DispatchTensor>,
            ) -> Result<Self, GraphError> {
                let expected = 0 $(+ $t::count())+;
                if values.len() != expected {
                    return Err(GraphError::Arity { expected, got: values.len() });
                }
                let mut it = values.into_iter();
                Ok(($($t::from_dispatch(it.by_ref().take($t::count()).collect())?,)+))
            }
            fn count() -> usize {
                0 $(+ $t::count())+
            }
            #[allow(non_snake_case)]
            fn grow_batch(&self) -> Self {
                let ($($t,)+) = self;
                ($($t.grow_batch(),)+)
            }
        }
    };
}
graph_io_tuple!(A, B);
graph_io_tuple!(A, B, C);
graph_io_tuple!(A, B, C, D);

/// What a capture scope hands back: the parameter index, the input ids, the output ids.
type Boundary = (ParamIndex, Vec<TensorId>, Vec<TensorId>);

/// Parameter paths, ids and capture tensor ids of a model on the capture device.
#[derive(Default)]
struct ParamIndex {
    path: Vec<String>,
    by_tensor: HashMap<TensorId, (String, ParamId)>,
}

impl ModuleVisitor for ParamIndex {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Ok(id) = capture_id(&param.val()) {
            self.by_tensor
                .entry(id)
                .or_insert_with(|| (self.path.join("."), param.id));
        }
    }
}

/// Records `forward(model, inputs)` and lifts it into a [`Graph`].
///
/// The model is cloned to the capture device (the original is untouched; its parameters keep
/// their `ParamId`s, which is how the interpreter binds the graph to it later). Inputs are
/// taken as data. The graph's parameters carry their paths, ids and current data.
///
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Tensor};
/// use burn_quant_graph::capture;
///
/// let device = Device::flex();
/// let fc = LinearConfig::new(4, 3).init(&device);
/// let x = Tensor::<2>::ones([2, 4], &device);
/// let graph = capture(&fc, x, |m: &Linear, x| m.forward(x)).unwrap();
/// assert_eq!(graph.nodes.len(), 1);
/// assert_eq!(graph.nodes[0].op.kind(), "Linear");
/// assert_eq!(graph.nodes[0].name, "linear");
/// ```
pub fn capture<M, I, O>(
    model: &M,
    inputs: I,
    forward: impl FnOnce(&M, I) -> O,
) -> Result<Graph, GraphError>
where
    M: Module,
    I: GraphIo,
    O: GraphIo,
{
    let guard = capture_device()
        .lock()
        .map_err(|_| GraphError::Capture("an earlier capture panicked".into()))?;
    let device = guard.clone();
    let mut meta: Option<Result<Boundary, GraphError>> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        device.capture_scope(|scope| {
            // `valid()` first: it drops autodiff (which cannot reach a capture device) and gives
            // running states (BatchNorm statistics) their own storage; a plain clone shares it,
            // and moving the clone would move the user's model too.
            let m = model.valid().to_device(&device);
            let mut index = ParamIndex::default();
            m.visit(&mut index);
            let x = inputs.to_device(&device);
            let ids = (|| {
                let xin = x.capture_ids()?;
                let y = forward(&m, x);
                let yout = y.capture_ids()?;
                Ok((xin, yout))
            })();
            match ids {
                Ok((xin, yout)) => {
                    meta = Some(Ok((index, xin.clone(), yout.clone())));
                    scope.complete(xin, yout)
                }
                Err(e) => {
                    meta = Some(Err(e));
                    scope.complete([], [])
                }
            }
        })
    }));
    let captured = match result {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(GraphError::Capture(format!("{e:?}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err(GraphError::Capture(format!(
                "the forward cannot be traced: {msg} (capture records static shapes and no \
                 branch on a computed value)"
            )));
        }
    };
    let (index, xin, yout) = meta.ok_or_else(|| GraphError::Capture("no capture ran".into()))??;
    lift(
        &captured.graph.operations,
        &captured.values,
        &index.by_tensor,
        &xin,
        &yout,
    )
}

/// Records `forward` like [`capture`], into a **batch-symbolic** graph that runs at any
/// batch size (axis 0 of every input).
///
/// The forward is traced twice, at the sample's batch size `B` and at `B + 1`; an axis whose
/// size is `k·B` in the first trace and `k·(B + 1)` in the second is `k × batch` (a reshape to
/// `[batch·seq, d]`, say), every other axis must agree. A forward whose structure depends on
/// the batch size, or that slices along a batch axis, is a [`GraphError::Capture`] saying so.
pub fn capture_batched<M, I, O>(
    model: &M,
    inputs: I,
    forward: impl Fn(&M, I) -> O,
) -> Result<Graph, GraphError>
where
    M: Module,
    I: GraphIo,
    O: GraphIo,
{
    let grown = inputs.grow_batch();
    let g1 = capture(model, inputs, &forward)?;
    let batch = g1
        .inputs
        .first()
        .and_then(|&v| g1.value(v).shape.first().copied())
        .ok_or_else(|| GraphError::Capture("a batched capture needs an input with a batch axis".into()))?;
    let g2 = capture(model, grown, &forward)?;
    merge_batch(g1, &g2, batch)
}

/// Marks the batch-proportional axes of `g1` (traced at batch `b`) from `g2` (at `b + 1`).
pub(crate) fn merge_batch(mut g1: Graph, g2: &Graph, b: usize) -> Result<Graph, GraphError> {
    let differ = |what: String| {
        GraphError::Capture(format!(
            "the forward's structure depends on the batch size ({what}): capture at a fixed \
             batch with `capture` instead"
        ))
    };
    if g1.nodes.len() != g2.nodes.len() || g1.values.len() != g2.values.len() {
        return Err(differ(format!(
            "{} nodes at batch {b}, {} at batch {}",
            g1.nodes.len(),
            g2.nodes.len(),
            b + 1
        )));
    }
    for (v1, v2) in g1.values.iter_mut().zip(&g2.values) {
        if v1.shape.len() != v2.shape.len() {
            return Err(differ(format!("`{}` changes rank", v1.name)));
        }
        let mut per_batch = vec![0; v1.shape.len()];
        for (a, (&d1, &d2)) in v1.shape.iter().zip(&v2.shape).enumerate() {
            if d1 == d2 {
                continue;
            }
            // d1 = k·b and d2 = k·(b + 1).
            let k = d2 - d1.min(d2);
            if d2 > d1 && k * b == d1 {
                per_batch[a] = k;
            } else {
                return Err(differ(format!(
                    "axis {a} of `{}` is {d1} at batch {b} and {d2} at batch {}",
                    v1.name,
                    b + 1
                )));
            }
        }
        v1.per_batch = per_batch;
    }
    for (n, (a, c)) in g1.nodes.iter().zip(&g2.nodes).enumerate() {
        let same = match (&a.op, &c.op) {
            (Op::Slice { ranges: r1 }, Op::Slice { ranges: r2 }) => {
                // Only whole batch axes may be sliced: then the ranges agree elsewhere.
                let input = &g1.values[a.inputs[0].0];
                for (axis, (s1, s2)) in r1.iter().zip(r2).enumerate() {
                    let batched = input.per_batch.get(axis).copied().unwrap_or(0) > 0;
                    if batched {
                        let full = |s: &burn::tensor::Slice, len: usize| {
                            s.start == 0 && s.step == 1 && s.end.is_none_or(|e| e == len as isize)
                        };
                        let len2 = g2.values[c.inputs[0].0].shape[axis];
                        if !full(s1, input.shape[axis]) || !full(s2, len2) {
                            return Err(differ(format!("node `{}` slices a batch axis", a.name)));
                        }
                    } else if s1 != s2 {
                        return Err(differ(format!("node `{}` slices differently", a.name)));
                    }
                }
                true
            }
            (x, y) => x == y,
        };
        if !same || a.inputs != c.inputs || a.outputs != c.outputs {
            return Err(differ(format!("node #{n} `{}` differs", a.name)));
        }
    }
    for (c1, c2) in g1.constants.iter().zip(&g2.constants) {
        if c1.data != c2.data {
            return Err(differ(format!(
                "constant `{}` holds other values at batch {}",
                g1.values[c1.value.0].name,
                b + 1
            )));
        }
    }
    for v in &g1.values {
        if matches!(v.origin, ValueOrigin::Constant(_) | ValueOrigin::Param(_))
            && v.per_batch.iter().any(|&k| k > 0)
        {
            return Err(differ(format!(
                "`{}` is recorded data whose shape follows the batch",
                v.name
            )));
        }
    }
    for (i, &v) in g1.inputs.iter().enumerate() {
        if g1.values[v.0].per_batch.first() != Some(&1) {
            return Err(differ(format!("input {i}'s axis 0 is not the batch")));
        }
    }
    g1.capture_batch = Some(b);
    Ok(g1)
}

/// Lifts recorded Burn ops into a [`Graph`].
fn lift(
    ops: &[OperationIr],
    values: &BTreeMap<TensorId, TensorData>,
    params: &HashMap<TensorId, (String, ParamId)>,
    inputs: &[TensorId],
    outputs: &[TensorId],
) -> Result<Graph, GraphError> {
    let mut b = Builder {
        graph: Graph::default(),
        ids: HashMap::new(),
    };
    for (i, id) in inputs.iter().enumerate() {
        let t = find_tensor(ops, *id, values).ok_or_else(|| {
            GraphError::Capture(format!("input {i} is not read by the forward"))
        })?;
        let v = b.graph.add_value(t.0, t.1, ValueOrigin::Input(i));
        b.ids.insert(*id, v);
        b.graph.inputs.push(v);
    }
    // Parameters in path order of first appearance, so names are stable.
    for op in ops {
        let OperationIr::Init(init) = op else { continue };
        let id = init.out.id;
        if b.ids.contains_key(&id) {
            continue;
        }
        let Some(data) = values.get(&id) else { continue };
        let shape = init.out.shape.as_slice().to_vec();
        let v = if let Some((path, pid)) = params.get(&id) {
            let k = b.graph.params.len();
            b.graph.params.push(GraphParam {
                path: path.clone(),
                id: Some(*pid),
                value: ValueId(b.graph.values.len()),
                data: data.clone(),
            });
            b.graph.add_value(shape, init.out.dtype, ValueOrigin::Param(k))
        } else {
            let k = b.graph.constants.len();
            b.graph.constants.push(GraphConstant {
                value: ValueId(b.graph.values.len()),
                data: data.clone(),
            });
            b.graph.add_value(shape, init.out.dtype, ValueOrigin::Constant(k))
        };
        b.ids.insert(id, v);
    }
    for (n, op) in ops.iter().enumerate() {
        b.op(n, op)?;
    }
    for id in outputs {
        let v = *b.ids.get(id).ok_or_else(|| {
            GraphError::Capture("an output is not produced by the recorded forward".into())
        })?;
        b.graph.outputs.push(v);
    }
    let mut graph = b.graph;
    graph.reindex()?;
    fuse_linear(&mut graph)?;
    graph.prune()?;
    name_nodes(&mut graph);
    Ok(graph)
}

fn find_tensor(
    ops: &[OperationIr],
    id: TensorId,
    values: &BTreeMap<TensorId, TensorData>,
) -> Option<(Vec<usize>, burn::tensor::DType)> {
    for op in ops {
        for t in op.nodes() {
            if t.id == id {
                return Some((t.shape.as_slice().to_vec(), t.dtype));
            }
        }
    }
    values
        .get(&id)
        .map(|d| (d.shape().as_slice().to_vec(), d.dtype()))
}

struct Builder {
    graph: Graph,
    ids: HashMap<TensorId, ValueId>,
}

/// The variant name of a recorded op, for error messages (`Float::Cumsum`, `Module::Unfold4d`).
fn op_name(op: &OperationIr) -> String {
    fn head(s: String) -> String {
        s.split(['(', ' ', '{']).next().unwrap_or_default().to_string()
    }
    match op {
        OperationIr::BaseFloat(o) | OperationIr::BaseInt(o) | OperationIr::BaseBool(o) => {
            format!("Base::{}", head(format!("{o:?}")))
        }
        OperationIr::NumericFloat(_, o) | OperationIr::NumericInt(_, o) => {
            format!("Numeric::{}", head(format!("{o:?}")))
        }
        OperationIr::Float(_, o) => format!("Float::{}", head(format!("{o:?}"))),
        OperationIr::Module(o) => format!("Module::{}", head(format!("{o:?}"))),
        OperationIr::Activation(o) => format!("Activation::{}", head(format!("{o:?}"))),
        OperationIr::Int(o) => format!("Int::{}", head(format!("{o:?}"))),
        OperationIr::Bool(o) => format!("Bool::{}", head(format!("{o:?}"))),
        other => head(format!("{other:?}")),
    }
}

impl Builder {
    fn get(&self, t: &TensorIr, n: usize, op: &OperationIr) -> Result<ValueId, GraphError> {
        self.ids.get(&t.id).copied().ok_or_else(|| {
            GraphError::Capture(format!(
                "op #{n} ({}) reads a tensor that nothing defines",
                op_name(op)
            ))
        })
    }

    fn push(
        &mut self,
        n: usize,
        op: &OperationIr,
        kind: Op,
        inputs: &[&TensorIr],
        out: &TensorIr,
    ) -> Result<(), GraphError> {
        let inputs = inputs
            .iter()
            .map(|t| self.get(t, n, op))
            .collect::<Result<Vec<_>, _>>()?;
        let node = self.graph.nodes.len();
        let v = self.graph.add_value(
            out.shape.as_slice().to_vec(),
            out.dtype,
            ValueOrigin::Node(node),
        );
        self.ids.insert(out.id, v);
        self.graph.nodes.push(Node {
            name: String::new(),
            op: kind,
            inputs,
            outputs: vec![v],
        });
        Ok(())
    }

    fn op(&mut self, n: usize, op: &OperationIr) -> Result<(), GraphError> {
        let unsupported = || GraphError::UnsupportedOp {
            op: op_name(op),
            at: format!("recorded op #{n}"),
        };
        match op {
            OperationIr::Init(_) | OperationIr::Drop(_) => Ok(()),
            OperationIr::BaseFloat(b) | OperationIr::BaseInt(b) | OperationIr::BaseBool(b) => {
                match b {
                    BaseOperationIr::Reshape(r) => self.push(n, op, Op::Reshape, &[&r.input], &r.out),
                    BaseOperationIr::SwapDims(s) => {
                        let rank = s.input.shape.num_dims();
                        let mut axes: Vec<usize> = (0..rank).collect();
                        axes.swap(s.dim1, s.dim2);
                        self.push(n, op, Op::Permute { axes }, &[&s.input], &s.out)
                    }
                    BaseOperationIr::Permute(p) => self.push(
                        n,
                        op,
                        Op::Permute {
                            axes: p.axes.clone(),
                        },
                        &[&p.input],
                        &p.out,
                    ),
                    BaseOperationIr::Expand(e) => self.push(n, op, Op::Expand, &[&e.input], &e.out),
                    BaseOperationIr::Slice(s) => self.push(
                        n,
                        op,
                        Op::Slice {
                            ranges: s.ranges.clone(),
                        },
                        &[&s.tensor],
                        &s.out,
                    ),
                    BaseOperationIr::Select(s) => self.push(
                        n,
                        op,
                        Op::Select { dim: s.dim },
                        &[&s.tensor, &s.indices],
                        &s.out,
                    ),
                    BaseOperationIr::Cat(c) => {
                        let ins: Vec<&TensorIr> = c.tensors.iter().collect();
                        self.push(n, op, Op::Concat { dim: c.dim }, &ins, &c.out)
                    }
                    BaseOperationIr::Cast(c) => self.push(n, op, Op::Cast, &[&c.input], &c.out),
                    BaseOperationIr::MaskFill(m) => self.push(
                        n,
                        op,
                        Op::MaskFill { value: m.value },
                        &[&m.tensor, &m.mask],
                        &m.out,
                    ),
                    BaseOperationIr::EqualElem(c) => {
                        self.push(n, op, Op::Compare(CompareOp::Equal, c.rhs), &[&c.lhs], &c.out)
                    }
                    BaseOperationIr::NotEqualElem(c) => {
                        self.push(n, op, Op::Compare(CompareOp::NotEqual, c.rhs), &[&c.lhs], &c.out)
                    }
                    BaseOperationIr::Ones(c) => {
                        let value = one_of(&c.out);
                        self.push(n, op, Op::Full { value }, &[], &c.out)
                    }
                    BaseOperationIr::Zeros(c) => {
                        let value = zero_of(&c.out);
                        self.push(n, op, Op::Full { value }, &[], &c.out)
                    }
                    _ => Err(unsupported()),
                }
            }
            OperationIr::NumericFloat(_, num) | OperationIr::NumericInt(_, num) => {
                let bin = |k| Op::Binary(k);
                match num {
                    NumericOperationIr::Add(b) => self.push(n, op, bin(BinaryOp::Add), &[&b.lhs, &b.rhs], &b.out),
                    NumericOperationIr::Sub(b) => self.push(n, op, bin(BinaryOp::Sub), &[&b.lhs, &b.rhs], &b.out),
                    NumericOperationIr::Mul(b) => self.push(n, op, bin(BinaryOp::Mul), &[&b.lhs, &b.rhs], &b.out),
                    NumericOperationIr::Div(b) => self.push(n, op, bin(BinaryOp::Div), &[&b.lhs, &b.rhs], &b.out),
                    NumericOperationIr::AddScalar(s) => self.push(n, op, Op::Scalar(ScalarOp::Add, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::SubScalar(s) => self.push(n, op, Op::Scalar(ScalarOp::Sub, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::MulScalar(s) => self.push(n, op, Op::Scalar(ScalarOp::Mul, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::DivScalar(s) => self.push(n, op, Op::Scalar(ScalarOp::Div, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::ClampMin(s) => self.push(n, op, Op::Scalar(ScalarOp::ClampMin, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::ClampMax(s) => self.push(n, op, Op::Scalar(ScalarOp::ClampMax, s.rhs), &[&s.lhs], &s.out),
                    NumericOperationIr::Clamp(c) => self.push(
                        n,
                        op,
                        Op::Clamp {
                            min: c.min,
                            max: c.max,
                        },
                        &[&c.tensor],
                        &c.out,
                    ),
                    NumericOperationIr::Abs(u) => self.push(n, op, Op::Unary(UnaryOp::Abs), &[&u.input], &u.out),
                    NumericOperationIr::Neg(u) => self.push(n, op, Op::Unary(UnaryOp::Neg), &[&u.input], &u.out),
                    NumericOperationIr::MeanDim(r) => self.push(n, op, Op::Reduce { op: ReduceOp::Mean, dim: r.axis }, &[&r.input], &r.out),
                    NumericOperationIr::SumDim(r) => self.push(n, op, Op::Reduce { op: ReduceOp::Sum, dim: r.axis }, &[&r.input], &r.out),
                    NumericOperationIr::MaxDim(r) => self.push(n, op, Op::Reduce { op: ReduceOp::Max, dim: r.axis }, &[&r.input], &r.out),
                    NumericOperationIr::MinDim(r) => self.push(n, op, Op::Reduce { op: ReduceOp::Min, dim: r.axis }, &[&r.input], &r.out),
                    NumericOperationIr::GreaterElem(c) => {
                        self.push(n, op, Op::Compare(CompareOp::Greater, c.rhs), &[&c.lhs], &c.out)
                    }
                    NumericOperationIr::LowerElem(c) => {
                        self.push(n, op, Op::Compare(CompareOp::Lower, c.rhs), &[&c.lhs], &c.out)
                    }
                    NumericOperationIr::Full(f) => self.push(n, op, Op::Full { value: f.value }, &[], &f.out),
                    _ => Err(unsupported()),
                }
            }
            OperationIr::Float(_, f) => {
                let un = |k| Op::Unary(k);
                match f {
                    FloatOperationIr::Matmul(m) => self.push(n, op, Op::MatMul, &[&m.lhs, &m.rhs], &m.out),
                    FloatOperationIr::Exp(u) => self.push(n, op, un(UnaryOp::Exp), &[&u.input], &u.out),
                    FloatOperationIr::Log(u) => self.push(n, op, un(UnaryOp::Log), &[&u.input], &u.out),
                    FloatOperationIr::Sqrt(u) => self.push(n, op, un(UnaryOp::Sqrt), &[&u.input], &u.out),
                    FloatOperationIr::Tanh(u) => self.push(n, op, un(UnaryOp::Tanh), &[&u.input], &u.out),
                    FloatOperationIr::Erf(u) => self.push(n, op, un(UnaryOp::Erf), &[&u.input], &u.out),
                    FloatOperationIr::Recip(u) => self.push(n, op, un(UnaryOp::Recip), &[&u.input], &u.out),
                    FloatOperationIr::Round(u) => self.push(n, op, un(UnaryOp::Round), &[&u.input], &u.out),
                    FloatOperationIr::Floor(u) => self.push(n, op, un(UnaryOp::Floor), &[&u.input], &u.out),
                    FloatOperationIr::Ceil(u) => self.push(n, op, un(UnaryOp::Ceil), &[&u.input], &u.out),
                    FloatOperationIr::Sin(u) => self.push(n, op, un(UnaryOp::Sin), &[&u.input], &u.out),
                    FloatOperationIr::Cos(u) => self.push(n, op, un(UnaryOp::Cos), &[&u.input], &u.out),
                    FloatOperationIr::PowfScalar(s) => self.push(n, op, Op::Scalar(ScalarOp::Pow, s.rhs), &[&s.lhs], &s.out),
                    FloatOperationIr::Powf(b) => self.push(n, op, Op::Binary(BinaryOp::Pow), &[&b.lhs, &b.rhs], &b.out),
                    _ => Err(unsupported()),
                }
            }
            OperationIr::Int(burn::backend::ir::IntOperationIr::IntoFloat(c)) => {
                self.push(n, op, Op::Cast, &[&c.input], &c.out)
            }
            OperationIr::Bool(b) => match b {
                BoolOperationIr::Not(u) => self.push(n, op, Op::Not, &[&u.input], &u.out),
                BoolOperationIr::And(x) => self.push(n, op, Op::Logical { and: true }, &[&x.lhs, &x.rhs], &x.out),
                BoolOperationIr::Or(x) => self.push(n, op, Op::Logical { and: false }, &[&x.lhs, &x.rhs], &x.out),
                BoolOperationIr::IntoFloat(c) | BoolOperationIr::IntoInt(c) => {
                    self.push(n, op, Op::Cast, &[&c.input], &c.out)
                }
                _ => Err(unsupported()),
            },
            OperationIr::Activation(a) => match a {
                ActivationOperationIr::Relu(u) => self.push(n, op, Op::Unary(UnaryOp::Relu), &[&u.input], &u.out),
                ActivationOperationIr::Gelu(u) => self.push(n, op, Op::Unary(UnaryOp::Gelu), &[&u.input], &u.out),
                ActivationOperationIr::Sigmoid(u) => self.push(n, op, Op::Unary(UnaryOp::Sigmoid), &[&u.input], &u.out),
                ActivationOperationIr::LeakyRelu(s) => self.push(n, op, Op::LeakyRelu { slope: s.rhs }, &[&s.lhs], &s.out),
                ActivationOperationIr::HardSigmoid(h) => self.push(
                    n,
                    op,
                    Op::HardSigmoid {
                        alpha: h.alpha,
                        beta: h.beta,
                    },
                    &[&h.tensor],
                    &h.out,
                ),
                ActivationOperationIr::Softmax(d) => self.push(n, op, Op::Softmax { dim: d.axis }, &[&d.input], &d.out),
                ActivationOperationIr::LogSoftmax(d) => self.push(n, op, Op::LogSoftmax { dim: d.axis }, &[&d.input], &d.out),
                _ => Err(unsupported()),
            },
            OperationIr::Module(m) => match m {
                ModuleOperationIr::Linear(l) => {
                    let mut ins = vec![&l.x, &l.weight];
                    ins.extend(l.bias.as_ref());
                    self.push(n, op, Op::Linear { bias: l.bias.is_some() }, &ins, &l.out)
                }
                ModuleOperationIr::Conv1d(c) => {
                    let mut ins = vec![&c.x, &c.weight];
                    ins.extend(c.bias.as_ref());
                    let kind = Op::Conv1d { options: c.options.clone(), bias: c.bias.is_some() };
                    self.push(n, op, kind, &ins, &c.out)
                }
                ModuleOperationIr::Conv2d(c) => {
                    let mut ins = vec![&c.x, &c.weight];
                    ins.extend(c.bias.as_ref());
                    let kind = Op::Conv2d { options: c.options.clone(), bias: c.bias.is_some() };
                    self.push(n, op, kind, &ins, &c.out)
                }
                ModuleOperationIr::ConvTranspose1d(c) => {
                    let mut ins = vec![&c.x, &c.weight];
                    ins.extend(c.bias.as_ref());
                    let kind = Op::ConvTranspose1d { options: c.options.clone(), bias: c.bias.is_some() };
                    self.push(n, op, kind, &ins, &c.out)
                }
                ModuleOperationIr::ConvTranspose2d(c) => {
                    let mut ins = vec![&c.x, &c.weight];
                    ins.extend(c.bias.as_ref());
                    let kind = Op::ConvTranspose2d { options: c.options.clone(), bias: c.bias.is_some() };
                    self.push(n, op, kind, &ins, &c.out)
                }
                ModuleOperationIr::Attention(a) => {
                    let mut ins = vec![&a.query, &a.key, &a.value];
                    ins.extend(a.mask.as_ref());
                    ins.extend(a.attn_bias.as_ref());
                    let kind = Op::Attention {
                        options: a.options.clone(),
                        mask: a.mask.is_some(),
                        bias: a.attn_bias.is_some(),
                    };
                    self.push(n, op, kind, &ins, &a.out)
                }
                ModuleOperationIr::Embedding(e) => self.push(n, op, Op::Embedding, &[&e.weights, &e.indices], &e.out),
                ModuleOperationIr::BatchNorm(b) => self.push(
                    n,
                    op,
                    Op::BatchNorm { epsilon: b.epsilon.elem() },
                    &[&b.x, &b.gamma, &b.beta, &b.mean, &b.variance],
                    &b.out,
                ),
                ModuleOperationIr::LayerNorm(l) => {
                    let mut ins = vec![&l.input, &l.gamma];
                    ins.extend(l.beta.as_ref());
                    let kind = Op::LayerNorm { epsilon: l.epsilon.elem(), beta: l.beta.is_some() };
                    self.push(n, op, kind, &ins, &l.out)
                }
                ModuleOperationIr::MaxPool2d(p) => self.push(
                    n,
                    op,
                    Op::MaxPool2d {
                        kernel: p.kernel_size,
                        stride: p.stride,
                        padding: p.padding,
                        dilation: p.dilation,
                        ceil_mode: p.ceil_mode,
                    },
                    &[&p.x],
                    &p.out,
                ),
                ModuleOperationIr::AvgPool2d(p) => self.push(
                    n,
                    op,
                    Op::AvgPool2d {
                        kernel: p.kernel_size,
                        stride: p.stride,
                        padding: p.padding,
                        count_include_pad: p.count_include_pad,
                        ceil_mode: p.ceil_mode,
                    },
                    &[&p.x],
                    &p.out,
                ),
                ModuleOperationIr::AdaptiveAvgPool2d(p) => self.push(
                    n,
                    op,
                    Op::AdaptiveAvgPool2d { output: p.output_size },
                    &[&p.x],
                    &p.out,
                ),
                _ => Err(unsupported()),
            },
            _ => Err(unsupported()),
        }
    }
}

fn one_of(t: &TensorIr) -> ScalarIr {
    if t.dtype.is_float() {
        ScalarIr::Float(1.0)
    } else if t.dtype.is_bool() {
        ScalarIr::Bool(true)
    } else if t.dtype.is_uint() {
        ScalarIr::UInt(1)
    } else {
        ScalarIr::Int(1)
    }
}

fn zero_of(t: &TensorIr) -> ScalarIr {
    if t.dtype.is_float() {
        ScalarIr::Float(0.0)
    } else if t.dtype.is_bool() {
        ScalarIr::Bool(false)
    } else if t.dtype.is_uint() {
        ScalarIr::UInt(0)
    } else {
        ScalarIr::Int(0)
    }
}

/// Whether `to` only adds or removes leading length-1 axes of `from`.
fn is_leading_unsqueeze(from: &[usize], to: &[usize]) -> bool {
    let strip = |s: &[usize]| -> Vec<usize> {
        let k = s.iter().take_while(|&&d| d == 1).count();
        s[k..].to_vec()
    };
    strip(from) == strip(to) && from.iter().product::<usize>() == to.iter().product::<usize>()
}

/// Fuses Burn's recorded `Linear` decompositions into `Linear` nodes.
///
/// Two shapes are recorded (burn-backend `ops/modules/linear.rs`): batches folded into rows
/// (`reshape(x → [rows, d_in]) → matmul(·, W) → add(·, reshape(b → [1, d_out])) →
/// reshape(→ [.., d_out])`) and batched (`matmul(x, reshape(W → [1.., d_in, d_out])) →
/// add(·, reshape(b → [1.., d_out]))`). A matmul whose right operand is a rank-2 parameter (or
/// a leading-unsqueeze view of one used nowhere else) becomes a `Linear`; the surrounding
/// reshapes and the bias add join it where nothing else reads their intermediate values. The
/// interpreter runs the node with the backend's `linear`, which is what eager execution calls,
/// so results stay bit-identical.
fn fuse_linear(graph: &mut Graph) -> Result<(), GraphError> {
    let consumers = graph.consumers();
    let only_reader = |v: ValueId, n: usize| consumers[v.0].len() == 1 && consumers[v.0][0] == n;
    let mut remove = vec![false; graph.nodes.len()];
    let mut replace: HashMap<usize, Node> = HashMap::new();
    for m in 0..graph.nodes.len() {
        if graph.nodes[m].op != Op::MatMul || remove[m] {
            continue;
        }
        let (lhs, rhs) = (graph.nodes[m].inputs[0], graph.nodes[m].inputs[1]);
        // The weight: a rank-2 parameter, possibly behind a leading-unsqueeze reshape.
        let mut absorbed = Vec::new();
        let weight = if graph.param_of(rhs).is_some() && graph.value(rhs).shape.len() == 2 {
            rhs
        } else if let Some(r) = graph.producer(rhs)
            && graph.nodes[r].op == Op::Reshape
            && only_reader(rhs, m)
        {
            let w = graph.nodes[r].inputs[0];
            if graph.param_of(w).is_some()
                && graph.value(w).shape.len() == 2
                && is_leading_unsqueeze(&graph.value(w).shape, &graph.value(rhs).shape)
            {
                absorbed.push(r);
                w
            } else {
                continue;
            }
        } else {
            continue;
        };
        let d_in = graph.value(weight).shape[0];
        let d_out = graph.value(weight).shape[1];
        // The input: x itself, or a reshape folding x's leading axes into rows.
        let mut x = lhs;
        let mut folded = false;
        if let Some(r) = graph.producer(lhs)
            && graph.nodes[r].op == Op::Reshape
            && only_reader(lhs, m)
        {
            let src = graph.nodes[r].inputs[0];
            let s = &graph.value(src).shape;
            if s.last() == Some(&d_in) && graph.value(lhs).shape.len() == 2 {
                x = src;
                folded = true;
                absorbed.push(r);
            }
        }
        let mut out = graph.nodes[m].outputs[0];
        // The bias: `out + reshape(b)` with b a rank-1 parameter of length d_out.
        let mut bias = None;
        if consumers[out.0].len() == 1 {
            let a = consumers[out.0][0];
            let node = &graph.nodes[a];
            if node.op == Op::Binary(BinaryOp::Add) && node.inputs[0] == out {
                let other = node.inputs[1];
                if let Some(r) = graph.producer(other)
                    && graph.nodes[r].op == Op::Reshape
                    && only_reader(other, a)
                {
                    let b = graph.nodes[r].inputs[0];
                    if graph.param_of(b).is_some() && graph.value(b).shape == [d_out] {
                        bias = Some(b);
                        absorbed.push(r);
                        absorbed.push(a);
                        out = node.outputs[0];
                    }
                }
            }
        }
        // The reshape back to x's leading axes.
        if folded && consumers[out.0].len() == 1 {
            let r = consumers[out.0][0];
            let mut want = graph.value(x).shape.clone();
            if let Some(last) = want.last_mut() {
                *last = d_out;
            }
            if graph.nodes[r].op == Op::Reshape && graph.value(graph.nodes[r].outputs[0]).shape == want
            {
                absorbed.push(r);
                out = graph.nodes[r].outputs[0];
            }
        }
        if folded && graph.value(out).shape.len() != graph.value(x).shape.len() {
            // The folded product is used as is: keep it a matmul.
            continue;
        }
        let at = graph.producer(out).expect("a node output");
        remove[m] = true;
        for r in absorbed {
            remove[r] = true;
        }
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        // The fused node takes the place of the node that produced its output: everything it
        // reads is defined before that, everything reading its output comes after.
        replace.insert(
            at,
            Node {
                name: String::new(),
                op: Op::Linear {
                    bias: bias.is_some(),
                },
                inputs,
                outputs: vec![out],
            },
        );
    }
    let nodes = std::mem::take(&mut graph.nodes);
    let mut out_nodes = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.into_iter().enumerate() {
        if let Some(fused) = replace.remove(&i) {
            out_nodes.push(fused);
        } else if !remove[i] {
            out_nodes.push(node);
        }
    }
    graph.nodes = out_nodes;
    graph.reindex()
}

/// Names layer nodes by their weight's module path (`encoder.fc` for `encoder.fc.weight`),
/// others `{kind}_{index}`; names are unique.
fn name_nodes(graph: &mut Graph) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for n in 0..graph.nodes.len() {
        let base = graph
            .weight_of(n)
            .map(|p| match p.path.strip_suffix(".weight") {
                Some(module) => module.to_string(),
                // A layer at the root of the model: its parameter is just `weight`.
                None if p.path == "weight" => graph.nodes[n].op.kind().to_lowercase(),
                None => p.path.clone(),
            })
            .or_else(|| {
                // Norms and embeddings: named by their first parameter's module path.
                let node = &graph.nodes[n];
                matches!(
                    node.op,
                    Op::LayerNorm { .. } | Op::BatchNorm { .. } | Op::Embedding
                )
                .then(|| {
                    node.inputs
                        .iter()
                        .find_map(|&v| graph.param_of(v))
                        .map(|p| p.path.rsplit_once('.').map_or("", |(m, _)| m).to_string())
                })
                .flatten()
            })
            .unwrap_or_else(|| format!("{}_{n}", graph.nodes[n].op.kind().to_lowercase()));
        let count = seen.entry(base.clone()).or_default();
        graph.nodes[n].name = if *count == 0 {
            base.clone()
        } else {
            format!("{base}#{count}")
        };
        *count += 1;
    }
}
