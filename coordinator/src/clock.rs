//! Time as the coordinator sees it: wall-clock milliseconds (lease deadlines are stored and must
//! survive a restart), advanced by tokio's clock so that tests can pause and move time.

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, moving with tokio's (pausable) clock.
#[derive(Debug, Clone)]
pub struct Clock {
    base_wall_ms: i64,
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Clock {
            base_wall_ms: wall,
            base: Instant::now(),
        }
    }
}

impl Clock {
    /// A clock that reads `wall_ms` now (another clock's reading: the database's, for
    /// coordinators that share a state).
    pub fn at(wall_ms: i64) -> Clock {
        Clock {
            base_wall_ms: wall_ms,
            base: Instant::now(),
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.base_wall_ms + self.base.elapsed().as_millis() as i64
    }
}
