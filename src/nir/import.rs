//! A NIR graph as a snnc model (`.snn`) with its parameters.
//!
//! Primitives and what they become (the neuron mapping is the inverse of
//! [`super::export`]'s, at the step `dt`):
//!
//! | NIR | snnc |
//! | --- | --- |
//! | `Input` (N or C×H×W) | `input` |
//! | `Affine`, `Linear` | `linear` (`bias=false` when there is none or it is all zeros) |
//! | `Conv2d` (square kernel and stride, equal padding, dilation 1, groups 1) | `conv2d` |
//! | `AvgPool2d`, `SumPool2d` (square, padding 0) | `avgpool` (a sum pool's k² goes into what follows) |
//! | `Flatten` to one axis | `flatten` |
//! | `LIF` (uniform τ, R, v_threshold, v_reset; v_leak = 0; τ ≥ dt) | `lif lambda=1−dt/τ theta=v_threshold/g`, g = dt·R/τ; hard reset to v_reset/g, or soft with metadata `snnc_reset = subtract` |
//! | `IF` | `if theta=v_threshold/(dt·R)` |
//! | `Threshold` | `lif lambda=0 theta=threshold` (stateless) |
//! | `Scale` with one value c > 0 | folded: c multiplies the next layer's weights or divides the next neuron's threshold; all ones is the identity |
//! | a node with two inputs after a fork | `residual { … } shortcut { … }` (the longer branch is `main`) |
//! | `NIRGraph` (nested) | inlined |
//! | `Output` | the readout (its mean over T) |
//!
//! Anything else (CubaLIF, CubaLI, LI, I, Delay, Conv1d, per-neuron
//! parameters, recurrent edges, more than one input or output) is an error
//! that names the node and the primitive.

use super::{Arr, NirError, NirGraph, Node, Padding, Prim};
use crate::init::Params;
use crate::model::{
    Encoding, Input, Layer, LayerKind, Model, NeuronKind, NeuronOpts, Reset, SurrogateKind,
};
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug)]
pub struct Imported {
    pub model: Model,
    pub params: Params,
    /// What was folded or assumed, one line each.
    pub notes: Vec<String>,
    /// Layer path → the NIR node it came from (layers that have one).
    pub origin: BTreeMap<String, String>,
}

/// A flat graph: nested graphs inlined (their nodes named `outer.inner`).
struct Flat {
    nodes: BTreeMap<String, Node>,
    edges: Vec<(String, String)>,
}

fn err(file: &str, node: &str, prim: &str, msg: impl std::fmt::Display) -> NirError {
    NirError::Prim {
        file: file.to_string(),
        node: node.to_string(),
        prim: prim.to_string(),
        msg: msg.to_string(),
    }
}

/// Inlines nested graphs: an edge into a subgraph goes to its `Input`
/// nodes, an edge out of it leaves from its `Output` nodes, and those
/// inner Input/Output nodes are bypassed.
fn flatten_graph(g: &NirGraph, prefix: &str, file: &str, out: &mut Flat) -> Result<(), NirError> {
    let full = |n: &str| format!("{prefix}{n}");
    let mut ins: HashMap<String, Vec<String>> = HashMap::new();
    let mut outs: HashMap<String, Vec<String>> = HashMap::new();
    for (name, node) in &g.nodes {
        if let Prim::Graph(sub) = &node.prim {
            let p = format!("{}.", full(name));
            let before: HashSet<String> = out.nodes.keys().cloned().collect();
            flatten_graph(sub, &p, file, out)?;
            let mut i = Vec::new();
            let mut o = Vec::new();
            for (k, n) in &out.nodes {
                if before.contains(k) || !k.starts_with(&p) || k[p.len()..].contains('.') {
                    continue;
                }
                match n.prim {
                    Prim::Input { .. } => i.push(k.clone()),
                    Prim::Output { .. } => o.push(k.clone()),
                    _ => {}
                }
            }
            if i.is_empty() || o.is_empty() {
                return Err(err(
                    file,
                    &full(name),
                    "NIRGraph",
                    "a nested graph needs an Input and an Output node",
                ));
            }
            ins.insert(full(name), i);
            outs.insert(full(name), o);
        } else {
            out.nodes.insert(full(name), node.clone());
        }
    }
    for (a, b) in &g.edges {
        let srcs = outs.get(&full(a)).cloned().unwrap_or_else(|| vec![full(a)]);
        let dsts = ins.get(&full(b)).cloned().unwrap_or_else(|| vec![full(b)]);
        for s in &srcs {
            for d in &dsts {
                out.edges.push((s.clone(), d.clone()));
            }
        }
    }
    // Bypass the inner Input/Output nodes of the subgraphs just inlined.
    for k in ins.values().chain(outs.values()).flatten() {
        let preds: Vec<String> = out
            .edges
            .iter()
            .filter(|e| &e.1 == k)
            .map(|e| e.0.clone())
            .collect();
        let succs: Vec<String> = out
            .edges
            .iter()
            .filter(|e| &e.0 == k)
            .map(|e| e.1.clone())
            .collect();
        out.edges.retain(|e| &e.0 != k && &e.1 != k);
        for p in &preds {
            for s in &succs {
                out.edges.push((p.clone(), s.clone()));
            }
        }
        out.nodes.remove(k);
    }
    Ok(())
}

