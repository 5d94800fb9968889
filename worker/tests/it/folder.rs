//! The imagefolder loader, on small folders of real JPEG and PNG files written here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use convsweep_proto::spec::{Augment, ClassSubset, DatasetName, DatasetSpec, TrainMode};
use convsweep_worker::control::TrialControl;
use convsweep_worker::data::folder::{self, EpochPlan, Files};
use convsweep_worker::data::{DataCache, Dataset};
use convsweep_worker::rng::Rng;
use convsweep_worker::trainer::TrialRun;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::common::{model, trial, whole_and_resumed};
use crate::data::spec;

/// The colour of class `c`: far apart, so that a decoded pixel names its class.
fn colour(c: usize) -> [u8; 3] {
    [[220, 30, 30], [30, 200, 40], [40, 50, 230], [230, 220, 40]][c % 4]
}

/// A `w` x `h` image of class `c` with a gradient, so that crops differ.
fn picture(c: usize, w: u32, h: u32) -> RgbImage {
    let base = colour(c);
    RgbImage::from_fn(w, h, |x, y| {
        let shade = ((x * 16 / w.max(1)) + (y * 8 / h.max(1))) as u8;
        Rgb([
            base[0].saturating_sub(shade),
            base[1].saturating_sub(shade),
            base[2].saturating_sub(shade),
        ])
    })
}

fn write_jpeg(path: &Path, image: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut out = std::fs::File::create(path).unwrap();
    JpegEncoder::new_with_quality(&mut out, 95).encode_image(image).unwrap();
}

fn write_png(path: &Path, image: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save_with_format(path, ImageFormat::Png).unwrap();
}

/// `root/train/<class>/` with `train[c]` images and `root/val/<class>/` with `val[c]`; sizes
/// vary, one image per class is a PNG.
fn folder(root: &Path, names: &[&str], train: &[usize], val: &[usize]) {
    for (c, name) in names.iter().enumerate() {
        for i in 0..train[c] {
            let (w, h) = (40 + 7 * i as u32, 30 + 11 * (i as u32 % 3));
            let path = root.join("train").join(name);
            if i == 1 {
                write_png(&path.join(format!("{name}_{i}.png")), &picture(c, w, h));
            } else {
                write_jpeg(&path.join(format!("{name}_{i}.JPEG")), &picture(c, w, h));
            }
        }
        for i in 0..val[c] {
            let path = root.join("val").join(name).join(format!("v{name}_{i}.JPEG"));
            write_jpeg(&path, &picture(c, 50 + 5 * i as u32, 36));
        }
    }
}

fn imagefolder(root: &Path, size: u32) -> DatasetSpec {
    let mut s = spec(DatasetName::Imagefolder, root);
    s.image_size = Some(size);
    s
}

fn load(s: &DatasetSpec) -> Result<Dataset, String> {
    DataCache::default().get(s, Device::Cpu).map_err(|e| e.to_string())
}

