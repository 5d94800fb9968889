//! Fuzzing what a coordinator takes from the network: sweep specs generated from the spec
//! language's own keys and values and then mutated as text, and every RPC fed random and mutated
//! protobuf messages through a real tonic client over loopback.
//!
//! Cases per property: a bounded number here (the suite's run); `PROPTEST_CASES=N` runs more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut};
use convsweep_coordinator::sweep::SweepSpec;
use convsweep_coordinator::{CoordinatorConfig, Error};
use convsweep_proto::{PROTOCOL_VERSION, pb};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::common::{SPEC, Server, config};
use crate::fuzz_runner::runner;

// ---- sweep specs ----------------------------------------------------------------------------

const SECTION_KEYS: [(&str, &[&str]); 4] = [
    (
        "dataset",
        &[
            "name",
            "root",
            "train_size",
            "test_size",
            "noise",
            "data_seed",
            "image_size",
            "classes",
            "val_labels",
        ],
    ),
    (
        "model",
        &[
            "arch",
            "depth",
            "width",
            "stem",
            "patch_size",
            "kernel_size",
            "expansion",
            "inter_op",
            "train_mode",
            "init",
            "init_length",
            "init_decay",
        ],
    ),
    (
        "train",
        &[
            "epochs",
            "batch_size",
            "lr",
            "momentum",
            "nesterov",
            "weight_decay",
            "label_smoothing",
            "schedule",
            "augment",
            "warmup_epochs",
            "optimizer",
            "loss",
            "mixup",
            "cutmix",
            "precision",
        ],
    ),
    (
        "eval",
        &[
            "eps",
            "steps",
            "step_size",
            "random_start",
            "fgsm",
            "pgd",
            "corruptions",
            "severities",
            "images",
            "filters",
        ],
    ),
];

/// Words the spec language uses, and some it does not.
const WORDS: &[&str] = &[
    "synthetic",
    "cifar10",
    "cifar100",
    "fashion-mnist",
    "svhn",
    "tensor",
    "imagefolder",
    "random-resized-crop",
    "bf16",
    "fp16",
    "fp32",
    "resnet",
    "resnet18",
    "resnet50",
    "wide-resnet50-2",
    "mobilenet-v2",
    "vgg",
    "learned",
    "frozen",
    "kaiming-uniform",
    "kaiming-normal",
    "xavier-normal",
    "orthogonal",
    "low-res",
    "imagenet",
    "bn-relu",
    "relu",
    "none",
    "cosine",
    "step",
    "crop-flip",
    "bce",
    "ce",
    "adamw",
    "lamb",
    "gaussian-noise",
    "",
    "/tmp/x",
    "/etc/passwd",
    "../x",
    "labels/../../x",
    "\u{1F600}",
    "a\"b",
];

fn toml_value(depth: u32) -> BoxedStrategy<toml::Value> {
    let leaf = prop_oneof![
        4 => prop_oneof![-3i64..20, Just(0), Just(i64::MAX), Just(i64::MIN), any::<i64>()].prop_map(toml::Value::Integer),
        2 => prop_oneof![-1.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY), Just(1e300)].prop_map(toml::Value::Float),
        4 => prop::sample::select(WORDS).prop_map(|w| toml::Value::String(w.to_owned())),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        1 => "[a-z0-9_.\\- ]{0,12}".prop_map(toml::Value::String),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        6 => leaf,
        2 => prop::collection::vec(toml_value(depth - 1), 0..4).prop_map(toml::Value::Array),
        1 => prop::collection::btree_map("[a-z_]{1,6}", toml_value(depth - 1), 0..3)
            .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
    ]
    .boxed()
}

/// A key of a section: usually a real one.
fn key(section: usize) -> impl Strategy<Value = String> {
    let known = SECTION_KEYS[section].1;
    prop_oneof![
        8 => prop::sample::select(known).prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
    ]
}

