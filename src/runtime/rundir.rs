//! Run folders: `config.json`, `checkpoint.safetensors`, `metrics.jsonl`
//! and the curves. A new run never writes into a folder that holds another
//! run; one process at a time trains in a folder (a lock file); and
//! resuming first brings the folder back to what its checkpoint covers
//! (stale temporary files removed, `metrics.jsonl` cut to the checkpoint's
//! epochs), so a crash at any point loses no more than the work since the
//! last checkpoint and never leaves duplicate or missing metrics.

use super::checkpoint::{self, Checkpoint};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The run's config as JSON, written when the run starts (before the first
/// checkpoint): it marks the folder as taken, and lets `--resume` restart a
/// run that stopped before its first checkpoint.
pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
/// Held (`flock`) by the process training in the folder.
pub const LOCK: &str = ".snnc.lock";

/// The files that mark a folder as holding a run.
const RUN_FILES: [&str; 7] = [
    CONFIG,
    checkpoint::FILE,
    "checkpoint.safetensors.tmp",
    METRICS,
    "loss.svg",
    "accuracy.svg",
    "firing_rates.svg",
];

/// The first file of a run found in `dir`, if any.
pub fn run_file(dir: &Path) -> Option<&'static str> {
    RUN_FILES
        .into_iter()
        .find(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
}

/// A run folder that could not be claimed, locked or repaired.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A new run pointed at a folder that holds one.
    #[error(
        "`{d}` already holds a run ({file}); a new run does not overwrite it.\n  \
         continue that run with `snnc train --resume {d}`, or pick another --out \
         (or leave --out out: snnc then picks a fresh folder)",
        d = dir.display()
    )]
    Taken { dir: PathBuf, file: &'static str },
    #[error("`{}` is a file, not a run folder; pick another --out", .0.display())]
    NotAFolder(PathBuf),
    #[error("cannot create `{}`: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another snnc process is training in `{}` (it holds `{}`); wait for it \
         to finish or stop it first",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("cannot lock `{}`: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove `{}`: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] checkpoint::CheckpointError),
}

/// The error for a new run pointed at a folder that holds one.
pub fn taken_error(dir: &Path, file: &'static str) -> RunDirError {
    RunDirError::Taken {
        dir: dir.to_path_buf(),
        file,
    }
}

/// Whether `dir` is free for a run snnc names itself: absent, or an empty
/// folder (a leftover lock file aside).
fn is_free(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Err(_) => !dir.exists(),
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .all(|e| e.file_name() == LOCK),
    }
}

/// The folder for a run without `--out`: `base`, or else the first free
/// one of `base-2`, `base-3`, ….
pub fn fresh_dir(base: &Path) -> PathBuf {
    if is_free(base) {
        return base.to_path_buf();
    }
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (2..)
        .map(|i| base.with_file_name(format!("{name}-{i}")))
        .find(|d| is_free(d))
        .expect("some numbered folder is free")
}

