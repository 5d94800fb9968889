//! Reads the ops port shares between its viewers: computed off the ops port's thread, at most
//! once per interval however many viewers ask, and handed to all of them. A viewer that finds
//! the last reading older than the interval asks for a new one and waits for it with the
//! others; the health endpoints never wait on any of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// What a read gave: its value, or why there is none.
pub(crate) type Reading<T> = Arc<Result<T, String>>;

/// One shared read and its last value.
pub(crate) struct SharedRead<T> {
    latest: watch::Sender<Option<(Instant, Reading<T>)>>,
    wanted: Notify,
    every: Duration,
}

impl<T: Send + Sync + 'static> SharedRead<T> {
    /// A read refreshed at most once per `every`.
    pub(crate) fn new(every: Duration) -> Arc<SharedRead<T>> {
        Arc::new(SharedRead {
            latest: watch::Sender::new(None),
            wanted: Notify::new(),
            every,
        })
    }

    /// Computes a new value whenever one is wanted, at most once per interval, until the
    /// task is dropped.
    pub(crate) async fn refresh<F, Fut>(self: Arc<Self>, compute: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        loop {
            self.wanted.notified().await;
            let started = Instant::now();
            let value = compute().await;
            self.latest.send_replace(Some((Instant::now(), Arc::new(value))));
            tokio::time::sleep_until(started + self.every).await;
        }
    }

    /// The last value when it is younger than the interval, else the next one.
    pub(crate) async fn get(&self) -> Reading<T> {
        let mut rx = self.latest.subscribe();
        if let Some((at, value)) = &*rx.borrow_and_update()
            && at.elapsed() < self.every
        {
            return value.clone();
        }
        self.wanted.notify_one();
        loop {
            if rx.changed().await.is_err() {
                return Arc::new(Err("the ops port is shutting down".into()));
            }
            if let Some((_, value)) = &*rx.borrow_and_update() {
                return value.clone();
            }
        }
    }
}

/// A token bucket: `rate` requests a second on average, bursts of up to `burst`.
#[derive(Debug)]
pub(crate) struct RateLimit {
    state: std::sync::Mutex<(f64, Instant)>,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            state: std::sync::Mutex::new((burst, Instant::now())),
            rate,
            burst,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn many_viewers_share_one_read_a_second() {
        let read = SharedRead::<usize>::new(Duration::from_secs(1));
        let computed = Arc::new(AtomicUsize::new(0));
        tokio::spawn(read.clone().refresh({
            let computed = computed.clone();
            move || {
                let computed = computed.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(computed.fetch_add(1, Ordering::SeqCst) + 1)
                }
            }
        }));
        // 16 viewers asking as fast as they can for 10 s.
        let viewers: Vec<_> = (0..16)
            .map(|_| {
                let read = read.clone();
                tokio::spawn(async move {
                    let end = Instant::now() + Duration::from_secs(10);
                    let mut seen = 0;
                    while Instant::now() < end {
                        let v = read.get().await;
                        seen = *v.as_ref().as_ref().unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    seen
                })
            })
            .collect();
        for v in viewers {
            assert!(v.await.unwrap() >= 9, "viewers see fresh readings");
        }
        let n = computed.load(Ordering::SeqCst);
        assert!((9..=11).contains(&n), "computed {n} times in 10 s for 16 viewers");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit::new(10.0, 5.0);
        assert_eq!((0..20).filter(|_| limit.allow()).count(), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| limit.allow()).count(), 5, "refilled up to the burst");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!((0..20).filter(|_| limit.allow()).count(), 2);
    }
}
