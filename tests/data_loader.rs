//! Mini-batch loader and augmentation: coverage, seeding, reproducibility.

use std::collections::BTreeSet;

use snnc::data::{digits, Augment, DataError, Dataset, Loader};
use snnc::rng::Rng;

/// `n` images of shape `[c, h, w]`; every value of sample `i` encodes `i`
/// and its position, so a batch row can be traced back to its sample.
fn toy(n: usize, c: usize, h: usize, w: usize) -> Dataset {
    let per = c * h * w;
    Dataset {
        name: "toy".into(),
        images: (0..n * per)
            .map(|k| (k / per) as f32 * 1000.0 + (k % per) as f32 + 1.0)
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        shape: vec![c, h, w],
        classes: 10,
        events: None,
        files: None,
    }
}

/// Sample index of a batch row (augmentation-free).
fn row_index(row: &[f32]) -> usize {
    ((row[0] - 1.0) / 1000.0).round() as usize
}

fn visited(l: Loader) -> Vec<usize> {
    let per = 4 * 5;
    let mut out = Vec::new();
    for (x, y) in l {
        assert_eq!(x.len(), y.len() * per);
        for (k, row) in x.chunks(per).enumerate() {
            let i = row_index(row);
            assert_eq!(y[k] as usize, i % 10, "label does not follow its sample");
            assert_eq!(row[per - 1], i as f32 * 1000.0 + per as f32);
            out.push(i);
        }
    }
    out
}

#[test]
fn loader_covers_every_sample_exactly_once() {
    let d = toy(103, 1, 4, 5);
    let l = Loader::new(&d, 10, 7, 0);
    assert_eq!(l.num_batches(), 11);
    assert_eq!(l.len(), 11);
    let sizes: Vec<usize> = Loader::new(&d, 10, 7, 0).map(|(_, y)| y.len()).collect();
    assert_eq!(sizes, [vec![10; 10], vec![3]].concat());
    let mut seen = visited(Loader::new(&d, 10, 7, 0));
    assert_ne!(seen, (0..103).collect::<Vec<_>>(), "not shuffled");
    seen.sort();
    assert_eq!(seen, (0..103).collect::<Vec<_>>());
}

#[test]
fn loader_drop_last() {
    let d = toy(103, 1, 4, 5);
    let l = Loader::new(&d, 10, 7, 0).drop_last(true);
    assert_eq!(l.num_batches(), 10);
    let order = l.order().to_vec();
    let seen = visited(l);
    assert_eq!(seen.len(), 100);
    assert_eq!(seen, order[..100]);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 100);
    // Exact multiple: nothing dropped; smaller than one batch: nothing at all.
    assert_eq!(Loader::new(&d, 103, 1, 0).drop_last(true).count(), 1);
    assert_eq!(Loader::new(&d, 104, 1, 0).drop_last(true).count(), 0);
    assert_eq!(Loader::new(&d, 104, 1, 0).count(), 1);
}

#[test]
fn loader_order_depends_on_seed_and_epoch_only() {
    let d = toy(103, 1, 4, 5);
    let e0 = visited(Loader::new(&d, 10, 7, 0));
    let e1 = visited(Loader::new(&d, 10, 7, 1));
    assert_ne!(e0, e1, "epochs must differ");
    assert_eq!(
        e0,
        visited(Loader::new(&d, 10, 7, 0)),
        "same seed+epoch, same order"
    );
    assert_eq!(
        e0,
        visited(Loader::new(&d, 32, 7, 0)),
        "batch size must not change the order"
    );
    assert_ne!(e0, visited(Loader::new(&d, 10, 8, 0)), "seed must matter");
    let orders: BTreeSet<Vec<usize>> = (0..20)
        .map(|e| Loader::new(&d, 10, 7, e).order().to_vec())
        .collect();
    assert_eq!(orders.len(), 20, "20 epochs, 20 distinct orders");
}

#[test]
fn sequential_loader_keeps_dataset_order() {
    let d = toy(25, 1, 4, 5);
    assert_eq!(
        visited(Loader::sequential(&d, 4)),
        (0..25).collect::<Vec<_>>()
    );
}

#[test]
fn loader_on_digits() {
    let s = digits(0).unwrap();
    let mut n = 0;
    for (x, y) in Loader::new(&s.train, 64, 1, 0) {
        assert_eq!(x.len(), y.len() * 64);
        n += y.len();
    }
    assert_eq!(n, 1437);
}

