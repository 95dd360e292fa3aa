//! The importer proper: walks the ONNX nodes in topological order, folding what the input
//! shapes decide on the host and emitting graph nodes for what runs per input.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use burn::backend::ir::{
    Conv1dOptionsIr, Conv2dOptionsIr, ConvTranspose1dOptionsIr, ConvTranspose2dOptionsIr, ScalarIr,
};
use burn::tensor::{DType, Slice, TensorData};
use burn_quant_export::onnx::proto::{AttributeProto, NodeProto};

use super::tensor::{
    MAX_HOST_ELEMENTS, broadcast, broadcast_index, decode_tensor, floats, from_f64, from_i64, ints,
    strides,
};
use super::{
    ImportedActivationQuant, ImportedGraph, ImportedWeightQuant, OnnxModel, ParamSource,
    import_err, is_default_domain, node_at,
};
use crate::GraphError;
use crate::ir::{
    BinaryOp, CompareOp, Graph, GraphConstant, GraphParam, Node, Op, ReduceOp, ResizeMode,
    ScalarOp, UnaryOp, ValueId, ValueOrigin,
};
use burn_quant_core::WeightLayout;

mod qdq;

/// A QuantizeLinear whose DequantizeLinear has not been seen yet.
struct PendingQ {
    x: Sym,
    x_name: String,
    dtype: burn_quant_export::onnx::proto::DataType,
    node: usize,
    scale_name: String,
    zp_name: String,
}

/// What an ONNX value is during import.
#[derive(Clone, Debug)]
enum Sym {
    /// Known on the host (an initializer, a constant, folded shape arithmetic).
    Host(Rc<TensorData>),
    /// Computed at run time: a graph value.
    Run(ValueId),
}

type R<T> = Result<T, GraphError>;

/// One import of a model at concrete input shapes.
pub(crate) struct Importer<'m> {
    m: &'m OnnxModel,
    g: Graph,
    syms: HashMap<String, Sym>,
    /// Host values already turned into graph parameters, by (ONNX name, transposed).
    params: HashMap<(String, bool), ValueId>,
    /// Layer weights (behind their imported quantizer, if any), by (ONNX name, transposed).
    weights: HashMap<(String, bool), ValueId>,
    /// Host values already turned into graph constants, by ONNX name.
    constants: HashMap<String, ValueId>,
    onnx_node: Vec<usize>,
    onnx_value: Vec<Option<String>>,
    param_sources: Vec<ParamSource>,
    node_names: HashSet<String>,
    /// How many nodes read each ONNX value (graph outputs count as readers).
    readers: HashMap<String, usize>,
    /// ONNX `Add` nodes whose work a `MatMul` took over (its bias): node → the fused value.
    absorbed: HashMap<usize, ValueId>,
    /// Every ONNX name of a run-time value.
    onnx_names: HashMap<String, ValueId>,
    /// QuantizeLinear outputs awaiting their DequantizeLinear.
    pending_q: HashMap<String, PendingQ>,
    /// DequantizeLinear outputs of constant codes, until a layer reads them as its weight.
    weight_codes: HashMap<String, ImportedWeightQuant>,
    /// DequantizeLinear outputs folded to float constants (int32 biases).
    dq_constants: HashSet<String>,
    activation_quants: Vec<ImportedActivationQuant>,
    weight_quants: Vec<ImportedWeightQuant>,
    next_quantizer: usize,
    /// The node being converted.
    n: usize,
    name: String,
}

impl<'m> Importer<'m> {
    pub(crate) fn run(m: &'m OnnxModel, shapes: &[Vec<usize>]) -> R<ImportedGraph> {
        if shapes.len() != m.inputs.len() {
            return Err(import_err(
                "the model",
                format!(
                    "it has {} runtime inputs, {} shapes were given",
                    m.inputs.len(),
                    shapes.len()
                ),
            ));
        }
        let mut readers: HashMap<String, usize> = HashMap::new();
        for node in m.nodes() {
            for i in node.input.iter().filter(|i| !i.is_empty()) {
                *readers.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &m.outputs {
            *readers.entry(o.clone()).or_default() += 1;
        }
        let mut imp = Importer {
            m,
            g: Graph::default(),
            syms: HashMap::new(),
            params: HashMap::new(),
            weights: HashMap::new(),
            constants: HashMap::new(),
            onnx_node: Vec::new(),
            onnx_value: Vec::new(),
            param_sources: Vec::new(),
            node_names: HashSet::new(),
            readers,
            absorbed: HashMap::new(),
            onnx_names: HashMap::new(),
            pending_q: HashMap::new(),
            weight_codes: HashMap::new(),
            dq_constants: HashSet::new(),
            activation_quants: Vec::new(),
            weight_quants: Vec::new(),
            next_quantizer: 0,
            n: 0,
            name: String::new(),
        };
        for (k, (input, shape)) in m.inputs.iter().zip(shapes).enumerate() {
            let at = || format!("graph input `{}`", input.name);
            if shape.len() != input.dims.len() {
                return Err(import_err(
                    at(),
                    format!(
                        "it has rank {}, the given shape {shape:?} rank {}",
                        input.dims.len(),
                        shape.len()
                    ),
                ));
            }
            for (a, (&d, &want)) in shape.iter().zip(&input.dims).enumerate() {
                if want.is_some_and(|w| w != d) {
                    return Err(import_err(
                        at(),
                        format!(
                            "axis {a} is declared {}, the given shape has {d}",
                            want.unwrap()
                        ),
                    ));
                }
            }
            if shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none_or(|n| n > MAX_HOST_ELEMENTS * 16)
            {
                return Err(import_err(
                    at(),
                    format!("shape {shape:?} is absurdly large"),
                ));
            }
            if input.dtype == DType::F64 {
                return Err(import_err(
                    at(),
                    "double inputs are not supported (graphs run in f32)",
                ));
            }
            let v = imp.value(
                shape.clone(),
                input.dtype,
                ValueOrigin::Input(k),
                Some(&input.name),
            );
            imp.g.inputs.push(v);
            imp.syms.insert(input.name.clone(), Sym::Run(v));
            imp.onnx_names.insert(input.name.clone(), v);
        }
        for &n in &m.order {
            imp.convert(n)?;
        }
        for name in &m.outputs {
            let sym = imp.sym(name)?;
            let v = imp.runtime(&sym, name)?;
            imp.g.outputs.push(v);
        }
        imp.finish()
    }

    // ----- values and nodes -------------------------------------------------------------

    fn value(
        &mut self,
        shape: Vec<usize>,
        dtype: DType,
        origin: ValueOrigin,
        onnx: Option<&str>,
    ) -> ValueId {
        let v = self.g.add_value(shape, dtype, origin);
        if let Some(name) = onnx {
            self.g.values[v.0].name = name.to_string();
        }
        self.onnx_value.push(onnx.map(str::to_string));
        v
    }

    /// Appends a graph node computing part of the current ONNX node; `suffix` distinguishes
    /// the nodes of one expansion (`""` for the node carrying the ONNX node's name).
    fn emit(
        &mut self,
        suffix: &str,
        op: Op,
        inputs: Vec<ValueId>,
        shape: Vec<usize>,
        dtype: DType,
    ) -> ValueId {
        let base = if suffix.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{suffix}", self.name)
        };
        let mut name = base.clone();
        let mut k = 2;
        while !self.node_names.insert(name.clone()) {
            name = format!("{base}#{k}");
            k += 1;
        }
        let index = self.g.nodes.len();
        let v = self.value(shape, dtype, ValueOrigin::Node(index), None);
        self.g.nodes.push(Node {
            name,
            op,
            inputs,
            outputs: vec![v],
        });
        self.onnx_node.push(self.n);
        v
    }

    fn node(&self) -> &'m NodeProto {
        &self.m.nodes()[self.n]
    }

    fn err(&self, reason: impl Into<String>) -> GraphError {
        import_err(node_at(self.node(), self.n), reason)
    }

    fn sym(&mut self, name: &str) -> R<Sym> {
        if let Some(s) = self.syms.get(name) {
            return Ok(s.clone());
        }
        if self.pending_integer(name) {
            return Err(self.err(format!(
                "it reads `{name}`, QuantizeLinear's integer output; only QuantizeLinear → \
                 DequantizeLinear pairs are supported (integer ops such as QLinearConv are not)"
            )));
        }
        let data = self.m.initializer_data(name).ok_or_else(|| {
            import_err(
                "the model",
                format!("value `{name}` is read before it is defined"),
            )
        })??;
        let s = Sym::Host(Rc::new(data));
        self.syms.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// Input `k` of the current node (`None` when absent or empty).
    fn input(&mut self, k: usize) -> R<Option<Sym>> {
        match self.node().input.get(k) {
            Some(name) if !name.is_empty() => self.sym(name).map(Some),
            _ => Ok(None),
        }
    }

    fn req(&mut self, k: usize) -> R<Sym> {
        self.input(k)?
            .ok_or_else(|| self.err(format!("input {k} is required")))
    }

    fn input_name(&self, k: usize) -> &'m str {
        self.node().input.get(k).map(String::as_str).unwrap_or("")
    }

    fn shape(&self, s: &Sym) -> Vec<usize> {
        match s {
            Sym::Host(d) => d.shape().as_slice().to_vec(),
            Sym::Run(v) => self.g.value(*v).shape.clone(),
        }
    }

    fn dtype(&self, s: &Sym) -> DType {
        match s {
            Sym::Host(d) => d.dtype(),
            Sym::Run(v) => self.g.value(*v).dtype,
        }
    }

    /// A graph value for `s` (a host value becomes a graph constant, floats as f32).
    fn runtime(&mut self, s: &Sym, name: &str) -> R<ValueId> {
        match s {
            Sym::Run(v) => Ok(*v),
            Sym::Host(d) => {
                if let Some(&v) = self.constants.get(name) {
                    return Ok(v);
                }
                let data = if d.dtype().is_float() {
                    (**d).clone().convert::<f32>()
                } else {
                    (**d).clone()
                };
                let c = self.g.constants.len();
                let onnx = (!name.is_empty()).then_some(name);
                let v = self.value(
                    data.shape().as_slice().to_vec(),
                    data.dtype(),
                    ValueOrigin::Constant(c),
                    onnx,
                );
                self.g.constants.push(GraphConstant { value: v, data });
                if !name.is_empty() {
                    self.constants.insert(name.to_string(), v);
                }
                Ok(v)
            }
        }
    }

    /// Input `k` as a graph value.
    fn run_in(&mut self, k: usize) -> R<ValueId> {
        let s = self.req(k)?;
        let name = self.input_name(k);
        self.runtime(&s, name)
    }

    /// Input `k`, which must be known on the host.
    fn host_in(&mut self, k: usize) -> R<Rc<TensorData>> {
        match self.req(k)? {
            Sym::Host(d) => Ok(d),
            Sym::Run(_) => Err(self.err(format!(
                "input {k} (`{}`) must be a constant here, but it is computed at run time",
                self.input_name(k)
            ))),
        }
    }

    fn host_opt(&mut self, k: usize) -> R<Option<Rc<TensorData>>> {
        match self.input(k)? {
            None => Ok(None),
            Some(_) => self.host_in(k).map(Some),
        }
    }