fn labels(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

/// The class whose colour is nearest the mean colour of `image` (`[3, H, W]` uint8).
fn nearest_class(image: &Tensor) -> usize {
    let mean = Vec::<f64>::try_from(
        image
            .to_kind(Kind::Double)
            .mean_dim([1i64, 2].as_slice(), false, Kind::Double),
    )
    .unwrap();
    (0..4)
        .min_by_key(|&c| {
            let k = colour(c);
            (0..3).map(|i| ((mean[i] - f64::from(k[i])).abs()) as i64).sum::<i64>()
        })
        .unwrap()
}

#[test]
fn labels_shapes_and_the_class_balanced_order() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["n02", "n01", "n03"], &[4, 3, 2], &[2, 2, 1]);
    let ds = load(&imagefolder(dir.path(), 32)).unwrap();
    assert_eq!(ds.classes, 3);
    // Classes in sorted folder order: n01 = 0, n02 = 1, n03 = 2; the listing takes one image
    // of each class in turn.
    assert_eq!(labels(&ds.train.labels), vec![0, 1, 2, 0, 1, 2, 0, 1, 1]);
    assert_eq!(ds.test.images.size(), [5, 3, 32, 32]);
    assert_eq!(labels(&ds.test.labels), vec![0, 1, 2, 0, 1]);
    // Folder n01 was written with colour 1, n02 with 0, n03 with 2.
    let colour_of = [1, 0, 2];
    for i in 0..5 {
        let label = labels(&ds.test.labels)[i] as usize;
        assert_eq!(
            nearest_class(&ds.test.images.get(i as i64)),
            colour_of[label],
            "val image {i}"
        );
    }
    let files = ds.train.files.as_ref().expect("the training split is streamed");
    assert_eq!(files.paths.len(), 9);
    assert!(files.paths[1].ends_with("n02/n02_0.JPEG"), "{:?}", files.paths[1]);
    assert_eq!(ds.mean, folder::IMAGENET_MEAN.to_vec());

    // Sizes: the first N of the class-balanced order.
    let mut s = imagefolder(dir.path(), 24);
    s.train_size = Some(4);
    s.test_size = Some(3);
    let ds = load(&s).unwrap();
    assert_eq!(labels(&ds.train.labels), vec![0, 1, 2, 0]);
    assert_eq!(ds.test.images.size(), [3, 3, 24, 24]);
}

#[test]
fn a_class_subset_by_name_or_count() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["ant", "bee", "cat", "dog"], &[2, 2, 2, 2], &[1, 1, 1, 1]);
    let mut s = imagefolder(dir.path(), 16);
    s.classes = Some(ClassSubset::Names(vec!["dog".into(), "bee".into()]));
    let ds = load(&s).unwrap();
    assert_eq!(ds.classes, 2);
    let files = ds.train.files.as_ref().unwrap();
    // bee = 0, dog = 1.
    assert!(files.paths[0].ends_with("bee/bee_0.JPEG"));
    assert!(files.paths[1].ends_with("dog/dog_0.JPEG"));
    assert_eq!(labels(&ds.test.labels), vec![0, 1]);
    assert_eq!(nearest_class(&ds.test.images.get(1)), 3, "dog's colour");

    s.classes = Some(ClassSubset::First(3));
    assert_eq!(load(&s).unwrap().classes, 3);
    s.classes = Some(ClassSubset::First(9));
    let e = load(&s).unwrap_err();
    assert!(
        e.contains("dataset.classes = 9, but there are only 4 class folders"),
        "{e}"
    );
    s.classes = Some(ClassSubset::Names(vec!["eel".into()]));
    let e = load(&s).unwrap_err();
    assert!(e.contains("train/eel: missing") && e.contains("dataset.classes"), "{e}");
}

#[test]
fn validation_labels_from_a_file_kaggle_csv_or_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    folder(root, &["n01440764", "n01443537"], &[2, 2], &[0, 0]);
    // A flat val/ folder, as ImageNet's validation archive unpacks.
    for (i, c) in [1usize, 0, 1].iter().enumerate() {
        write_jpeg(
            &root.join(format!("val/ILSVRC2012_val_{:08}.JPEG", i + 1)),
            &picture(*c, 48, 40),
        );
    }
    std::fs::write(
        root.join("LOC_val_solution.csv"),
        "ImageId,PredictionString\n\
         ILSVRC2012_val_00000001,n01443537 10 20 30 40 n01443537 1 2 3 4\n\
         ILSVRC2012_val_00000002,n01440764 5 6 7 8\n\
         ILSVRC2012_val_00000003,n01443537 1 1 9 9\n",
    )
    .unwrap();
    let mut s = imagefolder(root, 16);
    s.val_labels = Some("LOC_val_solution.csv".into());
    let ds = load(&s).unwrap();
    // Interleaved by class: class 0's image, then class 1's two.
    assert_eq!(labels(&ds.test.labels), vec![0, 1, 1]);
    assert_eq!(nearest_class(&ds.test.images.get(0)), 0);
    assert_eq!(nearest_class(&ds.test.images.get(1)), 1);

    let plain = root.join("val.txt");
    std::fs::write(
        &plain,
        "ILSVRC2012_val_00000001.JPEG n01443537\nILSVRC2012_val_00000002.JPEG n01440764\n",
    )
    .unwrap();
    s.val_labels = Some("val.txt".into());
    assert_eq!(labels(&load(&s).unwrap().test.labels), vec![0, 1]);

    std::fs::write(&plain, "ILSVRC2012_val_00000009.JPEG n01443537\n").unwrap();
    let e = load(&s).unwrap_err();
    assert!(
        e.contains("val/ILSVRC2012_val_00000009.JPEG: missing") && e.contains("line 1 of"),
        "{e}"
    );
    std::fs::write(&plain, "ILSVRC2012_val_00000001.JPEG\n").unwrap();
    let e = load(&s).unwrap_err();
    assert!(
        e.contains("val.txt") && e.contains("line 1") && e.contains("no class"),
        "{e}"
    );
    // An error quotes a short excerpt of a line, never the line: a labels file that is not
    // one (a secret, say) does not come back in the failure reason.
    let secret = format!("{}\n", "s3cr3t".repeat(100));
    std::fs::write(&plain, &secret).unwrap();
    let e = load(&s).unwrap_err();
    assert!(e.contains("line 1") && e.len() < 300, "{e}");
    assert!(!e.contains(&"s3cr3t".repeat(10)), "{e}");
}

