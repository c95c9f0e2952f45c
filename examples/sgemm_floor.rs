//! The FLOP floor: GFLOP/s of one 2048³ SGEMM with the CPU executor's
//! library (`SNNC_SGEMM=gemm` for the gemm crate), or of any `M K N`.
//! `cargo run --release --example sgemm_floor [N | M K N]`
fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (m, k, n) = match a.as_slice() {
        [m, k, n] => (*m, *k, *n),
        [n] => (*n, *n, *n),
        _ => (2048, 2048, 2048),
    };
    let g = snnc::codegen::cpu::sgemm::gflops_mkn(m, k, n, 3);
    println!(
        "SGEMM {m}x{k}x{n} ({}): {g:.1} GFLOP/s",
        snnc::codegen::cpu::sgemm::library()
    );
}
