//! Checkpoints: one safetensors file with the parameters (and batch-norm
//! running statistics), the optimizer state and, in its metadata, the run's
//! config, its progress, the metrics of the epochs it covers and a CRC-32
//! of every tensor and of the metadata.
//!
//! Written to a temporary file, synced and renamed ([`write_atomic`]), so a
//! crash or a full disk never leaves a half-written checkpoint (and the
//! temporary file is removed when the write fails). [`load`] verifies the
//! checksums and refuses non-finite values, naming the tensor; checkpoints
//! from before the checksums (`snnc-checkpoint-1`) load with a warning.

use super::optim::OptimState;
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE: &str = "checkpoint.safetensors";

/// A checkpoint (or another atomically written file) that could not be
/// written or read back.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move `{}` into place: {source}", path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tensor about to be saved is NaN or infinite: the last good
    /// checkpoint stays.
    #[error(
        "{what} became {value} (element {index}); not overwriting the last good checkpoint \
         in `{}`; lower --lr",
        dir.display()
    )]
    Diverged {
        /// `parameter `w`` or `optimizer state 0 of `w``.
        what: String,
        value: f32,
        index: usize,
        dir: PathBuf,
    },
    #[error("cannot encode checkpoint: {0}")]
    Encode(safetensors::SafeTensorError),
    #[error("cannot read checkpoint `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is not a valid snnc checkpoint: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error(
        "checkpoint `{}` is damaged: {what}; it was changed after snnc wrote it \
         (restore it from a copy, or start a new run)",
        path.display()
    )]
    Damaged { path: PathBuf, what: String },
    #[error(
        "checkpoint `{}`: tensor `{name}` holds {value} (element {index} of {len}); a run \
         with non-finite weights cannot be evaluated or resumed",
        path.display()
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        value: f32,
        index: usize,
        len: usize,
    },
}

/// The format this snnc writes; `snnc-checkpoint-1` (no checksums, no
/// metrics, no epoch sums) is still read.
const FORMAT: &str = "snnc-checkpoint-2";
const FORMAT_V1: &str = "snnc-checkpoint-1";

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
    /// The running sums of the epoch in progress (`batch_in_epoch > 0`),
    /// so a resumed epoch reports its loss and accuracy over all its
    /// batches. `None` in older checkpoints.
    pub epoch_sums: Option<EpochSums>,
    /// `metrics.jsonl` as it stands for the `epoch` completed epochs, one
    /// line each (resume rewrites the file from it, so the metrics and the
    /// checkpoint always agree). `None` in older checkpoints.
    pub metrics: Option<String>,
}

/// Running sums of a partly trained epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochSums {
    /// Σ loss × batch size.
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    /// Training seconds spent on the epoch so far.
    pub seconds: f64,
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The path `dst` is written through: `dst` with `.tmp` appended.
pub fn tmp_path(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `data` to `dst` so that `dst` holds either its old or its new
/// content after any crash: a temporary file next to it, synced, renamed
/// over it, then the directory synced. The temporary file is removed when
/// any step fails (a full disk leaves nothing behind).
pub fn write_atomic(dst: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    let tmp = tmp_path(dst);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CheckpointError::Write {
            path: tmp,
            source: e,
        });
    }
    if let Err(e) = std::fs::rename(&tmp, dst) {
        let _ = std::fs::remove_file(&tmp);
        return Err(CheckpointError::Rename {
            path: dst.to_path_buf(),
            source: e,
        });
    }
    // Make the rename itself durable (best effort: not every file system
    // can sync a directory).
    if let Some(dir) = dst.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The first non-finite value of `v`: (index, value).
fn non_finite(v: &[f32]) -> Option<(usize, f32)> {
    v.iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite())
        .map(|(i, &x)| (i, x))
}

/// CRC-32 of the metadata entries (other than its own), in key order.
fn meta_crc(meta: &HashMap<String, String>) -> u32 {
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != "meta_crc32").collect();
    keys.sort();
    let mut h = crc32fast::Hasher::new();
    for k in keys {
        let v = &meta[k];
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize()
}

