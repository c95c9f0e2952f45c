//! `snnc bench --floor`: the FLOP floor, the fastest SGEMM this machine
//! runs. Every implementation it has (the built-in crates and the system
//! libraries found at run time) is timed on 2048³, and each is reported
//! with how many times slower than the fastest it is.

use crate::codegen::cpu::sgemm;

/// Side of the square product the floor is measured on.
pub const N: usize = 2048;
/// Timed calls per implementation (median), after a warm-up; the
/// implementations take turns, one call each per round.
pub const REPEATS: usize = 3;

/// One implementation's rate on the floor's product.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SgemmRate {
    /// The name `SNNC_SGEMM` takes.
    pub name: &'static str,
    /// Version, kernels and file (system libraries).
    pub describe: String,
    pub gflops: f64,
    /// Timed calls the rate is the median of (1: the warm-up alone took
    /// over a second).
    pub calls: usize,
}

/// The floor: every implementation's rate, fastest first, and the system
/// libraries not found.
pub struct Floor {
    pub rates: Vec<SgemmRate>,
    pub missing: Vec<String>,
}

impl Floor {
    /// Times every available SGEMM on `N`³.
    pub fn measure() -> Floor {
        let available = sgemm::available();
        let imps: Vec<_> = available.iter().copied().map(Some).collect();
        let measured = sgemm::rates(&imps, N, N, N, REPEATS);
        let mut rates: Vec<SgemmRate> = available
            .into_iter()
            .zip(measured)
            .map(|(imp, r)| SgemmRate {
                name: imp.name(),
                describe: imp.describe(),
                gflops: r.gflops,
                calls: r.calls,
            })
            .collect();
        rates.sort_by(|a, b| b.gflops.total_cmp(&a.gflops));
        Floor {
            rates,
            missing: sgemm::missing(),
        }
    }

    /// The fastest implementation (the floor).
    pub fn fastest(&self) -> &SgemmRate {
        &self.rates[0]
    }

    /// The table: each implementation's GFLOP/s and how many times slower
    /// than the fastest it is.
    pub fn print(&self) {
        let f = self.fastest();
        println!(
            "FLOP floor: {:.1} GFLOP/s ({}, the fastest SGEMM on {N}³, median of {REPEATS}); first column of the rows below: how many times slower than the floor each row runs",
            f.gflops, f.name
        );
        println!("{:<16} {:>8} {:>9}  what", "SGEMM", "GFLOP/s", "× floor");
        for r in &self.rates {
            let once = if r.calls == 1 { ", one call" } else { "" };
            println!(
                "{:<16} {:>8.1} {:>8.2}×  {}{once}",
                r.name,
                r.gflops,
                f.gflops / r.gflops,
                r.describe
            );
        }
        for m in &self.missing {
            println!("not found: {m}");
        }
        println!("executor's SGEMM: {}", sgemm::library());
        println!(
            "executor's convolutions: {}",
            crate::codegen::cpu::conv::describe()
        );
    }
}
