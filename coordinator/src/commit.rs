//! Group commit: the writes of the worker RPCs leave the async runtime and many of them share
//! one transaction (one fsync), each RPC answered only once its transaction is durable.
//!
//! An RPC queues its [`WorkerWrite`] and waits for that write's own output. The first write to
//! find the queue idle starts one committer on tokio's blocking pool; it takes everything
//! queued, runs it as one batch ([`StoreWriter::batch`]), answers every write of the batch
//! after the commit, and goes on while writes keep arriving. At most one committer runs, so
//! batches grow by themselves under load (while one batch syncs, the next one gathers) and a
//! lone write waits for nobody.
//!
//! A batch first runs as one plain transaction. A refusal (a stale lease, an unknown worker,
//! a bad argument) is decided before its write changes anything (but its worker's last-seen
//! time), so it is answered alone and the batch goes on. Any other error of one write (a
//! storage error half-way through it) rolls that transaction back, and the batch runs again
//! write by write, each under a savepoint of its own: the failing write is undone alone and
//! answered with its error, and the others commit. Only a failure of the transaction itself (a
//! savepoint that cannot be taken or undone, the commit) fails the whole batch; every write of
//! it is answered with that error. The savepoints cost the common case nothing.
//!
//! A blocking-pool task (unlike a thread of our own) keeps tokio's paused test clock from
//! jumping ahead while a transaction runs.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{LeaseOps, StoreWriter, WorkerWrite};

/// Most writes one transaction takes; the rest wait for the next.
const MAX_BATCH: usize = 4096;

/// How a batch runs its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// All in one transaction: a write that fails other than by a refusal stops the pass.
    Plain,
    /// Each under a savepoint of its own, after a plain pass stopped.
    Isolated,
}

/// A queued write of any type: applied inside a batch, answered after it.
trait Queued: Send {
    /// Applies the write; keeps its output or its error for the answer. `Ok(false)` when a
    /// plain pass must stop (the write failed other than by a refusal); `Err` only when the
    /// transaction itself failed and the batch must roll back.
    fn apply(&mut self, ops: &mut dyn LeaseOps, pass: Pass) -> Result<bool>;

    /// Answers the caller: with what `apply` kept once the batch committed, else with
    /// `failed`.
    fn answer(self: Box<Self>, failed: Option<Error>);
}

struct Pending<W: WorkerWrite> {
    write: W,
    done: Option<Result<W::Output>>,
    reply: oneshot::Sender<Result<W::Output>>,
}

/// The refusals of the lease state machine: decided before a write changes anything (but its
/// worker's last-seen time), so a plain pass answers them and goes on.
fn refused_before_writing(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_) | Error::NotFound(_) | Error::StaleLease(_))
}

impl<W: WorkerWrite> Queued for Pending<W> {
    fn apply(&mut self, ops: &mut dyn LeaseOps, pass: Pass) -> Result<bool> {
        let done = match pass {
            Pass::Plain => match self.write.apply(ops) {
                // The database aborted the whole transaction (a deadlock with another
                // coordinator's): the backend runs the batch again, every write of it.
                Err(e) if e.is_conflict() => return Err(e),
                Err(e) if !refused_before_writing(&e) => {
                    tracing::debug!(error = %e, "one write of a batch failed; the batch runs again write by write");
                    self.done = Some(Err(e));
                    return Ok(false);
                }
                done => done,
            },
            Pass::Isolated => {
                ops.begin_write()?;
                let done = self.write.apply(ops);
                ops.end_write(done.is_ok())?;
                if let Err(e) = &done
                    && !refused_before_writing(e)
                {
                    tracing::warn!(error = %e, "one write of a batch failed and was undone alone; the others commit");
                }
                done
            }
        };
        self.done = Some(done);
        Ok(true)
    }

    fn answer(self: Box<Self>, failed: Option<Error>) {
        let answer = match (failed, self.done) {
            (Some(e), _) => Err(e),
            (None, Some(done)) => done,
            (None, None) => Err(Error::Io(std::io::Error::other(
                "the batch committed without applying this write",
            ))),
        };
        // A caller that went away (its RPC was cancelled) is no error here: what it asked for
        // is committed and a retry finds it so.
        let _ = self.reply.send(answer);
    }
}

#[derive(Default)]
struct Queue {
    writes: Vec<Box<dyn Queued>>,
    committing: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("writes", &self.writes.len())
            .field("committing", &self.committing)
            .finish()
    }
}

