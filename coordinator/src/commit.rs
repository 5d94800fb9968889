//! Group commit: the writes of the worker RPCs leave the async runtime and many of them share
//! one transaction (one fsync), each RPC answered only once its transaction is durable.
//!
//! An RPC queues its [`Write`] and waits. The first write to find the queue idle starts one
//! committer on tokio's blocking pool; it takes everything queued, runs it as one batch
//! ([`Store::write_batch`]), answers every write of the batch after the commit, and goes on
//! while writes keep arriving. At most one committer runs, so batches grow by themselves under
//! load (while one batch syncs, the next one gathers) and a lone write waits for nobody.
//!
//! A blocking-pool task (unlike a thread of our own) keeps tokio's paused test clock from
//! jumping ahead while a transaction runs.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Store, Write, Written};

/// Most writes one transaction takes; the rest wait for the next.
const MAX_BATCH: usize = 4096;

type Reply = oneshot::Sender<Result<Written>>;

#[derive(Debug, Default)]
struct Queue {
    writes: Vec<(Write, Reply)>,
    committing: bool,
}

/// The queue of writes and the store they go to.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    store: Arc<Mutex<Store>>,
    queue: Mutex<Queue>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// Locks `m` even when a panic poisoned it: what the coordinator keeps under its locks stays
/// usable after one (a store's transactions roll back on drop; the queue and maps are plain
/// collections).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupCommit {
    pub(crate) fn new(store: Arc<Mutex<Store>>, clock: Clock, metrics: Arc<Metrics>) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            store,
            queue: Mutex::default(),
            clock,
            metrics,
        })
    }

    /// Queues `write` and returns what it did once its transaction committed.
    pub(crate) async fn write(self: &Arc<Self>, write: Write) -> Result<Written> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.queue);
            queue.writes.push((write, reply));
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
            let batch: Vec<(Write, Reply)> = {
                let mut queue = lock(&self.queue);
                if queue.writes.is_empty() {
                    queue.committing = false;
                    return;
                }
                let n = queue.writes.len().min(MAX_BATCH);
                queue.writes.drain(..n).collect()
            };
            let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
            let started = std::time::Instant::now();
            let now = self.clock.now_ms();
            let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lock(&self.store).write_batch(&writes, now)
            }));
            self.metrics.store("write_batch", started.elapsed());
            self.metrics.batch_size.observe(writes.len() as f64);
            match results {
                Ok(Ok(results)) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        // A caller that went away (its RPC was cancelled) is no error here:
                        // what it asked for is committed and a retry finds it so.
                        let _ = reply.send(result);
                    }
                }
                Ok(Err(e)) => {
                    let why = e.to_string();
                    tracing::warn!(error = %why, writes = replies.len(), "a batch of writes failed to commit; none was stored");
                    // Each caller gets its own error, of the same kind (a full state folder stays
                    // one, so that workers are told to retry).
                    let kind = if e.is_out_of_space() {
                        std::io::ErrorKind::StorageFull
                    } else {
                        std::io::ErrorKind::Other
                    };
                    for reply in replies {
                        let _ = reply.send(Err(Error::Io(std::io::Error::new(
                            kind,
                            format!("not stored: the transaction failed to commit: {why}"),
                        ))));
                    }
                }
                // The replies are dropped: each caller gets "stopped before answering".
                Err(_) => tracing::error!(writes = replies.len(), "a batch of writes panicked; none was stored"),
            }
        }
    }
}
