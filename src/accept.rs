//! Accepting connections when descriptors run out. `accept` fails with EMFILE while the process
//! is at its descriptor limit, and the pending connection stays in the queue: retrying at once
//! would spin a core. The control socket and the HTTP server both wait with [`Backoff`].

use std::time::Duration;

/// The wait between failed accepts: 10 ms, doubling to 1 s; one log line per stretch.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    logged: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(10),
            logged: false,
        }
    }
}

impl Backoff {
    /// After a successful accept.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Logs the failure (once per stretch of failures) and waits before the next try.
    pub async fn wait(&mut self, e: &std::io::Error, what: &str) {
        if !self.logged {
            self.logged = true;
            match crate::fsutil::exhausted(e) {
                Some(ran_out) => tracing::warn!(
                    "{what}: cannot accept connections ({ran_out}: {e}); waiting before the next try"
                ),
                None => tracing::warn!("{what}: accepting a connection failed: {e}"),
            }
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(1));
    }
}
