//! Parameter files: safetensors with snnc's parameter names and a CRC-32
//! per tensor (`snnc check --params` lists the names), read and written for
//! `--params`, `--init`, `import` and `export`.

use crate::init::Params;
use crate::shape::{dims, Analysis};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Named tensors, in name order.
pub type Tensors = BTreeMap<String, Tensor<f64>>;

/// The format tag of a parameter file (safetensors metadata `format`).
pub const PARAMS_FORMAT: &str = "snnc-params-1";

// ------------------------------------------------------------ tensor files

/// The tensors of a safetensors file as f64, with its metadata. Accepts
/// f32, f64 and integer tensors.
pub fn read_tensors(path: &Path) -> Result<(Tensors, HashMap<String, String>), String> {
    let file = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("error: cannot read `{file}`: {e}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("error: `{file}` is not a safetensors file: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("error: `{file}` is not a safetensors file: {e}"))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let crcs: Option<BTreeMap<String, String>> = meta
        .get("crc32")
        .map(|c| serde_json::from_str(c))
        .transpose()
        .map_err(|e| format!("error: `{file}`: bad `crc32` in its metadata: {e}"))?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        if let Some(crcs) = &crcs {
            let computed = format!("{:08x}", crc32fast::hash(t.data()));
            match crcs.get(&name) {
                Some(stored) if *stored == computed => {}
                Some(stored) => {
                    return Err(format!(
                        "error: `{file}` is damaged: tensor `{name}` fails its checksum \
                         (stored {stored}, computed {computed})"
                    ))
                }
                None => {
                    return Err(format!(
                        "error: `{file}` is damaged: tensor `{name}` has no checksum"
                    ))
                }
            }
        }
        let d = t.data();
        let data: Vec<f64> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| f64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
            Dtype::U8 => d.iter().map(|&b| f64::from(b)).collect(),
            other => {
                return Err(format!(
                    "error: `{file}`: tensor `{name}` is {other:?}; snnc reads f32, f64, i64, \
                     i32 and u8"
                ))
            }
        };
        if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(format!(
                "error: `{file}`: tensor `{name}` holds {x} (element {i})"
            ));
        }
        out.insert(name, Tensor::from_vec(t.shape(), data));
    }
    Ok((out, meta))
}

/// Writes tensors (as f32, or f64 with `wide`) with a CRC-32 per tensor in
/// the metadata (`crc32`, like checkpoints), atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor<f64>>,
    mut meta: HashMap<String, String>,
    wide: bool,
) -> Result<(), String> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes = if wide {
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                t.data
                    .iter()
                    .flat_map(|&x| (x as f32).to_le_bytes())
                    .collect()
            };
            (n.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let crcs: BTreeMap<&str, String> = owned
        .iter()
        .map(|(n, _, b)| (n.as_str(), format!("{:08x}", crc32fast::hash(b))))
        .collect();
    meta.insert(
        "crc32".into(),
        serde_json::to_string(&crcs).expect("serialisable"),
    );
    let dtype = if wide { Dtype::F64 } else { Dtype::F32 };
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(dtype, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| format!("error: cannot encode `{}`: {e}", path.display()))?;
    crate::runtime::checkpoint::write_atomic(path, &data)
}

// -------------------------------------------------------------- parameters

/// Every parameter of the model as a table: name, shape, layer, trained or
/// statistic.
pub fn param_table(a: &Analysis, json: bool) -> String {
    let mut out = String::new();
    use std::fmt::Write;
    if !json {
        let _ = writeln!(
            out,
            "{:<28} {:>16} {:<22} kind",
            "parameter", "shape", "layer"
        );
    }
    for l in &a.layers {
        for p in &l.params {
            let kind = if p.trainable { "trained" } else { "statistic" };
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "name": p.name, "shape": p.shape, "layer": l.path,
                        "kind": l.keyword, "trainable": p.trainable,
                    })
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:<28} {:>16} {:<22} {}",
                    p.name,
                    dims(&p.shape),
                    format!("{} {}", l.path, l.keyword),
                    kind
                );
            }
        }
    }
    out
}

/// Loads the parameters of the model analysed as `a` from a parameter file
/// (`snnc import`, or any safetensors file with snnc's names), a checkpoint
/// file or a run folder. Every parameter must be there with its shape;
/// an unknown name is an error too (a misnamed tensor would otherwise be
/// silently replaced).
pub fn load_params(path: &Path, a: &Analysis) -> Result<Params, String> {
    let file = crate::runtime::checkpoint::file_of(path);
    let (tensors, meta) = read_tensors(&file)?;
    let is_checkpoint = meta
        .get("format")
        .is_some_and(|f| f.starts_with("snnc-checkpoint"));
    let mut params: Params = HashMap::new();
    if is_checkpoint {
        // Verifies the checkpoint's own checksums (metadata included).
        let ck = crate::runtime::checkpoint::load(&file)?;
        for (k, v) in ck.params {
            params.insert(k, v.cast());
        }
    } else {
        for (k, v) in tensors {
            let k = k.strip_prefix("param/").map(str::to_string).unwrap_or(k);
            params.insert(k, v);
        }
    }
    let shown = file.display();
    let mut missing = Vec::new();
    for p in a.params() {
        match params.get(&p.name) {
            None => missing.push(p.name.clone()),
            Some(t) if t.shape != p.shape => {
                return Err(format!(
                    "error: `{shown}`: `{}` has shape {}, the model needs {}",
                    p.name,
                    dims(&t.shape),
                    dims(&p.shape)
                ))
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "error: `{shown}` lacks parameter(s) {} (`snnc check MODEL --params` lists the \
             names the model needs)",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let known: std::collections::HashSet<&str> = a.params().map(|p| p.name.as_str()).collect();
    let mut extra: Vec<&String> = params
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    extra.sort();
    if let Some(e) = extra.first() {
        return Err(format!(
            "error: `{shown}` has tensor `{e}`, which the model has no parameter for{} \
             (`snnc check MODEL --params` lists the names)",
            if extra.len() > 1 {
                format!(" ({} such tensors)", extra.len())
            } else {
                String::new()
            }
        ));
    }
    Ok(params)
}

/// Writes a parameter file (f32, snnc's names, CRC-32 per tensor).
pub fn save_params(path: &Path, params: &Params, model: &str) -> Result<(), String> {
    let t: BTreeMap<String, Tensor<f64>> =
        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let meta = HashMap::from([
        ("format".to_string(), PARAMS_FORMAT.to_string()),
        ("model".to_string(), model.to_string()),
    ]);
    write_tensors(path, &t, meta, false)
}
