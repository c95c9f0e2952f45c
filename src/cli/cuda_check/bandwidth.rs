//! `snnc cuda-check --bandwidth`: device-to-device copy bandwidth, also the
//! reference `snnc bench --device cuda` gives the LIF kernels' GB/s against.

use crate::cli::CliError;
use crate::codegen::backend::{check_args, BackendError};
use crate::codegen::cuda::{Arg, Backend, Cuda};
use std::time::Instant;

/// Device-to-device copy bandwidth: `bytes` copied `reps` times by the copy
/// engine (cuMemcpyDtoD) and by the `snnc_copy` kernel. Prints GB/s counting
/// bytes read plus bytes written.
pub fn bandwidth<B: Backend>(
    b: &mut B,
    bytes: usize,
    reps: usize,
) -> Result<Vec<(String, f64)>, CliError> {
    let r = measure_bandwidth(b, bytes, reps)?;
    for (engine, gbs, secs) in &r {
        println!(
            "device copy, {engine}: {:.2} GB x {reps} in {:.2} ms: {gbs:.0} GB/s (read + write)",
            bytes as f64 / 1e9,
            secs * 1e3,
        );
    }
    Ok(r.into_iter().map(|(e, g, _)| (e, g)).collect())
}

/// [`bandwidth`] without printing: (engine, GB/s, seconds) per engine.
pub fn measure_bandwidth<B: Backend>(
    b: &mut B,
    bytes: usize,
    reps: usize,
) -> Result<Vec<(String, f64, f64)>, CliError> {
    let len = bytes / 4;
    let src = b.alloc(len)?;
    let mut dst = b.alloc(len)?;
    let (sp, dp) = (b.ptr(&src), b.ptr(&dst));
    let n = i32::try_from(len)
        .map_err(|_| CliError::usage("bandwidth buffer too large for the copy kernel"))?;
    let fill = [Arg::P(sp), Arg::I(n), Arg::F(1.5)];
    check_args("snnc_fill", &fill)?;
    let grid = len.div_ceil(256).min(b.max_grid() as usize) as u32;
    b.launch("snnc_fill", grid, 256, &fill)?;
    let copy = [Arg::P(sp), Arg::P(dp), Arg::I(n)];
    check_args("snnc_copy", &copy)?;
    let mut results = Vec::new();
    for engine in ["memcpy (copy engine)", "snnc_copy kernel"] {
        let once = |b: &mut B, src: &B::Buf, dst: &mut B::Buf| -> Result<(), BackendError> {
            if engine.starts_with("memcpy") {
                b.copy(src, dst, len)
            } else {
                b.launch("snnc_copy", grid, 256, &copy)
            }
        };
        for _ in 0..2 {
            once(b, &src, &mut dst)?;
        }
        b.sync()?;
        let started = Instant::now();
        for _ in 0..reps {
            once(b, &src, &mut dst)?;
        }
        b.sync()?;
        let secs = started.elapsed().as_secs_f64();
        let gbs = 2.0 * bytes as f64 * reps as f64 / secs / 1e9;
        results.push((engine.to_string(), gbs, secs));
    }
    let check = b.download(&dst, 1)?;
    if check[0] != 1.5 {
        return Err(CliError::Internal(format!(
            "bandwidth copy produced {} instead of 1.5",
            check[0]
        )));
    }
    b.free(src);
    b.free(dst);
    Ok(results)
}

/// `snnc cuda-check --bandwidth`.
pub fn bandwidth_check(bytes: usize, reps: usize) -> Result<(), CliError> {
    let mut cuda = Cuda::new().map_err(|source| CliError::Backend {
        command: "bandwidth",
        source,
    })?;
    println!("{}", cuda.describe());
    bandwidth(&mut cuda, bytes, reps)?;
    Ok(())
}
