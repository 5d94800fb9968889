//! Coordinators that share one state (PostgreSQL): what each must hear of the others.
//!
//! The state itself needs nothing more: every write is a transaction of the shared database,
//! leases are taken with row locks and fenced by their tokens, and every replica's expiry pass
//! skips the rows another is expiring. What the database does not carry by itself is in-memory:
//!
//! - **new work**: a submit, an extension, a resume or a requeue on one replica must wake the
//!   `Lease` calls parked on the others;
//! - **events**: a `Watch` on any replica shows every replica's trial changes and epochs
//!   (worker joins and losses each replica finds itself, from the shared worker table);
//! - **gauges**: the state's gauges (trials by state, queue depth, workers) are reported by one
//!   replica only, so that they sum correctly over replicas like the per-replica counters.
//!
//! `Coordinator::run_bus` carries the first two over the backend's [`Bus`] (`LISTEN`/`NOTIFY`
//! on PostgreSQL): what this replica posts is sent every [`FLUSH_EVERY`], and a thread of its
//! own waits for the others' messages. Messages are text: `<replica> w <n>` (n trials became
//! leasable) or `<replica> e <hex>` (length-delimited `WatchEvent`s). A message missed while a
//! connection was down costs a parked `Lease` call its wait (it polls the store again at its
//! deadline) or a `Watch` stream an event (its next snapshot has the state).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convsweep_proto::pb;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::commit::lock;
use crate::error::Error;
use crate::store::{Backend, Bus, MAX_BUS_MESSAGE};

/// How often what a replica posted is sent.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// How long the listening thread waits for messages before it looks at its stop flag (and at
/// whether it should report the gauges).
const LISTEN_FOR: Duration = Duration::from_millis(250);

/// Longest reason an event carries to the other replicas (the store keeps the whole).
const MAX_REASON: usize = 1_000;

/// What this replica posts for the others, and what it knows of its role.
#[derive(Debug)]
pub(super) struct Replicas {
    /// This replica's name on the bus.
    replica: String,
    outbox: Mutex<Outbox>,
    /// Whether this replica reports the shared state's gauges.
    leads: AtomicBool,
}

#[derive(Debug, Default)]
struct Outbox {
    work: u64,
    events: Vec<pb::WatchEvent>,
}

/// A message of another replica.
#[derive(Debug, PartialEq)]
enum Message {
    Work(u64),
    Events(Vec<pb::WatchEvent>),
}

impl Replicas {
    pub(super) fn new() -> Replicas {
        Replicas {
            replica: crate::store::lease::new_token("r-"),
            outbox: Mutex::default(),
            leads: AtomicBool::new(false),
        }
    }

    /// Whether this replica reports the shared state's gauges now.
    pub(super) fn leads(&self) -> bool {
        self.leads.load(Ordering::SeqCst)
    }

    /// Posts an event for the other replicas' `Watch` streams (trial changes and epochs; each
    /// replica finds worker changes itself).
    pub(super) fn post_event(&self, event: &pb::WatchEvent) {
        let mut event = event.clone();
        match &mut event.event {
            Some(pb::watch_event::Event::Trial(t)) => {
                if t.reason.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !t.reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    t.reason.truncate(end);
                }
            }
            Some(pb::watch_event::Event::Epoch(_)) => {}
            _ => return,
        }
        lock(&self.outbox).events.push(event);
    }

    /// Posts that `n` trials became leasable.
    pub(super) fn post_work(&self, n: usize) {
        if n > 0 {
            lock(&self.outbox).work += n as u64;
        }
    }

    /// What was posted since the last call, as bus messages.
    fn take_messages(&self) -> Vec<String> {
        let Outbox { work, events } = std::mem::take(&mut *lock(&self.outbox));
        let mut out = Vec::new();
        if work > 0 {
            out.push(format!("{} w {work}", self.replica));
        }
        let head = format!("{} e ", self.replica);
        let mut message = head.clone();
        for e in events {
            let bytes = e.encode_length_delimited_to_vec();
            if head.len() + 2 * bytes.len() > MAX_BUS_MESSAGE {
                debug!("an event too large for the bus stays on this replica");
                continue;
            }
            if message.len() + 2 * bytes.len() > MAX_BUS_MESSAGE {
                out.push(std::mem::replace(&mut message, head.clone()));
            }
            for b in bytes {
                let _ = write!(message, "{b:02x}");
            }
        }
        if message.len() > head.len() {
            out.push(message);
        }
        out
    }

    /// A message of another replica (`None` for this replica's own, or one it cannot read).
    fn parse(&self, text: &str) -> Option<Message> {
        let mut parts = text.splitn(3, ' ');
        let (from, kind, body) = (parts.next()?, parts.next()?, parts.next()?);
        if from == self.replica {
            return None;
        }
        match kind {
            "w" => body.parse().ok().map(Message::Work),
            "e" => {
                let bytes = (0..body.len())
                    .step_by(2)
                    .map(|i| body.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()?;
                let mut buf = bytes.as_slice();
                let mut events = Vec::new();
                while !buf.is_empty() {
                    events.push(pb::WatchEvent::decode_length_delimited(&mut buf).ok()?);
                }
                Some(Message::Events(events))
            }
            _ => None,
        }
    }
}