#[test]
fn missing_folders_empty_classes_and_undecodable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let e = load(&imagefolder(&root.join("nowhere"), 16)).unwrap_err();
    assert!(
        e.contains("nowhere/train: missing") && e.contains("one sub-folder of images per class"),
        "{e}"
    );

    folder(root, &["a", "b"], &[2, 2], &[1, 1]);
    std::fs::create_dir_all(root.join("train/c")).unwrap();
    std::fs::write(root.join("train/c/notes.txt"), "not an image").unwrap();
    let e = load(&imagefolder(root, 16)).unwrap_err();
    assert!(
        e.contains("train/c: this class folder holds no .jpg, .jpeg or .png files"),
        "{e}"
    );
    std::fs::remove_dir_all(root.join("train/c")).unwrap();

    std::fs::remove_dir_all(root.join("val/b")).unwrap();
    let e = load(&imagefolder(root, 16)).unwrap_err();
    assert!(e.contains("val/b: missing") && e.contains("dataset.val_labels"), "{e}");
    write_jpeg(&root.join("val/b/vb_0.JPEG"), &picture(1, 40, 40));

    // A validation file that is not an image: the load fails and names it.
    std::fs::write(root.join("val/a/broken.JPEG"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    let e = load(&imagefolder(root, 16)).unwrap_err();
    assert!(
        e.contains("val/a/broken.JPEG: cannot be decoded as a JPEG or PNG image"),
        "{e}"
    );
    std::fs::remove_file(root.join("val/a/broken.JPEG")).unwrap();

    // A training file that is not an image: the trial fails at its batch and names it.
    std::fs::write(root.join("train/b/zz_broken.jpg"), b"GIF89a, not a jpeg").unwrap();
    let spec = folder_trial(root, 1);
    let data = load(&spec.dataset).unwrap();
    let (ctl, _s, _e) = TrialControl::new();
    let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    let e = run.train_epoch(&ctl).unwrap_err().to_string();
    assert!(e.contains("train/b/zz_broken.jpg: cannot be decoded"), "{e}");
}

/// A small trial on the image folder at `root`, 16 px, batches of 8.
fn folder_trial(root: &Path, epochs: u32) -> convsweep_proto::TrialSpec {
    let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 5, epochs);
    spec.dataset = imagefolder(root, 16);
    spec.train.batch_size = 8;
    spec.train.augment = Augment::Auto;
    spec.canonicalize();
    spec.validate().unwrap();
    assert_eq!(spec.train.augment, Augment::RandomResizedCrop);
    spec
}

fn files(paths: Vec<PathBuf>, size: u32, threads: usize) -> Arc<Files> {
    Arc::new(Files { paths, size, threads })
}

