//! Parameter files: safetensors with snnc's parameter names and a CRC-32
//! per tensor (`snnc check --params` lists the names), read and written for
//! `--params`, `--init`, `import` and `export`.

use crate::init::Params;
use crate::shape::{dims, Analysis};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A tensor or parameter file that could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot read `{}`: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is not a safetensors file: {source}", file.display())]
    NotSafetensors {
        file: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("`{}`: bad `crc32` in its metadata: {source}", file.display())]
    BadChecksums {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "`{}` is damaged: tensor `{name}` fails its checksum (stored {stored}, computed {computed})",
        file.display()
    )]
    Checksum {
        file: PathBuf,
        name: String,
        stored: String,
        computed: String,
    },
    #[error("`{}` is damaged: tensor `{name}` has no checksum", file.display())]
    NoChecksum { file: PathBuf, name: String },
    #[error(
        "`{}`: tensor `{name}` is {dtype}; snnc reads f32, f64, i64, i32 and u8",
        file.display()
    )]
    Dtype {
        file: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("`{}`: tensor `{name}` holds {value} (element {index})", file.display())]
    NonFinite {
        file: PathBuf,
        name: String,
        value: f64,
        index: usize,
    },
    #[error("cannot encode `{}`: {source}", file.display())]
    Encode {
        file: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error(transparent)]
    Checkpoint(#[from] crate::runtime::checkpoint::CheckpointError),
    #[error("`{}`: `{name}` has shape {}, the model needs {}", file.display(), dims(has), dims(needs))]
    Shape {
        file: PathBuf,
        name: String,
        has: Vec<usize>,
        needs: Vec<usize>,
    },
    #[error(
        "`{}` lacks parameter(s) {} (`snnc check MODEL --params` lists the names the model needs)",
        file.display(),
        names.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
    )]
    Missing { file: PathBuf, names: Vec<String> },
    #[error(
        "`{}` has tensor `{first}`, which the model has no parameter for{} \
         (`snnc check MODEL --params` lists the names)",
        file.display(),
        if *count > 1 { format!(" ({count} such tensors)") } else { String::new() }
    )]
    Unknown {
        file: PathBuf,
        first: String,
        count: usize,
    },
}

/// Named tensors, in name order.
pub type Tensors = BTreeMap<String, Tensor<f64>>;

/// The format tag of a parameter file (safetensors metadata `format`).
pub const PARAMS_FORMAT: &str = "snnc-params-1";

// ------------------------------------------------------------ tensor files

/// The tensors of a safetensors file as f64, with its metadata. Accepts
/// f32, f64 and integer tensors.
pub fn read_tensors(path: &Path) -> Result<(Tensors, HashMap<String, String>), ParamsError> {
    let file = || path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|e| ParamsError::Read {
        file: file(),
        source: e,
    })?;
    let not_st = |e| ParamsError::NotSafetensors {
        file: file(),
        source: e,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(not_st)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(not_st)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let crcs: Option<BTreeMap<String, String>> = meta
        .get("crc32")
        .map(|c| serde_json::from_str(c))
        .transpose()
        .map_err(|e| ParamsError::BadChecksums {
            file: file(),
            source: e,
        })?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        if let Some(crcs) = &crcs {
            let computed = format!("{:08x}", crc32fast::hash(t.data()));
            match crcs.get(&name) {
                Some(stored) if *stored == computed => {}
                Some(stored) => {
                    return Err(ParamsError::Checksum {
                        file: file(),
                        name,
                        stored: stored.clone(),
                        computed,
                    })
                }
                None => return Err(ParamsError::NoChecksum { file: file(), name }),
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
                return Err(ParamsError::Dtype {
                    file: file(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(ParamsError::NonFinite {
                file: file(),
                name,
                value: *x,
                index: i,
            });
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
) -> Result<(), ParamsError> {
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
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| ParamsError::Encode {
        file: path.to_path_buf(),
        source: e,
    })?;
    Ok(crate::runtime::checkpoint::write_atomic(path, &data)?)
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
pub fn load_params(path: &Path, a: &Analysis) -> Result<Params, ParamsError> {
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
    let mut missing = Vec::new();
    for p in a.params() {
        match params.get(&p.name) {
            None => missing.push(p.name.clone()),
            Some(t) if t.shape != p.shape => {
                return Err(ParamsError::Shape {
                    file,
                    name: p.name.clone(),
                    has: t.shape.clone(),
                    needs: p.shape.clone(),
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(ParamsError::Missing {
            file,
            names: missing,
        });
    }
    let known: std::collections::HashSet<&str> = a.params().map(|p| p.name.as_str()).collect();
    let mut extra: Vec<&String> = params
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    extra.sort();
    if let Some(e) = extra.first() {
        return Err(ParamsError::Unknown {
            file,
            first: e.to_string(),
            count: extra.len(),
        });
    }
    Ok(params)
}

/// Writes a parameter file (f32, snnc's names, CRC-32 per tensor).
pub fn save_params(path: &Path, params: &Params, model: &str) -> Result<(), ParamsError> {
    let t: BTreeMap<String, Tensor<f64>> =
        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let meta = HashMap::from([
        ("format".to_string(), PARAMS_FORMAT.to_string()),
        ("model".to_string(), model.to_string()),
    ]);
    write_tensors(path, &t, meta, false)
}
