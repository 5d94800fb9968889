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
//! Inside a batch a refused write ([`Error::is_refusal`]) is answered with its refusal and the
//! others commit (the lease state machine refuses before it writes); any other error rolls the
//! whole batch back and every write of it is answered with that error.
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

/// A queued write of any type: applied inside a batch, answered after it.
trait Queued: Send {
    /// Applies the write; keeps its output or its refusal for the answer. `Err` only for an
    /// error that must roll the batch back.
    fn apply(&mut self, ops: &mut dyn LeaseOps) -> Result<()>;

    /// Answers the caller: with what `apply` kept once the batch committed, else with
    /// `failed`.
    fn answer(self: Box<Self>, failed: Option<Error>);
}

struct Pending<W: WorkerWrite> {
    write: W,
    done: Option<Result<W::Output>>,
    reply: oneshot::Sender<Result<W::Output>>,
}

impl<W: WorkerWrite> Queued for Pending<W> {
    fn apply(&mut self, ops: &mut dyn LeaseOps) -> Result<()> {
        match self.write.apply(ops) {
            Ok(out) => self.done = Some(Ok(out)),
            Err(e) if e.is_refusal() => self.done = Some(Err(e)),
            Err(e) => return Err(e),
        }
        Ok(())
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
                lock(&self.store).batch(now, &mut |ops| {
                    for write in batch.iter_mut() {
                        write.apply(ops)?;
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
                    // Each caller gets its own error, of the same kind (a full state folder stays
                    // one, so that workers are told to retry).
                    let kind = if e.is_out_of_space() {
                        std::io::ErrorKind::StorageFull
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
