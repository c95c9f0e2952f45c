//! Image folders written by the tests (PNG and JPEG through the `image`
//! crate): classes from folder names, shapes, exact normalised values of
//! flat images, the centre crop and the flip, torchvision's crop geometry,
//! seeded augmentation, corrupt and truncated files skipped and counted,
//! clear errors for empty folders, and `snnc train --data images:DIR`.

mod common;
use common::run::{snnc, TmpDir};

use std::path::Path;

use image::{Rgb, RgbImage};
use snnc::data::images::{
    centre_region, load_image_folder, ImageFolderOptions, RandomResizedCrop, Region, IMAGENET_MEAN,
    IMAGENET_STD,
};
use snnc::data::{DataError, Loader, Prefetched};
use snnc::rng::Rng;

/// A `w × h` image of one colour.
fn flat(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(c))
}

/// Left half `a`, right half `b`.
fn halves(w: u32, h: u32, a: [u8; 3], b: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| Rgb(if x < w / 2 { a } else { b }))
}

fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];
const GREY: [u8; 3] = [128, 128, 128];

/// Normalised value of byte `v` in channel `c` with ImageNet's statistics.
fn norm(v: u8, c: usize) -> f32 {
    (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
}

/// Three classes (`cat`, `dog`, `emu`) of flat PNGs in train/ (2 each) and
/// val/ (1 each), each class its own colour; `dog` in JPEG.
fn write_folder(dir: &Path) -> [[u8; 3]; 3] {
    let colours = [RED, GREY, BLUE];
    for (k, class) in ["cat", "dog", "emu"].iter().enumerate() {
        let ext = if *class == "dog" { "jpg" } else { "png" };
        for i in 0..2 {
            save(
                &flat(40 + 8 * i, 36, colours[k]),
                &dir.join(format!("train/{class}/{i}.{ext}")),
            );
        }
        save(
            &flat(48, 40, colours[k]),
            &dir.join(format!("val/{class}/v.{ext}")),
        );
    }
    colours
}

fn opts(h: usize, w: usize) -> ImageFolderOptions {
    ImageFolderOptions::for_input(&[3, h, w]).unwrap()
}

#[test]
fn classes_shapes_and_exact_values() {
    let d = TmpDir::new("img-read");
    let colours = write_folder(&d.0);
    let (s, report) = load_image_folder(&d.0, &opts(16, 16)).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(report.files, 9);
    assert_eq!((s.train.len(), s.test.len()), (6, 3));
    assert_eq!(s.train.classes, 3);
    assert_eq!(s.train.labels, vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(s.test.labels, vec![0, 1, 2]);
    assert_eq!(s.train.shape, vec![3, 16, 16]);
    assert!(s.train.images.is_empty(), "images are decoded on demand");
    s.train.check().unwrap();
    s.test.check().unwrap();
    let mut x = vec![0f32; 3 * 16 * 16];
    // PNG: exact. Flat colours stay flat through any crop and resize.
    for (set, i, k) in [(&s.test, 0, 0), (&s.test, 2, 2), (&s.train, 5, 2)] {
        assert_eq!(set.sample_into(i, &mut x), k as u16);
        for c in 0..3 {
            let want = norm(colours[k][c], c);
            assert!(
                x[c * 256..(c + 1) * 256].iter().all(|&v| v == want),
                "class {k} channel {c}: {} vs {want}",
                x[c * 256]
            );
        }
    }
    // JPEG is lossy: grey within a few levels.
    s.test.sample_into(1, &mut x);
    for (k, &v) in x.iter().enumerate() {
        let c = k / 256;
        let tol = 3.0 / 255.0 / IMAGENET_STD[c];
        assert!((v - norm(128, c)).abs() <= tol, "value {k}: {v}");
    }
    // Training samples with a key: still the class colour, any crop.
    let mut y = vec![0f32; x.len()];
    assert_eq!(s.train.sample_into_keyed(0, 7, &mut y), 0);
    assert_eq!(y[0], norm(255, 0));
    assert_eq!(y[256], norm(0, 1));
}

#[test]
fn centre_crop_geometry_and_halves() {
    // 400×300 to 224: shorter side 300 → 256, so 224 output pixels are
    // 224 · 300/256 = 262.5 → 263 source pixels, centred.
    assert_eq!(
        centre_region(400, 300, 224, 224, 0.875),
        Region {
            x: 68,
            y: 18,
            w: 263,
            h: 263
        }
    );
    assert_eq!(
        centre_region(32, 32, 32, 32, 1.0),
        Region {
            x: 0,
            y: 0,
            w: 32,
            h: 32
        }
    );
    // A left-red, right-blue image: the centre crop keeps red on the left.
    let d = TmpDir::new("img-halves");
    for split in ["train", "val"] {
        save(
            &halves(64, 48, RED, BLUE),
            &d.0.join(format!("{split}/a/x.png")),
        );
    }
    let (s, _) = load_image_folder(&d.0, &opts(8, 8)).unwrap();
    let mut x = vec![0f32; 3 * 64];
    s.test.sample_into(0, &mut x);
    assert_eq!(x[0], norm(255, 0), "left column red");
    assert_eq!(x[7], norm(0, 0), "right column not red");
    assert_eq!(x[2 * 64 + 7], norm(255, 2), "right column blue");
}

#[test]
fn random_resized_crop_follows_torchvision_bounds() {
    let rrc = RandomResizedCrop::default();
    assert_eq!(rrc.scale, (0.08, 1.0));
    assert_eq!(rrc.ratio, (0.75, 4.0 / 3.0));
    let mut rng = Rng::new(1);
    let (w, h) = (400u32, 350u32);
    for _ in 0..2000 {
        let r = rrc.region(w, h, &mut rng);
        assert!(r.x + r.w <= w && r.y + r.h <= h, "{r:?}");
        let area = (r.w * r.h) as f64 / (w * h) as f64;
        let aspect = r.w as f64 / r.h as f64;
        // Rounding to whole pixels moves the bounds a little.
        assert!((0.075..=1.0).contains(&area), "{r:?} area {area}");
        assert!((0.74..=1.35).contains(&aspect), "{r:?} aspect {aspect}");
    }
    // A 1000×10 strip: no draw fits, the fallback is the centred crop of
    // the whole height at the widest ratio (10 · 4/3 = 13.3 → 13).
    let r = rrc.region(1000, 10, &mut Rng::new(3));
    assert_eq!(
        r,
        Region {
            x: 493,
            y: 0,
            w: 13,
            h: 10
        }
    );
    // Seeded: the same key, the same crop.
    let a = rrc.region(w, h, &mut Rng::new(42));
    let b = rrc.region(w, h, &mut Rng::new(42));
    assert_eq!(a, b);
}

#[test]
fn augmentation_is_reproducible_and_flips() {
    let d = TmpDir::new("img-aug");
    for split in ["train", "val"] {
        for i in 0..4 {
            let img = RgbImage::from_fn(60, 50, |x, y| {
                Rgb([(x * 4) as u8, (y * 5) as u8, (i * 60) as u8])
            });
            save(&img, &d.0.join(format!("{split}/c{}/{i}.png", i % 2)));
        }
    }
    let (s, _) = load_image_folder(&d.0, &opts(12, 12)).unwrap();
    let batches = |seed, epoch| -> Vec<(Vec<f32>, Vec<u16>)> {
        Loader::new(&s.train, 2, seed, epoch).collect()
    };
    assert_eq!(
        batches(5, 0),
        batches(5, 0),
        "same seed and epoch, same batches"
    );
    assert_ne!(batches(5, 0), batches(5, 1), "another epoch, other crops");
    assert_ne!(batches(5, 0), batches(6, 0), "another seed, other crops");
    // Prefetching gives the same batches as iterating.
    let pre = Loader::new(&s.train, 2, 5, 0).prefetch(2, |b| b.collect::<Vec<_>>());
    assert_eq!(pre, batches(5, 0));
    let shared = std::sync::Arc::new(s.train.clone());
    let owned: Vec<_> = Prefetched::spawn(shared.clone(), 1, |d| Loader::new(d, 2, 5, 0)).collect();
    assert_eq!(owned, batches(5, 0));
    // Dropped half-way: the thread stops.
    let mut half = Prefetched::spawn(shared, 1, |d| Loader::new(d, 1, 5, 0));
    assert!(half.next().is_some());
    drop(half);
    // Some keys flip: red (x·4) then decreases left to right.
    let mut x = vec![0f32; 3 * 144];
    let flipped = (0..40u64).any(|key| {
        s.train.sample_into_keyed(0, key, &mut x);
        x[0] > x[11]
    });
    assert!(flipped, "no key flipped the image");
    // Evaluation samples are the centre crop, whatever the loader.
    let a: Vec<_> = Loader::sequential(&s.test, 4).collect();
    let b: Vec<_> = Loader::sequential(&s.test, 4).collect();
    assert_eq!(a, b);
    let mut c = vec![0f32; 3 * 144];
    s.test.sample_into(0, &mut c);
    assert_eq!(a[0].0[..c.len()], c[..]);
}

#[test]
fn corrupt_and_truncated_files_are_skipped_and_counted() {
    let d = TmpDir::new("img-bad");
    write_folder(&d.0);
    // Not an image at all, an empty file, a README (ignored: not .png).
    std::fs::write(d.0.join("train/cat/garbage.png"), b"this is not a png").unwrap();
    std::fs::write(d.0.join("train/dog/empty.jpg"), b"").unwrap();
    std::fs::write(d.0.join("train/dog/README.txt"), b"notes").unwrap();
    // A PNG cut after its header: loads, fails to decode.
    let mut png = Vec::new();
    flat(40, 40, BLUE)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(d.0.join("train/emu/cut.png"), &png[..png.len() / 2]).unwrap();
    // A JPEG cut in its scan: the decoder would fill it with grey.
    let mut jpg = Vec::new();
    flat(40, 40, RED)
        .write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(d.0.join("train/cat/cut.jpg"), &jpg[..jpg.len() - 40]).unwrap();
    let (s, report) = load_image_folder(&d.0, &opts(8, 8)).unwrap();
    assert_eq!(report.files, 13);
    assert_eq!(report.ignored, 1);
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|(p, _)| p.strip_prefix(&d.0).unwrap().display().to_string())
        .collect();
    assert_eq!(skipped, ["train/cat/garbage.png", "train/dog/empty.jpg"]);
    let text = report.render();
    assert!(
        text.starts_with("warning: images: 2 of 13 files skipped"),
        "{text}"
    );
    assert!(text.contains("train/cat/garbage.png: "), "{text}");
    // The cut JPEG is sample 2 (cat: 0, 1, cut), the cut PNG the last of
    // 8 (emu: 0, 1, cut).
    assert_eq!(s.train.len(), 8);
    let files = s.train.files.as_ref().unwrap();
    assert!(files.path(2).ends_with("cat/cut.jpg"));
    assert!(files.path(7).ends_with("emu/cut.png"));
    // Every pass decodes them: one failure each recorded, the next sample
    // in their place (a grey dog for the JPEG; for the PNG, wrapping
    // around, the red cat 0).
    let mut x = vec![0f32; 3 * 64];
    for _ in 0..3 {
        assert_eq!(s.train.sample_into(7, &mut x), 0);
        assert_eq!(x[0], norm(255, 0));
        assert_eq!(s.train.sample_into(2, &mut x), 1);
    }
    let all: Vec<_> = Loader::new(&s.train, 8, 1, 0).collect();
    assert_eq!(all[0].1.len(), 8);
    let failures = files.failures();
    assert_eq!(failures.len(), 2);
    assert!(failures[0].0.ends_with("cat/cut.jpg"), "{failures:?}");
    assert!(failures[0].1.starts_with("truncated JPEG"), "{failures:?}");
    assert!(failures[1].0.ends_with("emu/cut.png"), "{failures:?}");
}

#[test]
fn missing_or_empty_folders_are_clear_errors() {
    let d = TmpDir::new("img-err");
    let e = load_image_folder(&d.0.join("nope"), &opts(8, 8)).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("nope/train: file not found"), "{e}");
    // train/ without class folders.
    std::fs::create_dir_all(d.0.join("train")).unwrap();
    std::fs::create_dir_all(d.0.join("val")).unwrap();
    let e = load_image_folder(&d.0, &opts(8, 8)).unwrap_err();
    assert!(
        e.to_string().contains("train: no images: no class folders"),
        "{e}"
    );
    // An empty class folder.
    write_folder(&d.0);
    std::fs::create_dir_all(d.0.join("train/fox")).unwrap();
    let e = load_image_folder(&d.0, &opts(8, 8)).unwrap_err();
    assert!(matches!(e, DataError::NoImages { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("train/fox: no images: class folder without .jpg, .jpeg or .png files"),
        "{e}"
    );
    std::fs::remove_dir(d.0.join("train/fox")).unwrap();
    // A class whose every file is unreadable.
    save(&flat(8, 8, RED), &d.0.join("val/gnu/ok.png"));
    std::fs::create_dir_all(d.0.join("train/gnu")).unwrap();
    std::fs::write(d.0.join("train/gnu/bad.png"), b"nope").unwrap();
    let e = load_image_folder(&d.0, &opts(8, 8)).unwrap_err();
    assert!(
        e.to_string()
            .contains("train/gnu: no images: all 1 image files are unreadable"),
        "{e}"
    );
    std::fs::remove_dir_all(d.0.join("train/gnu")).unwrap();
    // A validation class that training does not have.
    let e = load_image_folder(&d.0, &opts(8, 8)).unwrap_err();
    assert!(
        e.to_string().contains("class `gnu` has no folder in"),
        "{e}"
    );
    // A model input that is no image.
    let e = ImageFolderOptions::for_input(&[2, 8, 8]).unwrap_err();
    assert!(
        e.to_string().contains("needs a model input of [3, H, W]"),
        "{e}"
    );
}

#[test]
fn snnc_trains_one_epoch_on_a_generated_image_folder() {
    let d = TmpDir::new("img-train");
    let data = d.0.join("imgs");
    for (k, class) in ["a", "b"].iter().enumerate() {
        for i in 0..12u32 {
            let img = RgbImage::from_fn(40 + i, 36, |x, y| {
                let v = ((x + y + i) % 64) as u8;
                Rgb(if k == 0 { [200, v, v] } else { [v, v, 200] })
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            save(&img, &data.join(format!("train/{class}/{i}.{ext}")));
            if i < 3 {
                save(&img, &data.join(format!("val/{class}/{i}.{ext}")));
            }
        }
    }
    std::fs::write(data.join("train/a/broken.jpg"), b"\xff\xd8 not really").unwrap();
    let jpg = std::fs::read(data.join("train/b/1.jpg")).unwrap();
    std::fs::write(data.join("train/b/cut.jpg"), &jpg[..jpg.len() - 30]).unwrap();
    let model = d.0.join("tiny.snn");
    std::fs::write(
        &model,
        "input 3x32x32\nconv2d 4 kernel=3 stride=2 padding=1\nlif\navgpool 4\nflatten\nlinear 2\n",
    )
    .unwrap();
    let run = |out: &str| {
        snnc(&[
            "train",
            model.to_str().unwrap(),
            "--data",
            &format!("images:{}", data.display()),
            "-T",
            "2",
            "--epochs",
            "1",
            "--batch",
            "8",
            "--seed",
            "3",
            "--out",
            d.0.join(out).to_str().unwrap(),
            "--json",
        ])
    };
    let (code, out, err) = run("run1");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"test_acc\""), "{out}");
    assert!(
        err.contains("warning: images: 1 of 32 files skipped"),
        "{err}"
    );
    assert!(err.contains("train/a/broken.jpg"), "{err}");
    // Cut after its header: named once, when first decoded.
    assert_eq!(err.matches("cannot decode").count(), 1, "{err}");
    assert!(
        err.contains("train/b/cut.jpg: cannot decode (truncated JPEG"),
        "{err}"
    );
    // Seeded augmentation: a second run has the same loss.
    let (code, out2, err) = run("run2");
    assert_eq!(code, 0, "{err}");
    let loss = |o: &str| o.split("\"train_loss\":").nth(1).unwrap()[..12].to_string();
    assert_eq!(loss(&out), loss(&out2));
    // Evaluating the run on the folder.
    let (code, out, err) = snnc(&["eval", d.0.join("run1").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test"), "{out}");
}

#[test]
fn resize_is_antialiased_bilinear_with_exact_levels() {
    // 16 columns alternating 0 and 200, halved: the triangle filter widened
    // to 4 taps (weights 1, 3, 3, 1 / 8) averages each pair to 100; at the
    // edges it is cut to 3 taps (3, 3, 1 / 7: 600/7 → 86; 1, 3, 3 / 7 with
    // 200 at both ends' odd columns: 800/7 → 114).
    let img = image::DynamicImage::ImageRgb8(RgbImage::from_fn(16, 16, |x, _| {
        let v = if x % 2 == 1 { 200 } else { 0 };
        Rgb([v, v, v])
    }));
    let t = ImageFolderOptions::for_input(&[3, 8, 8]).unwrap();
    let transform = snnc::data::images::Transform {
        channels: 3,
        height: 8,
        width: 8,
        train: None,
        crop_fraction: 1.0,
        mean: t.mean,
        std: t.std,
    };
    let mut out = vec![0f32; 3 * 64];
    transform.apply(&img, None, &mut out);
    let want = [86, 100, 100, 100, 100, 100, 100, 114];
    for c in 0..3 {
        for y in 0..8 {
            let row: Vec<f32> = out[c * 64 + y * 8..c * 64 + y * 8 + 8].to_vec();
            let exp: Vec<f32> = want.iter().map(|&v| norm(v, c)).collect();
            assert_eq!(row, exp, "channel {c} row {y}");
        }
    }
    // One channel: luma, with the average of ImageNet's statistics.
    let g = ImageFolderOptions::for_input(&[1, 4, 4]).unwrap();
    let mean = (IMAGENET_MEAN[0] + IMAGENET_MEAN[1] + IMAGENET_MEAN[2]) / 3.0;
    assert_eq!(g.mean, [mean; 3]);
    let d = TmpDir::new("img-luma");
    for split in ["train", "val"] {
        save(&flat(9, 7, GREY), &d.0.join(format!("{split}/a/x.png")));
    }
    let (s, _) = load_image_folder(&d.0, &g).unwrap();
    assert_eq!(s.test.shape, vec![1, 4, 4]);
    let mut x = vec![0f32; 16];
    s.test.sample_into(0, &mut x);
    assert!(
        x.iter().all(|&v| v == (128.0 / 255.0 - mean) / g.std[0]),
        "{x:?}"
    );
}

#[test]
fn more_classes_than_a_byte_holds() {
    // ImageNet-1k has 1,000 classes; 300 tiny ones here.
    let d = TmpDir::new("img-many");
    for k in 0..300 {
        for split in ["train", "val"] {
            save(
                &flat(4, 4, [k as u8, 0, 0]),
                &d.0.join(format!("{split}/n{k:05}/x.png")),
            );
        }
    }
    let (s, _) = load_image_folder(&d.0, &opts(4, 4)).unwrap();
    assert_eq!(s.train.classes, 300);
    assert_eq!(s.test.labels, (0..300).collect::<Vec<u16>>());
    let mut x = vec![0f32; 48];
    assert_eq!(s.test.sample_into(299, &mut x), 299);
    assert_eq!(x[0], norm(299u16 as u8, 0));
    let (_, labels) = Loader::sequential(&s.test, 300).next().unwrap();
    assert_eq!(labels[299], 299);
}