/// One list of layers being built (the model's, or a residual branch's).
struct List {
    prefix: String,
    layers: Vec<Layer>,
}

impl List {
    fn path(&self) -> String {
        format!("{}{}", self.prefix, self.layers.len())
    }
}

struct Im<'a> {
    file: &'a str,
    dt: f64,
    g: Flat,
    preds: HashMap<String, Vec<String>>,
    succs: HashMap<String, Vec<String>>,
    topo: HashMap<String, usize>,
    params: Params,
    notes: Vec<String>,
    origin: BTreeMap<String, String>,
    /// A positive factor on the current value not yet absorbed.
    gain: f64,
    shape: Vec<usize>,
}

/// Rounds to 12 significant digits: values recomputed from τ and dt (e.g.
/// λ = 1 − dt/τ) carry f64 rounding that the `.snn` text should not show.
fn tidy(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.11e}").parse().unwrap_or(x)
}

pub fn import(g: &NirGraph, file: &str, name: &str, dt: f64) -> Result<Imported, NirError> {
    let dt = match g
        .metadata
        .get("snnc_dt")
        .and_then(|s| s.parse::<f64>().ok())
    {
        Some(d) if d != dt && dt == super::DEFAULT_DT => d,
        _ => dt,
    };
    if !(dt.is_finite() && dt > 0.0) {
        return Err(NirError::BadDt(dt));
    }
    let mut flat = Flat {
        nodes: BTreeMap::new(),
        edges: Vec::new(),
    };
    flatten_graph(g, "", file, &mut flat)?;
    for (a, b) in &flat.edges {
        for n in [a, b] {
            if !flat.nodes.contains_key(n) {
                return Err(NirError::File {
                    file: file.to_string(),
                    msg: format!(
                        "edge `{a}` → `{b}` names node `{n}`, which the graph does not have"
                    ),
                });
            }
        }
    }
    // Duplicate edges carry no meaning in NIR (nir's infer_types removes them).
    let mut seen = HashSet::new();
    flat.edges.retain(|e| seen.insert(e.clone()));
    let mut preds: HashMap<String, Vec<String>> = HashMap::new();
    let mut succs: HashMap<String, Vec<String>> = HashMap::new();
    for (a, b) in &flat.edges {
        succs.entry(a.clone()).or_default().push(b.clone());
        preds.entry(b.clone()).or_default().push(a.clone());
    }
    // Kahn's algorithm, in name order among ready nodes.
    let mut indeg: BTreeMap<&str, usize> = flat
        .nodes
        .keys()
        .map(|k| (k.as_str(), preds.get(k).map_or(0, Vec::len)))
        .collect();
    let mut ready: Vec<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut topo = HashMap::new();
    while let Some(n) = ready.pop() {
        topo.insert(n.to_string(), topo.len());
        for s in succs.get(n).into_iter().flatten() {
            let d = indeg.get_mut(s.as_str()).expect("known node");
            *d -= 1;
            if *d == 0 {
                ready.push(s);
            }
        }
    }
    if topo.len() != flat.nodes.len() {
        let stuck = indeg
            .iter()
            .find(|(k, _)| !topo.contains_key(**k))
            .map(|(k, _)| k.to_string())
            .unwrap_or_default();
        return Err(NirError::File {
            file: file.to_string(),
            msg: format!(
                "the graph has a cycle through node `{stuck}`; snnc models are \
                 feed-forward (recurrence lives inside the neurons)"
            ),
        });
    }
    // Every primitive first: an unsupported one is the clearest error.
    let mut order: Vec<&String> = flat.nodes.keys().collect();
    order.sort_by_key(|k| topo[*k]);
    for k in &order {
        if let Prim::Other { type_name } = &flat.nodes[*k].prim {
            let why = match type_name.as_str() {
                "CubaLIF" | "CubaLI" => "a current-based neuron has a synaptic current state; snnc's neurons have only the membrane",
                "LI" => "a leaky integrator does not spike; snnc's readout is the mean of the last layer's output, and its neurons all spike",
                "I" => "a non-spiking integrator has no snnc layer",
                "Delay" => "snnc has no delays: every edge passes values within the same step",
                "Conv1d" => "snnc has 2-D convolutions only",
                _ => "snnc has no such layer",
            };
            return Err(err(
                file,
                k,
                type_name,
                format!("snnc cannot express NIR primitive `{type_name}`: {why}"),
            ));
        }
    }
    let inputs: Vec<&String> = order
        .iter()
        .copied()
        .filter(|k| matches!(flat.nodes[*k].prim, Prim::Input { .. }))
        .collect();
    let outputs: Vec<&String> = order
        .iter()
        .copied()
        .filter(|k| matches!(flat.nodes[*k].prim, Prim::Output { .. }))
        .collect();
    if inputs.len() != 1 || outputs.len() != 1 {
        return Err(NirError::File {
            file: file.to_string(),
            msg: format!(
                "the graph has {} Input and {} Output nodes; a snnc model has one \
                 input and one readout",
                inputs.len(),
                outputs.len()
            ),
        });
    }
    let input = inputs[0].clone();
    let Prim::Input { shape } = &flat.nodes[&input].prim else {
        unreachable!()
    };
    if !(shape.len() == 1 || shape.len() == 3) || shape.contains(&0) {
        return Err(err(
            file,
            &input,
            "Input",
            format!(
                "shape {}: snnc inputs are N or C×H×W (no batch axis)",
                l(shape)
            ),
        ));
    }
    let input_shape = shape.clone();
    let encoding = match flat.nodes[&input]
        .metadata
        .get("snnc_encoding")
        .map(String::as_str)
    {
        Some("events") => Encoding::Events,
        Some(s) if s.starts_with("poisson") => Encoding::Poisson {
            seed: s
                .strip_prefix("poisson seed=")
                .and_then(|x| x.parse().ok())
                .unwrap_or(0),
        },
        _ => Encoding::Direct,
    };
    let mut im = Im {
        file,
        dt,
        g: flat,
        preds,
        succs,
        topo,
        params: HashMap::new(),
        notes: Vec::new(),
        origin: BTreeMap::new(),
        gain: 1.0,
        shape: input_shape.clone(),
    };
    let mut top = List {
        prefix: String::new(),
        layers: Vec::new(),
    };
    im.seq(&input, None, &mut top)?;
    let mut model = Model {
        name: g
            .metadata
            .get("snnc_model")
            .cloned()
            .unwrap_or_else(|| name.to_string()),
        input: Input {
            shape: input_shape,
            encoding,
        },
        neuron: NeuronOpts::default(),
        layers: top.layers,
    };
    im.hoist_neuron_defaults(&mut model);
    let a = crate::shape::analyze(&model).map_err(|e| NirError::File {
        file: file.to_string(),
        msg: format!(
            "the imported model does not check: layer {}: {}",
            e.path, e.message
        ),
    })?;
    for p in a.params() {
        match im.params.get(&p.name) {
            Some(t) if t.shape == p.shape => {}
            Some(t) => {
                return Err(NirError::Internal(format!(
                    "imported parameter `{}` has shape {}, the model needs {}",
                    p.name,
                    l(&t.shape),
                    l(&p.shape)
                )))
            }
            None => {
                return Err(NirError::Internal(format!(
                    "the import made no parameter `{}`",
                    p.name
                )))
            }
        }
    }
    Ok(Imported {
        model,
        params: im.params,
        notes: im.notes,
        origin: im.origin,
    })
}

