//! Fake Fashion-MNIST folders for tests: raw IDX files of 28×28 images.

use std::path::Path;

/// Writes `{split}-images-idx3-ubyte` and `{split}-labels-idx1-ubyte` in
/// `dir` (made if missing): `n` 28×28 images, image i labelled i % 10,
/// its pixel (y, x) `pixel(label, y, x)`, called in file order (so a
/// closure may draw noise from a seeded generator).
pub fn write_fashion(
    dir: &Path,
    split: &str,
    n: usize,
    mut pixel: impl FnMut(usize, usize, usize) -> u8,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut img = Vec::new();
    for v in [2051u32, n as u32, 28, 28] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    let mut lab = Vec::new();
    for v in [2049u32, n as u32] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    for i in 0..n {
        let l = i % 10;
        lab.push(l as u8);
        for y in 0..28 {
            for x in 0..28 {
                img.push(pixel(l, y, x));
            }
        }
    }
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
}
