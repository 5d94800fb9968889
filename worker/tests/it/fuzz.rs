//! Fuzzing the files a worker reads: every dataset reader fed truncated, bit-flipped and
//! overwritten files and files whose headers announce the wrong shapes, and checkpoints
//! truncated or altered. A reader either loads something consistent or refuses with the file's
//! path and what is wrong; it never panics and never reads past what the file holds.
//!
//! Cases per property: 256 here (the suite's bounded run); `PROPTEST_CASES=N` runs more.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use convsweep_proto::spec::{DatasetName, TrainMode};
use convsweep_worker::control::TrialControl;
use convsweep_worker::data::DataCache;
use convsweep_worker::trainer::{CheckpointStore, train_trial};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tch::Device;

use crate::common::{model, trial};
use crate::data::{cifar_record, gzip, idx_file, mat_file, mat_matrix, mat_matrix_plain, spec, svhn_mat};
use crate::fuzz_runner::runner;

/// One change to a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    /// A bit in the first bytes, where the headers are.
    FlipHeader(usize, u8),
    Overwrite(Index, Vec<u8>),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (0usize..200, 0u8..8).prop_map(|(i, b)| Mutation::FlipHeader(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12)).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Append(extra) => bytes.extend(extra),
        _ if len == 0 => {}
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::FlipHeader(at, bit) => {
            if let Some(b) = bytes.get_mut(*at) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Overwrite(i, with) => {
            let at = i.index(len);
            for (b, w) in bytes[at..].iter_mut().zip(with) {
                *b = *w;
            }
        }
    }
}

/// A small valid set of files of each format, each written as the tools that make them do.
fn valid_files(name: DatasetName) -> Vec<(String, Vec<u8>)> {
    let file = |n: &str, b: Vec<u8>| (n.to_owned(), b);
    match name {
        DatasetName::Cifar10 => {
            let mut files: Vec<_> = (1..=5)
                .map(|i| {
                    let records = [cifar_record(&[i], 0), cifar_record(&[9 - i], 1)].concat();
                    file(&format!("data_batch_{i}.bin"), records)
                })
                .collect();
            files.push(file(
                "test_batch.bin",
                [cifar_record(&[3], 0), cifar_record(&[0], 1)].concat(),
            ));
            files
        }
        DatasetName::Cifar100 => vec![
            file(
                "train.bin",
                [cifar_record(&[1, 77], 0), cifar_record(&[2, 5], 1)].concat(),
            ),
            file("test.bin", cifar_record(&[19, 99], 0)),
        ],
        DatasetName::FashionMnist => {
            let pixels: Vec<u8> = (0..3 * 784).map(|i| (i % 251) as u8).collect();
            vec![
                file("train-images-idx3-ubyte.gz", gzip(&idx_file(&[3, 28, 28], &pixels))),
                file("train-labels-idx1-ubyte", idx_file(&[3], &[0, 4, 9])),
                file("t10k-images-idx3-ubyte", idx_file(&[1, 28, 28], &pixels[..784])),
                file("t10k-labels-idx1-ubyte.gz", gzip(&idx_file(&[1], &[7]))),
            ]
        }
        DatasetName::Svhn => {
            // The training file compressed (save -v7), the test file not (save -v6), so that
            // flipped bits reach the matrix parser and not only zlib's checksum.
            let x: Vec<u8> = (0..3072).map(|i| (i % 253) as u8).collect();
            let test = mat_file(&[
                mat_matrix_plain("X", 9, &[32, 32, 3, 1], 2, &x),
                mat_matrix_plain("y", 6, &[1, 1], 9, &7.0f64.to_le_bytes()),
            ]);
            vec![
                file("train_32x32.mat", svhn_mat(&[1.0, 10.0])),
                file("test_32x32.mat", test),
            ]
        }
        DatasetName::Tensor => {
            let images: Vec<u8> = (0..3 * 3 * 8 * 8).map(|i| (i % 256) as u8).collect();
            let labels: Vec<u8> = [0i64, 4, 2].iter().flat_map(|l| l.to_le_bytes()).collect();
            let train = npz(
                &[
                    ("images", npy("|u1", "(3, 3, 8, 8)", &images)),
                    ("labels", npy("<i8", "(3,)", &labels)),
                ],
                zip::CompressionMethod::Stored,
            );
            let test = npz(
                &[
                    ("images", npy("|u1", "(1, 3, 8, 8)", &images[..192])),
                    ("labels", npy("|u1", "(1,)", &[1])),
                    ("classes", npy("<i4", "()", &5i32.to_le_bytes())),
                ],
                zip::CompressionMethod::Deflated,
            );
            vec![file("train.npz", train), file("test.npz", test)]
        }
        DatasetName::Synthetic => unreachable!("not a file format"),
        DatasetName::Imagefolder => unreachable!("fuzzed on its own: image_files_survive_mutation"),
    }
}