/// Held while a process trains in a folder; released on drop (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes `dir`'s lock; an error when another process holds it.
pub fn lock(dir: &Path) -> Result<RunLock, RunDirError> {
    let path = dir.join(LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RunDirError::Create {
            path: path.clone(),
            source: e,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(RunLock { _file: f }),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunDirError::Locked {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(RunDirError::Lock { path, source: e }),
    }
}

/// A new run's hold on its folder: the lock, and until [`Claim::keep`]
/// (the first checkpoint), the undoing of the claim when the run fails
/// (dropped on an error or a panic): `config.json` and an empty
/// `metrics.jsonl` removed, and the folder too if the run created it and
/// it is empty. So a run that fails to start leaves nothing behind.
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
    /// `Some(created the folder)` while the claim would be undone.
    undo: Option<bool>,
    _lock: RunLock,
}

impl Claim {
    /// The run has saved a checkpoint: the folder stays whatever happens.
    pub fn keep(&mut self) {
        self.undo = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(created) = self.undo else { return };
        let _ = std::fs::remove_file(self.dir.join(CONFIG));
        let metrics = self.dir.join(METRICS);
        if std::fs::metadata(&metrics).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&metrics);
        }
        if created {
            let _ = std::fs::remove_file(self.dir.join(LOCK));
            // Only when empty: `remove_dir` fails otherwise.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Starts a new run in `dir`: creates it, takes its lock, refuses when it
/// holds a run, and writes `config.json`.
pub fn start(dir: &Path, config_json: &str) -> Result<Claim, RunDirError> {
    if dir.exists() && !dir.is_dir() {
        return Err(RunDirError::NotAFolder(dir.to_path_buf()));
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| RunDirError::Create {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let lock = lock(dir)?;
    if let Some(f) = run_file(dir) {
        return Err(taken_error(dir, f));
    }
    let claim = Claim {
        dir: dir.to_path_buf(),
        undo: Some(created),
        _lock: lock,
    };
    checkpoint::write_atomic(&dir.join(CONFIG), config_json.as_bytes())?;
    Ok(claim)
}

/// The lines of `metrics.jsonl` that describe epochs `1..=epochs` of the
/// run that wrote the checkpoint (for checkpoints that do not carry their
/// metrics): walking back from the end, the last line of epoch `epochs`,
/// then the last line of `epochs - 1` before it, and so on. Lines past the
/// checkpoint, torn lines and older runs' lines are dropped.
pub fn metrics_up_to(text: &str, epochs: usize) -> String {
    let mut want = epochs;
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines().rev() {
        if want == 0 {
            break;
        }
        let epoch = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()));
        if epoch == Some(want as u64) {
            kept.push(line);
            want -= 1;
        }
    }
    kept.reverse();
    kept.iter().map(|l| format!("{l}\n")).collect()
}

/// Brings `dir` back to what `ck` covers before a run continues there:
/// takes the lock, removes temporary files a crash left, rewrites
/// `metrics.jsonl` to exactly the checkpoint's epochs and `config.json` to
/// the run's config. Returns the hold on the folder and the metrics text. Repairs are
/// reported on standard error.
pub fn resume(
    dir: &Path,
    ck: &Checkpoint,
    config_json: &str,
) -> Result<(Claim, String), RunDirError> {
    std::fs::create_dir_all(dir).map_err(|e| RunDirError::Create {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let lock = lock(dir)?;
    for f in [checkpoint::FILE, METRICS, CONFIG] {
        let tmp = checkpoint::tmp_path(&dir.join(f));
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp).map_err(|e| RunDirError::Remove {
                path: tmp.clone(),
                source: e,
            })?;
            eprintln!(
                "note: removed `{}`, left by an interrupted write",
                tmp.display()
            );
        }
    }
    let path = dir.join(METRICS);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let metrics = match &ck.metrics {
        Some(m) => m.clone(),
        None => metrics_up_to(&current, ck.epoch),
    };
    if metrics != current {
        let (had, has) = (current.lines().count(), metrics.lines().count());
        eprintln!(
            "note: `{}` did not match the checkpoint (epoch {}): {had} line(s) rewritten \
             to {has}, one per epoch the checkpoint covers",
            path.display(),
            ck.epoch
        );
        checkpoint::write_atomic(&path, metrics.as_bytes())?;
    }
    checkpoint::write_atomic(&dir.join(CONFIG), config_json.as_bytes())?;
    let claim = Claim {
        dir: dir.to_path_buf(),
        undo: None,
        _lock: lock,
    };
    Ok((claim, metrics))
}

#[cfg(test)]
mod tests {
    use super::metrics_up_to;

    #[test]
    fn metrics_keep_the_checkpoints_epochs_once() {
        let l = |e: usize, tag: &str| format!("{{\"epoch\":{e},\"tag\":\"{tag}\"}}\n");
        // An old double run, a duplicate line, a line past the checkpoint
        // and a torn line.
        let text = [
            l(1, "a"),
            l(2, "a"),
            l(1, "b"),
            l(2, "b"),
            l(2, "c"),
            l(3, "b"),
            l(4, "x"),
            "{\"epoch\":5,\"tr".to_string(),
        ]
        .concat();
        assert_eq!(
            metrics_up_to(&text, 3),
            [l(1, "b"), l(2, "c"), l(3, "b")].concat()
        );
        assert_eq!(metrics_up_to(&text, 0), "");
    }
}