/// The store's writer as the coordinator shares it: the committer and the admin calls take
/// turns on it.
pub(crate) type SharedWriter = Arc<Mutex<Box<dyn StoreWriter>>>;

/// The queue of writes and the store they go to.
pub(crate) struct GroupCommit {
    store: SharedWriter,
    queue: Mutex<Queue>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("queue", &self.queue).finish()
    }
}

/// Locks `m` even when a panic poisoned it: what the coordinator keeps under its locks stays
/// usable after one (a store's transactions roll back on drop; the queue and maps are plain
/// collections).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupCommit {
    pub(crate) fn new(store: SharedWriter, clock: Clock, metrics: Arc<Metrics>) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            store,
            queue: Mutex::default(),
            clock,
            metrics,
        })
    }

    /// Queues `write` and returns its output once its transaction committed.
    pub(crate) async fn write<W: WorkerWrite>(self: &Arc<Self>, write: W) -> Result<W::Output> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.queue);
            queue.writes.push(Box::new(Pending {
                write,
                done: None,
                reply,
            }));
            !std::mem::replace(&mut queue.committing, true)
        };
        if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.commit_while_queued());
        }
        answer
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the store's committer stopped before answering")))?
    }

    fn commit_while_queued(&self) {
        loop {
            let mut batch: Vec<Box<dyn Queued>> = {
                let mut queue = lock(&self.queue);
                if queue.writes.is_empty() {
                    queue.committing = false;
                    return;
                }
                let n = queue.writes.len().min(MAX_BATCH);
                queue.writes.drain(..n).collect()
            };
            let size = batch.len();
            let started = std::time::Instant::now();
            let now = self.clock.now_ms();
            let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut store = lock(&self.store);
                let mut stopped = false;
                let plain = store.batch(now, &mut |ops| {
                    for write in batch.iter_mut() {
                        if !write.apply(ops, Pass::Plain)? {
                            stopped = true;
                            return Err(Error::Io(std::io::Error::other("a write failed: the batch runs again")));
                        }
                    }
                    Ok(())
                });
                if !stopped {
                    return plain;
                }
                // The plain pass rolled back: every write runs again under its own savepoint.
                store.batch(now, &mut |ops| {
                    for write in batch.iter_mut() {
                        write.apply(ops, Pass::Isolated)?;
                    }
                    Ok(())
                })
            }));
            self.metrics.store("write_batch", started.elapsed());
            self.metrics.batch_size.observe(size as f64);
            match committed {
                Ok(Ok(())) => batch.into_iter().for_each(|w| w.answer(None)),
                Ok(Err(e)) => {
                    let why = e.to_string();
                    tracing::warn!(error = %why, writes = size, "a batch of writes failed to commit; none was stored");
                    // Each caller gets its own error, of the same kind (a full state folder or a
                    // database out of reach stays one, so that workers are told to retry).
                    let kind = if e.is_out_of_space() {
                        std::io::ErrorKind::StorageFull
                    } else if e.is_transient() {
                        // A database out of reach: the callers are told to retry (UNAVAILABLE).
                        std::io::ErrorKind::ConnectionAborted
                    } else {
                        std::io::ErrorKind::Other
                    };
                    for w in batch {
                        w.answer(Some(Error::Io(std::io::Error::new(
                            kind,
                            format!("not stored: the transaction failed to commit: {why}"),
                        ))));
                    }
                }
                // The replies are dropped: each caller gets "stopped before answering".
                Err(_) => tracing::error!(writes = size, "a batch of writes panicked; none was stored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use convsweep_proto::pb;

    use super::*;
    use crate::store::{EpochsWrite, LeasePolicy, SqliteStore, StoreWriter};
    use crate::sweep::SweepSpec;

    fn epoch(n: u32) -> pb::EpochMetrics {
        pb::EpochMetrics {
            epoch: n,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: 1.0,
            test_acc: 0.5,
            seconds: 1.0,
            val_loss: None,
            val_acc: None,
        }
    }

    /// Four reports queued into one batch. The second meets a storage error half-way (its epoch
    /// row written, then marking the trial running fails): it alone is answered with the error
    /// and undone, epoch row included. The fourth names a lease token that is not current: it
    /// alone is refused. The first and third commit. On SQLite and on PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_failing_mid_batch_is_undone_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(crate::store::DB_FILE);
        let sqlite = SqliteStore::open(dir.path(), LeasePolicy::default()).unwrap();
        failing_mid_batch(
            Box::new(sqlite),
            &|sql| rusqlite::Connection::open(&db).unwrap().execute_batch(sql).unwrap(),
            &|sql| {
                rusqlite::Connection::open(&db)
                    .unwrap()
                    .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                    .map(|v| match v {
                        rusqlite::types::Value::Integer(n) => n.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        other => format!("{other:?}"),
                    })
                    .unwrap()
            },
            "CREATE TRIGGER broken BEFORE UPDATE OF state ON trials WHEN NEW.id = '{id}' \
             BEGIN SELECT RAISE(ABORT, 'injected storage error'); END;",
        )
        .await;

        let pg = convsweep_testkit::postgres::shared();
        let name = pg.fresh_database();
        let store = crate::store::PgStore::open(&pg.url(&name), LeasePolicy::default()).unwrap();
        failing_mid_batch(
            Box::new(store),
            &|sql| {
                pg.psql(&name, sql);
            },
            &|sql| pg.psql(&name, sql),
            "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected storage error'; END $$; \
             CREATE TRIGGER broken BEFORE UPDATE OF state ON trials FOR EACH ROW WHEN (NEW.id = '{id}') \
             EXECUTE FUNCTION broken();",
        )
        .await;
    }

    /// The case above on `store`; `exec` and `query` reach its database from the side, and
    /// `trigger` (with `{id}` for the trial) makes one trial's state change fail.
    async fn failing_mid_batch(
        mut store: Box<dyn StoreWriter>,
        exec: &dyn Fn(&str),
        query: &dyn Fn(&str) -> String,
        trigger: &str,
    ) {
        let spec = SweepSpec::from_toml(
            "name = \"s\"\n[dataset]\nname = \"synthetic\"\n[model]\narch = \"resnet\"\ndepth = 8\n\
             init = \"kaiming-uniform\"\ntrain_mode = \"learned\"\n[train]\nepochs = 4\n[grid]\nkernel_size = [3, 5, 7]\n",
        )
        .unwrap();
        store
            .submit(&spec.id, "", &spec.expand_canonical().unwrap(), 0)
            .unwrap();
        let worker = store.register_worker("w", "h", &[], 3, 0, "").unwrap();
        let mut leases = Vec::new();
        store
            .batch(0, &mut |ops| {
                leases = ops.lease(&worker, 3)?.leases;
                Ok(())
            })
            .unwrap();
        assert_eq!(leases.len(), 3);
        // A storage error for one trial's state change only.
        exec(&trigger.replace("{id}", &leases[1].trial_id));

        let store: SharedWriter = Arc::new(Mutex::new(store));
        let commits = GroupCommit::new(store.clone(), Clock::default(), Arc::new(Metrics::new()));
        let write = |l: &pb::TrialLease| EpochsWrite {
            worker_id: worker.clone(),
            trial_id: l.trial_id.clone(),
            token: l.lease_token.clone(),
            epochs: vec![epoch(1)],
        };
        // A committer is "running": the three writes queue up behind it, to be taken as one
        // batch by the committer this test then runs.
        lock(&commits.queue).committing = true;
        let stale = EpochsWrite {
            token: "l-not-current".into(),
            ..write(&leases[0])
        };
        let answers: Vec<_> = leases
            .iter()
            .map(write)
            .chain([stale])
            .map(|w| {
                let commits = commits.clone();
                tokio::spawn(async move { commits.write(w).await })
            })
            .collect();
        while lock(&commits.queue).writes.len() < 4 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // All four are queued, under MAX_BATCH: the committer takes them as one batch.
        let me = commits.clone();
        tokio::task::spawn_blocking(move || me.commit_while_queued())
            .await
            .unwrap();
        let mut results = Vec::new();
        for a in answers {
            results.push(a.await.unwrap());
        }
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("injected storage error"), "{err}");
        assert!(matches!(results[3], Err(Error::StaleLease(_))), "{:?}", results[3]);

        let stored = |t: &str| query(&format!("SELECT COUNT(*) FROM epochs WHERE trial_id = '{t}'"));
        assert_eq!(
            (
                stored(&leases[0].trial_id),
                stored(&leases[1].trial_id),
                stored(&leases[2].trial_id)
            ),
            ("1".to_owned(), "0".to_owned(), "1".to_owned())
        );
        let state = |t: &str| query(&format!("SELECT state FROM trials WHERE id = '{t}'"));
        assert_eq!(state(&leases[0].trial_id), "running");
        assert_eq!(state(&leases[1].trial_id), "leased", "its half-done write was undone");
    }
}