/// Writes `dir/checkpoint.safetensors` atomically. Refuses (and keeps the
/// previous checkpoint) when a tensor holds a non-finite value.
pub fn save(dir: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &ck.params {
        if let Some((i, x)) = non_finite(&t.data) {
            return Err(CheckpointError::Diverged {
                what: format!("parameter `{name}`"),
                value: x,
                index: i,
                dir: dir.to_path_buf(),
            });
        }
        owned.push((format!("param/{name}"), t.shape.clone(), bytes_of(&t.data)));
    }
    for (name, bufs) in &ck.optim.buffers {
        for (i, b) in bufs.iter().enumerate() {
            if let Some((j, x)) = non_finite(b) {
                return Err(CheckpointError::Diverged {
                    what: format!("optimizer state {i} of `{name}`"),
                    value: x,
                    index: j,
                    dir: dir.to_path_buf(),
                });
            }
            owned.push((format!("optim/{name}/{i}"), vec![b.len()], bytes_of(b)));
        }
    }
    let crcs: BTreeMap<&str, String> = owned
        .iter()
        .map(|(n, _, b)| (n.as_str(), format!("{:08x}", crc32fast::hash(b))))
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let mut meta = HashMap::from([
        ("epoch".to_string(), ck.epoch.to_string()),
        ("batch_in_epoch".to_string(), ck.batch_in_epoch.to_string()),
        ("optim_steps".to_string(), ck.optim.steps.to_string()),
        ("config".to_string(), ck.config.clone()),
        ("format".to_string(), FORMAT.to_string()),
        (
            "crc32".to_string(),
            serde_json::to_string(&crcs).expect("checksums serialise"),
        ),
    ]);
    if let Some(m) = &ck.metrics {
        meta.insert("metrics".into(), m.clone());
    }
    if let Some(s) = &ck.epoch_sums {
        // f64's Display round-trips exactly through `parse`.
        meta.insert("epoch_loss_sum".into(), s.loss_sum.to_string());
        meta.insert("epoch_correct".into(), s.correct.to_string());
        meta.insert("epoch_seen".into(), s.seen.to_string());
        meta.insert("epoch_seconds".into(), s.seconds.to_string());
    }
    meta.insert("meta_crc32".into(), format!("{:08x}", meta_crc(&meta)));
    let data = safetensors::serialize(views, Some(meta)).map_err(CheckpointError::Encode)?;
    write_atomic(&dir.join(FILE), &data)
}

/// The checkpoint file of `path` (a run folder or the file itself).
pub fn file_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(FILE)
    } else {
        path.to_path_buf()
    }
}