    /// Input `k` as a float parameter of a layer (optionally transposed, 2-D only).
    fn param_in(&mut self, k: usize, transposed: bool) -> R<ValueId> {
        let d = self.host_in(k)?;
        let name = self.input_name(k).to_string();
        if let Some(&v) = self.params.get(&(name.clone(), transposed)) {
            return Ok(v);
        }
        if !d.dtype().is_float() {
            return Err(self.err(format!(
                "weight `{name}` has element type {:?}, not a float",
                d.dtype()
            )));
        }
        let mut data = (*d).clone().convert::<f32>();
        if transposed {
            let s = data.shape().as_slice().to_vec();
            if s.len() != 2 {
                return Err(self.err(format!(
                    "weight `{name}` has shape {s:?}, expected a matrix"
                )));
            }
            data = transpose_host(&data, &[1, 0]);
        }
        let path = if self.g.params.iter().any(|p| p.path == name) {
            format!("{name}.T")
        } else {
            name.clone()
        };
        let p = self.g.params.len();
        self.g.params.push(GraphParam {
            path: path.clone(),
            id: None,
            value: ValueId(usize::MAX),
            data: data.clone(),
        });
        let v = self.value(
            data.shape().as_slice().to_vec(),
            DType::F32,
            ValueOrigin::Param(p),
            None,
        );
        self.g.values[v.0].name = path;
        self.g.params[p].value = v;
        self.param_sources.push(if transposed {
            ParamSource::Transposed
        } else {
            ParamSource::AsStored
        });
        self.params.insert((name, transposed), v);
        Ok(v)
    }

    /// Input `k` as the weight of a layer of `layout`: a parameter, behind its imported
    /// weight quantizer when the model stores it as `DequantizeLinear` codes.
    fn weight_in(&mut self, k: usize, transposed: bool, layout: WeightLayout) -> R<ValueId> {
        let name = self.input_name(k).to_string();
        if let Some(&v) = self.weights.get(&(name.clone(), transposed)) {
            return Ok(v);
        }
        let v = self.param_in(k, transposed)?;
        let v = self.weight_quant_node(&name, v, transposed, layout)?;
        self.weights.insert((name, transposed), v);
        Ok(v)
    }

    /// Binds output `k` of the current node.
    fn out(&mut self, k: usize, s: Sym) {
        let Some(name) = self.node().output.get(k).filter(|n| !n.is_empty()) else {
            return;
        };
        if let Sym::Run(v) = s {
            // Every name of the value (Identity and Dropout give it more than one).
            self.onnx_names.insert(name.clone(), v);
        }
        if let Sym::Run(v) = s
            && self.onnx_value[v.0].is_none()
        {
            self.onnx_value[v.0] = Some(name.clone());
            self.g.values[v.0].name = name.clone();
        }
        self.syms.insert(name.clone(), s);
    }

    fn out_run(&mut self, v: ValueId) -> R<()> {
        self.out(0, Sym::Run(v));
        self.check_extra_outputs(1)
    }

    fn out_host(&mut self, d: TensorData) -> R<()> {
        if d.num_elements() > MAX_HOST_ELEMENTS {
            return Err(self.err(format!(
                "a constant of {} elements is absurdly large",
                d.num_elements()
            )));
        }
        self.out(0, Sym::Host(Rc::new(d)));
        self.check_extra_outputs(1)
    }

    /// Optional outputs from `from` on must be unused.
    fn check_extra_outputs(&self, from: usize) -> R<()> {
        for o in self.node().output.iter().skip(from) {
            if !o.is_empty() && self.readers.get(o).copied().unwrap_or(0) > 0 {
                return Err(self.err(format!(
                    "its extra output `{o}` is used, which is not supported"
                )));
            }
        }
        Ok(())
    }

    // ----- attributes -------------------------------------------------------------------