impl Im<'_> {
    fn node(&self, n: &str) -> &Node {
        &self.g.nodes[n]
    }

    fn fail(&self, n: &str, msg: impl std::fmt::Display) -> NirError {
        err(self.file, n, self.node(n).prim.type_name(), msg)
    }

    fn succ(&self, n: &str) -> Vec<String> {
        self.succs.get(n).cloned().unwrap_or_default()
    }

    fn pred_count(&self, n: &str) -> usize {
        self.preds.get(n).map_or(0, Vec::len)
    }

    fn reachable(&self, from: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            if seen.insert(n.clone()) {
                stack.extend(self.succ(&n));
            }
        }
        seen
    }

    fn no_gain(&self, n: &str, what: &str) -> Result<(), NirError> {
        if self.gain != 1.0 {
            return Err(self.fail(
                n,
                format!(
                    "a factor of {} (from a Scale, a SumPool2d or a neuron's R) reaches {what}, \
                     where snnc has nothing to fold it into",
                    self.gain
                ),
            ));
        }
        Ok(())
    }

    /// Follows the graph from `from` (whose output is the current value)
    /// until `until` (not processed) or the Output node.
    fn seq(&mut self, from: &str, until: Option<&str>, list: &mut List) -> Result<(), NirError> {
        let mut from = from.to_string();
        loop {
            let succs = self.succ(&from);
            match succs.as_slice() {
                [] => {
                    return match until {
                        None if matches!(self.node(&from).prim, Prim::Output { .. }) => Ok(()),
                        _ => Err(self.fail(
                            &from,
                            "the node leads nowhere: every path must end at the Output node",
                        )),
                    }
                }
                [n] => {
                    if Some(n.as_str()) == until {
                        return Ok(());
                    }
                    if self.pred_count(n) > 1 {
                        return Err(self.fail(
                            n,
                            "the node sums several inputs that do not come from one fork; snnc \
                             expresses sums only as residual blocks (a fork whose two branches \
                             meet again)",
                        ));
                    }
                    self.emit(n, list)?;
                    from = n.clone();
                }
                [a, b] => {
                    self.no_gain(&from, "a fork into a residual block")?;
                    let (ra, rb) = (self.reachable(a), self.reachable(b));
                    let join = ra
                        .intersection(&rb)
                        .min_by_key(|k| self.topo[*k])
                        .cloned()
                        .ok_or_else(|| {
                            self.fail(
                                &from,
                                "its two branches never meet again; snnc models have one output",
                            )
                        })?;
                    if self.pred_count(&join) != 2 {
                        return Err(self.fail(
                            &join,
                            format!(
                                "the node sums {} inputs; snnc's residual blocks add two branches",
                                self.pred_count(&join)
                            ),
                        ));
                    }
                    let path = list.path();
                    let shape = self.shape.clone();
                    let mut branches = Vec::new();
                    for (bi, first) in [a, b].into_iter().enumerate() {
                        self.shape = shape.clone();
                        // A temporary prefix until we know which branch is `main`.
                        let mut l = List {
                            prefix: format!("{path}.~{bi}."),
                            layers: Vec::new(),
                        };
                        if *first != join {
                            if self.pred_count(first) > 1 {
                                return Err(self.fail(first, "a branch node with several inputs"));
                            }
                            self.emit(first, &mut l)?;
                            self.seq(first, Some(&join), &mut l)?;
                            self.no_gain(&join, "a residual sum")?;
                        }
                        branches.push((l.layers, l.prefix, self.shape.clone()));
                    }
                    if branches[0].2 != branches[1].2 {
                        return Err(self.fail(
                            &join,
                            format!(
                                "the two branches give shapes {} and {}",
                                l(&branches[0].2),
                                l(&branches[1].2)
                            ),
                        ));
                    }
                    // The longer branch is `main`.
                    if branches[1].0.len() > branches[0].0.len() {
                        branches.swap(0, 1);
                    }
                    let mut it = branches.into_iter();
                    let (main, main_p, out_shape) = it.next().expect("two");
                    let (short, short_p, _) = it.next().expect("two");
                    for (tmp, sub) in [(main_p, "main"), (short_p, "shortcut")] {
                        let keys: Vec<String> = self
                            .params
                            .keys()
                            .filter(|k| k.starts_with(&tmp))
                            .cloned()
                            .collect();
                        for k in keys {
                            let t = self.params.remove(&k).expect("listed");
                            self.params
                                .insert(format!("{path}.{sub}.{}", &k[tmp.len()..]), t);
                        }
                        let keys: Vec<String> = self
                            .origin
                            .keys()
                            .filter(|k| k.starts_with(&tmp))
                            .cloned()
                            .collect();
                        for k in keys {
                            let n = self.origin.remove(&k).expect("listed");
                            self.origin
                                .insert(format!("{path}.{sub}.{}", &k[tmp.len()..]), n);
                        }
                    }
                    self.shape = out_shape;
                    list.layers.push(Layer::new(LayerKind::Residual {
                        main,
                        shortcut: short,
                    }));
                    if Some(join.as_str()) == until {
                        return Ok(());
                    }
                    // The join node takes the sum.
                    let is_identity = matches!(&self.node(&join).prim, Prim::Scale { scale } if scale.uniform() == Some(1.0));
                    if !is_identity {
                        self.emit(&join, list)?;
                    }
                    from = join;
                }
                _ => {
                    return Err(self.fail(
                        &from,
                        format!(
                            "the node feeds {} nodes; snnc forks only into the two branches of a \
                             residual block",
                            succs.len()
                        ),
                    ))
                }
            }
        }
    }

    fn push(&mut self, n: &str, list: &mut List, kind: LayerKind) -> String {
        let p = list.path();
        list.layers.push(Layer::new(kind));
        self.origin.insert(p.clone(), n.to_string());
        p
    }

    fn uniform(&self, n: &str, field: &str, a: &Arr) -> Result<f64, NirError> {
        if a.shape != self.shape && a.data.len() != 1 {
            return Err(self.fail(
                n,
                format!(
                    "`{field}` has shape {}, the input has {}",
                    l(&a.shape),
                    l(&self.shape)
                ),
            ));
        }
        a.uniform().ok_or_else(|| {
            self.fail(
                n,
                format!("`{field}` differs between neurons; snnc has one value per layer"),
            )
        })
    }

    /// Emits the layer(s) of node `n`, whose input is the current value.
    fn emit(&mut self, n: &str, list: &mut List) -> Result<(), NirError> {
        let node = self.node(n).clone();
        let ty = node.prim.type_name().to_string();
        match &node.prim {
            Prim::Input { .. } => return Err(self.fail(n, "an Input node inside the graph")),
            Prim::Output { shape } => {
                if *shape != self.shape
                    && shape.iter().product::<usize>() != self.shape.iter().product::<usize>()
                {
                    return Err(self.fail(
                        n,
                        format!(
                            "the Output has shape {}, its input {}",
                            l(shape),
                            l(&self.shape)
                        ),
                    ));
                }
                self.no_gain(n, "the readout")?;
            }
            Prim::Affine { weight, .. } | Prim::Linear { weight } => {
                let &[o, i] = weight.shape.as_slice() else {
                    return Err(self.fail(
                        n,
                        format!(
                            "weight of shape {}; snnc's linear layers take (out, in)",
                            l(&weight.shape)
                        ),
                    ));
                };
                if self.shape != [i] {
                    return Err(self.fail(
                        n,
                        format!(
                            "weight (out {o}, in {i}) applied to an input of shape {}{}",
                            l(&self.shape),
                            if self.shape.len() > 1 {
                                "; add a Flatten before it"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                let bias = match &node.prim {
                    Prim::Affine { bias, .. } => {
                        if bias.data.len() != o {
                            return Err(self.fail(
                                n,
                                format!("bias of {} values for {o} outputs", bias.data.len()),
                            ));
                        }
                        Some(bias.clone()).filter(|b| b.data.iter().any(|&x| x != 0.0))
                    }
                    _ => None,
                };
                let path = self.push(
                    n,
                    list,
                    LayerKind::Linear {
                        out: o,
                        bias: bias.is_some(),
                    },
                );
                let w: Vec<f64> = weight.data.iter().map(|x| x * self.gain).collect();
                self.params
                    .insert(format!("{path}.weight"), Tensor::from_vec(&[o, i], w));
                if let Some(b) = bias {
                    self.params
                        .insert(format!("{path}.bias"), Tensor::from_vec(&[o], b.data));
                }
                self.gain = 1.0;
                self.shape = vec![o];
            }
            Prim::Scale { scale } => {
                let c = self.uniform(n, "scale", scale)?;
                if c <= 0.0 {
                    return Err(self.fail(
                        n,
                        format!("scale {c}: snnc folds only a positive scale into the next layer"),
                    ));
                }
                if c != 1.0 {
                    self.notes
                        .push(format!("Scale `{n}` ({c}) folded into the next layer"));
                }
                self.gain *= c;
            }
            Prim::Conv2d {
                input_shape,
                weight,
                stride,
                padding,
                dilation,
                groups,
                bias,
            } => {
                let &[co, ci, kh, kw] = weight.shape.as_slice() else {
                    return Err(self.fail(
                        n,
                        format!(
                            "weight of shape {}, not (C_out, C_in, kH, kW)",
                            l(&weight.shape)
                        ),
                    ));
                };
                let &[c, h, w] = self.shape.as_slice() else {
                    return Err(
                        self.fail(n, format!("input of shape {}, not C×H×W", l(&self.shape)))
                    );
                };
                if ci != c {
                    return Err(self.fail(
                        n,
                        format!("weight takes {ci} input channels, the input has {c}"),
                    ));
                }
                if let Some(s) = input_shape {
                    if *s != [h, w] {
                        return Err(
                            self.fail(n, format!("input_shape {}, but the input is {h}×{w}", l(s)))
                        );
                    }
                }
                if kh != kw || stride[0] != stride[1] {
                    return Err(self.fail(
                        n,
                        format!(
                            "kernel {kh}×{kw}, stride {}: snnc's conv2d is square",
                            l(stride)
                        ),
                    ));
                }
                if *dilation != [1, 1] || *groups != 1 {
                    return Err(self.fail(n, format!("dilation {}, groups {groups}: snnc's conv2d has dilation 1 and groups 1", l(dilation))));
                }
                let pad = match padding {
                    Padding::Explicit([a, b]) if a == b => *a,
                    Padding::Explicit(p) => {
                        return Err(
                            self.fail(n, format!("padding {}: snnc pads both sides equally", l(p)))
                        )
                    }
                    Padding::Valid => 0,
                    Padding::Same if kh % 2 == 1 && stride[0] == 1 => kh / 2,
                    Padding::Same => {
                        return Err(
                            self.fail(n, "padding `same` with an even kernel or a stride > 1")
                        )
                    }
                };
                if bias.data.len() != co {
                    return Err(self.fail(
                        n,
                        format!("bias of {} values for {co} channels", bias.data.len()),
                    ));
                }
                let has_bias = bias.data.iter().any(|&x| x != 0.0);
                let path = self.push(
                    n,
                    list,
                    LayerKind::Conv2d {
                        out: co,
                        kernel: kh,
                        stride: stride[0],
                        padding: pad,
                        bias: has_bias,
                    },
                );
                let wv: Vec<f64> = weight.data.iter().map(|x| x * self.gain).collect();
                self.params.insert(
                    format!("{path}.weight"),
                    Tensor::from_vec(&weight.shape, wv),
                );
                if has_bias {
                    self.params.insert(
                        format!("{path}.bias"),
                        Tensor::from_vec(&[co], bias.data.clone()),
                    );
                }
                self.gain = 1.0;
                let (s, k) = (stride[0], kh);
                if h + 2 * pad < k || w + 2 * pad < k {
                    return Err(self.fail(n, format!("kernel {k} does not fit the {h}×{w} input")));
                }
                self.shape = vec![co, (h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1];
            }
            Prim::AvgPool2d {
                kernel,
                stride,
                padding,
            }
            | Prim::SumPool2d {
                kernel,
                stride,
                padding,
            } => {
                if kernel[0] != kernel[1] || stride[0] != stride[1] {
                    return Err(self.fail(
                        n,
                        format!(
                            "kernel {}, stride {}: snnc's pooling is square",
                            l(kernel),
                            l(stride)
                        ),
                    ));
                }
                // Padded positions count as zeros (the divisor stays k²).
                if padding[0] != padding[1] || 2 * padding[0] > kernel[0] {
                    return Err(self.fail(
                        n,
                        format!(
                            "padding {}: snnc's pooling pads every side alike, by at most \
                             half the kernel",
                            l(padding)
                        ),
                    ));
                }
                let &[c, h, w] = self.shape.as_slice() else {
                    return Err(
                        self.fail(n, format!("input of shape {}, not C×H×W", l(&self.shape)))
                    );
                };
                let (k, s, p) = (kernel[0], stride[0], padding[0]);
                let (h, w) = (h + 2 * p, w + 2 * p);
                if k == 0 || s == 0 || h < k || w < k {
                    return Err(self.fail(n, format!("kernel {k}, stride {s} on a {h}×{w} input")));
                }
                self.push(
                    n,
                    list,
                    LayerKind::AvgPool {
                        kernel: k,
                        stride: s,
                        padding: p,
                    },
                );
                if matches!(node.prim, Prim::SumPool2d { .. }) {
                    self.gain *= (k * k) as f64;
                    self.notes.push(format!(
                        "SumPool2d `{n}` = avgpool × {}: the factor goes into the next layer",
                        k * k
                    ));
                }
                self.shape = vec![c, (h - k) / s + 1, (w - k) / s + 1];
            }
            Prim::Flatten {
                input_type,
                start_dim,
                end_dim,
            } => {
                let rank = self.shape.len() as i64;
                let full = (*start_dim == 0 && (*end_dim == -1 || *end_dim == rank - 1))
                    || (*start_dim == 1
                        && *end_dim == -1
                        && input_type
                            .as_ref()
                            .is_none_or(|t| t.len() as i64 == rank + 1));
                if !full {
                    return Err(self.fail(
                        n,
                        format!(
                            "start_dim {start_dim}, end_dim {end_dim} on a {} input does not flatten to one axis; snnc's flatten does",
                            l(&self.shape)
                        ),
                    ));
                }
                if self.shape.len() > 1 {
                    self.push(n, list, LayerKind::Flatten);
                    self.shape = vec![self.shape.iter().product()];
                }
            }
            Prim::Threshold { threshold } => {
                let th = self.uniform(n, "threshold", threshold)?;
                let opts = NeuronOpts {
                    lambda: Some(0.0),
                    theta: Some(tidy(th / self.gain)),
                    ..NeuronOpts::default()
                };
                self.neuron(n, list, NeuronKind::Lif, opts, &node)?;
            }
            Prim::If {
                r,
                v_threshold,
                v_reset,
            } => {
                let r = self.uniform(n, "r", r)?;
                let th = self.uniform(n, "v_threshold", v_threshold)?;
                let vr = self.uniform(n, "v_reset", v_reset)?;
                let g = self.dt * r * self.gain;
                if g <= 0.0 {
                    return Err(self.fail(n, format!("dt·R = {} is not positive", self.dt * r)));
                }
                let opts = self.reset_opts(&node, th / g, vr / g, None);
                self.neuron(n, list, NeuronKind::If, opts, &node)?;
            }
            Prim::Lif {
                tau,
                r,
                v_leak,
                v_threshold,
                v_reset,
            } => {
                let tau = self.uniform(n, "tau", tau)?;
                let r = self.uniform(n, "r", r)?;
                let leak = self.uniform(n, "v_leak", v_leak)?;
                let th = self.uniform(n, "v_threshold", v_threshold)?;
                let vr = self.uniform(n, "v_reset", v_reset)?;
                if leak != 0.0 {
                    return Err(self.fail(n, format!("v_leak = {leak}: a constant drive has no snnc equivalent (snnc's neurons leak to 0)")));
                }
                if tau.is_nan() || tau < self.dt {
                    return Err(self.fail(
                        n,
                        format!("tau = {tau} < dt = {}: forward Euler at this dt would give λ = 1 − dt/τ < 0 (pass the dt the graph was made for, --dt)", self.dt),
                    ));
                }
                let lambda = tidy(1.0 - self.dt / tau);
                let g = self.dt * r / tau * self.gain;
                if g <= 0.0 {
                    return Err(self.fail(
                        n,
                        format!(
                            "the input gain dt·R/τ = {} is not positive",
                            self.dt * r / tau
                        ),
                    ));
                }
                let opts = self.reset_opts(&node, th / g, vr / g, Some(lambda));
                let kind = if lambda == 1.0 {
                    NeuronKind::If
                } else {
                    NeuronKind::Lif
                };
                let opts = if kind == NeuronKind::If {
                    NeuronOpts {
                        lambda: None,
                        ..opts
                    }
                } else {
                    opts
                };
                self.neuron(n, list, kind, opts, &node)?;
            }
            Prim::Graph(_) | Prim::Other { .. } => {
                return Err(self.fail(n, format!("internal: `{ty}` left after inlining")))
            }
        }
        Ok(())
    }

    fn reset_opts(&self, node: &Node, theta: f64, v_reset: f64, lambda: Option<f64>) -> NeuronOpts {
        let m = &node.metadata;
        let soft = m.get("snnc_reset").map(String::as_str) == Some("subtract");
        NeuronOpts {
            lambda,
            theta: Some(tidy(theta)),
            reset: Some(if soft { Reset::Soft } else { Reset::Hard }),
            v_reset: if soft || v_reset == 0.0 {
                None
            } else {
                Some(tidy(v_reset))
            },
            detach_reset: m.get("snnc_detach_reset").and_then(|s| s.parse().ok()),
            surrogate: m
                .get("snnc_surrogate")
                .and_then(|s| SurrogateKind::from_name(s)),
            alpha: m.get("snnc_alpha").and_then(|s| s.parse().ok()),
        }
    }

    fn neuron(
        &mut self,
        n: &str,
        list: &mut List,
        kind: NeuronKind,
        opts: NeuronOpts,
        _node: &Node,
    ) -> Result<(), NirError> {
        if let Some(t) = opts.theta {
            if !(t > 0.0 && t.is_finite()) {
                return Err(self.fail(n, format!("threshold {t} after scaling; snnc needs θ > 0")));
            }
        }
        let path = self.push(n, list, LayerKind::Neuron { kind, opts });
        let _ = path;
        self.gain = 1.0;
        Ok(())
    }

    /// When every neuron layer has the same options, they go to one
    /// `neuron` line and the layers are bare `lif`/`if`.
    fn hoist_neuron_defaults(&self, model: &mut Model) {
        fn all(list: &mut [Layer], f: &mut dyn FnMut(&mut NeuronKind, &mut NeuronOpts)) {
            for l in list {
                match &mut l.kind {
                    LayerKind::Neuron { kind, opts } => f(kind, opts),
                    LayerKind::Residual { main, shortcut } => {
                        all(main, f);
                        all(shortcut, f);
                    }
                    _ => {}
                }
            }
        }
        let strip = |o: &NeuronOpts| NeuronOpts { lambda: None, ..*o };
        let mut common: Option<NeuronOpts> = None;
        let mut same = true;
        let mut lambda: Option<Option<f64>> = None;
        let mut same_lambda = true;
        all(&mut model.layers, &mut |k, o| {
            match &common {
                None => common = Some(strip(o)),
                Some(c) => same &= *c == strip(o),
            }
            if *k == NeuronKind::Lif {
                match lambda {
                    None => lambda = Some(o.lambda),
                    Some(l) => same_lambda &= l == o.lambda,
                }
            }
        });
        let Some(mut common) = common else { return };
        if !same {
            return;
        }
        if same_lambda {
            common.lambda = lambda.flatten();
        }
        // Leave out what equals the paper's defaults.
        let p = crate::model::Neuron::PAPER;
        let defaults = NeuronOpts {
            lambda: common.lambda.filter(|&l| l != p.lambda),
            theta: common.theta.filter(|&t| t != p.theta),
            reset: common.reset.filter(|&r| r != p.reset),
            v_reset: common.v_reset.filter(|&v| v != p.v_reset),
            detach_reset: common.detach_reset.filter(|&d| d != p.detach_reset),
            surrogate: common.surrogate.filter(|&s| s != p.surrogate.kind),
            alpha: common.alpha.filter(|&a| a != p.surrogate.alpha),
        };
        let hoist_lambda = same_lambda;
        all(&mut model.layers, &mut |_, o| {
            let lambda = if hoist_lambda { None } else { o.lambda };
            *o = NeuronOpts {
                lambda,
                ..NeuronOpts::default()
            };
        });
        model.neuron = defaults;
    }
}

/// A list of numbers as `[1, 2]` for messages (`shape::list` for any
/// displayable element).
fn l<T: std::fmt::Display>(v: &[T]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