#[test]
fn augmentation_keeps_shape_and_is_reproducible() {
    let d = toy(37, 3, 8, 8);
    let aug = Augment::cifar();
    let run = |seed, epoch, batch| -> Vec<(Vec<f32>, Vec<u16>)> {
        Loader::new(&d, batch, seed, epoch)
            .augment(aug)
            .unwrap()
            .collect()
    };
    let a = run(5, 0, 8);
    assert_eq!(a.len(), 5);
    for (x, y) in &a {
        assert_eq!(x.len(), y.len() * 3 * 8 * 8);
    }
    assert_eq!(a, run(5, 0, 8), "same seed and epoch, same augmentation");
    assert_ne!(a, run(5, 1, 8), "a new epoch draws new crops");
    // Augmentation is keyed by sample, not by batch position.
    let flat =
        |v: Vec<(Vec<f32>, Vec<u16>)>| v.into_iter().flat_map(|(x, _)| x).collect::<Vec<f32>>();
    assert_eq!(flat(a.clone()), flat(run(5, 0, 3)));
    // It changed something.
    let plain: Vec<f32> = Loader::new(&d, 8, 5, 0).flat_map(|(x, _)| x).collect();
    assert_ne!(flat(a), plain);
}

/// Every output of a crop (no flip) is the input shifted by one (dy, dx)
/// with |dy|, |dx| <= padding, zero where the window leaves the image.
#[test]
fn crop_is_a_zero_padded_shift() {
    let d = toy(1, 2, 6, 7);
    let (x, _) = d.sample(0);
    let aug = Augment {
        crop_padding: 2,
        hflip: false,
    };
    let mut shifts = BTreeSet::new();
    for seed in 0..200 {
        let mut out = vec![0f32; x.len()];
        aug.apply(x, &d.shape, &mut Rng::new(seed), &mut out)
            .unwrap();
        let found = (-2isize..=2)
            .flat_map(|dy| (-2isize..=2).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..2).all(|c| {
                    (0..6).all(|y| {
                        (0..7).all(|xo| {
                            let (sy, sx) = (y as isize + dy, xo as isize + dx);
                            let want = if (0..6).contains(&sy) && (0..7).contains(&sx) {
                                x[c * 42 + sy as usize * 7 + sx as usize]
                            } else {
                                0.0
                            };
                            out[c * 42 + y * 7 + xo] == want
                        })
                    })
                })
            });
        shifts.insert(found.expect("output is not a zero-padded shift of the input"));
    }
    assert_eq!(
        shifts.len(),
        25,
        "all 5×5 offsets should occur in 200 draws"
    );
}

#[test]
fn flip_mirrors_or_keeps() {
    let d = toy(1, 3, 4, 5);
    let (x, _) = d.sample(0);
    let aug = Augment {
        crop_padding: 0,
        hflip: true,
    };
    let mirrored: Vec<f32> = x.chunks(5).flat_map(|r| r.iter().rev().copied()).collect();
    let (mut kept, mut flipped) = (0, 0);
    for seed in 0..100 {
        let mut out = vec![0f32; x.len()];
        aug.apply(x, &d.shape, &mut Rng::new(seed), &mut out)
            .unwrap();
        if out == x {
            kept += 1;
        } else {
            assert_eq!(out, mirrored);
            flipped += 1;
        }
    }
    assert!(kept > 25 && flipped > 25, "kept {kept}, flipped {flipped}");
}

#[test]
fn identity_augmentation_changes_nothing() {
    let d = toy(9, 1, 4, 5);
    let aug = Augment::default();
    let a: Vec<_> = Loader::new(&d, 4, 2, 3).augment(aug).unwrap().collect();
    let b: Vec<_> = Loader::new(&d, 4, 2, 3).collect();
    assert_eq!(a, b);
}

#[test]
fn augmentation_refuses_flat_samples_and_bad_lengths() {
    let s = digits(0).unwrap();
    let e = Loader::new(&s.train, 8, 0, 0)
        .augment(Augment::cifar())
        .unwrap_err();
    assert!(matches!(e, DataError::Invalid { .. }));
    assert!(e.to_string().contains("[C, H, W], got [64]"), "{e}");
    let mut out = vec![0f32; 10];
    let e = Augment::cifar()
        .apply(&[0.0; 12], &[1, 3, 4], &mut Rng::new(0), &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("needs 12"), "{e}");
}
