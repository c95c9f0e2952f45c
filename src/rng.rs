//! Random numbers that every backend can reproduce.
//!
//! Encoders and dropout masks use a *counter-based* generator: the value for
//! element `i` of stream `stream` under `seed` is a pure function of the
//! three, so the interpreter, the C kernels and the CUDA kernels draw the
//! same bits in any order. Parameter initialisation uses the sequential
//! `Rng` below (SplitMix64).

/// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) with 24 random bits, exactly representable in f32, so
/// f32 and f64 backends compare against the same threshold.
pub fn uniform(seed: u64, stream: u64, i: u64) -> f64 {
    let h = mix64(mix64(mix64(seed) ^ stream) ^ i);
    (h >> 40) as f64 / (1u64 << 24) as f64
}

/// Sequential generator for initialisation and data shuffling.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}
