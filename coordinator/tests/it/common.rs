//! A coordinator on 127.0.0.1:0 and a scripted worker client.

use std::sync::Arc;
use std::time::Duration;

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::pb::admin_service_client::AdminServiceClient;
use convsweep_proto::pb::worker_service_client::WorkerServiceClient;
use convsweep_proto::{PROTOCOL_VERSION, pb};
use tokio_util::sync::CancellationToken;

/// A small valid sweep: 2 kernel sizes x 2 train modes.
pub const SPEC: &str = r#"
name = "small"
[dataset]
name = "synthetic"
train_size = 64
test_size = 32
[model]
arch = "resnet"
depth = 8
width = 4
init = "kaiming-uniform"
[train]
epochs = 2
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
"#;

/// What a migration test undoes of schema 9 (on SQLite and PostgreSQL alike) to make a
/// version 8 state.
pub const UNDO_V9: &str = "ALTER TABLE epochs DROP COLUMN val_loss; ALTER TABLE epochs DROP COLUMN val_acc; \
                           ALTER TABLE trials DROP COLUMN stop_rung; DROP TABLE decisions;";

pub fn config(dir: &std::path::Path) -> CoordinatorConfig {
    CoordinatorConfig {
        state_dir: dir.to_owned(),
        heartbeat_interval: Duration::from_millis(200),
        lease_timeout: Duration::from_secs(2),
        max_attempts: 2,
        max_lease_wait: Duration::from_secs(5),
        expiry_interval: Duration::from_millis(100),
        watch_interval: Duration::from_millis(100),
        max_trials_per_sweep: convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
        ..Default::default()
    }
}

/// Which backend a test's coordinator keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// SQLite in the test's folder.
    Sqlite,
    /// A database of the test's own on the test process's PostgreSQL server.
    Postgres,
}

/// One test's state: a temporary folder, and on PostgreSQL a fresh database.
pub struct State {
    pub dir: tempfile::TempDir,
    /// The database's name, on PostgreSQL.
    pub database: Option<String>,
}

impl State {
    pub fn new(store: Store) -> State {
        State {
            dir: tempfile::tempdir().unwrap(),
            database: (store == Store::Postgres).then(|| convsweep_testkit::postgres::shared().fresh_database()),
        }
    }

    /// The store's location: the PostgreSQL URL, or the folder.
    pub fn url(&self) -> Option<String> {
        self.database
            .as_ref()
            .map(|db| convsweep_testkit::postgres::shared().url(db))
    }

    /// The tests' coordinator settings ([`config`]) on this state.
    pub fn config(&self) -> CoordinatorConfig {
        CoordinatorConfig {
            store_url: self.url(),
            ..config(self.dir.path())
        }
    }

    /// The backend of this state.
    pub fn backend(&self) -> Arc<dyn convsweep_coordinator::store::Backend> {
        match self.url() {
            Some(url) => Arc::new(convsweep_coordinator::store::PostgresBackend::new(url)),
            None => Arc::new(convsweep_coordinator::store::SqliteBackend::new(self.dir.path())),
        }
    }

    /// The first column of the first row of a query, as text.
    pub fn query(&self, sql: &str) -> String {
        match &self.database {
            Some(db) => convsweep_testkit::postgres::shared().psql(db, sql),
            None => rusqlite::Connection::open(self.dir.path().join("state.db"))
                .unwrap()
                .query_row(sql, [], |r| r.get::<_, String>(0))
                .unwrap(),
        }
    }

