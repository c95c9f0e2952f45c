//! Refusing work that cannot fit in memory, before allocating it.
//!
//! A model can be valid and still absurd (`conv2d 99999999`): shape
//! analysis accepts it, and the first allocation then aborts the process
//! ("capacity overflow", or the kernel's OOM killer). Every command that
//! allocates tensors (`run`, `grad-check`, `train`, `eval`, `bench`, and the
//! CUDA paths) first asks [`ensure_fits`] whether the bytes its plan needs
//! (the memory planner's peak plus the resident inputs and parameters, or
//! for the reference interpreter every value it keeps) fit the memory that
//! is available, and stops with both numbers if they do not.

use crate::ir::value_bytes;
use crate::ir::Graph;
use crate::passes::memplan::MemPlan;

/// Where the bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory: compared with `MemAvailable` of `/proc/meminfo`.
    Host,
    /// A CUDA device: compared with its free memory, where the backend can
    /// tell (`None`: it cannot, and the check passes).
    Device { free: Option<u64> },
}

/// `MemAvailable` from `/proc/meminfo`, in bytes: what the kernel estimates
/// can be allocated without swapping. `None` where there is no such file
/// (not Linux) or it cannot be read.
pub fn available_host_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

/// The `MemAvailable:` line of `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(unit)
}

/// Not enough memory for some work: what needed how much, and how much
/// there is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough memory for {what}: it needs {} ({need} bytes), but only {} \
     ({have} bytes) is available ({measured})\n  = hint: use a smaller --batch or -T, or smaller \
     layers (`snnc check` prints every layer's size)",
    human(*.need),
    human(*.have)
)]
pub struct MemoryError {
    pub what: String,
    pub need: u64,
    pub have: u64,
    /// Where `have` comes from.
    pub measured: &'static str,
}

/// The check every allocating command runs before it allocates: `Ok` when
/// `need` bytes fit the available memory of `on` (or when that cannot be
/// read), else an error that says what needed how much and how much there
/// is. `what` names the work, e.g. "a training step (fusion plan)".
pub fn ensure_fits(what: &str, need: u64, on: Memory) -> Result<(), MemoryError> {
    let (available, source) = match on {
        Memory::Host => (available_host_bytes(), "MemAvailable in /proc/meminfo"),
        Memory::Device { free } => (free, "free device memory"),
    };
    match available {
        Some(have) if need > have => Err(MemoryError {
            what: what.to_string(),
            need,
            have,
            measured: source,
        }),
        _ => Ok(()),
    }
}

/// `ensure_fits` for a memory plan: its peak plus the resident bytes
/// (inputs and parameters), plus `extra` (e.g. optimizer state).
pub fn ensure_plan_fits(
    what: &str,
    plan: &MemPlan,
    extra: u64,
    on: Memory,
) -> Result<(), MemoryError> {
    let need = plan
        .peak_bytes
        .saturating_add(plan.resident_bytes)
        .saturating_add(extra);
    ensure_fits(what, need, on)
}

/// Bytes the reference interpreter holds at the end of a run of `g`: it
/// keeps every node's value (inputs and parameters copied), each element
/// `elem_bytes` wide.
pub fn interpreter_bytes(g: &Graph, elem_bytes: u64) -> u64 {
    g.g.node_weights()
        .map(|n| (value_bytes(&n.shape) / 4).saturating_mul(elem_bytes))
        .fold(0, u64::saturating_add)
}

/// Bytes of the parameters of an analysis, `elem_bytes` per element (every
/// parameter, trained or not).
pub fn param_bytes(a: &crate::shape::Analysis, elem_bytes: u64) -> u64 {
    a.params()
        .map(|p| (crate::shape::numel(&p.shape) as u64).saturating_mul(elem_bytes))
        .fold(0, u64::saturating_add)
}

/// Bytes with a binary unit, for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16318000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_meminfo(text), Some(8_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn refuses_with_both_numbers() {
        let e = ensure_fits(
            "a step",
            3 << 40,
            Memory::Device {
                free: Some(1 << 30),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("3.0 TiB") && e.contains("1.0 GiB"), "{e}");
        assert!(e.contains(&(3u64 << 40).to_string()), "{e}");
        assert!(ensure_fits("a step", 10, Memory::Device { free: Some(100) }).is_ok());
        assert!(ensure_fits("a step", u64::MAX, Memory::Device { free: None }).is_ok());
    }

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(u64::MAX), "16384.0 PiB");
    }
}
