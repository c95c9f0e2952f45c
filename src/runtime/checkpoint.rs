//! Checkpoints: one safetensors file with the parameters (and batch-norm
//! running statistics), the optimizer state and, in its metadata, the run's
//! config and progress. Written to a temporary file and renamed, so a crash
//! never leaves a half-written checkpoint.

use super::optim::OptimState;
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FILE: &str = "checkpoint.safetensors";

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub params: BTreeMap<String, Tensor<f32>>,
    pub optim: OptimState,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already trained (resume skips them).
    pub batch_in_epoch: usize,
    /// The run's config, as JSON.
    pub config: String,
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn save(dir: &Path, ck: &Checkpoint) -> Result<(), String> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &ck.params {
        owned.push((format!("param/{name}"), t.shape.clone(), bytes_of(&t.data)));
    }
    for (name, bufs) in &ck.optim.buffers {
        for (i, b) in bufs.iter().enumerate() {
            owned.push((format!("optim/{name}/{i}"), vec![b.len()], bytes_of(b)));
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("epoch".to_string(), ck.epoch.to_string()),
        ("batch_in_epoch".to_string(), ck.batch_in_epoch.to_string()),
        ("optim_steps".to_string(), ck.optim.steps.to_string()),
        ("config".to_string(), ck.config.clone()),
        ("format".to_string(), "snnc-checkpoint-1".to_string()),
    ]);
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| format!("error: cannot encode checkpoint: {e}"))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let dst = dir.join(FILE);
    std::fs::write(&tmp, data)
        .map_err(|e| format!("error: cannot write `{}`: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dst).map_err(|e| {
        format!(
            "error: cannot move checkpoint into `{}`: {e}",
            dst.display()
        )
    })
}

pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let file = if path.is_dir() {
        path.join(FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file)
        .map_err(|e| format!("error: cannot read checkpoint `{}`: {e}", file.display()))?;
    let bad = |what: String| {
        format!(
            "error: `{}` is not a valid snnc checkpoint: {what}",
            file.display()
        )
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no `{k}` in metadata")))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse()
            .map_err(|_| bad(format!("`{k}` is not a number")))
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut params = BTreeMap::new();
    let mut optim = OptimState {
        steps: num("optim_steps")?,
        ..OptimState::default()
    };
    let mut names: Vec<&str> = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor `{name}` is not f32")));
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(p) = name.strip_prefix("param/") {
            params.insert(p.to_string(), Tensor::from_vec(t.shape(), data));
        } else if let Some(rest) = name.strip_prefix("optim/") {
            let (p, i) = rest
                .rsplit_once('/')
                .ok_or_else(|| bad(format!("bad tensor name `{name}`")))?;
            let i: usize = i
                .parse()
                .map_err(|_| bad(format!("bad tensor name `{name}`")))?;
            let bufs = optim.buffers.entry(p.to_string()).or_default();
            if bufs.len() <= i {
                bufs.resize(i + 1, Vec::new());
            }
            bufs[i] = data;
        }
    }
    Ok(Checkpoint {
        params,
        optim,
        epoch: num("epoch")? as usize,
        batch_in_epoch: num("batch_in_epoch")? as usize,
        config: get("config")?,
    })
}