/// Reads and verifies a checkpoint (a run folder or the file itself).
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let file = file_of(path);
    let bytes = std::fs::read(&file).map_err(|e| CheckpointError::Read {
        path: file.clone(),
        source: e,
    })?;
    let bad = |what: &str| CheckpointError::Invalid {
        path: file.clone(),
        what: what.to_string(),
    };
    let damaged = |what: &str| CheckpointError::Damaged {
        path: file.clone(),
        what: what.to_string(),
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = meta.metadata().clone().ok_or_else(|| bad("no metadata"))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(&format!("no `{k}` in metadata")))
    };
    let num = |k: &str| -> Result<u64, CheckpointError> {
        get(k)?
            .parse()
            .map_err(|_| bad(&format!("`{k}` is not a number")))
    };
    let format = get("format")?;
    let crcs: Option<BTreeMap<String, String>> = match format.as_str() {
        FORMAT => {
            let stored = get("meta_crc32")?;
            let computed = format!("{:08x}", meta_crc(&meta));
            if stored != computed {
                return Err(damaged(&format!(
                    "its metadata (config, progress, metrics) fails its checksum \
                     (stored {stored}, computed {computed})"
                )));
            }
            Some(
                serde_json::from_str(&get("crc32")?)
                    .map_err(|e| bad(&format!("bad `crc32` in metadata: {e}")))?,
            )
        }
        FORMAT_V1 => {
            eprintln!(
                "warning: `{}` has no checksums (written by an older snnc); its tensors \
                 cannot be verified",
                file.display()
            );
            None
        }
        other => {
            return Err(bad(&format!(
                "unknown format `{other}` (written by a newer snnc?)"
            )))
        }
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&e.to_string()))?;
    let mut params = BTreeMap::new();
    let mut optim = OptimState {
        steps: num("optim_steps")?,
        ..OptimState::default()
    };
    let mut names: Vec<&str> = st.names();
    names.sort();
    if let Some(crcs) = &crcs {
        if let Some(missing) = crcs.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(damaged(&format!("tensor `{missing}` is missing")));
        }
    }
    for name in names {
        let t = st.tensor(name).map_err(|e| bad(&e.to_string()))?;
        if let Some(crcs) = &crcs {
            let stored = crcs
                .get(name)
                .ok_or_else(|| damaged(&format!("tensor `{name}` has no checksum")))?;
            let computed = format!("{:08x}", crc32fast::hash(t.data()));
            if *stored != computed {
                return Err(damaged(&format!(
                    "tensor `{name}` fails its checksum (stored {stored}, computed {computed})"
                )));
            }
        }
        if t.dtype() != Dtype::F32 {
            return Err(bad(&format!("tensor `{name}` is not f32")));
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some((i, x)) = non_finite(&data) {
            return Err(CheckpointError::NonFinite {
                path: file.clone(),
                name: name.to_string(),
                value: x,
                index: i,
                len: data.len(),
            });
        }
        if let Some(p) = name.strip_prefix("param/") {
            params.insert(p.to_string(), Tensor::from_vec(t.shape(), data));
        } else if let Some(rest) = name.strip_prefix("optim/") {
            let (p, i) = rest
                .rsplit_once('/')
                .ok_or_else(|| bad(&format!("bad tensor name `{name}`")))?;
            let i: usize = i
                .parse()
                .map_err(|_| bad(&format!("bad tensor name `{name}`")))?;
            let bufs = optim.buffers.entry(p.to_string()).or_default();
            if bufs.len() <= i {
                bufs.resize(i + 1, Vec::new());
            }
            bufs[i] = data;
        }
    }
    let float = |k: &str| -> Result<f64, CheckpointError> {
        get(k)?
            .parse()
            .map_err(|_| bad(&format!("`{k}` is not a number")))
    };
    let epoch_sums = if meta.contains_key("epoch_seen") {
        Some(EpochSums {
            loss_sum: float("epoch_loss_sum")?,
            correct: num("epoch_correct")? as usize,
            seen: num("epoch_seen")? as usize,
            seconds: float("epoch_seconds")?,
        })
    } else {
        None
    };
    Ok(Checkpoint {
        params,
        optim,
        epoch: num("epoch")? as usize,
        batch_in_epoch: num("batch_in_epoch")? as usize,
        config: get("config")?,
        epoch_sums,
        metrics: meta.get("metrics").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("snnc-checkpoint-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> Checkpoint {
        Checkpoint {
            params: BTreeMap::from([(
                "0.weight".to_string(),
                Tensor::from_vec(&[2, 2], vec![1.0, -2.0, 0.5, 3.0]),
            )]),
            optim: OptimState::default(),
            epoch: 1,
            batch_in_epoch: 3,
            config: "{}".into(),
            epoch_sums: Some(EpochSums {
                loss_sum: 0.1 + 0.2,
                correct: 5,
                seen: 96,
                seconds: 1.25,
            }),
            metrics: Some("{\"epoch\":1}\n".into()),
        }
    }

    #[test]
    fn round_trips_sums_and_metrics_exactly() {
        let d = tmp("roundtrip");
        save(&d, &sample()).unwrap();
        let ck = load(&d).unwrap();
        assert_eq!(ck.epoch_sums, sample().epoch_sums);
        assert_eq!(ck.metrics, sample().metrics);
        assert_eq!(ck.params, sample().params);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A write that fails (here: the disk is full) leaves the old
    /// checkpoint in place and no temporary file.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_keeps_the_old_checkpoint_and_leaves_no_tmp() {
        let d = tmp("full");
        save(&d, &sample()).unwrap();
        let before = std::fs::read(d.join(FILE)).unwrap();
        let tmp = tmp_path(&d.join(FILE));
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let mut next = sample();
        next.epoch = 2;
        let e = save(&d, &next).unwrap_err().to_string();
        assert!(e.contains("cannot write") && e.contains(".tmp"), "{e}");
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "the temporary file was left behind"
        );
        assert_eq!(std::fs::read(d.join(FILE)).unwrap(), before);
        assert_eq!(load(&d).unwrap().epoch, 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn non_finite_parameters_are_not_saved() {
        let d = tmp("nan-save");
        save(&d, &sample()).unwrap();
        let mut ck = sample();
        ck.params.get_mut("0.weight").unwrap().data[2] = f32::NAN;
        let e = save(&d, &ck).unwrap_err().to_string();
        assert!(e.contains("`0.weight`") && e.contains("NaN"), "{e}");
        assert_eq!(load(&d).unwrap().params, sample().params);
        let _ = std::fs::remove_dir_all(&d);
    }
}
