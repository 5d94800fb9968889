//! `TrialSpec`: one training run, completely described, its canonical form and its id.

use serde::{Deserialize, Serialize};

use super::dataset::{DatasetName, DatasetSpec};
use super::error::FieldError;
use super::eval::EvalSpec;
use super::ids::{TrialId, canonical_string};
use super::model::ModelSpec;
use super::train::{Augment, TrainSpec};

/// One training run, completely described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSpec {
    /// Data.
    pub dataset: DatasetSpec,
    /// Model.
    pub model: ModelSpec,
    /// Recipe.
    #[serde(default)]
    pub train: TrainSpec,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Measurements after training (the defaults are left out of the canonical form).
    #[serde(default, skip_serializing_if = "EvalSpec::is_default")]
    pub eval: EvalSpec,
}

impl TrialSpec {
    /// Resolves defaults (and `nesterov` without momentum, which means nothing), so that equal runs
    /// have equal canonical forms. Idempotent.
    pub fn canonicalize(&mut self) {
        self.dataset.canonicalize();
        self.model.canonicalize();
        self.train.canonicalize(self.dataset.name);
    }

    /// Checks every value against what the trainer supports. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.dataset.validate()?;
        self.model.validate()?;
        self.eval.validate()?;
        self.train.validate()?;
        let folder = self.dataset.name == DatasetName::Imagefolder;
        match self.train.augment {
            Augment::CropFlip if folder => Err(FieldError::new(
                "train.augment",
                "\"crop-flip\" pads and crops 32-px images held in memory; imagefolder images are cropped as they are decoded: use \"random-resized-crop\" (its default) or \"none\"",
            )),
            Augment::RandomResizedCrop if !folder => Err(FieldError::new(
                "train.augment",
                format!(
                    "\"random-resized-crop\" is done as imagefolder files are decoded; dataset {:?} allows \"crop-flip\", \"none\" or \"auto\"",
                    self.dataset.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The canonical serialisation: JSON with object keys sorted at every level and no
    /// whitespace. Independent of serde_json's map-ordering features.
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self).expect("TrialSpec serialises to JSON");
        canonical_string(&value)
    }

    /// The id of this spec: the SHA-256 of its canonical JSON, hex, first 16 digits.
    pub fn id(&self) -> TrialId {
        TrialId::of_canonical_json(&self.canonical_json())
    }

    /// Parses canonical JSON received over the wire, naming the field that does not fit.
    pub fn from_json(json: &str) -> Result<Self, FieldError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            FieldError::new(
                if path == "." { "spec".to_owned() } else { path },
                e.inner().to_string(),
            )
        })
    }

    /// Short human label, e.g. `resnet-20-16 k=3 frozen kaiming-uniform seed=0`.
    pub fn label(&self) -> String {
        let m = &self.model;
        format!(
            "{} k={} {} {} seed={}",
            m.name(),
            m.kernel_size,
            m.train_mode.as_str(),
            m.init.as_str(),
            self.seed
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::*;

    type Change = Box<dyn Fn(&mut TrialSpec)>;

    pub(crate) fn demo_spec() -> TrialSpec {
        TrialSpec {
            dataset: DatasetSpec {
                name: DatasetName::Synthetic,
                root: None,
                train_size: Some(100),
                test_size: Some(50),
                noise: None,
                data_seed: None,
                image_size: None,
                classes: None,
                val_labels: None,
                val_fraction: None,
            },
            model: ModelSpec {
                arch: Arch::Resnet,
                depth: Some(8),
                width: Some(8),
                kernel_size: 3,
                expansion: None,
                inter_op: InterOp::None,
                train_mode: TrainMode::Frozen,
                init: InitScheme::KaimingUniform,
                stem: None,
                patch_size: None,
                init_length: None,
                init_decay: None,
            },
            train: TrainSpec::default(),
            seed: 7,
            eval: EvalSpec::default(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let json = spec.canonical_json();
        assert!(
            json.starts_with(r#"{"dataset":{"data_seed":0,"name":"synthetic","noise":0.6"#),
            "{json}"
        );
        assert!(!json.contains(' '));
        assert!(json.contains(r#""augment":"crop-flip""#));
    }

    #[test]
    fn id_is_stable_and_pinned() {
        let mut spec = demo_spec();
        spec.canonicalize();
        // Pinned: if this changes, every stored trial id changes. Only change it on purpose.
        assert_eq!(spec.id().as_str(), "d25e735756dcbc3e");
        assert_eq!(spec.id(), spec.clone().id());
    }

    #[test]
    fn canonicalisation_makes_defaults_explicit_and_is_idempotent() {
        let mut implicit = demo_spec();
        implicit.model.depth = None;
        implicit.model.width = None;
        let mut explicit = demo_spec();
        explicit.model.depth = Some(20);
        explicit.model.width = Some(16);
        implicit.canonicalize();
        explicit.canonicalize();
        assert_eq!(implicit.id(), explicit.id());
        let once = implicit.clone();
        implicit.canonicalize();
        assert_eq!(once, implicit);
    }

    #[test]
    fn every_setting_changes_the_id() {
        let base = {
            let mut s = demo_spec();
            s.canonicalize();
            s
        };
        let variants: Vec<Change> = vec![
            Box::new(|s| s.seed += 1),
            Box::new(|s| s.model.kernel_size = 5),
            Box::new(|s| s.model.train_mode = TrainMode::Learned),
            Box::new(|s| s.model.init = InitScheme::KaimingNormal),
            Box::new(|s| s.model.expansion = Some(2)),
            Box::new(|s| s.train.lr = 0.02),
            Box::new(|s| s.dataset.train_size = Some(101)),
        ];
        for change in variants {
            let mut s = base.clone();
            change(&mut s);
            s.canonicalize();
            assert_ne!(s.id(), base.id(), "{}", s.canonical_json());
        }
    }

    #[test]
    fn json_round_trip_keeps_the_id() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let back = TrialSpec::from_json(&spec.canonical_json()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.id(), spec.id());
    }

    #[test]
    fn from_json_names_the_bad_field() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let json = spec
            .canonical_json()
            .replace(r#""kernel_size":3"#, r#""kernel_size":"big""#);
        let err = TrialSpec::from_json(&json).unwrap_err();
        assert_eq!(err.field, "model.kernel_size");
    }

    #[test]
    fn validate_rejects_with_field_and_allowed_values() {
        let cases: Vec<(Change, &str, &str)> = vec![
            (Box::new(|s| s.model.kernel_size = 4), "model.kernel_size", "odd"),
            (Box::new(|s| s.model.kernel_size = 17), "model.kernel_size", "1..=15"),
            (Box::new(|s| s.model.depth = Some(21)), "model.depth", "6n+2"),
            (Box::new(|s| s.model.width = Some(0)), "model.width", "at least 1"),
            (
                Box::new(|s| s.model.expansion = Some(0)),
                "model.expansion",
                "at least 1",
            ),
            (Box::new(|s| s.train.epochs = 0), "train.epochs", "at least 1"),
            (
                Box::new(|s| s.train.epochs = 4_000_000_000),
                "train.epochs",
                "4000000000 is over the limit of 100000",
            ),
            (
                Box::new(|s| s.dataset.test_size = Some(50_000_000)),
                "dataset.test_size",
                "over the limit of 1000000 images for the synthetic set",
            ),
            (Box::new(|s| s.train.lr = -1.0), "train.lr", "> 0"),
            (Box::new(|s| s.train.momentum = 1.0), "train.momentum", "[0, 1)"),
            (
                Box::new(|s| s.train.label_smoothing = 1.5),
                "train.label_smoothing",
                "[0, 1)",
            ),
            (
                Box::new(|s| s.dataset.name = DatasetName::Cifar10),
                "dataset.root",
                "required",
            ),
            (
                Box::new(|s| s.dataset.train_size = Some(0)),
                "dataset.train_size",
                "at least 1",
            ),
        ];
        for (change, field, needle) in cases {
            let mut s = demo_spec();
            s.canonicalize();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains(needle), "{err}");
        }
        let mut ok = demo_spec();
        ok.canonicalize();
        ok.validate().unwrap();
    }

    #[test]
    fn imagefolder_fields_defaults_and_errors() {
        use crate::spec::dataset::ClassSubset;
        use crate::spec::train::Augment;

        let folder = || {
            let mut s = demo_spec();
            s.dataset.name = DatasetName::Imagefolder;
            s.dataset.root = Some("/data/imagenet".into());
            s.dataset.noise = None;
            s.dataset.data_seed = None;
            s.dataset.train_size = None;
            s.dataset.test_size = None;
            s.train.augment = Augment::Auto;
            s
        };
        let mut s = folder();
        s.dataset.classes = Some(ClassSubset::Names(vec!["n02".into(), "n01".into()]));
        s.canonicalize();
        s.validate().unwrap();
        assert_eq!(s.dataset.image_size, Some(224));
        assert_eq!(s.train.augment, Augment::RandomResizedCrop);
        assert_eq!(
            s.dataset.classes,
            Some(ClassSubset::Names(vec!["n01".into(), "n02".into()]))
        );
        // Written in another order, the same trial.
        let mut t = folder();
        t.dataset.classes = Some(ClassSubset::Names(vec!["n01".into(), "n02".into()]));
        t.canonicalize();
        assert_eq!(t.id(), s.id());
        let json: serde_json::Value =
            serde_json::from_str(r#"{"name": "imagefolder", "root": "r", "classes": 100}"#).unwrap();
        let d: crate::spec::DatasetSpec = serde_json::from_value(json).unwrap();
        assert_eq!(d.classes, Some(ClassSubset::First(100)));

        type Change = Box<dyn Fn(&mut TrialSpec)>;
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                Box::new(|s| s.dataset.image_size = Some(8)),
                "dataset.image_size",
                "16..=1024",
            ),
            (
                Box::new(|s| s.dataset.classes = Some(ClassSubset::First(0))),
                "dataset.classes",
                "at least 1",
            ),
            (
                Box::new(|s| s.dataset.classes = Some(ClassSubset::Names(vec![]))),
                "dataset.classes",
                "empty",
            ),
            (
                Box::new(|s| s.dataset.classes = Some(ClassSubset::Names(vec!["a/../b".into()]))),
                "dataset.classes",
                "not a class folder name",
            ),
            (
                Box::new(|s| s.dataset.classes = Some(ClassSubset::Names(vec!["a".into(), "a".into()]))),
                "dataset.classes",
                "listed twice",
            ),
            (
                Box::new(|s| s.train.augment = Augment::CropFlip),
                "train.augment",
                "random-resized-crop",
            ),
            (
                Box::new(|s| s.dataset.val_labels = Some("/etc/passwd".into())),
                "dataset.val_labels",
                "not absolute",
            ),
            (
                Box::new(|s| s.dataset.val_labels = Some("../../x".into())),
                "dataset.val_labels",
                "no `..`",
            ),
            (
                Box::new(|s| s.dataset.val_labels = Some("labels/../../x".into())),
                "dataset.val_labels",
                "no `..`",
            ),
            (
                Box::new(|s| s.dataset.val_labels = Some(String::new())),
                "dataset.val_labels",
                "is empty",
            ),
            (
                Box::new(|s| {
                    s.dataset.classes = Some(ClassSubset::Names((0..100_001).map(|i| format!("n{i:06}")).collect()))
                }),
                "dataset.classes",
                "at most 100000",
            ),
            (
                Box::new(|s| s.eval.fgsm = vec![crate::spec::Eps(0.01); 65]),
                "eval.fgsm",
                "at most 64 radii",
            ),
        ];
        for (change, field, needle) in cases {
            let mut s = folder();
            s.canonicalize();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains(needle), "{err}");
        }
        let mut s = folder();
        s.dataset.val_labels = Some("labels/LOC_val_solution.csv".into());
        s.canonicalize();
        s.validate().unwrap();
        // The folder's fields on another dataset, and its crop on in-memory images.
        let mut s = demo_spec();
        s.canonicalize();
        s.dataset.image_size = Some(224);
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "dataset.image_size");
        assert!(err.message.contains("only the imagefolder dataset"), "{err}");
        let mut s = demo_spec();
        s.canonicalize();
        s.train.augment = Augment::RandomResizedCrop;
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "train.augment");
        assert!(err.message.contains("allows \"crop-flip\""), "{err}");
    }

    #[test]
    fn inter_op_needs_an_lc_block() {
        let mut s = demo_spec();
        s.model.inter_op = InterOp::Relu;
        assert_eq!(s.validate().unwrap_err().field, "model.inter_op");
        s.model.expansion = Some(4);
        s.validate().unwrap();
    }

    #[test]
    fn architecture_defaults_are_resolved() {
        let mut s = demo_spec();
        s.model.arch = Arch::Resnet50;
        s.model.depth = None;
        s.model.width = None;
        s.model.init = InitScheme::Correlated;
        s.canonicalize();
        s.validate().unwrap();
        assert_eq!(s.model.stem, Some(Stem::LowRes));
        assert_eq!((s.model.init_length, s.model.init_decay), (Some(1.0), Some(1.5)));
        assert_eq!(s.model.name(), "resnet50");
        let mut c = demo_spec();
        c.model.arch = Arch::Convmixer;
        c.model.depth = None;
        c.model.width = None;
        c.model.expansion = Some(4);
        c.canonicalize();
        c.validate().unwrap();
        assert_eq!(c.model.name(), "convmixer-lc-256/8-p2x4");
    }

    #[test]
    fn the_default_recipe_is_the_papers() {
        let t = TrainSpec::default();
        assert_eq!((t.epochs, t.batch_size), (75, 256));
        assert_eq!((t.lr, t.momentum, t.nesterov), (1e-2, 0.9, true));
        assert_eq!((t.weight_decay, t.label_smoothing), (1e-2, 0.1));
        assert_eq!(t.schedule, LrSchedule::Cosine);
        // Augmentation: crop and flip for CIFAR, none for SVHN and Fashion-MNIST.
        for (name, want) in [
            (DatasetName::Cifar10, Augment::CropFlip),
            (DatasetName::Cifar100, Augment::CropFlip),
            (DatasetName::Svhn, Augment::None),
            (DatasetName::FashionMnist, Augment::None),
        ] {
            let mut s = demo_spec();
            s.dataset.name = name;
            s.dataset.root = Some("/data".into());
            s.dataset.noise = None;
            s.dataset.data_seed = None;
            s.canonicalize();
            s.validate().unwrap();
            assert_eq!(s.train.augment, want, "{name:?}");
        }
    }

    #[test]
    fn eval_settings_parse_fractions_and_keep_old_ids() {
        let mut s = demo_spec();
        s.canonicalize();
        let before = s.id();
        let json = s.canonical_json();
        assert!(
            !json.contains("eval"),
            "default evaluations stay out of the canonical form"
        );
        let with = json.replace(
            r#""seed":7"#,
            r#""seed":7,"eval":{"fgsm":["1/255","8/255",0.1],"pgd":{"eps":["8/255"]}}"#,
        );
        let parsed = TrialSpec::from_json(&with).unwrap();
        assert_eq!(parsed.eval.fgsm, vec![Eps(1.0 / 255.0), Eps(8.0 / 255.0), Eps(0.1)]);
        let pgd = parsed.eval.pgd.clone().unwrap();
        assert_eq!((pgd.steps, pgd.random_start, pgd.step_size), (10, true, None));
        assert_eq!(parsed.eval.severities, vec![1, 2, 3, 4, 5]);
        assert_ne!(parsed.id(), before);
        parsed.validate().unwrap();
        let bad = json.replace(r#""seed":7"#, r#""seed":7,"eval":{"fgsm":["one/255"]}"#);
        assert!(TrialSpec::from_json(&bad).unwrap_err().to_string().contains("fraction"));
        let mut s2 = parsed.clone();
        s2.eval.severities = vec![1, 6];
        assert_eq!(s2.validate().unwrap_err().field, "eval.severities");
        s2.eval.severities = vec![1];
        s2.eval.fgsm = vec![Eps(2.0)];
        assert_eq!(s2.validate().unwrap_err().field, "eval.fgsm");
    }

    #[test]
    fn ids_parse_and_reject() {
        assert!(TrialId::parse("0123456789abcdef").is_ok());
        assert!(TrialId::parse("0123456789ABCDEF").is_err());
        assert!(TrialId::parse("abc").is_err());
        assert!(SweepId::parse("demo_1-a").is_ok());
        for bad in ["", "Demo", "a b", "-x", "../x"] {
            assert!(SweepId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_recipe_fields_are_left_out_at_their_defaults_so_that_earlier_ids_stand() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let before = spec.canonical_json();
        for field in ["warmup", "\"loss\"", "mixup", "cutmix", "optimizer"] {
            assert!(!before.contains(field), "{field} at its default is left out: {before}");
        }
        let mut warm = spec.clone();
        warm.train.warmup_epochs = 1;
        warm.train.epochs = 5;
        assert!(warm.canonical_json().contains("\"warmup_epochs\":1"));
        assert_ne!(warm.id(), spec.id());
        assert!(warm.validate().is_ok());
        warm.train.warmup_epochs = 5;
        let e = warm.validate().unwrap_err();
        assert_eq!(e.field, "train.warmup_epochs", "{e}");
        // SGD's momentum means nothing to AdamW: whatever was written, one trial.
        let adamw = |momentum: f64| {
            let mut t = demo_spec();
            t.train.optimizer = Optimizer::Adamw;
            t.train.momentum = momentum;
            t.canonicalize();
            t.id()
        };
        assert_eq!(adamw(0.0), adamw(0.5));
        assert_ne!(adamw(0.9), spec.id());
    }
}
