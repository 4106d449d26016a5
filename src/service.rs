//! Life under a service manager: the systemd notify protocol. With `NOTIFY_SOCKET` set the
//! daemon sends `READY=1` once recovery and the first inbox scan are done, `WATCHDOG=1` from its
//! main loop every half `WATCHDOG_USEC` (so a stuck loop is noticed, not just a dead process),
//! `STATUS=…` lines, and `STOPPING=1` when a graceful stop begins. Without `NOTIFY_SOCKET` every
//! call is a no-op. launchd has no equivalent; the plist simply keeps the process alive.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go, from the environment.
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// Half the watchdog interval, when the service manager asked for watchdog pings.
    pub watchdog_every: Option<Duration>,
}

enum Target {
    Path(PathBuf),
    #[cfg(target_os = "linux")]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. `None` when not under a
    /// notify-aware service manager.
    pub fn from_env() -> Option<Notifier> {
        let raw = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = raw.as_encoded_bytes();
        let target = match bytes.first() {
            #[cfg(target_os = "linux")]
            Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
            Some(b'/') => Target::Path(PathBuf::from(&raw)),
            _ => {
                tracing::warn!(
                    "ignoring NOTIFY_SOCKET={raw:?}: not an absolute path or abstract socket"
                );
                return None;
            }
        };
        let socket = UnixDatagram::unbound().ok()?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Some(Notifier {
            socket,
            target,
            watchdog_every,
        })
    }

    /// Sends one notification; failures are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let sent = match &self.target {
            Target::Path(p) => self.socket.send_to(msg.as_bytes(), p),
            #[cfg(target_os = "linux")]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| self.socket.send_to_addr(msg.as_bytes(), &addr))
            }
        };
        if let Err(e) = sent {
            tracing::debug!("cannot notify the service manager ({msg}): {e}");
        }
    }
}