    fn attr(&self, name: &str) -> Option<&'m AttributeProto> {
        self.node().attribute.iter().find(|a| a.name == name)
    }

    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }

    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }

    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn attr_s(&self, name: &str, default: &str) -> String {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    /// Every attribute of the node must be one the conversion reads.
    fn known_attrs(&self, known: &[&str]) -> R<()> {
        for a in &self.node().attribute {
            if !known.contains(&a.name.as_str()) {
                return Err(self.err(format!("attribute `{}` is not supported", a.name)));
            }
        }
        Ok(())
    }

    fn axis(&self, axis: i64, rank: usize) -> R<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..r.max(1)).contains(&a) {
            return Err(self.err(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(a as usize)
    }

    // ----- conversion -------------------------------------------------------------------

    fn convert(&mut self, n: usize) -> R<()> {
        self.n = n;
        let node = self.node();
        self.name = if node.name.is_empty() {
            format!("{}_{n}", node.op_type)
        } else {
            node.name.clone()
        };
        if !is_default_domain(&node.domain) {
            return Err(self.err(format!(
                "operator domain `{}` is not supported",
                node.domain
            )));
        }
        if let Some(&v) = self.absorbed.get(&n) {
            self.out(0, Sym::Run(v));
            return Ok(());
        }
        let opset = self.m.opset;
        match node.op_type.as_str() {
            "Identity" => {
                self.known_attrs(&[])?;
                let s = self.req(0)?;
                self.out(0, s);
                Ok(())
            }
            "Dropout" => {
                self.known_attrs(&["seed", "ratio", "is_test"])?;
                if let Some(t) = self.host_opt(2)?
                    && ints(&t).map_err(|e| self.err(e))?.first() == Some(&1)
                {
                    return Err(self.err("training mode is not supported"));
                }
                let s = self.req(0)?;
                self.out(0, s);
                self.check_extra_outputs(1)
            }
            "Constant" => self.constant(),
            "ConstantOfShape" => {
                self.known_attrs(&["value"])?;
                let shape = self.host_usizes(0)?;
                let value = match self.attr("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => decode_tensor(t, None).map_err(|e| self.err(e))?,
                    None => TensorData::new(vec![0f32], [1]),
                };
                let n = checked_count(&shape)
                    .ok_or_else(|| self.err(format!("shape {shape:?} overflows")))?;
                if n > MAX_HOST_ELEMENTS {
                    return Err(self.err(format!("shape {shape:?} is absurdly large")));
                }
                let v = floats(&value);
                let fill = *v.first().ok_or_else(|| self.err("`value` is empty"))?;
                self.out_host(from_f64(vec![fill; n], shape, value.dtype()))
            }
            "Shape" => {
                self.known_attrs(&["start", "end"])?;
                let s = self.req(0)?;
                let shape: Vec<i64> = self.shape(&s).iter().map(|&d| d as i64).collect();
                let r = shape.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clampi(self.attr_i("start", 0));
                let end = clampi(self.attr_i("end", r));
                let part = shape[start..end.max(start)].to_vec();
                let len = part.len();
                self.out_host(TensorData::new(part, [len]))
            }
            "Size" => {
                self.known_attrs(&[])?;
                let s = self.req(0)?;
                let n = self.shape(&s).iter().product::<usize>() as i64;
                self.out_host(TensorData::new(vec![n], Vec::<usize>::new()))
            }
            "Cast" => self.cast(),
            "Reshape" => {
                self.known_attrs(&["allowzero"])?;
                let x = self.req(0)?;
                let spec = if opset < 5 {
                    self.attr_ints("shape").unwrap_or_default()
                } else {
                    let t = self.host_in(1)?;
                    ints(&t).map_err(|e| self.err(e))?
                };
                let allowzero = self.attr_i("allowzero", 0) != 0;
                let shape = self.reshape_target(&self.shape(&x), &spec, allowzero)?;
                self.reshape_out(x, shape)
            }
            "Flatten" => {
                self.known_attrs(&["axis"])?;
                let x = self.req(0)?;
                let s = self.shape(&x);
                let a = self.attr_i("axis", 1);
                let a = if a < 0 { a + s.len() as i64 } else { a };
                if !(0..=s.len() as i64).contains(&a) {
                    return Err(self.err(format!("axis {a} is out of range for rank {}", s.len())));
                }
                let a = a as usize;
                let shape = vec![s[..a].iter().product(), s[a..].iter().product()];
                self.reshape_out(x, shape)
            }
            "Squeeze" | "Unsqueeze" => self.squeeze(node.op_type == "Unsqueeze"),
            "Transpose" => {
                self.known_attrs(&["perm"])?;
                let x = self.req(0)?;
                let rank = self.shape(&x).len();
                let perm: Vec<usize> = match self.attr_ints("perm") {
                    Some(p) => p.iter().map(|&a| self.axis(a, rank)).collect::<R<_>>()?,
                    None => (0..rank).rev().collect(),
                };
                let mut seen = perm.clone();
                seen.sort();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return Err(
                        self.err(format!("perm {perm:?} is not a permutation of rank {rank}"))
                    );
                }
                match x {
                    Sym::Host(d) => self.out_host(transpose_host(&d, &perm)),
                    Sym::Run(v) => {
                        let s = self.shape(&x);
                        let shape = perm.iter().map(|&a| s[a]).collect();
                        let dt = self.dtype(&x);
                        let o = self.emit("", Op::Permute { axes: perm }, vec![v], shape, dt);
                        self.out_run(o)
                    }
                }
            }
            "Concat" => self.concat(),
            "Slice" => self.slice(),
            "Gather" => self.gather(),
            "Expand" => {
                self.known_attrs(&[])?;
                let x = self.req(0)?;
                let target = self.host_usizes(1)?;
                let s = self.shape(&x);
                let shape = broadcast(&s, &target).map_err(|e| self.err(e))?;
                match x {
                    Sym::Host(d) => {
                        let out = gather_flat(&d, &broadcast_index(&s, &shape), shape.clone());
                        self.out_host(out)
                    }
                    Sym::Run(_) => {
                        let v = self.run_in(0)?;
                        let v = self.with_rank(v, shape.len());
                        let dt = self.dtype(&x);
                        let o = if self.g.value(v).shape == shape {
                            v
                        } else {
                            self.emit("", Op::Expand, vec![v], shape, dt)
                        };
                        self.out_run(o)
                    }
                }
            }
            "Range" => {
                self.known_attrs(&[])?;
                let (a, b, c) = (self.host_in(0)?, self.host_in(1)?, self.host_in(2)?);
                let dt = a.dtype();
                let (a, b, c) = (
                    self.scalar(&a, 0)?,
                    self.scalar(&b, 1)?,
                    self.scalar(&c, 2)?,
                );
                if c == 0.0 {
                    return Err(self.err("delta is 0"));
                }
                let n = ((b - a) / c).ceil().max(0.0) as usize;
                if n > MAX_HOST_ELEMENTS {
                    return Err(self.err(format!("{n} elements is absurdly large")));
                }
                let v: Vec<f64> = (0..n).map(|i| a + i as f64 * c).collect();
                self.out_host(from_f64(v, vec![n], dt))
            }
            "Add" => self.binary(BinaryOp::Add),
            "Sub" => self.binary(BinaryOp::Sub),
            "Mul" => self.binary(BinaryOp::Mul),
            "Div" => self.binary(BinaryOp::Div),
            "Pow" => self.binary(BinaryOp::Pow),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => self.compare(),
            "Not" => {
                self.known_attrs(&[])?;
                match self.req(0)? {
                    Sym::Host(d) => {
                        let v: Vec<bool> = floats(&d).iter().map(|&x| x == 0.0).collect();
                        let shape = d.shape().as_slice().to_vec();
                        self.out_host(TensorData::new(v, shape))
                    }
                    x @ Sym::Run(v) => {
                        let (s, dt) = (self.shape(&x), self.dtype(&x));
                        let o = self.emit("", Op::Not, vec![v], s, dt);
                        self.out_run(o)
                    }
                }
            }
            "And" | "Or" => self.logical(node.op_type == "And"),
            "Where" => self.where_(),
            "Relu" => self.unary(UnaryOp::Relu),
            "Sigmoid" => self.unary(UnaryOp::Sigmoid),
            "Tanh" => self.unary(UnaryOp::Tanh),
            "Exp" => self.unary(UnaryOp::Exp),
            "Log" => self.unary(UnaryOp::Log),
            "Sqrt" => self.unary(UnaryOp::Sqrt),
            "Neg" => self.unary(UnaryOp::Neg),
            "Abs" => self.unary(UnaryOp::Abs),
            "Erf" => self.unary(UnaryOp::Erf),
            "Reciprocal" => self.unary(UnaryOp::Recip),
            "Round" => self.unary(UnaryOp::Round),
            "Floor" => self.unary(UnaryOp::Floor),
            "Ceil" => self.unary(UnaryOp::Ceil),
            "Sin" => self.unary(UnaryOp::Sin),
            "Cos" => self.unary(UnaryOp::Cos),
            "Gelu" => {
                self.known_attrs(&["approximate"])?;
                match self.attr_s("approximate", "none").as_str() {
                    "none" => self.unary(UnaryOp::Gelu),
                    "tanh" => self.gelu_tanh(),
                    other => Err(self.err(format!("approximate = `{other}` is not supported"))),
                }
            }
            "LeakyRelu" => {
                self.known_attrs(&["alpha"])?;
                let slope = ScalarIr::Float(self.attr_f("alpha", 0.01) as f64);
                self.act(Op::LeakyRelu { slope })
            }
            "HardSigmoid" => {
                self.known_attrs(&["alpha", "beta"])?;
                let alpha = ScalarIr::Float(self.attr_f("alpha", 0.2) as f64);
                let beta = ScalarIr::Float(self.attr_f("beta", 0.5) as f64);
                self.act(Op::HardSigmoid { alpha, beta })
            }
            "HardSwish" => {
                self.known_attrs(&[])?;
                let x = self.run_in(0)?;
                let (s, dt) = (self.g.value(x).shape.clone(), self.g.value(x).dtype);
                let op = Op::HardSigmoid {
                    alpha: ScalarIr::Float(1.0 / 6.0),
                    beta: ScalarIr::Float(0.5),
                };
                let h = self.emit("hardsigmoid", op, vec![x], s.clone(), dt);
                let o = self.emit("", Op::Binary(BinaryOp::Mul), vec![x, h], s, dt);
                self.out_run(o)
            }
            "Clip" => self.clip(),
            "Softmax" | "LogSoftmax" => self.softmax(node.op_type == "LogSoftmax"),
            "Conv" => self.conv(),
            "ConvTranspose" => self.conv_transpose(),
            "BatchNormalization" => self.batch_norm(),
            "LayerNormalization" => self.layer_norm(),
            "MatMul" => self.matmul(),
            "Gemm" => self.gemm(),
            "MaxPool" | "AveragePool" => self.pool(node.op_type == "MaxPool"),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                self.global_pool(node.op_type == "GlobalMaxPool")
            }
            "ReduceMean" => self.reduce(ReduceOp::Mean),
            "ReduceSum" => self.reduce(ReduceOp::Sum),
            "ReduceMax" => self.reduce(ReduceOp::Max),
            "ReduceMin" => self.reduce(ReduceOp::Min),
            "Resize" | "Upsample" => self.resize(),
            "QuantizeLinear" => self.quantize_linear(),
            "DequantizeLinear" => self.dequantize_linear(),
            other => Err(self.err(format!("operator `{other}` is not supported"))),
        }
    }

    fn constant(&mut self) -> R<()> {
        self.known_attrs(&[
            "value",
            "value_float",
            "value_floats",
            "value_int",
            "value_ints",
        ])?;
        let a = self
            .node()
            .attribute
            .first()
            .ok_or_else(|| self.err("it has no value attribute"))?;
        let d = match a.name.as_str() {
            "value" => {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| self.err("`value` holds no tensor"))?;
                decode_tensor(t, None).map_err(|e| self.err(e))?
            }
            "value_float" => TensorData::new(vec![a.f.unwrap_or(0.0)], Vec::<usize>::new()),
            "value_floats" => TensorData::new(a.floats.clone(), [a.floats.len()]),
            "value_int" => TensorData::new(vec![a.i.unwrap_or(0)], Vec::<usize>::new()),
            _ => TensorData::new(a.ints.clone(), [a.ints.len()]),
        };
        self.out_host(d)
    }

    fn cast(&mut self) -> R<()> {
        self.known_attrs(&["to", "saturate"])?;
        let to = self.attr_i("to", 0) as i32;
        let dt = burn_quant_export::onnx::proto::DataType::try_from(to)
            .ok()
            .and_then(super::tensor::dtype_of)
            .ok_or_else(|| self.err(format!("cast to element type {to} is not supported")))?;
        match self.req(0)? {
            Sym::Host(d) => {
                let shape = d.shape().as_slice().to_vec();
                let out = if d.dtype().is_float() && !dt.is_float() {
                    from_f64(floats(&d), shape, dt)
                } else if !d.dtype().is_float() && !dt.is_float() {
                    from_i64(ints(&d).map_err(|e| self.err(e))?, shape, dt)
                } else {
                    from_f64(floats(&d), shape, dt)
                };
                self.out_host(out)
            }
            x @ Sym::Run(v) => {
                let from = self.dtype(&x);
                // Graphs compute floats in f32.
                let dt = if dt.is_float() { DType::F32 } else { dt };
                if from == dt {
                    return self.out_run(v);
                }
                let s = self.shape(&x);
                let o = self.emit("", Op::Cast, vec![v], s, dt);
                self.out_run(o)
            }
        }
    }

    /// The one value of constant input `k` (a scalar operand: Range bounds, Clip limits).
    fn scalar(&self, d: &TensorData, k: usize) -> R<f64> {
        match floats(d)[..] {
            [v] => Ok(v),
            _ => Err(self.err(format!(
                "input {k} holds {} values, expected one",
                d.num_elements()
            ))),
        }
    }

    fn host_usizes(&mut self, k: usize) -> R<Vec<usize>> {
        let d = self.host_in(k)?;
        let v = ints(&d).map_err(|e| self.err(e))?;
        v.iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| self.err(format!("input {k} holds {x}, expected a size")))
            })
            .collect()
    }

    /// ONNX Reshape semantics: `0` copies the input dim (unless `allowzero`), one `-1` is
    /// inferred.
    fn reshape_target(&self, input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
        let total: usize = input.iter().product();
        let mut out = Vec::with_capacity(spec.len());
        let mut infer = None;
        for (i, &d) in spec.iter().enumerate() {
            match d {
                -1 if infer.is_none() => {
                    infer = Some(i);
                    out.push(1);
                }
                0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                    self.err(format!(
                        "shape {spec:?}: axis {i} copies a dim the input lacks"
                    ))
                })?),
                d if d >= 0 => out.push(d as usize),
                _ => return Err(self.err(format!("shape {spec:?} is invalid"))),
            }
        }
        let known =
            checked_count(&out).ok_or_else(|| self.err(format!("shape {spec:?} overflows")))?;
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(self.err(format!("cannot reshape {input:?} to {spec:?}")));
            }
            out[i] = total / known;
        } else if known != total {
            return Err(self.err(format!(
                "cannot reshape {input:?} ({total} elements) to {spec:?}"
            )));
        }
        Ok(out)
    }

    fn reshape_out(&mut self, x: Sym, shape: Vec<usize>) -> R<()> {
        match x {
            Sym::Host(d) => self.out_host(reshape_host(&d, shape)),
            Sym::Run(v) => {
                let o = self.reshape(v, shape, "");
                self.out_run(o)
            }
        }
    }

    /// A graph reshape of `v` (none when the shape already is `shape`).
    fn reshape(&mut self, v: ValueId, shape: Vec<usize>, suffix: &str) -> ValueId {
        if self.g.value(v).shape == shape {
            return v;
        }
        let dt = self.g.value(v).dtype;
        self.emit(suffix, Op::Reshape, vec![v], shape, dt)
    }

    /// `v` with leading unit axes up to `rank` (ONNX broadcasting aligns trailing axes).
    fn with_rank(&mut self, v: ValueId, rank: usize) -> ValueId {
        let s = self.g.value(v).shape.clone();
        if s.len() >= rank {
            return v;
        }
        let mut shape = vec![1; rank - s.len()];
        shape.extend(s);
        let suffix = format!("rank{}", v.0);
        self.reshape(v, shape, &suffix)
    }

    fn squeeze(&mut self, unsqueeze: bool) -> R<()> {
        self.known_attrs(&["axes"])?;
        let x = self.req(0)?;
        let s = self.shape(&x);
        let axes = if self.m.opset >= 13 {
            match self.host_opt(1)? {
                Some(t) => Some(ints(&t).map_err(|e| self.err(e))?),
                None => None,
            }
        } else {
            self.attr_ints("axes")
        };
        let shape = if unsqueeze {
            let axes = axes.ok_or_else(|| self.err("`axes` is required"))?;
            let rank = s.len() + axes.len();
            let mut axes: Vec<usize> =
                axes.iter().map(|&a| self.axis(a, rank)).collect::<R<_>>()?;
            axes.sort();
            let mut out = Vec::with_capacity(rank);
            let mut it = s.iter();
            for i in 0..rank {
                if axes.binary_search(&i).is_ok() {
                    out.push(1);
                } else {
                    out.push(*it.next().ok_or_else(|| self.err("repeated axes"))?);
                }
            }
            out
        } else {
            let axes: Vec<usize> = match axes {
                Some(a) => a.iter().map(|&a| self.axis(a, s.len())).collect::<R<_>>()?,
                None => (0..s.len()).filter(|&a| s[a] == 1).collect(),
            };
            for &a in &axes {
                if s[a] != 1 {
                    return Err(self.err(format!("axis {a} of {s:?} is not 1")));
                }
            }
            s.iter()
                .enumerate()
                .filter(|(a, _)| !axes.contains(a))
                .map(|(_, &d)| d)
                .collect()
        };
        self.reshape_out(x, shape)
    }

    fn concat(&mut self) -> R<()> {
        self.known_attrs(&["axis"])?;
        let k = self.node().input.len();
        let mut syms = Vec::with_capacity(k);
        for i in 0..k {
            syms.push(self.req(i)?);
        }
        let first = self.shape(&syms[0]);
        let axis = self.axis(self.attr_i("axis", 0), first.len())?;
        let mut shape = first.clone();
        shape[axis] = 0;
        for s in &syms {
            let t = self.shape(s);
            if t.len() != first.len()
                || t.iter()
                    .enumerate()
                    .any(|(a, &d)| a != axis && d != first[a])
            {
                return Err(self.err(format!(
                    "inputs {first:?} and {t:?} do not concatenate on axis {axis}"
                )));
            }
            shape[axis] += t[axis];
        }
        if syms.iter().all(|s| matches!(s, Sym::Host(_))) {
            let parts: Vec<Rc<TensorData>> = syms
                .iter()
                .map(|s| match s {
                    Sym::Host(d) => d.clone(),
                    Sym::Run(_) => unreachable!(),
                })
                .collect();
            return self.out_host(concat_host(&parts, axis, shape));
        }
        let mut vs = Vec::with_capacity(k);
        for i in 0..k {
            let v = self.run_in(i)?;
            // Empty parts (a shape vector's unused half, say) are dropped.
            if self.g.value(v).shape[axis] > 0 {
                vs.push(v);
            }
        }
        let dt = self.dtype(&syms[0]);
        let o = if vs.len() == 1 {
            vs[0]
        } else {
            self.emit("", Op::Concat { dim: axis }, vs, shape, dt)
        };
        self.out_run(o)
    }

    fn slice(&mut self) -> R<()> {
        let x = self.req(0)?;
        let s = self.shape(&x);
        let (starts, ends, axes, steps) = if self.m.opset < 10 {
            self.known_attrs(&["starts", "ends", "axes"])?;
            (
                self.attr_ints("starts").unwrap_or_default(),
                self.attr_ints("ends").unwrap_or_default(),
                self.attr_ints("axes"),
                None,
            )
        } else {
            self.known_attrs(&[])?;
            let f = |imp: &mut Self, k| -> R<Option<Vec<i64>>> {
                match imp.host_opt(k)? {
                    Some(t) => ints(&t).map(Some).map_err(|e| imp.err(e)),
                    None => Ok(None),
                }
            };
            let starts = f(self, 1)?.ok_or_else(|| self.err("`starts` is required"))?;
            let ends = f(self, 2)?.ok_or_else(|| self.err("`ends` is required"))?;
            (starts, ends, f(self, 3)?, f(self, 4)?)
        };
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&a| self.axis(a, s.len())).collect::<R<_>>()?,
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(self.err("starts, ends, axes and steps differ in length"));
        }
        // Per axis: (start, end, step) with ONNX clamping; end may be -1 for negative steps.
        let mut ranges: Vec<(i64, i64, i64)> = s.iter().map(|&d| (0, d as i64, 1)).collect();
        for (((&st, &en), &a), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            if step == 0 {
                return Err(self.err("a step is 0"));
            }
            let d = s[a] as i64;
            let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
            let (st, en) = (fix(st), fix(en));
            let (st, en) = if step > 0 {
                (st.clamp(0, d), en.clamp(0, d))
            } else {
                (st.clamp(0, d - 1), en.clamp(-1, d - 1))
            };
            ranges[a] = (st, en, step);
        }
        let len = |(st, en, step): (i64, i64, i64)| -> usize {
            if step > 0 {
                ((en - st).max(0) as usize).div_ceil(step as usize)
            } else {
                ((st - en).max(0) as usize).div_ceil((-step) as usize)
            }
        };
        let shape: Vec<usize> = ranges.iter().map(|&r| len(r)).collect();
        match x {
            Sym::Host(d) => {
                let idx = slice_index(&s, &ranges, &shape);
                self.out_host(gather_flat(&d, &idx, shape))
            }
            Sym::Run(v) => {
                if ranges.iter().any(|r| r.2 < 0) {
                    return Err(self.err("negative steps on a run-time value are not supported"));
                }
                if shape == s {
                    return self.out_run(v);
                }
                let ranges = ranges
                    .iter()
                    .map(|&(st, en, step)| {
                        Slice::new(st as isize, Some(en.max(st) as isize), step as isize)
                    })
                    .collect();
                let dt = self.dtype(&x);
                let o = self.emit("", Op::Slice { ranges }, vec![v], shape, dt);
                self.out_run(o)
            }
        }
    }

    fn gather(&mut self) -> R<()> {
        self.known_attrs(&["axis"])?;
        let (x, idx) = (self.req(0)?, self.req(1)?);
        let s = self.shape(&x);
        let axis = self.axis(self.attr_i("axis", 0), s.len())?;
        let ishape = self.shape(&idx);
        let mut shape = s[..axis].to_vec();
        shape.extend(&ishape);
        shape.extend(&s[axis + 1..]);
        match (&x, &idx) {
            (_, Sym::Host(i)) => {
                let d = s[axis] as i64;
                let iv: Vec<i64> = ints(i)
                    .map_err(|e| self.err(e))?
                    .into_iter()
                    .map(|v| if v < 0 { v + d } else { v })
                    .collect();
                if let Some(bad) = iv.iter().find(|&&v| v < 0 || v >= d) {
                    return Err(self.err(format!("index {bad} is out of range for axis {axis} of {s:?}")));
                }
                match &x {
                    Sym::Host(data) => {
                        let outer: usize = s[..axis].iter().product();
                        let inner: usize = s[axis + 1..].iter().product();
                        let mut flat = Vec::with_capacity(outer * iv.len() * inner);
                        for o in 0..outer {
                            for &i in &iv {
                                let base = (o * s[axis] + i as usize) * inner;
                                flat.extend(base..base + inner);
                            }
                        }
                        self.out_host(gather_flat(data, &flat, shape))
                    }
                    Sym::Run(v) => {
                        let n = iv.len();
                        let c = self.g.constants.len();
                        let data = TensorData::new(iv, [n]);
                        let iv_id = self.value(vec![n], DType::I64, ValueOrigin::Constant(c), None);
                        self.g.constants.push(GraphConstant { value: iv_id, data });
                        let mut sel = s.clone();
                        sel[axis] = n;
                        let dt = self.dtype(&x);
                        let o = self.emit("select", Op::Select { dim: axis }, vec![*v, iv_id], sel, dt);
                        let o = self.reshape(o, shape, "");
                        self.out_run(o)
                    }
                }
            }
            (Sym::Host(_), Sym::Run(i)) if axis == 0 && s.len() == 2 && self.dtype(&x).is_float() => {
                // A lookup table read by run-time indices: an embedding.
                let w = self.weight_in(0, false, WeightLayout::Embedding)?;
                let o = self.emit("", Op::Embedding, vec![w, *i], shape, DType::F32);
                self.out_run(o)
            }
            _ => Err(self.err("gathering with run-time indices is supported only from a 2-D float table on axis 0")),
        }
    }

    fn binary(&mut self, op: BinaryOp) -> R<()> {
        self.known_attrs(&[])?;
        if self.m.opset < 7 {
            return Err(self.err("legacy broadcast attributes (opset < 7) are not supported"));
        }
        let (a, b) = (self.req(0)?, self.req(1)?);
        let (sa, sb) = (self.shape(&a), self.shape(&b));
        let shape = broadcast(&sa, &sb).map_err(|e| self.err(e))?;
        if let (Sym::Host(x), Sym::Host(y)) = (&a, &b) {
            let out = binary_host(op, x, y, &shape).map_err(|e| self.err(e))?;
            return self.out_host(out);
        }
        let dt = match (&a, &b) {
            (Sym::Run(v), _) | (_, Sym::Run(v)) => self.g.value(*v).dtype,
            _ => unreachable!(),
        };
        let scalar_of = |d: &TensorData| -> Option<ScalarIr> {
            (d.num_elements() == 1).then(|| {
                if dt.is_float() {
                    ScalarIr::Float(floats(d)[0])
                } else {
                    ScalarIr::Int(ints(d).ok().and_then(|v| v.first().copied()).unwrap_or(0))
                }
            })
        };
        let sop = match op {
            BinaryOp::Add => ScalarOp::Add,
            BinaryOp::Sub => ScalarOp::Sub,
            BinaryOp::Mul => ScalarOp::Mul,
            BinaryOp::Div => ScalarOp::Div,
            BinaryOp::Pow => ScalarOp::Pow,
        };
        // A one-element constant on the right (or on the left of a commutative op) is a
        // scalar op, as Burn records `x + 1.0`.
        let scalar = match (&a, &b) {
            (Sym::Run(v), Sym::Host(d)) if shape == sa => scalar_of(d).map(|s| (*v, s)),
            (Sym::Host(d), Sym::Run(v))
                if shape == sb && matches!(op, BinaryOp::Add | BinaryOp::Mul) =>
            {
                scalar_of(d).map(|s| (*v, s))
            }
            _ => None,
        };
        if let Some((v, s)) = scalar {
            let o = self.emit("", Op::Scalar(sop, s), vec![v], shape, dt);
            return self.out_run(o);
        }
        let mut vs = Vec::with_capacity(2);
        for (k, sym) in [(0, &a), (1, &b)] {
            let v = match sym {
                Sym::Host(d) => {
                    // A constant operand gets its broadcast rank on the host.
                    let mut s = vec![1; shape.len() - d.shape().num_dims()];
                    s.extend(d.shape().as_slice());
                    let d = if dt.is_float() {
                        (**d).clone().convert::<f32>()
                    } else {
                        (**d).clone().convert_dtype(dt)
                    };
                    let name = format!("{}#r{}", self.input_name(k), shape.len());
                    self.runtime(&Sym::Host(Rc::new(reshape_host(&d, s))), &name)?
                }
                Sym::Run(v) => self.with_rank(*v, shape.len()),
            };
            vs.push(v);
        }
        let o = self.emit("", Op::Binary(op), vs, shape, dt);
        self.out_run(o)
    }

    fn compare(&mut self) -> R<()> {
        self.known_attrs(&[])?;
        let op = self.node().op_type.clone();
        let (a, b) = (self.req(0)?, self.req(1)?);
        let shape = broadcast(&self.shape(&a), &self.shape(&b)).map_err(|e| self.err(e))?;
        if let (Sym::Host(x), Sym::Host(y)) = (&a, &b) {
            let (xv, yv) = (floats(x), floats(y));
            let (ix, iy) = (
                broadcast_index(x.shape().as_slice(), &shape),
                broadcast_index(y.shape().as_slice(), &shape),
            );
            let v: Vec<bool> = ix
                .iter()
                .zip(&iy)
                .map(|(&i, &j)| {
                    let (p, q) = (xv[i], yv[j]);
                    match op.as_str() {
                        "Equal" => p == q,
                        "Less" => p < q,
                        "Greater" => p > q,
                        "LessOrEqual" => p <= q,
                        _ => p >= q,
                    }
                })
                .collect();
            return self.out_host(TensorData::new(v, shape));
        }
        let (Sym::Run(v), Sym::Host(d)) = (&a, &b) else {
            return Err(self.err(
                "comparisons of run-time values are supported only against a constant scalar",
            ));
        };
        if d.num_elements() != 1 || self.shape(&a) != shape {
            return Err(self.err(
                "comparisons of run-time values are supported only against a constant scalar",
            ));
        }
        let dt = self.g.value(*v).dtype;
        let s = if dt.is_float() {
            ScalarIr::Float(floats(d)[0])
        } else {
            ScalarIr::Int(ints(d).map_err(|e| self.err(e))?[0])
        };
        let bool_dt = DType::Bool(burn::tensor::BoolStore::Native);
        let (cmp, negate) = match op.as_str() {
            "Equal" => (CompareOp::Equal, false),
            "Less" => (CompareOp::Lower, false),
            "Greater" => (CompareOp::Greater, false),
            "LessOrEqual" => (CompareOp::Greater, true),
            _ => (CompareOp::Lower, true),
        };
        let o = if negate {
            let c = self.emit(
                "compare",
                Op::Compare(cmp, s),
                vec![*v],
                shape.clone(),
                bool_dt,
            );
            self.emit("", Op::Not, vec![c], shape, bool_dt)
        } else {
            self.emit("", Op::Compare(cmp, s), vec![*v], shape, bool_dt)
        };
        self.out_run(o)
    }

    fn logical(&mut self, and: bool) -> R<()> {
        self.known_attrs(&[])?;
        let (a, b) = (self.req(0)?, self.req(1)?);
        let shape = broadcast(&self.shape(&a), &self.shape(&b)).map_err(|e| self.err(e))?;
        if let (Sym::Host(x), Sym::Host(y)) = (&a, &b) {
            let (xv, yv) = (floats(x), floats(y));
            let (ix, iy) = (
                broadcast_index(x.shape().as_slice(), &shape),
                broadcast_index(y.shape().as_slice(), &shape),
            );
            let v: Vec<bool> = ix
                .iter()
                .zip(&iy)
                .map(|(&i, &j)| {
                    if and {
                        xv[i] != 0.0 && yv[j] != 0.0
                    } else {
                        xv[i] != 0.0 || yv[j] != 0.0
                    }
                })
                .collect();
            return self.out_host(TensorData::new(v, shape));
        }
        let (va, vb) = (self.run_in(0)?, self.run_in(1)?);
        let (va, vb) = (
            self.with_rank(va, shape.len()),
            self.with_rank(vb, shape.len()),
        );
        let dt = self.g.value(va).dtype;
        let o = self.emit("", Op::Logical { and }, vec![va, vb], shape, dt);
        self.out_run(o)
    }

    fn where_(&mut self) -> R<()> {
        self.known_attrs(&[])?;
        let (c, x, y) = (self.req(0)?, self.req(1)?, self.req(2)?);
        let shape = broadcast(
            &self.shape(&c),
            &broadcast(&self.shape(&x), &self.shape(&y)).map_err(|e| self.err(e))?,
        )
        .map_err(|e| self.err(e))?;
        if let (Sym::Host(cd), Sym::Host(xd), Sym::Host(yd)) = (&c, &x, &y) {
            let cv = floats(cd);
            let (ic, ix, iy) = (
                broadcast_index(cd.shape().as_slice(), &shape),
                broadcast_index(xd.shape().as_slice(), &shape),
                broadcast_index(yd.shape().as_slice(), &shape),
            );
            let (xv, yv) = (floats(xd), floats(yd));
            let v: Vec<f64> = (0..ic.len())
                .map(|k| {
                    if cv[ic[k]] != 0.0 {
                        xv[ix[k]]
                    } else {
                        yv[iy[k]]
                    }
                })
                .collect();
            return self.out_host(from_f64(v, shape, xd.dtype()));
        }
        // `c ? x : s` and `c ? s : y` with a constant scalar: a masked fill.
        let (target, value, invert) = match (&x, &y) {
            (_, Sym::Host(s)) if s.num_elements() == 1 => (1, s.clone(), true),
            (Sym::Host(s), _) if s.num_elements() == 1 => (2, s.clone(), false),
            _ => return Err(self.err("`Where` needs one branch to be a constant scalar")),
        };
        let t = self.run_in(target)?;
        let t = self.with_rank(t, shape.len());
        let dt = self.g.value(t).dtype;
        let t = if self.g.value(t).shape != shape {
            self.emit("expand", Op::Expand, vec![t], shape.clone(), dt)
        } else {
            t
        };
        let m = self.run_in(0)?;
        let m = self.with_rank(m, shape.len());
        let bool_dt = self.g.value(m).dtype;
        let m = if invert {
            self.emit(
                "not",
                Op::Not,
                vec![m],
                self.g.value(m).shape.clone(),
                bool_dt,
            )
        } else {
            m
        };
        let value = if dt.is_float() {
            ScalarIr::Float(floats(&value)[0])
        } else {
            ScalarIr::Int(ints(&value).map_err(|e| self.err(e))?[0])
        };
        let o = self.emit("", Op::MaskFill { value }, vec![t, m], shape, dt);
        self.out_run(o)
    }

    fn unary(&mut self, op: UnaryOp) -> R<()> {
        self.known_attrs(if op == UnaryOp::Gelu {
            &["approximate"]
        } else {
            &[]
        })?;
        match self.req(0)? {
            Sym::Host(d) if d.dtype().is_float() && op != UnaryOp::Gelu => {
                let f: fn(f64) -> f64 = match op {
                    UnaryOp::Relu => |x| x.max(0.0),
                    UnaryOp::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
                    UnaryOp::Tanh => f64::tanh,
                    UnaryOp::Exp => f64::exp,
                    UnaryOp::Log => f64::ln,
                    UnaryOp::Sqrt => f64::sqrt,
                    UnaryOp::Neg => |x| -x,
                    UnaryOp::Abs => f64::abs,
                    UnaryOp::Recip => |x| 1.0 / x,
                    UnaryOp::Round => f64::round_ties_even,
                    UnaryOp::Floor => f64::floor,
                    UnaryOp::Ceil => f64::ceil,
                    UnaryOp::Sin => f64::sin,
                    UnaryOp::Cos => f64::cos,
                    _ => return self.unary_run(op),
                };
                // f32 constants are computed in f32 precision, as the runtime would.
                let v: Vec<f64> = floats(&d)
                    .into_iter()
                    .map(|x| {
                        if d.dtype() == DType::F64 {
                            f(x)
                        } else {
                            f(x) as f32 as f64
                        }
                    })
                    .collect();
                self.out_host(from_f64(v, d.shape().as_slice().to_vec(), d.dtype()))
            }
            _ => self.unary_run(op),
        }
    }

    fn unary_run(&mut self, op: UnaryOp) -> R<()> {
        self.act(Op::Unary(op))
    }

    /// A shape-preserving op on input 0.
    fn act(&mut self, op: Op) -> R<()> {
        let x = self.run_in(0)?;
        let (s, dt) = (self.g.value(x).shape.clone(), self.g.value(x).dtype);
        let o = self.emit("", op, vec![x], s, dt);
        self.out_run(o)
    }

    /// GELU, tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    fn gelu_tanh(&mut self) -> R<()> {
        let x = self.run_in(0)?;
        let (s, dt) = (self.g.value(x).shape.clone(), self.g.value(x).dtype);
        let f = ScalarIr::Float;
        let x3 = self.emit(
            "cube",
            Op::Scalar(ScalarOp::Pow, f(3.0)),
            vec![x],
            s.clone(),
            dt,
        );
        let x3 = self.emit(
            "cube_scaled",
            Op::Scalar(ScalarOp::Mul, f(0.044715)),
            vec![x3],
            s.clone(),
            dt,
        );
        let inner = self.emit(
            "inner",
            Op::Binary(BinaryOp::Add),
            vec![x, x3],
            s.clone(),
            dt,
        );
        let inner = self.emit(
            "inner_scaled",
            Op::Scalar(ScalarOp::Mul, f((2.0 / std::f64::consts::PI).sqrt())),
            vec![inner],
            s.clone(),
            dt,
        );
        let t = self.emit("tanh", Op::Unary(UnaryOp::Tanh), vec![inner], s.clone(), dt);
        let t = self.emit(
            "one_plus",
            Op::Scalar(ScalarOp::Add, f(1.0)),
            vec![t],
            s.clone(),
            dt,
        );
        let h = self.emit(
            "half",
            Op::Scalar(ScalarOp::Mul, f(0.5)),
            vec![x],
            s.clone(),
            dt,
        );
        let o = self.emit("", Op::Binary(BinaryOp::Mul), vec![h, t], s, dt);
        self.out_run(o)
    }

    fn clip(&mut self) -> R<()> {
        let (lo, hi) = if self.m.opset < 11 {
            self.known_attrs(&["min", "max"])?;
            (
                self.attr("min").and_then(|a| a.f).map(f64::from),
                self.attr("max").and_then(|a| a.f).map(f64::from),
            )
        } else {
            self.known_attrs(&[])?;
            let lo = self.host_opt(1)?.map(|d| self.scalar(&d, 1)).transpose()?;
            let hi = self.host_opt(2)?.map(|d| self.scalar(&d, 2)).transpose()?;
            (lo, hi)
        };
        let x = self.req(0)?;
        if let Sym::Host(d) = &x {
            let v = floats(d)
                .into_iter()
                .map(|v| {
                    v.max(lo.unwrap_or(f64::NEG_INFINITY))
                        .min(hi.unwrap_or(f64::INFINITY))
                })
                .collect();
            return self.out_host(from_f64(v, d.shape().as_slice().to_vec(), d.dtype()));
        }
        let dt = self.dtype(&x);
        let sc = |v: f64| {
            if dt.is_float() {
                ScalarIr::Float(v)
            } else {
                ScalarIr::Int(v as i64)
            }
        };
        match (lo, hi) {
            (Some(l), Some(h)) => self.act(Op::Clamp {
                min: sc(l),
                max: sc(h),
            }),
            (Some(l), None) => self.act(Op::Scalar(ScalarOp::ClampMin, sc(l))),
            (None, Some(h)) => self.act(Op::Scalar(ScalarOp::ClampMax, sc(h))),
            (None, None) => {
                let s = x;
                self.out(0, s);
                Ok(())
            }
        }
    }

    fn softmax(&mut self, log: bool) -> R<()> {
        self.known_attrs(&["axis"])?;
        let x = self.run_in(0)?;
        let s = self.g.value(x).shape.clone();
        let opset = self.m.opset;
        let axis = self.axis(
            self.attr_i("axis", if opset < 13 { 1 } else { -1 }),
            s.len(),
        )?;
        let dt = self.g.value(x).dtype;
        let op = |dim| {
            if log {
                Op::LogSoftmax { dim }
            } else {
                Op::Softmax { dim }
            }
        };
        // Before opset 13 the input is flattened to 2-D at `axis` and normalised over the
        // whole second part; on the last axis that is the one-axis form.
        let o = if opset < 13 && axis + 1 != s.len() {
            let flat = vec![s[..axis].iter().product(), s[axis..].iter().product()];
            let f = self.reshape(x, flat.clone(), "flatten");
            let y = self.emit("softmax", op(1), vec![f], flat, dt);
            self.reshape(y, s, "")
        } else {
            self.emit("", op(axis), vec![x], s, dt)
        };
        self.out_run(o)
    }

    /// Pads of a convolution or pooling along `spatial` axes from `pads`/`auto_pad`:
    /// `(begin, end)` per axis.
    fn pads(
        &self,
        input: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilations: &[usize],
    ) -> R<Vec<(usize, usize)>> {
        let nd = kernel.len();
        let auto = self.attr_s("auto_pad", "NOTSET");
        match auto.as_str() {
            "NOTSET" => {
                let p = self.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * nd]);
                if p.len() != 2 * nd || p.iter().any(|&v| v < 0) {
                    return Err(self.err(format!("pads {p:?} do not fit {nd} spatial axes")));
                }
                Ok((0..nd)
                    .map(|i| (p[i] as usize, p[i + nd] as usize))
                    .collect())
            }
            "VALID" => Ok(vec![(0, 0); nd]),
            "SAME_UPPER" | "SAME_LOWER" => Ok((0..nd)
                .map(|i| {
                    let out = input[i].div_ceil(strides[i]);
                    let need = ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1)
                        .saturating_sub(input[i]);
                    if auto == "SAME_UPPER" {
                        (need / 2, need - need / 2)
                    } else {
                        (need - need / 2, need / 2)
                    }
                })
                .collect()),
            other => Err(self.err(format!("auto_pad `{other}` is not supported"))),
        }
    }

    fn spatial_attr(&self, name: &str, nd: usize, default: usize) -> R<Vec<usize>> {
        match self.attr_ints(name) {
            None => Ok(vec![default; nd]),
            Some(v) if v.len() == nd && v.iter().all(|&x| x >= 1) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => Err(self.err(format!("`{name}` {v:?} does not fit {nd} spatial axes"))),
        }
    }

    fn conv(&mut self) -> R<()> {
        self.known_attrs(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let x = self.run_in(0)?;
        let w = self.weight_in(1, false, WeightLayout::Conv)?;
        let xs = self.g.value(x).shape.clone();
        let ws = self.g.value(w).shape.clone();
        let nd = ws.len().saturating_sub(2);
        if !(1..=2).contains(&nd) || xs.len() != nd + 2 {
            return Err(self.err(format!(
                "only 1-D and 2-D convolutions are supported (input {xs:?}, weight {ws:?})"
            )));
        }
        if let Some(k) = self.attr_ints("kernel_shape")
            && k.iter().map(|&v| v as usize).ne(ws[2..].iter().copied())
        {
            return Err(self.err(format!(
                "kernel_shape {k:?} disagrees with the weight {ws:?}"
            )));
        }
        let groups = self.attr_i("group", 1);
        if groups < 1 || !ws[0].is_multiple_of(groups as usize) || xs[1] != ws[1] * groups as usize
        {
            return Err(self.err(format!(
                "input {xs:?}, weight {ws:?} and group {groups} do not fit"
            )));
        }
        let groups = groups as usize;
        let strides = self.spatial_attr("strides", nd, 1)?;
        let dilations = self.spatial_attr("dilations", nd, 1)?;
        let pads = self.pads(&xs[2..], &ws[2..], &strides, &dilations)?;
        let mut shape = vec![xs[0], ws[0]];
        for i in 0..nd {
            let span = (ws[2 + i] - 1) * dilations[i] + 1;
            let padded = xs[2 + i] + pads[i].0 + pads[i].1;
            if padded < span {
                return Err(self.err(format!(
                    "the kernel {:?} is larger than the padded input {xs:?}",
                    &ws[2..]
                )));
            }
            shape.push((padded - span) / strides[i] + 1);
        }
        let bias = self.input(2)?.is_some();
        let mut inputs = vec![x, w];
        if bias {
            let b = self.param_in(2, false)?;
            if self.g.value(b).shape != [ws[0]] {
                return Err(self.err(format!(
                    "bias shape {:?} is not [{}]",
                    self.g.value(b).shape,
                    ws[0]
                )));
            }
            inputs.push(b);
        }
        let op = if nd == 1 {
            Op::Conv1d {
                options: Conv1dOptionsIr {
                    stride: [strides[0]],
                    padding: [pads[0]],
                    dilation: [dilations[0]],
                    groups,
                },
                bias,
            }
        } else {
            Op::Conv2d {
                options: Conv2dOptionsIr {
                    stride: [strides[0], strides[1]],
                    padding: [pads[0], pads[1]],
                    dilation: [dilations[0], dilations[1]],
                    groups,
                },
                bias,
            }
        };
        let o = self.emit("", op, inputs, shape, DType::F32);
        self.out_run(o)
    }

    fn conv_transpose(&mut self) -> R<()> {
        self.known_attrs(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "output_padding",
            "output_shape",
            "pads",
            "strides",
        ])?;
        let x = self.run_in(0)?;
        let w = self.weight_in(1, false, WeightLayout::ConvTranspose)?;
        let xs = self.g.value(x).shape.clone();
        let ws = self.g.value(w).shape.clone();
        let nd = ws.len().saturating_sub(2);
        if !(1..=2).contains(&nd) || xs.len() != nd + 2 {
            return Err(self.err(format!("only 1-D and 2-D transposed convolutions are supported (input {xs:?}, weight {ws:?})")));
        }
        let groups = self.attr_i("group", 1).max(1) as usize;
        if xs[1] != ws[0] || !ws[0].is_multiple_of(groups) {
            return Err(self.err(format!(
                "input {xs:?}, weight {ws:?} and group {groups} do not fit"
            )));
        }
        let strides = self.spatial_attr("strides", nd, 1)?;
        let dilations = self.spatial_attr("dilations", nd, 1)?;
        let out_pad: Vec<usize> = match self.attr_ints("output_padding") {
            Some(v) if v.len() == nd && v.iter().all(|&p| p >= 0) => {
                v.iter().map(|&p| p as usize).collect()
            }
            Some(v) => return Err(self.err(format!("output_padding {v:?} is invalid"))),
            None => vec![0; nd],
        };
        let full = |i: usize| {
            strides[i] * (xs[2 + i] - 1) + out_pad[i] + (ws[2 + i] - 1) * dilations[i] + 1
        };
        let pads: Vec<(usize, usize)> = if let Some(os) = self.attr_ints("output_shape") {
            let os = &os[os.len().saturating_sub(nd)..];
            (0..nd)
                .map(|i| {
                    let total = full(i)
                        .checked_sub(os[i].max(0) as usize)
                        .ok_or_else(|| self.err("output_shape is too large"))?;
                    Ok(if self.attr_s("auto_pad", "NOTSET") == "SAME_LOWER" {
                        (total - total / 2, total / 2)
                    } else {
                        (total / 2, total - total / 2)
                    })
                })
                .collect::<R<_>>()?
        } else {
            match self.attr_s("auto_pad", "NOTSET").as_str() {
                "NOTSET" | "VALID" => {
                    let p = self.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * nd]);
                    if p.len() != 2 * nd || p.iter().any(|&v| v < 0) {
                        return Err(self.err(format!("pads {p:?} do not fit {nd} spatial axes")));
                    }
                    (0..nd)
                        .map(|i| (p[i] as usize, p[i + nd] as usize))
                        .collect()
                }
                other => {
                    return Err(self.err(format!(
                        "auto_pad `{other}` without output_shape is not supported"
                    )));
                }
            }
        };
        if pads.iter().any(|&(b, e)| b != e) {
            return Err(self.err(format!(
                "asymmetric pads {pads:?} are not supported (Burn pads both sides alike)"
            )));
        }
        let mut shape = vec![xs[0], ws[1] * groups];
        for (i, pad) in pads.iter().enumerate() {
            shape.push(
                full(i)
                    .checked_sub(2 * pad.0)
                    .ok_or_else(|| self.err("pads exceed the output"))?,
            );
        }
        let bias = self.input(2)?.is_some();
        let mut inputs = vec![x, w];
        if bias {
            inputs.push(self.param_in(2, false)?);
        }
        let op = if nd == 1 {
            Op::ConvTranspose1d {
                options: ConvTranspose1dOptionsIr {
                    stride: [strides[0]],
                    padding: [pads[0].0],
                    padding_out: [out_pad[0]],
                    dilation: [dilations[0]],
                    groups,
                },
                bias,
            }
        } else {
            Op::ConvTranspose2d {
                options: ConvTranspose2dOptionsIr {
                    stride: [strides[0], strides[1]],
                    padding: [pads[0].0, pads[1].0],
                    padding_out: [out_pad[0], out_pad[1]],
                    dilation: [dilations[0], dilations[1]],
                    groups,
                },
                bias,
            }
        };
        let o = self.emit("", op, inputs, shape, DType::F32);
        self.out_run(o)
    }

    fn batch_norm(&mut self) -> R<()> {
        self.known_attrs(&[
            "epsilon",
            "momentum",
            "spatial",
            "training_mode",
            "is_test",
            "consumed_inputs",
        ])?;
        if self.attr_i("training_mode", 0) != 0 {
            return Err(self.err("training mode is not supported"));
        }
        if self.attr_i("spatial", 1) != 1 {
            return Err(self.err("spatial = 0 is not supported"));
        }
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        let mut inputs = vec![x];
        for k in 1..5 {
            let p = self.param_in(k, false)?;
            if xs.len() < 2 || self.g.value(p).shape != [xs[1]] {
                return Err(self.err(format!(
                    "input {k} has shape {:?}, expected [{}]",
                    self.g.value(p).shape,
                    xs.get(1).copied().unwrap_or(0)
                )));
            }
            inputs.push(p);
        }
        let epsilon = self.attr_f("epsilon", 1e-5) as f64;
        let o = self.emit("", Op::BatchNorm { epsilon }, inputs, xs, DType::F32);
        self.out_run(o)
    }

    fn layer_norm(&mut self) -> R<()> {
        self.known_attrs(&["axis", "epsilon", "stash_type"])?;
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        let axis = self.axis(self.attr_i("axis", -1), xs.len())?;
        if axis + 1 != xs.len() {
            return Err(self.err(format!(
                "normalizing from axis {axis} of {xs:?} (not only the last) is not supported"
            )));
        }
        let d = xs[axis];
        let g = self.param_in(1, false)?;
        let mut inputs = vec![x, g];
        let beta = self.input(2)?.is_some();
        if beta {
            inputs.push(self.param_in(2, false)?);
        }
        for &p in &inputs[1..] {
            if self.g.value(p).shape != [d] {
                return Err(self.err(format!(
                    "scale/bias shape {:?} is not [{d}]",
                    self.g.value(p).shape
                )));
            }
        }
        let epsilon = self.attr_f("epsilon", 1e-5) as f64;
        let o = self.emit("", Op::LayerNorm { epsilon, beta }, inputs, xs, DType::F32);
        self.out_run(o)
    }

    /// The bias a `MatMul` output's only reader adds: `(Add node, bias input slot)`.
    fn fusable_bias(&mut self, n_out: usize) -> R<Option<(usize, usize)>> {
        let out = &self.node().output[0];
        if self.readers.get(out).copied() != Some(1) {
            return Ok(None);
        }
        let nodes = self.m.nodes();
        let Some((a, add)) = nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.input.iter().any(|i| i == out))
        else {
            return Ok(None);
        };
        if add.op_type != "Add" || !is_default_domain(&add.domain) || add.input.len() != 2 {
            return Ok(None);
        }
        let slot = if add.input[0] == *out { 1 } else { 0 };
        if add.input[slot] == *out {
            return Ok(None);
        }
        match self.sym(&add.input[slot].clone())? {
            Sym::Host(d) if d.dtype().is_float() && d.num_elements() == n_out => {
                let s = d.shape().as_slice();
                if s.iter().rev().skip(1).all(|&x| x == 1) && s.last() == Some(&n_out) {
                    return Ok(Some((a, slot)));
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A layer `y = x · W (+ b)` with `W` a constant `[K, N]` (`transposed`: stored `[N, K]`).
    fn linear(
        &mut self,
        x: ValueId,
        w_slot: usize,
        transposed: bool,
        bias: Option<(Sym, String)>,
    ) -> R<ValueId> {
        let w = self.weight_in(w_slot, transposed, WeightLayout::Linear)?;
        let xs = self.g.value(x).shape.clone();
        let ws = self.g.value(w).shape.clone();
        if xs.is_empty() || *xs.last().unwrap() != ws[0] {
            return Err(self.err(format!("input {xs:?} does not multiply weight {ws:?}")));
        }
        let mut shape = xs.clone();
        *shape.last_mut().unwrap() = ws[1];
        let mut inputs = vec![x, w];
        if let Some((Sym::Host(d), name)) = bias {
            let key = (name.clone(), false);
            let b = if let Some(&v) = self.params.get(&key) {
                v
            } else {
                let data = reshape_host(&d.convert_ref_f32(), vec![ws[1]]);
                let p = self.g.params.len();
                self.g.params.push(GraphParam {
                    path: name.clone(),
                    id: None,
                    value: ValueId(usize::MAX),
                    data: data.clone(),
                });
                let v = self.value(vec![ws[1]], DType::F32, ValueOrigin::Param(p), None);
                self.g.values[v.0].name = name.clone();
                self.g.params[p].value = v;
                self.param_sources.push(ParamSource::AsStored);
                self.params.insert(key, v);
                v
            };
            inputs.push(b);
        }
        let bias = inputs.len() == 3;
        Ok(self.emit("", Op::Linear { bias }, inputs, shape, DType::F32))
    }

    fn matmul(&mut self) -> R<()> {
        self.known_attrs(&[])?;
        let (a, b) = (self.req(0)?, self.req(1)?);
        let (sa, sb) = (self.shape(&a), self.shape(&b));
        if sa.len() < 2 || sb.len() < 2 {
            return Err(self.err(format!("1-D operands ({sa:?} · {sb:?}) are not supported")));
        }
        if let (Sym::Run(x), Sym::Host(d)) = (&a, &b)
            && sb.len() == 2
            && d.dtype().is_float()
        {
            // A constant right-hand matrix: a Linear layer, taking over a following bias Add.
            let fused = self.fusable_bias(sb[1])?;
            let bias = match fused {
                Some((add, slot)) => {
                    let name = self.m.nodes()[add].input[slot].clone();
                    Some((self.sym(&name)?, name))
                }
                None => None,
            };
            let o = self.linear(*x, 1, false, bias)?;
            if let Some((add, _)) = fused {
                // The Add's output names the fused value; the product alone is never read.
                self.absorbed.insert(add, o);
                return self.check_extra_outputs(1);
            }
            return self.out_run(o);
        }
        let (va, vb) = (self.run_in(0)?, self.run_in(1)?);
        let batch = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2]).map_err(|e| self.err(e))?;
        let (m, k, k2, n) = (
            sa[sa.len() - 2],
            sa[sa.len() - 1],
            sb[sb.len() - 2],
            sb[sb.len() - 1],
        );
        if k != k2 {
            return Err(self.err(format!("{sa:?} · {sb:?} do not multiply")));
        }
        let rank = batch.len() + 2;
        let (va, vb) = (self.with_rank(va, rank), self.with_rank(vb, rank));
        let mut shape = batch;
        shape.extend([m, n]);
        let dt = self.g.value(va).dtype;
        let o = self.emit("", Op::MatMul, vec![va, vb], shape, dt);
        self.out_run(o)
    }

    fn gemm(&mut self) -> R<()> {
        self.known_attrs(&["alpha", "beta", "transA", "transB"])?;
        let (alpha, beta) = (self.attr_f("alpha", 1.0), self.attr_f("beta", 1.0));
        let (ta, tb) = (self.attr_i("transA", 0) != 0, self.attr_i("transB", 0) != 0);
        let a = self.run_in(0)?;
        let sa = self.g.value(a).shape.clone();
        if sa.len() != 2 {
            return Err(self.err(format!("input A has shape {sa:?}, expected a matrix")));
        }
        let a = if ta {
            self.emit(
                "transpose_a",
                Op::Permute { axes: vec![1, 0] },
                vec![a],
                vec![sa[1], sa[0]],
                DType::F32,
            )
        } else {
            a
        };
        let b = self.req(1)?;
        let Sym::Host(_) = b else {
            return Err(self.err("a run-time B is not supported (Gemm of two activations)"));
        };
        let sb = self.shape(&b);
        let n = if tb { sb[0] } else { sb[1] };
        let c = self.input(2)?;
        // `beta · C` with C a vector over N (or [1, N]) is the layer's bias.
        let bias = match &c {
            Some(Sym::Host(d))
                if beta == 1.0
                    && d.num_elements() == n
                    && d.shape().as_slice().last() == Some(&n) =>
            {
                Some((Sym::Host(d.clone()), self.input_name(2).to_string()))
            }
            _ => None,
        };
        let fused_c = bias.is_some();
        let mut o = self.linear(a, 1, tb, bias)?;
        if alpha != 1.0 {
            if fused_c {
                return Err(self.err("alpha ≠ 1 together with a bias is not supported"));
            }
            let s = self.g.value(o).shape.clone();
            o = self.emit(
                "alpha",
                Op::Scalar(ScalarOp::Mul, ScalarIr::Float(alpha as f64)),
                vec![o],
                s,
                DType::F32,
            );
        }
        if let Some(c) = c
            && !fused_c
        {
            let cv = self.runtime(&c, self.input_name(2))?;
            let cv = if beta != 1.0 {
                let s = self.g.value(cv).shape.clone();
                self.emit(
                    "beta",
                    Op::Scalar(ScalarOp::Mul, ScalarIr::Float(beta as f64)),
                    vec![cv],
                    s,
                    DType::F32,
                )
            } else {
                cv
            };
            let s = self.g.value(o).shape.clone();
            let cv = self.with_rank(cv, 2);
            o = self.emit(
                "add_c",
                Op::Binary(BinaryOp::Add),
                vec![o, cv],
                s,
                DType::F32,
            );
        }
        self.out_run(o)
    }

    fn pool(&mut self, max: bool) -> R<()> {
        self.known_attrs(&[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
            "count_include_pad",
        ])?;
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        if xs.len() != 4 {
            return Err(self.err(format!("only 2-D pooling is supported (input {xs:?})")));
        }
        let kernel = self.spatial_attr("kernel_shape", 2, 0)?;
        if kernel.contains(&0) {
            return Err(self.err("`kernel_shape` is required"));
        }
        let strides = self.spatial_attr("strides", 2, 1)?;
        let dilations = self.spatial_attr("dilations", 2, 1)?;
        if !max && dilations != [1, 1] {
            return Err(self.err("dilated average pooling is not supported"));
        }
        if self.attr_i("storage_order", 0) != 0 {
            return Err(self.err("storage_order = 1 is not supported"));
        }
        let mut pads = self.pads(&xs[2..], &kernel, &strides, &dilations)?;
        let count_include_pad = self.attr_i("count_include_pad", 0) != 0;
        let (mut x, mut xs) = (x, xs);
        if pads.iter().any(|&(b, e)| b != e) {
            // Burn pools pad both sides alike: the surplus on one side is padded explicitly
            // with what the pool's own padding stands for (−∞ for max, 0 for an average
            // that counts the padding).
            if !max && !count_include_pad {
                return Err(self.err(format!(
                    "asymmetric pads {pads:?} with count_include_pad = 0 are not supported"
                )));
            }
            let fill = ScalarIr::Float(if max { f64::NEG_INFINITY } else { 0.0 });
            for (i, pad) in pads.iter_mut().enumerate() {
                let (b, e) = *pad;
                if b == e {
                    continue;
                }
                let axis = 2 + i;
                let mut block = xs.clone();
                block[axis] = b.abs_diff(e);
                let f = self.emit(
                    &format!("pad{axis}"),
                    Op::Full { value: fill },
                    vec![],
                    block.clone(),
                    DType::F32,
                );
                let parts = if e > b { vec![x, f] } else { vec![f, x] };
                xs[axis] += block[axis];
                x = self.emit(
                    &format!("padded{axis}"),
                    Op::Concat { dim: axis },
                    parts,
                    xs.clone(),
                    DType::F32,
                );
                *pad = (b.min(e), b.min(e));
            }
        }
        let ceil_mode = self.attr_i("ceil_mode", 0) != 0;
        let mut shape = xs[..2].to_vec();
        for i in 0..2 {
            let span = (kernel[i] - 1) * dilations[i] + 1;
            let padded = xs[2 + i] + 2 * pads[i].0;
            if padded < span {
                return Err(self.err("the window is larger than the padded input"));
            }
            let num = padded - span;
            let mut out = if ceil_mode {
                num.div_ceil(strides[i]) + 1
            } else {
                num / strides[i] + 1
            };
            // The last window must start inside the input or its left padding.
            if ceil_mode && (out - 1) * strides[i] >= xs[2 + i] + pads[i].0 {
                out -= 1;
            }
            shape.push(out);
        }
        let padding = [pads[0].0, pads[1].0];
        let op = if max {
            Op::MaxPool2d {
                kernel: [kernel[0], kernel[1]],
                stride: [strides[0], strides[1]],
                padding,
                dilation: [dilations[0], dilations[1]],
                ceil_mode,
            }
        } else {
            Op::AvgPool2d {
                kernel: [kernel[0], kernel[1]],
                stride: [strides[0], strides[1]],
                padding,
                count_include_pad,
                ceil_mode,
            }
        };
        let o = self.emit("", op, vec![x], shape, DType::F32);
        self.out_run(o)
    }

    fn global_pool(&mut self, max: bool) -> R<()> {
        self.known_attrs(&[])?;
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        if xs.len() < 3 {
            return Err(self.err(format!("input {xs:?} has no spatial axes")));
        }
        let o = if xs.len() == 4 && !max {
            self.emit(
                "",
                Op::AdaptiveAvgPool2d { output: [1, 1] },
                vec![x],
                vec![xs[0], xs[1], 1, 1],
                DType::F32,
            )
        } else {
            let op = if max { ReduceOp::Max } else { ReduceOp::Mean };
            self.reduce_axes(x, op, &(2..xs.len()).collect::<Vec<_>>(), true)
        };
        self.out_run(o)
    }

    /// Reduces `x` along `axes` one at a time (Burn keeps each reduced axis with length 1),
    /// then drops them unless `keep`.
    fn reduce_axes(&mut self, x: ValueId, op: ReduceOp, axes: &[usize], keep: bool) -> ValueId {
        let mut v = x;
        let mut shape = self.g.value(x).shape.clone();
        let dt = self.g.value(x).dtype;
        for (i, &a) in axes.iter().enumerate() {
            shape[a] = 1;
            let last = i + 1 == axes.len() && keep;
            let suffix = if last {
                String::new()
            } else {
                format!("axis{a}")
            };
            v = self.emit(
                &suffix,
                Op::Reduce { op, dim: a },
                vec![v],
                shape.clone(),
                dt,
            );
        }
        if !keep {
            let dropped: Vec<usize> = shape
                .iter()
                .enumerate()
                .filter(|(a, _)| !axes.contains(a))
                .map(|(_, &d)| d)
                .collect();
            v = self.emit("", Op::Reshape, vec![v], dropped, dt);
        }
        v
    }

    fn reduce(&mut self, op: ReduceOp) -> R<()> {
        self.known_attrs(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        let axes_as_input = self.m.opset >= 18 || (self.m.opset >= 13 && op == ReduceOp::Sum);
        let axes = if axes_as_input {
            match self.host_opt(1)? {
                Some(t) => Some(ints(&t).map_err(|e| self.err(e))?),
                None => None,
            }
        } else {
            self.attr_ints("axes")
        };
        let axes: Vec<usize> = match axes {
            Some(a) if !a.is_empty() => {
                let mut v: Vec<usize> = a
                    .iter()
                    .map(|&a| self.axis(a, xs.len()))
                    .collect::<R<_>>()?;
                v.sort();
                v.dedup();
                v
            }
            _ if self.attr_i("noop_with_empty_axes", 0) != 0 => {
                return self.out_run(x);
            }
            _ => (0..xs.len()).collect(),
        };
        let keep = self.attr_i("keepdims", 1) != 0;
        let o = self.reduce_axes(x, op, &axes, keep);
        self.out_run(o)
    }

    fn resize(&mut self) -> R<()> {
        self.known_attrs(&[
            "mode",
            "coordinate_transformation_mode",
            "nearest_mode",
            "cubic_coeff_a",
            "exclude_outside",
            "extrapolation_value",
            "antialias",
            "keep_aspect_ratio_policy",
            "axes",
            "scales",
        ])?;
        let upsample = self.node().op_type == "Upsample";
        let x = self.run_in(0)?;
        let xs = self.g.value(x).shape.clone();
        if xs.len() != 4 {
            return Err(self.err(format!(
                "only 4-D (N, C, H, W) inputs are supported, got {xs:?}"
            )));
        }
        if self.attr("axes").is_some()
            || self.attr_i("antialias", 0) != 0
            || self.attr_i("exclude_outside", 0) != 0
        {
            return Err(self.err("`axes`, `antialias` and `exclude_outside` are not supported"));
        }
        let opset = self.m.opset;
        let (scales, sizes) = if upsample || opset < 11 {
            let s = match self.attr("scales") {
                Some(a) => a.floats.iter().map(|&v| v as f64).collect(),
                None => floats(&*self.host_in(1)?),
            };
            (Some(s), None)
        } else {
            let s = self
                .host_opt(2)?
                .map(|d| floats(&d))
                .filter(|v| !v.is_empty());
            let z = match self.host_opt(3)? {
                Some(d) => Some(ints(&d).map_err(|e| self.err(e))?),
                None => None,
            };
            (s, z)
        };
        let out: Vec<usize> = match (&scales, &sizes) {
            (_, Some(z)) if z.len() == 4 => z.iter().map(|&v| v.max(0) as usize).collect(),
            (Some(s), _) if s.len() == 4 => xs
                .iter()
                .zip(s)
                .map(|(&d, &f)| (d as f64 * f).floor() as usize)
                .collect(),
            _ => return Err(self.err("it needs 4 scales or 4 sizes")),
        };
        if out[0] != xs[0] || out[1] != xs[1] || out[2] == 0 || out[3] == 0 {
            return Err(self.err(format!(
                "resizing {xs:?} to {out:?}: only the spatial axes may change"
            )));
        }
        // Burn maps output pixel o to input ⌊o·in/out⌋ (nearest) and takes the ratio from
        // the sizes; ONNX uses the given scale. They agree when scale = out/in exactly.
        if let Some(s) = &scales {
            for a in 2..4 {
                if (s[a] - out[a] as f64 / xs[a] as f64).abs() > 1e-6 * s[a].abs() {
                    return Err(self.err(format!(
                        "scale {} does not give an exact size on axis {a}",
                        s[a]
                    )));
                }
            }
        }
        let mode = self.attr_s("mode", "nearest");
        let ctm = self.attr_s(
            "coordinate_transformation_mode",
            if upsample || opset < 11 {
                "asymmetric"
            } else {
                "half_pixel"
            },
        );
        let nearest = self.attr_s(
            "nearest_mode",
            if upsample || opset < 11 {
                "floor"
            } else {
                "round_prefer_floor"
            },
        );
        let rmode = match (mode.as_str(), ctm.as_str(), nearest.as_str()) {
            ("nearest", "asymmetric", "floor") => ResizeMode::Nearest,
            ("linear" | "bilinear", "align_corners", _) => ResizeMode::Bilinear {
                align_corners: true,
            },
            ("linear" | "bilinear", "half_pixel", _) => ResizeMode::Bilinear {
                align_corners: false,
            },
            ("linear" | "bilinear", "pytorch_half_pixel", _) if out[2] > 1 && out[3] > 1 => {
                ResizeMode::Bilinear {
                    align_corners: false,
                }
            }
            _ => {
                return Err(self.err(format!(
                    "mode `{mode}` with coordinate_transformation_mode `{ctm}` and nearest_mode `{nearest}` is not supported \
                     (supported: nearest/asymmetric/floor, linear/align_corners, linear/half_pixel)"
                )));
            }
        };
        let o = self.emit("", Op::Resize2d { mode: rmode }, vec![x], out, DType::F32);
        self.out_run(o)
    }

    // ----- finishing ----------------------------------------------------------------------

    fn finish(mut self) -> R<ImportedGraph> {
        // Drop nodes nothing reads (shape arithmetic the host folded may leave some), keeping
        // the provenance aligned.
        let mut live = vec![false; self.g.values.len()];
        for &o in &self.g.outputs {
            live[o.0] = true;
        }
        let mut keep = vec![false; self.g.nodes.len()];
        for (n, node) in self.g.nodes.iter().enumerate().rev() {
            if node.outputs.iter().any(|o| live[o.0]) {
                keep[n] = true;
                for &i in &node.inputs {
                    live[i.0] = true;
                }
            }
        }
        let mut k = 0;
        self.g.nodes.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        let mut k = 0;
        self.onnx_node.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        self.g.reindex()?;
        Ok(ImportedGraph {
            graph: self.g,
            onnx_node: self.onnx_node,
            onnx_value: self.onnx_value,
            param_sources: self.param_sources,
            onnx_names: self.onnx_names,
            activation_quants: self.activation_quants,
            weight_quants: self.weight_quants,
        })
    }
}

// ----- host tensors ---------------------------------------------------------------------------

trait ConvertRef {
    fn convert_ref_f32(&self) -> TensorData;
}

impl ConvertRef for Rc<TensorData> {
    fn convert_ref_f32(&self) -> TensorData {
        (**self).clone().convert::<f32>()
    }
}

fn checked_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The same data with another shape (same element count).
fn reshape_host(d: &TensorData, shape: Vec<usize>) -> TensorData {
    TensorData::from_bytes_vec(d.as_bytes().to_vec(), shape, d.dtype())
}

/// Elements `idx` (flat indices) of `d`, as a tensor of `shape`.
fn gather_flat(d: &TensorData, idx: &[usize], shape: Vec<usize>) -> TensorData {
    let w = d.dtype().size();
    let bytes = d.as_bytes();
    let mut out = Vec::with_capacity(idx.len() * w);
    for &i in idx {
        out.extend_from_slice(&bytes[i * w..(i + 1) * w]);
    }
    TensorData::from_bytes_vec(out, shape, d.dtype())
}

pub(crate) fn transpose_host(d: &TensorData, perm: &[usize]) -> TensorData {
    let s = d.shape().as_slice().to_vec();
    let st = strides(&s);
    let shape: Vec<usize> = perm.iter().map(|&a| s[a]).collect();
    let n: usize = shape.iter().product();
    let idx: Vec<usize> = (0..n)
        .map(|mut flat| {
            let mut src = 0;
            for k in (0..shape.len()).rev() {
                let i = flat % shape[k];
                flat /= shape[k];
                src += i * st[perm[k]];
            }
            src
        })
        .collect();
    gather_flat(d, &idx, shape)
}

fn concat_host(parts: &[Rc<TensorData>], axis: usize, shape: Vec<usize>) -> TensorData {
    let dtype = parts[0].dtype();
    let w = dtype.size();
    let outer: usize = shape[..axis].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product::<usize>() * w);
    for o in 0..outer {
        for p in parts {
            let ps = p.shape().as_slice();
            let chunk: usize = ps[axis..].iter().product::<usize>() * w;
            let bytes = if p.dtype() == dtype {
                p.as_bytes().to_vec()
            } else {
                (**p).clone().convert_dtype(dtype).as_bytes().to_vec()
            };
            out.extend_from_slice(&bytes[o * chunk..(o + 1) * chunk]);
        }
    }
    TensorData::from_bytes_vec(out, shape, dtype)
}