fn epoch(files: &Arc<Files>, order: &[i64], batch: usize, from: usize, seed: u64, augment: bool) -> Vec<Tensor> {
    let batches = order.len().div_ceil(batch);
    let mut stream = files.stream(EpochPlan {
        order: order.to_vec(),
        batch,
        from_batch: from,
        batches,
        augment,
        seed,
        epoch: 1,
    });
    (from..batches).map(|_| stream.next_batch().unwrap()).collect()
}

#[test]
fn training_crops_follow_the_seed_not_the_threads_or_the_resume_point() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["a", "b"], &[5, 5], &[1, 1]);
    let ds = load(&imagefolder(dir.path(), 24)).unwrap();
    let paths = ds.train.files.as_ref().unwrap().paths.clone();
    let order: Vec<i64> = Rng::new(3).permutation(paths.len());
    let one = epoch(&files(paths.clone(), 24, 1), &order, 4, 0, 7, true);
    let three = epoch(&files(paths.clone(), 24, 3), &order, 4, 0, 7, true);
    assert_eq!(one.len(), 3);
    assert_eq!(one[0].size(), [4, 3, 24, 24]);
    assert_eq!(one[2].size(), [2, 3, 24, 24]);
    for (a, b) in one.iter().zip(&three) {
        assert!(a.equal(b), "the thread count changed a batch");
    }
    // A stream started at batch 1 (a resumed epoch) yields what the whole epoch did there.
    let resumed = epoch(&files(paths.clone(), 24, 2), &order, 4, 1, 7, true);
    assert!(resumed[0].equal(&one[1]) && resumed[1].equal(&one[2]));
    // Another seed crops differently; the labels' colours survive the crops.
    let other = epoch(&files(paths.clone(), 24, 2), &order, 4, 0, 8, true);
    assert!(!other[0].equal(&one[0]));
    let labels = labels(&ds.train.labels);
    for (i, &idx) in order.iter().take(4).enumerate() {
        assert_eq!(nearest_class(&one[0].get(i as i64)), labels[idx as usize] as usize);
    }
    // Without augmentation, a whole image resized: the same every time.
    let plain = epoch(&files(paths, 24, 2), &order, 4, 0, 7, false);
    let again = epoch(
        &files(ds.train.files.as_ref().unwrap().paths.clone(), 24, 1),
        &order,
        4,
        0,
        9,
        false,
    );
    assert!(plain[0].equal(&again[0]));
}

#[test]
fn random_resized_crop_windows_stay_inside_and_match_torchvision_bounds() {
    let mut rng = Rng::new(11);
    for (w, h) in [(500u32, 375u32), (64, 64), (3, 200), (1000, 10)] {
        for _ in 0..200 {
            let (x, y, cw, ch) = folder::random_resized_crop_window(w, h, &mut rng);
            assert!(
                cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h,
                "{w}x{h}: {x},{y} {cw}x{ch}"
            );
            if (w, h) == (500, 375) {
                let area = f64::from(cw * ch) / f64::from(w * h);
                let ratio = f64::from(cw) / f64::from(ch);
                // Rounding to whole pixels moves a bound by a little.
                assert!((0.079..=1.0).contains(&area), "{area}");
                assert!((0.74..=1.34).contains(&ratio), "{ratio}");
            }
        }
    }
    // The evaluation transform: the shorter side to 256, the centre 224.
    let image = picture(0, 500, 375);
    assert_eq!(folder::eval_transform(&image, 224).dimensions(), (224, 224));
}

#[test]
fn a_trial_trains_on_an_image_folder_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["a", "b", "c"], &[8, 8, 8], &[3, 3, 3]);
    let spec = folder_trial(dir.path(), 3);
    let data = load(&spec.dataset).unwrap();
    assert_eq!(data.image_shape(), (3, 16));
    let (whole, resumed) = whole_and_resumed(&spec, &data);
    assert!(
        whole
            .iter()
            .all(|m| m.train_loss.is_finite() && (0.0..=1.0).contains(&m.test_acc))
    );
    for (x, y) in whole.iter().zip(&resumed) {
        assert_eq!((x.train_loss, x.test_acc), (y.train_loss, y.test_acc));
    }
}