/// A sweep spec as a TOML table, made of the language's keys with arbitrary values.
fn spec_table() -> impl Strategy<Value = toml::Table> {
    let section = |i: usize| prop::option::weighted(0.8, prop::collection::btree_map(key(i), toml_value(1), 0..7));
    let axis_name = prop_oneof![
        4 => prop::sample::select(
            convsweep_coordinator::sweep::AXIS_ALIASES.iter().map(|(a, _)| *a).collect::<Vec<_>>()
        )
        .prop_map(str::to_owned),
        2 => (0usize..4, any::<Index>()).prop_map(|(s, i)| {
            let (name, keys) = SECTION_KEYS[s];
            format!("{name}.{}", keys[i.index(keys.len())])
        }),
        1 => "[a-z_.]{1,12}",
    ];
    let grid = prop::option::weighted(0.8, prop::collection::btree_map(axis_name, toml_value(1), 0..4));
    let name = prop_oneof![8 => Just("fuzz".to_owned()), 1 => ".{0,8}", 1 => "[A-Z]{1,4}"];
    let seeds = prop::option::of(toml_value(1));
    (
        name,
        seeds,
        section(0),
        section(1),
        section(2),
        section(3),
        grid,
        prop::option::of(toml_value(0)),
    )
        .prop_map(|(name, seeds, dataset, model, train, eval, grid, stray)| {
            let mut t = toml::Table::new();
            t.insert("name".into(), toml::Value::String(name));
            if let Some(s) = seeds {
                t.insert("seeds".into(), s);
            }
            for (section, body) in ["dataset", "model", "train", "eval", "grid"]
                .into_iter()
                .zip([dataset, model, train, eval, grid])
            {
                if let Some(body) = body {
                    t.insert(section.into(), toml::Value::Table(body.into_iter().collect()));
                }
            }
            if let Some(v) = stray {
                t.insert("stray".into(), v);
            }
            t
        })
}

/// Text mutations of a rendered spec.
#[derive(Debug, Clone)]
enum Edit {
    DropLine(Index),
    DuplicateLine(Index),
    FlipByte(Index, u8),
    Truncate(Index),
    Insert(Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::DropLine),
        any::<Index>().prop_map(Edit::DuplicateLine),
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Edit::FlipByte(i, x)),
        any::<Index>().prop_map(Edit::Truncate),
        (
            any::<Index>(),
            prop::sample::select(vec!["[", "]", "=", "\"", "\n[grid]\n", "\nx = 1\n", "#", "\u{0}"])
        )
            .prop_map(|(i, s)| Edit::Insert(i, s.to_owned())),
    ]
}

