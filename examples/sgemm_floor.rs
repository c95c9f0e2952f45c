//! The FLOP floor: GFLOP/s of one 2048³ SGEMM with the CPU executor's
//! library (`SNNC_SGEMM=matrixmultiply` for the other one).
//! `cargo run --release --example sgemm_floor [N]`
fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    let g = snnc::codegen::cpu::kernels::sgemm_gflops(n, 3);
    println!(
        "SGEMM {n}x{n}x{n} ({}): {g:.1} GFLOP/s",
        snnc::codegen::cpu::kernels::sgemm_library()
    );
}