impl Replicas {
    /// Sends what this replica posts every [`FLUSH_EVERY`] over a bus of `backend`, until
    /// cancelled.
    pub(super) async fn publish(&self, backend: &Arc<dyn Backend>, cancel: &CancellationToken) {
        let mut publisher: Option<Box<dyn Bus>> = None;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let messages = self.take_messages();
            if messages.is_empty() {
                continue;
            }
            let backend = backend.clone();
            let held = publisher.take();
            let sent = tokio::task::spawn_blocking(move || {
                let mut bus = match held {
                    Some(bus) => bus,
                    None => backend
                        .bus()?
                        .ok_or_else(|| Error::Io(std::io::Error::other("the store has no bus")))?,
                };
                bus.publish(&messages).map(|()| bus)
            })
            .await;
            match sent {
                Ok(Ok(bus)) => publisher = Some(bus),
                Ok(Err(e)) => {
                    warn!(error = %e, "could not tell the other coordinators of new work and events; they poll")
                }
                Err(e) => warn!(error = %e, "the bus publisher panicked"),
            }
        }
    }

    /// The listening thread: the other replicas' messages over a bus of `backend` until
    /// `stop` (new work to `wake`, events to `events`), and the gauge role.
    pub(super) fn listen(
        &self,
        backend: &dyn Backend,
        stop: &AtomicBool,
        wake: &dyn Fn(usize),
        events: &tokio::sync::broadcast::Sender<pb::WatchEvent>,
    ) {
        let mut bus: Option<Box<dyn Bus>> = None;
        while !stop.load(Ordering::SeqCst) {
            let b = match bus.as_mut() {
                Some(b) => b,
                None => match backend.bus() {
                    Ok(Some(b)) => bus.insert(b),
                    Ok(None) => return,
                    Err(e) => {
                        warn!(error = %e, "cannot listen to the other coordinators; trying again");
                        self.leads.store(false, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let leads = b.lead().unwrap_or(false);
            if self.leads.swap(leads, Ordering::SeqCst) != leads {
                info!(replica = %self.replica, leads, "this coordinator {} the shared state's gauges", if leads { "now reports" } else { "no longer reports" });
            }
            match b.receive(LISTEN_FOR) {
                Ok(messages) => {
                    for text in messages {
                        match self.parse(&text) {
                            Some(Message::Work(n)) => wake(usize::try_from(n).unwrap_or(usize::MAX)),
                            Some(Message::Events(list)) => {
                                for e in list {
                                    // No subscriber is not an error.
                                    let _ = events.send(e);
                                }
                            }
                            None => {}
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "lost the connection to the other coordinators; listening again");
                    self.leads.store(false, Ordering::SeqCst);
                    bus = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_work_and_events_to_other_replicas_only() {
        let (a, b) = (Replicas::new(), Replicas::new());
        a.post_work(3);
        a.post_work(2);
        let epoch = |n| pb::WatchEvent {
            time_ms: 7,
            event: Some(pb::watch_event::Event::Epoch(pb::EpochReported {
                trial_id: "t".repeat(64),
                attempt: 0,
                metrics: Some(pb::EpochMetrics {
                    epoch: n,
                    ..Default::default()
                }),
            })),
        };
        // Enough events for several messages.
        let sent: Vec<_> = (1..=200).map(epoch).collect();
        for e in &sent {
            a.post_event(e);
        }
        a.post_event(&pb::WatchEvent {
            time_ms: 1,
            event: Some(pb::watch_event::Event::Worker(pb::WorkerChanged::default())),
        });
        let messages = a.take_messages();
        assert!(messages.len() > 2, "split under the size limit: {}", messages.len());
        assert!(messages.iter().all(|m| m.len() <= MAX_BUS_MESSAGE));
        assert!(a.take_messages().is_empty(), "taken once");
        assert_eq!(b.parse(&messages[0]), Some(Message::Work(5)));
        let mut got = Vec::new();
        for m in &messages[1..] {
            match b.parse(m) {
                Some(Message::Events(e)) => got.extend(e),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, sent, "every trial and epoch event, in order; no worker event");
        assert_eq!(a.parse(&messages[0]), None, "a replica skips its own");
        assert_eq!(b.parse("r-x e zz"), None);
        assert_eq!(b.parse("garbage"), None);
    }
}