fn apply_edit(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let mut bytes = text.as_bytes().to_vec();
    match edit {
        Edit::DropLine(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
            lines.join("\n")
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at]);
            lines.join("\n")
        }
        Edit::FlipByte(i, x) if !bytes.is_empty() => {
            let at = i.index(bytes.len());
            bytes[at] ^= x;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Edit::Truncate(i) if !bytes.is_empty() => {
            bytes.truncate(i.index(bytes.len()));
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Edit::Insert(i, s) => {
            let mut at = i.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        _ => text.to_owned(),
    }
}

/// The spec's top-level keys and the sections' fields: what an error's field may start with.
fn known_field(field: &str) -> bool {
    let head = field.split(['.', '[']).next().unwrap_or("");
    [
        "name",
        "description",
        "seeds",
        "dataset",
        "model",
        "train",
        "eval",
        "grid",
        "seed",
    ]
    .contains(&head)
}

#[test]
fn generated_and_mutated_specs_never_panic_and_every_rejection_names_a_field() {
    let base = [include_str!("../../../examples/demo.toml").to_owned(), SPEC.to_owned()];
    let text = prop_oneof![
        3 => spec_table().prop_map(|t| toml::to_string(&t).unwrap_or_default()),
        2 => (spec_table(), prop::collection::vec(edit(), 1..4)).prop_map(|(t, edits)| {
            edits.iter().fold(toml::to_string(&t).unwrap_or_default(), |s, e| apply_edit(&s, e))
        }),
        2 => (prop::sample::select(base.to_vec()), prop::collection::vec(edit(), 1..5))
            .prop_map(|(s, edits)| edits.iter().fold(s, |s, e| apply_edit(&s, e))),
    ];
    let outcomes = std::sync::Mutex::new(BTreeMap::<String, u32>::new());
    runner(10_000)
        .run(&text, |text| {
            // The coordinator's own path: the trial cap, the byte caps, then expansion.
            let parsed = SweepSpec::from_toml_capped(&text, 5_000).and_then(|s| {
                s.check_bytes(
                    convsweep_coordinator::sweep::DEFAULT_MAX_SPEC_BYTES,
                    convsweep_coordinator::sweep::DEFAULT_MAX_SWEEP_BYTES,
                )?;
                s.expand()
            });
            let outcome = match parsed {
                Ok(trials) => {
                    prop_assert!(!trials.is_empty());
                    for t in &trials {
                        prop_assert!(t.validate().is_ok(), "an expanded trial does not validate");
                        // No accepted spec names a file outside its dataset's root.
                        if let Some(file) = &t.dataset.val_labels {
                            let path = std::path::Path::new(file);
                            prop_assert!(
                                path.is_relative() && !path.components().any(|c| c == std::path::Component::ParentDir),
                                "accepted val_labels = {file:?}"
                            );
                        }
                    }
                    "accepted".to_owned()
                }
                Err(Error::InvalidSpec(e)) => {
                    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
                    if e.field == "spec" {
                        prop_assert!(
                            e.message.starts_with("not valid TOML") || e.message.contains("missing field `"),
                            "a whole-spec error that does not say what is wrong: {e}\n{text}"
                        );
                    } else {
                        prop_assert!(
                            known_field(&e.field) || e.message.contains("unknown field"),
                            "names no field of the spec: {e}\n{text}"
                        );
                    }
                    let head = if known_field(&e.field) || e.field == "spec" {
                        e.field.split(['.', '[']).next().unwrap_or("").to_owned()
                    } else {
                        "an unknown key".to_owned()
                    };
                    if std::env::var_os("FUZZ_SHOW").is_some() && !known_field(&e.field) {
                        eprintln!("{e}");
                    }
                    format!("refused: {head}")
                }
                Err(other) => return Err(TestCaseError::fail(format!("not a spec error: {other}\n{text}"))),
            };
            *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner().unwrap();
    let total: u32 = outcomes.values().sum();
    eprintln!("{total} specs, 0 panics: {outcomes:?}");
    assert!(
        outcomes.get("accepted").copied().unwrap_or(0) > 0,
        "no spec was ever accepted"
    );
}

// ---- RPCs -------------------------------------------------------------------------------------

/// Sends and receives raw bytes: the message is whatever the test makes of it.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Every row of every table, as text: what "stored rows" means here.
fn rows(dir: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let db = rusqlite::Connection::open_with_flags(dir.join("state.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|t| {
            // A worker's last-seen time is the one write a refused request makes (the store's
            // rule: a registered worker that sent anything is alive); every other column counts.
            let columns: Vec<String> = db
                .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .filter(|c: &String| c != "last_seen_ms")
                .map(|c| format!("\"{c}\""))
                .collect();
            let mut stmt = db
                .prepare(&format!("SELECT {} FROM \"{t}\"", columns.join(", ")))
                .unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).chars().take(60).collect(),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows.sort();
            (t, rows)
        })
        .collect()
}

/// The rows only one of two dumps holds.
fn diff(before: &BTreeMap<String, Vec<String>>, after: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    for (table, rows) in after {
        let old = before.get(table).cloned().unwrap_or_default();
        for r in rows.iter().filter(|r| !old.contains(r)) {
            out.push_str(&format!("\n+ {table}: {r}"));
        }
        for r in old.iter().filter(|r| !rows.contains(r)) {
            out.push_str(&format!("\n- {table}: {r}"));
        }
    }
    out
}

/// A byte-level change to an encoded message.
#[derive(Debug, Clone)]
enum Mangle {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// A field of any number and wire type appended (a varint, fixed or length-delimited value).
    Field(u32, u8, Vec<u8>),
    Random(Vec<u8>),
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mangle::Flip(i, b)),
        2 => any::<Index>().prop_map(Mangle::Truncate),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mangle::Insert(i, v)),
        2 => (1u32..20, 0u8..6, prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(f, w, v)| Mangle::Field(f, w, v)),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Mangle::Random),
    ]
}