/// Flat source indices of a strided slice.
fn slice_index(input: &[usize], ranges: &[(i64, i64, i64)], shape: &[usize]) -> Vec<usize> {
    let st = strides(input);
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut flat| {
            let mut src = 0i64;
            for k in (0..shape.len()).rev() {
                let i = (flat % shape[k]) as i64;
                flat /= shape[k];
                src += (ranges[k].0 + i * ranges[k].2) * st[k] as i64;
            }
            src as usize
        })
        .collect()
}

fn binary_host(
    op: BinaryOp,
    x: &TensorData,
    y: &TensorData,
    shape: &[usize],
) -> Result<TensorData, String> {
    let (ix, iy) = (
        broadcast_index(x.shape().as_slice(), shape),
        broadcast_index(y.shape().as_slice(), shape),
    );
    let dt = x.dtype();
    if !dt.is_float() && !y.dtype().is_float() {
        let (a, b) = (ints(x)?, ints(y)?);
        let v = ix
            .iter()
            .zip(&iy)
            .map(|(&i, &j)| {
                let (p, q) = (a[i], b[j]);
                Ok(match op {
                    BinaryOp::Add => p.wrapping_add(q),
                    BinaryOp::Sub => p.wrapping_sub(q),
                    BinaryOp::Mul => p.wrapping_mul(q),
                    BinaryOp::Div if q == 0 => return Err("integer division by zero".to_string()),
                    BinaryOp::Div => p.wrapping_div(q),
                    BinaryOp::Pow => p
                        .checked_pow(q.clamp(0, u32::MAX as i64) as u32)
                        .ok_or("integer power overflows")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        return Ok(from_i64(v, shape.to_vec(), dt));
    }
    let (a, b) = (floats(x), floats(y));
    let f32_math = dt != DType::F64;
    let v: Vec<f64> = ix
        .iter()
        .zip(&iy)
        .map(|(&i, &j)| {
            let (p, q) = (a[i], b[j]);
            let r = match op {
                BinaryOp::Add => p + q,
                BinaryOp::Sub => p - q,
                BinaryOp::Mul => p * q,
                BinaryOp::Div => p / q,
                BinaryOp::Pow => p.powf(q),
            };
            if f32_math { r as f32 as f64 } else { r }
        })
        .collect();
    let dt = if dt.is_float() { dt } else { y.dtype() };
    Ok(from_f64(v, shape.to_vec(), dt))
}