/// A `.npy` array as NumPy writes it (format 1.0).
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// An `.npz` archive as `np.savez` (stored) or `np.savez_compressed` (deflated) writes it.
fn npz(arrays: &[(&str, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in arrays {
        let options = zip::write::FileOptions::default().compression_method(method);
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Loads `files` as dataset `name` and checks the outcome: a consistent dataset, or an error
/// that starts with the path of one of the files.
fn check_load(name: DatasetName, files: &[(String, Vec<u8>)]) -> Result<bool, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for (file, bytes) in files {
        std::fs::write(dir.path().join(file), bytes).unwrap();
    }
    match DataCache::default().get(&spec(name, dir.path()), Device::Cpu) {
        Ok(ds) => {
            for split in [&ds.train, &ds.test] {
                let size = split.images.size();
                prop_assert_eq!(size.len(), 4);
                prop_assert_eq!(split.labels.size(), vec![size[0]]);
                prop_assert!(size[0] > 0, "an empty split was loaded");
                let labels = Vec::<i64>::try_from(&split.labels).unwrap();
                prop_assert!(labels.iter().all(|l| (0..ds.classes).contains(l)), "labels {labels:?}");
            }
            Ok(true)
        }
        Err(e) => {
            let message = e.to_string();
            let named = files
                .iter()
                .any(|(file, _)| message.starts_with(&dir.path().join(file).display().to_string()));
            prop_assert!(named, "the error names no file of the set: {message}");
            prop_assert!(
                message.len() > dir.path().display().to_string().len() + 20,
                "says what is wrong: {message}"
            );
            Ok(false)
        }
    }
}

const FORMATS: [DatasetName; 5] = [
    DatasetName::Cifar10,
    DatasetName::Cifar100,
    DatasetName::FashionMnist,
    DatasetName::Svhn,
    DatasetName::Tensor,
];

/// Runs `check` on mutated copies of `valid` (1-3 mutations of one file, whose index `check`
/// gets too) and counts its answers: (accepted, refused).
fn mutated_file_sets(
    valid: &[(String, Vec<u8>)],
    check: impl Fn(&[(String, Vec<u8>)], usize) -> Result<bool, TestCaseError>,
) -> (u32, u32) {
    let (accepted, refused) = (Cell::new(0), Cell::new(0));
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 1..4));
    runner(256)
        .run(&strategy, |(which, mutations)| {
            let mut files = valid.to_vec();
            let target = which.index(files.len());
            for m in &mutations {
                apply(&mut files[target].1, m);
            }
            let counter = if check(&files, target)? { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    (accepted.get(), refused.get())
}

#[test]
fn every_reader_survives_mutated_files() {
    for name in FORMATS {
        let valid = valid_files(name);
        assert!(check_load(name, &valid).unwrap(), "{name:?}: the unmutated files load");
        let (loaded, refused) = mutated_file_sets(&valid, |files, _| check_load(name, files));
        eprintln!(
            "{name:?}: {} mutated file sets, {loaded} loaded, {refused} refused, 0 panics",
            loaded + refused
        );
        assert!(refused > 0, "{name:?}: no mutation was ever refused");
    }
}

/// A small image folder: one JPEG and one PNG per split and class.
fn image_folder_files() -> Vec<(String, Vec<u8>)> {
    let image = |w: u32, h: u32, format: image::ImageFormat| {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let (jpeg, png) = (image::ImageFormat::Jpeg, image::ImageFormat::Png);
    vec![
        ("train/a/0.JPEG".into(), image(40, 30, jpeg)),
        ("train/b/1.png".into(), image(33, 41, png)),
        ("val/a/2.png".into(), image(30, 30, png)),
        ("val/b/3.JPEG".into(), image(50, 20, jpeg)),
    ]
}

#[test]
fn image_files_survive_mutation() {
    use convsweep_worker::data::folder::EpochPlan;

    let (decoded, refused) = mutated_file_sets(&image_folder_files(), |files, target| {
        let dir = tempfile::tempdir().unwrap();
        for (file, bytes) in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let damaged = dir.path().join(&files[target].0).display().to_string();
        let mut s = spec(DatasetName::Imagefolder, dir.path());
        s.image_size = Some(16);
        // The validation split is decoded at load; the training split as it streams.
        let outcome = DataCache::default().get(&s, Device::Cpu).and_then(|ds| {
            let files = ds.train.files.clone().expect("streamed");
            let mut stream = files.stream(EpochPlan {
                order: vec![0, 1],
                batch: 2,
                from_batch: 0,
                batches: 1,
                augment: true,
                seed: 1,
                epoch: 1,
            });
            stream.next_batch().map(|b| (ds.test.images.size(), b.size()))
        });
        match outcome {
            Ok((test, train)) => {
                prop_assert_eq!(test, vec![2, 3, 16, 16]);
                prop_assert_eq!(train, vec![2, 3, 16, 16]);
                Ok(true)
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.starts_with(&damaged), "names the damaged file: {message}");
                Ok(false)
            }
        }
    });
    eprintln!(
        "imagefolder: {} mutated JPEG/PNG sets, {decoded} decoded, {refused} refused, 0 panics",
        decoded + refused
    );
    assert!(refused > 0, "no mutation was ever refused");
}

/// A dimension: small, the real one, zero or absurd.
fn dim(real: u32) -> impl Strategy<Value = u32> {
    prop_oneof![0u32..5, Just(real), Just(u32::MAX), any::<u32>()]
}

#[test]
fn headers_announcing_the_wrong_shape_are_refused_by_name() {
    let outcomes = [Cell::new(0u32), Cell::new(0u32)];
    let count = |ok: bool| outcomes[usize::from(!ok)].set(outcomes[usize::from(!ok)].get() + 1);

    // IDX: any number of dimensions of any size, with whatever bytes follow.
    let idx = (
        prop::collection::vec(dim(28), 0..5),
        0usize..3000,
        prop::collection::vec(dim(3), 0..3),
    );
    runner(256)
        .run(&idx, |(image_dims, data, label_dims)| {
            let mut files = valid_files(DatasetName::FashionMnist);
            files[2].1 = idx_file(&image_dims, &vec![7u8; data]);
            files[3].1 = gzip(&idx_file(&label_dims, &[1, 2, 3]));
            count(check_load(DatasetName::FashionMnist, &files)?);
            Ok(())
        })
        .unwrap();

    // MATLAB: X and y with any dimensions (negative ones included), types and data.
    let mat = (
        prop::collection::vec(prop_oneof![-2i32..40, Just(32), Just(i32::MAX)], 0..6),
        prop_oneof![Just(2u32), Just(9), 0u32..20],
        0usize..7000,
        prop::collection::vec(-1i32..4, 0..3),
        any::<bool>(),
    );
    runner(256)
        .run(&mat, |(x_dims, x_kind, x_len, y_dims, compressed)| {
            let matrix = if compressed { mat_matrix } else { mat_matrix_plain };
            let mut files = valid_files(DatasetName::Svhn);
            files[1].1 = mat_file(&[
                matrix("X", 9, &x_dims, x_kind, &vec![5u8; x_len]),
                matrix(
                    "y",
                    6,
                    &y_dims,
                    9,
                    &[1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
                ),
            ]);
            count(check_load(DatasetName::Svhn, &files)?);
            Ok(())
        })
        .unwrap();

    // npz: arrays of any dtype and shape, with more or fewer bytes than the shape needs.
    let descr = prop::sample::select(vec!["|u1", "<i8", "<i2", "<u8", "<f4", ">u1", "|b1", "<U3", "u1"]);
    let shape = prop::collection::vec(prop_oneof![0u64..5, Just(8), Just(u64::MAX / 2), any::<u64>()], 0..6);
    let array = (descr, shape, 0usize..3000);
    let npz_case = (array.clone(), array, prop::option::of(any::<i64>()), any::<bool>());
    runner(256)
        .run(
            &npz_case,
            |((idescr, ishape, ilen), (ldescr, lshape, llen), classes, deflate)| {
                let tuple = |s: &[u64]| format!("({})", s.iter().map(|d| format!("{d},")).collect::<String>());
                let mut arrays = vec![
                    ("images", npy(idescr, &tuple(&ishape), &vec![3u8; ilen])),
                    ("labels", npy(ldescr, &tuple(&lshape), &vec![1u8; llen])),
                ];
                if let Some(c) = classes {
                    arrays.push(("classes", npy("<i8", "()", &c.to_le_bytes())));
                }
                let method = if deflate {
                    zip::CompressionMethod::Deflated
                } else {
                    zip::CompressionMethod::Stored
                };
                let mut files = valid_files(DatasetName::Tensor);
                files[0].1 = npz(&arrays, method);
                count(check_load(DatasetName::Tensor, &files)?);
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "wrong-shaped headers: {} file sets, {} loaded, {} refused, 0 panics",
        outcomes[0].get() + outcomes[1].get(),
        outcomes[0].get(),
        outcomes[1].get()
    );
}

#[test]
fn a_damaged_checkpoint_is_refused_and_the_trial_starts_afresh() {
    let spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 2);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = CheckpointStore::new(&dir.path().join("good"), 1).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let reference = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&good, "t"))).unwrap();
    let files = |store: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(store)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let pristine = files(&dir.path().join("good"));
    assert_eq!(pristine.len(), 2, "a state and a tensor file");

    // Every change to either file is refused (never loaded as if it were the checkpoint).
    let refused = Cell::new(0);
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 1..3));
    runner(256)
        .run(&strategy, |(which, mutations)| {
            let mut damaged = pristine.clone();
            let target = which.index(damaged.len());
            for m in &mutations {
                apply(&mut damaged[target].1, m);
            }
            if damaged == pristine {
                return Ok(());
            }
            let case = tempfile::tempdir().unwrap();
            for (name, bytes) in &damaged {
                std::fs::write(case.path().join(name), bytes).unwrap();
            }
            let store = CheckpointStore::new(case.path(), 1).unwrap();
            match store.load("t") {
                Ok(Some(_)) => prop_assert!(false, "a damaged {} was loaded", damaged[target].0),
                Ok(None) => prop_assert!(damaged[target].0.ends_with(".state")),
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(message.contains(case.path().to_str().unwrap()), "{message}");
                }
            }
            refused.set(refused.get() + 1);
            Ok(())
        })
        .unwrap();
    eprintln!("checkpoints: {} damaged checkpoints refused, 0 loaded", refused.get());

    // A trial whose checkpoint was damaged starts afresh and ends exactly like one that never
    // had a checkpoint: nothing of the damaged files reaches the run.
    for (target, damage) in [(0, "truncated"), (1, "flipped")] {
        let case = dir.path().join(damage);
        std::fs::create_dir(&case).unwrap();
        let mut damaged = pristine.clone();
        // The state says 2 epochs are done: resuming from it would skip training.
        match damage {
            "truncated" => {
                let half = damaged[target].1.len() / 2;
                damaged[target].1.truncate(half);
            }
            _ => {
                let mid = damaged[target].1.len() / 2;
                damaged[target].1[mid] ^= 0x10;
            }
        }
        for (name, bytes) in &damaged {
            std::fs::write(case.join(name), bytes).unwrap();
        }
        let store = CheckpointStore::new(&case, 1).unwrap();
        let (ctl, _signal, mut events) = TrialControl::new();
        let result = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&store, "t"))).unwrap();
        let mut epochs = Vec::new();
        while let Ok(convsweep_worker::control::TrialEvent::Epoch(m)) = events.try_recv() {
            epochs.push(m.epoch);
        }
        assert_eq!(
            epochs,
            vec![1, 2],
            "{damage} {}: trained from the start",
            damaged[target].0
        );
        assert_eq!(result.final_train_loss, reference.final_train_loss);
        assert_eq!(result.final_test_acc, reference.final_test_acc);
    }
}