    /// Runs SQL on the state behind the coordinator's back (what a crash or an operator
    /// might leave).
    pub fn sql(&self, sql: &str) {
        match &self.database {
            Some(db) => {
                convsweep_testkit::postgres::shared().psql(db, sql);
            }
            None => rusqlite::Connection::open(self.dir.path().join("state.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
        }
    }
}

/// Defines a test that runs once on each store: `mod NAME { fn sqlite(); fn postgres(); }`,
/// each under the given test attribute (written first, before the test's doc comment).
#[macro_export]
macro_rules! on_both_stores {
    (#[$attr:meta] $(#[doc = $doc:expr])* async fn $name:ident($store:ident: Store) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[$attr]
            async fn sqlite() {
                run($crate::common::Store::Sqlite).await
            }

            #[$attr]
            async fn postgres() {
                run($crate::common::Store::Postgres).await
            }

            async fn run($store: $crate::common::Store) $body
        }
    };
}

pub struct Server {
    pub url: String,
    pub coordinator: Arc<Coordinator>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<convsweep_coordinator::Result<()>>,
}

impl Server {
    pub async fn start(config: CoordinatorConfig) -> Server {
        let coordinator = Coordinator::open(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(convsweep_coordinator::serve(
            listener,
            coordinator.clone(),
            async move { s.cancelled().await },
        ));
        Server {
            url,
            coordinator,
            stop,
            handle,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }

    pub async fn admin(&self) -> AdminServiceClient<tonic::transport::Channel> {
        AdminServiceClient::connect(self.url.clone()).await.unwrap()
    }

    pub async fn worker(&self) -> FakeWorker {
        self.worker_named("fake", 1).await
    }

    /// A worker registered as `name` with `slots`.
    pub async fn worker_named(&self, name: &str, slots: u32) -> FakeWorker {
        let mut client = WorkerServiceClient::connect(self.url.clone()).await.unwrap();
        let id = client
            .register(pb::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                host: "test".into(),
                devices: vec!["cpu".into()],
                slots,
                name: name.into(),
                instance: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        FakeWorker { client, id }
    }
}

/// A coordinator with the tests' settings served on a loopback port as `serve` says (token,
/// TLS, limits); its connection (plaintext, no token) and the token that stops it.
pub async fn serve(
    dir: &std::path::Path,
    serve: convsweep_coordinator::ServeConfig,
) -> (Arc<Coordinator>, convsweep_proto::client::Connection, CancellationToken) {
    serve_on(config(dir), serve).await
}

/// [`serve`] with these coordinator settings.
pub async fn serve_on(
    config: CoordinatorConfig,
    serve: convsweep_coordinator::ServeConfig,
) -> (Arc<Coordinator>, convsweep_proto::client::Connection, CancellationToken) {
    let coordinator = Coordinator::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move { convsweep_coordinator::serve_with(listener, c, &serve, async move { s.cancelled().await }).await }
    });
    (coordinator, convsweep_proto::client::Connection::plain(url), stop)
}

pub use convsweep_testkit::scripted::{epoch, lease_now, result, scripted_worker};

/// A worker that does what the test tells it.
pub struct FakeWorker {
    pub client: WorkerServiceClient<tonic::transport::Channel>,
    pub id: String,
}

impl FakeWorker {
    pub async fn lease(&mut self, max: u32, wait_ms: u32) -> Vec<pb::TrialLease> {
        self.client
            .lease(pb::LeaseRequest {
                worker_id: self.id.clone(),
                max_trials: max,
                wait_ms,
            })
            .await
            .unwrap()
            .into_inner()
            .leases
    }

    /// A heartbeat naming `lease`: the directive for it.
    pub async fn heartbeat(&mut self, lease: &pb::TrialLease) -> pb::LeaseDirective {
        let resp = self
            .client
            .heartbeat(pb::HeartbeatRequest {
                worker_id: self.id.clone(),
                leases: vec![pb::LeaseRef {
                    trial_id: lease.trial_id.clone(),
                    lease_token: lease.lease_token.clone(),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        pb::LeaseDirective::try_from(resp.leases[0].directive).unwrap()
    }

    pub async fn report(&mut self, lease: &pb::TrialLease, epochs: Vec<pb::EpochMetrics>) -> Result<(), tonic::Status> {
        self.client
            .report_epochs(pb::ReportEpochsRequest {
                worker_id: self.id.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                epochs,
            })
            .await
            .map(|_| ())
    }

    pub async fn succeed(&mut self, lease: &pb::TrialLease, acc: f64) -> Result<pb::CompleteResponse, tonic::Status> {
        self.complete(
            lease,
            pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                result: Some(result(acc)),
            }),
        )
        .await
    }

    pub async fn complete(
        &mut self,
        lease: &pb::TrialLease,
        outcome: pb::complete_request::Outcome,
    ) -> Result<pb::CompleteResponse, tonic::Status> {
        self.client
            .complete(pb::CompleteRequest {
                worker_id: self.id.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                outcome: Some(outcome),
            })
            .await
            .map(|r| r.into_inner())
    }
}

pub fn counts(status: &pb::GetStatusResponse) -> pb::StateCounts {
    status.sweeps[0].counts.unwrap()
}

/// Registers a worker with `slots` through a token-carrying client; returns its id.
pub async fn register(client: &mut WorkerServiceClient<convsweep_proto::client::AuthChannel>, slots: u32) -> String {
    client
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            slots,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

/// Leases up to `n` trials to `worker` straight through a store's writer, in a transaction of
/// its own.
pub fn store_lease(
    store: &mut dyn convsweep_coordinator::store::StoreWriter,
    worker: &str,
    n: u32,
    now: i64,
) -> Vec<pb::TrialLease> {
    let mut leases = Vec::new();
    store
        .batch(now, &mut |ops| {
            leases = ops.lease(worker, n)?.leases;
            Ok(())
        })
        .unwrap();
    leases
}
