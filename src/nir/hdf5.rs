//! NIR files: HDF5 as `nir.write` writes it and `nir.read` reads it
//! (`nir/serialization.py` in the `nir` package, 1.0.x):
//!
//! ```text
//! /version            string (nir's version)
//! /node/type          "NIRGraph"
//! /node/edges         N×2 strings (source, target)
//! /node/nodes/<name>/type      the primitive's class name ("Affine", "LIF", …)
//! /node/nodes/<name>/<field>   one dataset per dataclass field (weight, tau, …)
//! /node/nodes/<name>/metadata/ optional group of metadata entries
//! ```
//!
//! Strings are variable-length UTF-8 (h5py's `string_dtype()`); arrays keep
//! their dtype (h5py writes them gzip-compressed and chunked, which the
//! reader here handles). Nested graphs are `NIRGraph` nodes with their own
//! `nodes` and `edges`.
//!
//! The HDF5 layer is the `hdf5-pure` crate (pure Rust, no libhdf5).

use super::{Arr, NirError, NirGraph, Node, Padding, Prim};
use hdf5_pure::{DType, FileBuilder, Group, GroupBuilder};
use std::collections::BTreeMap;
use std::path::Path;

/// The NIR format version written to `/version`: files follow nir 1.0.
pub const VERSION: &str = "1.0.0";

// ---------------------------------------------------------------- reading

/// Reads a NIR file (the graph under `/node`). Errors name the file and the
/// node (as a path of node names) and the field.
pub fn read(path: &Path) -> Result<NirGraph, NirError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| NirError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let not_nir = |why: &str| NirError::NotNir {
        file: file.clone(),
        why: why.to_string(),
    };
    let in_file = |msg: &str| NirError::File {
        file: file.clone(),
        msg: msg.to_string(),
    };
    if !hdf5_pure::is_hdf5_bytes(&bytes) {
        return Err(not_nir(
            "it is not HDF5 (NIR files are written by `nir.write` or `snnc export --format nir`)",
        ));
    }
    let h5 = hdf5_pure::File::from_bytes(bytes)
        .map_err(|e| in_file(&format!("cannot read HDF5: {e}")))?;
    let root = h5.root();
    if !names(&root, false, &file, "/")?.iter().any(|g| g == "node") {
        return Err(not_nir("it has no `node` group"));
    }
    let node = root
        .group("node")
        .map_err(|e| in_file(&format!("group `node`: {e}")))?;
    let r = Reader { file: &file };
    match r.node(&node, "node")? {
        Node {
            prim: Prim::Graph(mut g),
            metadata,
        } => {
            g.metadata = metadata;
            Ok(g)
        }
        n => Err(in_file(&format!(
            "the top-level node is a `{}`, not a NIRGraph",
            n.prim.type_name()
        ))),
    }
}

fn names(g: &Group, datasets: bool, file: &str, at: &str) -> Result<Vec<String>, NirError> {
    let r = if datasets { g.datasets() } else { g.groups() };
    r.map_err(|e| NirError::File {
        file: file.to_string(),
        msg: format!("cannot list `{at}`: {e}"),
    })
}

struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, at: &str, msg: impl std::fmt::Display) -> NirError {
        NirError::Node {
            file: self.file.to_string(),
            at: at.to_string(),
            msg: msg.to_string(),
        }
    }

    fn has(&self, g: &Group, at: &str, field: &str) -> Result<bool, NirError> {
        Ok(names(g, true, self.file, at)?.iter().any(|d| d == field))
    }

    fn dataset(&self, g: &Group, at: &str, field: &str) -> Result<hdf5_pure::Dataset, NirError> {
        if !self.has(g, at, field)? {
            return Err(self.err(at, format!("missing field `{field}`")));
        }
        g.dataset(field)
            .map_err(|e| self.err(at, format!("field `{field}`: {e}")))
    }

    fn string(&self, g: &Group, at: &str, field: &str) -> Result<String, NirError> {
        let d = self.dataset(g, at, field)?;
        let v = d
            .read_string()
            .map_err(|e| self.err(at, format!("field `{field}` is not a string: {e}")))?;
        match v.as_slice() {
            [s] => Ok(s.trim_end_matches('\0').to_string()),
            _ => Err(self.err(
                at,
                format!("field `{field}` should be one string, has {}", v.len()),
            )),
        }
    }

    fn floats(&self, g: &Group, at: &str, field: &str) -> Result<Arr, NirError> {
        let d = self.dataset(g, at, field)?;
        let shape: Vec<usize> = d
            .shape()
            .map_err(|e| self.err(at, format!("field `{field}`: {e}")))?
            .iter()
            .map(|&x| x as usize)
            .collect();
        let dt = d
            .dtype()
            .map_err(|e| self.err(at, format!("field `{field}`: {e}")))?;
        let data = match dt {
            DType::F32 | DType::F64 => d.read_f64(),
            DType::I8 | DType::I16 | DType::I32 | DType::I64 => d
                .read_i64()
                .map(|v| v.into_iter().map(|x| x as f64).collect()),
            DType::U8 | DType::U16 | DType::U32 | DType::U64 => d
                .read_u64()
                .map(|v| v.into_iter().map(|x| x as f64).collect()),
            other => {
                return Err(self.err(
                    at,
                    format!("field `{field}` should be numbers, is of type {other}"),
                ))
            }
        }
        .map_err(|e| self.err(at, format!("field `{field}`: {e}")))?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(self.err(
                at,
                format!(
                    "field `{field}`: {} values for shape {}",
                    data.len(),
                    crate::shape::list(&shape)
                ),
            ));
        }
        if let Some(x) = data.iter().find(|x| !x.is_finite()) {
            return Err(self.err(at, format!("field `{field}` holds {x}")));
        }
        Ok(Arr { shape, data })
    }

    fn ints(&self, g: &Group, at: &str, field: &str) -> Result<Vec<i64>, NirError> {
        let a = self.floats(g, at, field)?;
        a.data
            .iter()
            .map(|&x| {
                if x.fract() == 0.0 {
                    Ok(x as i64)
                } else {
                    Err(self.err(at, format!("field `{field}` should be integers, holds {x}")))
                }
            })
            .collect()
    }

    fn sizes(&self, g: &Group, at: &str, field: &str) -> Result<Vec<usize>, NirError> {
        self.ints(g, at, field)?
            .into_iter()
            .map(|x| {
                usize::try_from(x)
                    .map_err(|_| self.err(at, format!("field `{field}` holds {x} (< 0)")))
            })
            .collect()
    }

    /// An int or an (int, int) pair, as NIR's 2-D fields allow.
    fn pair(&self, g: &Group, at: &str, field: &str) -> Result<[usize; 2], NirError> {
        match self.sizes(g, at, field)?.as_slice() {
            [a] => Ok([*a, *a]),
            [a, b] => Ok([*a, *b]),
            v => Err(self.err(
                at,
                format!("field `{field}` should be 1 or 2 integers, has {}", v.len()),
            )),
        }
    }

    fn node(&self, g: &Group, at: &str) -> Result<Node, NirError> {
        let ty = self.string(g, at, "type")?;
        let mut metadata = BTreeMap::new();
        if names(g, false, self.file, at)?
            .iter()
            .any(|s| s == "metadata")
        {
            let m = g
                .group("metadata")
                .map_err(|e| self.err(at, format!("metadata: {e}")))?;
            for k in names(&m, true, self.file, at)? {
                let d = m
                    .dataset(&k)
                    .map_err(|e| self.err(at, format!("metadata `{k}`: {e}")))?;
                // Strings as they are, numbers as text; other entries skipped.
                let v = match d.read_string() {
                    Ok(v) if v.len() == 1 => v[0].clone(),
                    _ => match d.read_f64() {
                        Ok(v) if v.len() == 1 => v[0].to_string(),
                        _ => continue,
                    },
                };
                metadata.insert(k, v);
            }
        }
        let f = |field: &str| self.floats(g, at, field);
        let opt_f = |field: &str, like: &Arr| -> Result<Arr, NirError> {
            if self.has(g, at, field)? {
                self.floats(g, at, field)
            } else {
                Ok(Arr::full(&like.shape, 0.0))
            }
        };
        let prim = match ty.as_str() {
            "Input" => Prim::Input {
                shape: self.sizes(g, at, "shape")?,
            },
            "Output" => Prim::Output {
                shape: self.sizes(g, at, "shape")?,
            },
            "Affine" => Prim::Affine {
                weight: f("weight")?,
                bias: f("bias")?,
            },
            "Linear" => Prim::Linear {
                weight: f("weight")?,
            },
            "Scale" => Prim::Scale { scale: f("scale")? },
            "Conv2d" => {
                let padding = if self.string(g, at, "padding").is_ok() {
                    match self.string(g, at, "padding")?.as_str() {
                        "same" => Padding::Same,
                        "valid" => Padding::Valid,
                        s => {
                            return Err(self.err(
                                at,
                                format!("Conv2d padding `{s}` (NIR allows same, valid or ints)"),
                            ))
                        }
                    }
                } else {
                    Padding::Explicit(self.pair(g, at, "padding")?)
                };
                let input_shape = if self.has(g, at, "input_shape")? {
                    Some(self.pair(g, at, "input_shape")?)
                } else {
                    None
                };
                let weight = f("weight")?;
                let bias = if self.has(g, at, "bias")? {
                    f("bias")?
                } else {
                    Arr::full(&weight.shape[..1.min(weight.shape.len())], 0.0)
                };
                Prim::Conv2d {
                    input_shape,
                    weight,
                    stride: self.pair(g, at, "stride")?,
                    padding,
                    dilation: self.pair(g, at, "dilation")?,
                    groups: self.sizes(g, at, "groups")?.first().copied().unwrap_or(1),
                    bias,
                }
            }
            "Flatten" => Prim::Flatten {
                input_type: if self.has(g, at, "input_type")? {
                    Some(self.sizes(g, at, "input_type")?)
                } else {
                    None
                },
                start_dim: self.ints(g, at, "start_dim")?.first().copied().unwrap_or(1),
                end_dim: self.ints(g, at, "end_dim")?.first().copied().unwrap_or(-1),
            },
            "AvgPool2d" | "SumPool2d" => {
                let (kernel, stride, padding) = (
                    self.pair(g, at, "kernel_size")?,
                    self.pair(g, at, "stride")?,
                    self.pair(g, at, "padding")?,
                );
                if ty == "AvgPool2d" {
                    Prim::AvgPool2d {
                        kernel,
                        stride,
                        padding,
                    }
                } else {
                    Prim::SumPool2d {
                        kernel,
                        stride,
                        padding,
                    }
                }
            }
            "Threshold" => Prim::Threshold {
                threshold: f("threshold")?,
            },
            "IF" => {
                let v_threshold = f("v_threshold")?;
                Prim::If {
                    r: f("r")?,
                    v_reset: opt_f("v_reset", &v_threshold)?,
                    v_threshold,
                }
            }
            "LIF" => {
                let v_threshold = f("v_threshold")?;
                Prim::Lif {
                    tau: f("tau")?,
                    r: f("r")?,
                    v_leak: f("v_leak")?,
                    v_reset: opt_f("v_reset", &v_threshold)?,
                    v_threshold,
                }
            }
            "NIRGraph" => {
                let nodes_g = g
                    .group("nodes")
                    .map_err(|e| self.err(at, format!("group `nodes`: {e}")))?;
                let mut nodes = BTreeMap::new();
                for name in names(&nodes_g, false, self.file, at)? {
                    let sub = nodes_g
                        .group(&name)
                        .map_err(|e| self.err(at, format!("node `{name}`: {e}")))?;
                    let path = if at == "node" {
                        name.clone()
                    } else {
                        format!("{at}.{name}")
                    };
                    nodes.insert(name, self.node(&sub, &path)?);
                }
                let edges = if self.has(g, at, "edges")? {
                    let d = self.dataset(g, at, "edges")?;
                    let flat = d
                        .read_string()
                        .map_err(|e| self.err(at, format!("field `edges`: {e}")))?;
                    if flat.len() % 2 != 0 {
                        return Err(self.err(at, "field `edges` is not an N×2 array"));
                    }
                    flat.chunks(2)
                        .map(|p| {
                            (
                                p[0].trim_end_matches('\0').to_string(),
                                p[1].trim_end_matches('\0').to_string(),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Prim::Graph(NirGraph {
                    nodes,
                    edges,
                    metadata: BTreeMap::new(),
                })
            }
            "CubaLIF" | "CubaLI" | "LI" | "I" | "Delay" | "Conv1d" => Prim::Other { type_name: ty },
            other => {
                return Err(self.err(
                    at,
                    format!("unknown NIR primitive `{other}` (not in NIR 1.0)"),
                ))
            }
        };
        Ok(Node { prim, metadata })
    }
}

// ---------------------------------------------------------------- writing

/// Writes `g` as a NIR file that `nir.read` loads.
/// Weights are f32 unless `wide_weights` (f64: a folded batch norm kept
/// exactly); neuron constants are always f64.
pub fn write(path: &Path, g: &NirGraph, wide_weights: bool) -> Result<(), NirError> {
    let bytes = to_bytes(g, wide_weights)?;
    Ok(crate::runtime::checkpoint::write_atomic(path, &bytes)?)
}

pub fn to_bytes(g: &NirGraph, wide_weights: bool) -> Result<Vec<u8>, NirError> {
    let mut b = FileBuilder::new();
    b.create_dataset("version")
        .with_vlen_strings(&[VERSION])
        .with_shape(&[]);
    let mut node = b.create_group("node");
    write_graph(&mut node, g, wide_weights);
    b.add_group(node.finish());
    b.finish().map_err(|e| NirError::Encode(e.to_string()))
}

fn string(g: &mut GroupBuilder, k: &str, v: &str) {
    g.create_dataset(k).with_vlen_strings(&[v]).with_shape(&[]);
}

/// Weights as f32 (what snnc trains in), neuron constants (`wide`) as f64 so
/// that τ, R and thresholds keep the discrete model's λ and θ exactly.
fn arr_as(g: &mut GroupBuilder, k: &str, a: &Arr, wide: bool) {
    let shape: Vec<u64> = a.shape.iter().map(|&x| x as u64).collect();
    let d = g.create_dataset(k);
    if wide {
        d.with_f64_data(&a.data).with_shape(&shape);
    } else {
        let data: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
        d.with_f32_data(&data).with_shape(&shape);
    }
    // Neuron parameters repeat one value per neuron: compress them (h5py
    // compresses every array it writes the same way, gzip).
    if a.data.len() >= 256 {
        d.with_chunks(&shape).with_deflate(4);
    }
}

fn wide(g: &mut GroupBuilder, k: &str, a: &Arr) {
    arr_as(g, k, a, true)
}

fn ints(g: &mut GroupBuilder, k: &str, v: &[usize]) {
    let data: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    g.create_dataset(k).with_i64_data(&data);
}

fn int(g: &mut GroupBuilder, k: &str, v: i64) {
    g.create_dataset(k).with_i64_data(&[v]).with_shape(&[]);
}

fn write_meta(g: &mut GroupBuilder, m: &BTreeMap<String, String>) {
    if m.is_empty() {
        return;
    }
    let mut mg = g.create_group("metadata");
    for (k, v) in m {
        string(&mut mg, k, v);
    }
    g.add_group(mg.finish());
}

fn write_graph(g: &mut GroupBuilder, graph: &NirGraph, ww: bool) {
    string(g, "type", "NIRGraph");
    let flat: Vec<&str> = graph
        .edges
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    g.create_dataset("edges")
        .with_vlen_strings(&flat)
        .with_shape(&[graph.edges.len() as u64, 2]);
    let mut nodes = g.create_group("nodes");
    for (name, n) in &graph.nodes {
        let mut ng = nodes.create_group(name);
        write_node(&mut ng, n, ww);
        nodes.add_group(ng.finish());
    }
    g.add_group(nodes.finish());
    write_meta(g, &graph.metadata);
}

fn write_node(g: &mut GroupBuilder, n: &Node, ww: bool) {
    let arr = |g: &mut GroupBuilder, k: &str, a: &Arr| arr_as(g, k, a, ww);
    match &n.prim {
        Prim::Graph(sub) => {
            write_graph(g, sub, ww);
            write_meta(g, &n.metadata);
            return;
        }
        p => string(g, "type", p.type_name()),
    }
    match &n.prim {
        Prim::Input { shape } | Prim::Output { shape } => ints(g, "shape", shape),
        Prim::Affine { weight, bias } => {
            arr(g, "weight", weight);
            arr(g, "bias", bias);
        }
        Prim::Linear { weight } => arr(g, "weight", weight),
        Prim::Scale { scale } => wide(g, "scale", scale),
        Prim::Conv2d {
            input_shape,
            weight,
            stride,
            padding,
            dilation,
            groups,
            bias,
        } => {
            if let Some(s) = input_shape {
                ints(g, "input_shape", s);
            }
            arr(g, "weight", weight);
            arr(g, "bias", bias);
            ints(g, "stride", stride);
            match padding {
                Padding::Explicit(p) => ints(g, "padding", p),
                Padding::Same => string(g, "padding", "same"),
                Padding::Valid => string(g, "padding", "valid"),
            }
            ints(g, "dilation", dilation);
            int(g, "groups", *groups as i64);
        }
        Prim::Flatten {
            input_type,
            start_dim,
            end_dim,
        } => {
            if let Some(t) = input_type {
                ints(g, "input_type", t);
            }
            int(g, "start_dim", *start_dim);
            int(g, "end_dim", *end_dim);
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
            ints(g, "kernel_size", kernel);
            ints(g, "stride", stride);
            ints(g, "padding", padding);
        }
        Prim::Threshold { threshold } => wide(g, "threshold", threshold),
        Prim::If {
            r,
            v_threshold,
            v_reset,
        } => {
            wide(g, "r", r);
            wide(g, "v_threshold", v_threshold);
            wide(g, "v_reset", v_reset);
        }
        Prim::Lif {
            tau,
            r,
            v_leak,
            v_threshold,
            v_reset,
        } => {
            wide(g, "tau", tau);
            wide(g, "r", r);
            wide(g, "v_leak", v_leak);
            wide(g, "v_threshold", v_threshold);
            wide(g, "v_reset", v_reset);
        }
        Prim::Graph(_) | Prim::Other { .. } => {}
    }
    write_meta(g, &n.metadata);
}