fn apply_mangle(bytes: &mut Vec<u8>, m: &Mangle) {
    let len = bytes.len();
    match m {
        Mangle::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Mangle::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
        Mangle::Insert(i, v) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mangle::Field(field, wire, value) => {
            prost::encoding::encode_varint(u64::from(field << 3 | u32::from(*wire)), bytes);
            if *wire == 2 {
                prost::encoding::encode_varint(value.len() as u64, bytes);
            }
            bytes.extend(value);
        }
        Mangle::Random(v) => *bytes = v.clone(),
        _ => {}
    }
}

#[test]
fn mutated_messages_on_every_rpc_never_panic_and_change_nothing_unless_accepted() {
    // Panics on the server's threads (the hook is the process's; other tests run beside).
    const SERVER_THREAD: &str = "fuzzed-coordinator";
    let panics = Arc::new(AtomicUsize::new(0));
    let hook = std::panic::take_hook();
    std::panic::set_hook({
        let panics = panics.clone();
        Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREAD) {
                panics.fetch_add(1, Ordering::SeqCst);
            }
            hook(info);
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        // Nothing expires while the test looks: every row change comes from a request.
        lease_timeout: Duration::from_secs(3600),
        expiry_interval: Duration::from_secs(3600),
        max_lease_wait: Duration::from_millis(50),
        max_trials_per_sweep: 500,
        ..config(dir.path())
    };
    let server = rt.block_on(Server::start(config));
    // A sweep, a worker and a lease, so that mutations of real ids and tokens can hit.
    let (worker_id, lease) = rt.block_on(async {
        server
            .admin()
            .await
            .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
            .await
            .unwrap();
        let mut w = server.worker().await;
        let lease = w.lease(1, 0).await.remove(0);
        (w.id.clone(), lease)
    });
    let channel = rt
        .block_on(
            tonic::transport::Channel::from_shared(server.url.clone())
                .unwrap()
                .connect(),
        )
        .unwrap();

    let worker = |m: &str| format!("/convsweep.v1.WorkerService/{m}");
    let admin = |m: &str| format!("/convsweep.v1.AdminService/{m}");
    let lease_ref = pb::LeaseRef {
        trial_id: lease.trial_id.clone(),
        lease_token: lease.lease_token.clone(),
    };
    let base: Vec<(String, Vec<u8>, bool)> = vec![
        (
            worker("Register"),
            pb::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                host: "h".into(),
                devices: vec!["cpu".into()],
                slots: 2,
                name: "n".into(),
                instance: String::new(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            worker("Lease"),
            pb::LeaseRequest {
                worker_id: worker_id.clone(),
                max_trials: 1,
                wait_ms: 0,
            }
            .encode_to_vec(),
            false,
        ),
        (
            worker("Heartbeat"),
            pb::HeartbeatRequest {
                worker_id: worker_id.clone(),
                leases: vec![lease_ref.clone()],
            }
            .encode_to_vec(),
            false,
        ),
        (
            worker("ReportEpochs"),
            pb::ReportEpochsRequest {
                worker_id: worker_id.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                epochs: vec![crate::common::epoch(1, 0.5)],
            }
            .encode_to_vec(),
            false,
        ),
        (
            worker("Complete"),
            pb::CompleteRequest {
                worker_id: worker_id.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                    result: Some(crate::common::result(0.5)),
                })),
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("SubmitSweep"),
            pb::SubmitSweepRequest {
                spec_toml: SPEC.replace("small", "other"),
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("ExtendSweep"),
            pb::ExtendSweepRequest {
                spec_toml: SPEC.replace("[3, 5]", "[3, 5, 7]"),
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("GetStatus"),
            pb::GetStatusRequest {
                sweep_id: "small".into(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("Cancel"),
            pb::CancelRequest {
                sweep_id: "small".into(),
                trial_ids: vec![lease.trial_id.clone()],
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("Resume"),
            pb::ResumeRequest {
                sweep_id: "small".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            false,
        ),
        (
            admin("Export"),
            pb::ExportRequest {
                sweep_id: "small".into(),
            }
            .encode_to_vec(),
            true,
        ),
        (
            admin("Watch"),
            pb::WatchRequest {
                sweep_id: "small".into(),
            }
            .encode_to_vec(),
            true,
        ),
    ];

    let call = |path: &str, body: Vec<u8>, streaming: bool| -> Result<(), tonic::Status> {
        let channel = channel.clone();
        let path: http::uri::PathAndQuery = path.parse().unwrap();
        rt.block_on(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            if streaming {
                let mut stream = grpc
                    .server_streaming(tonic::Request::new(body), path, Raw)
                    .await?
                    .into_inner();
                // The first message (or the end, or the error) is the answer; Watch never ends.
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(tonic::Status::deadline_exceeded("no first message in 5 s")),
                }
            } else {
                grpc.unary(tonic::Request::new(body), path, Raw).await.map(|_| ())
            }
        })
    };

    let strategy = (any::<Index>(), prop::collection::vec(mangle(), 0..4));
    let tally = std::sync::Mutex::new(BTreeMap::<String, (u32, u32)>::new());
    runner(600)
        .run(&strategy, |(which, mangles)| {
            let (path, valid, streaming) = &base[which.index(base.len())];
            let mut body = valid.clone();
            for m in &mangles {
                apply_mangle(&mut body, m);
            }
            let before = rows(dir.path());
            let answer = call(path, body, *streaming);
            let after = rows(dir.path());
            let mut tally = tally.lock().unwrap();
            let entry = tally.entry(path.rsplit('/').next().unwrap().to_owned()).or_default();
            match answer {
                Ok(()) => entry.0 += 1,
                Err(status) => {
                    entry.1 += 1;
                    prop_assert!(
                        status.code() != tonic::Code::Unknown && status.code() != tonic::Code::Unavailable,
                        "{path}: {status:?}"
                    );
                    // A bad value (a NaN, an overlong name, an epoch past the trial's) is the
                    // sender's fault, refused by name: never an internal error that a worker
                    // would retry forever. (Bytes that are no message at all are tonic's to
                    // refuse, and it says INTERNAL, as gRPC has it.)
                    prop_assert!(
                        status.code() != tonic::Code::Internal
                            || status.message().starts_with("failed to decode Protobuf message"),
                        "{path}: {status:?}"
                    );
                    prop_assert!(
                        before == after,
                        "{path} was refused ({status:?}) but rows changed: {}",
                        diff(&before, &after)
                    );
                }
            }
            drop(tally);
            // The coordinator keeps serving.
            prop_assert!(call(&admin("GetStatus"), Vec::new(), false).is_ok());
            prop_assert_eq!(panics.load(Ordering::SeqCst), 0);
            Ok(())
        })
        .unwrap();
    let tally = tally.into_inner().unwrap();
    let (ok, refused) = tally.values().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    eprintln!(
        "{} mutated messages, {ok} accepted, {refused} refused, 0 panics: {tally:?}",
        ok + refused
    );
    assert_eq!(tally.len(), base.len(), "every RPC was fed: {tally:?}");
    rt.block_on(server.stop());
}
