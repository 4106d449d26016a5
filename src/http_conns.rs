//! Who holds the HTTP door's connections. Every connection takes a place; when all places are
//! taken, a new connection is still let in if the oldest connection that never showed the token
//! (nor a dashboard session) can be closed for it. So strangers who open hundreds of
//! connections and send nothing, or trickle a login form, cannot keep the token's holders out;
//! they only push each other out. When every place is held by a connection that showed the
//! token, new connections wait in the listen queue as before.
//!
//! The accept loop (`http::accept_loop`) owns the [`Conns`]; each connection's task holds its
//! [`Place`] (dropping it frees the place) and listens on [`Place::evict`]; the `authorize`
//! middleware marks the connection trusted through the [`ConnTrust`] in each request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The places of the door's connections.
pub struct Conns {
    limit: usize,
    inner: Mutex<Inner>,
    /// Notified when a place is freed: the accept loop waits on it when every place is trusted.
    freed: Notify,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Open connections by age (ids grow).
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    trusted: Arc<AtomicBool>,
    evict: Arc<Notify>,
    /// Told to close already: not counted for the next eviction.
    evicting: bool,
}

/// Set in every request of a connection: `authorize` marks the connection trusted with it.
#[derive(Clone)]
pub struct ConnTrust(pub Arc<AtomicBool>);

impl ConnTrust {
    /// This connection showed the token (or a dashboard session).
    pub fn trust(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A connection's place; dropping it frees the place.
pub struct Place {
    conns: Arc<Conns>,
    id: u64,
    pub trusted: Arc<AtomicBool>,
    /// Notified when the connection must close to make room for another.
    pub evict: Arc<Notify>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.conns.lock().open.remove(&self.id);
        self.conns.freed.notify_one();
    }
}

impl Conns {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Conns {
            limit,
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves the map consistent (each step is one call).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: a free one, or the place of the oldest untrusted
    /// connection, which is told to close (the count is over the limit until it has). `None`
    /// when every place is held by a trusted connection (or one already closing).
    pub fn admit(self: &Arc<Self>) -> Option<Place> {
        let mut inner = self.lock();
        let counted = inner.open.values().filter(|e| !e.evicting).count();
        if counted >= self.limit {
            let oldest = inner
                .open
                .values_mut()
                .find(|e| !e.evicting && !e.trusted.load(Ordering::Relaxed))?;
            oldest.evicting = true;
            oldest.evict.notify_one();
        }
        let id = inner.next;
        inner.next += 1;
        let (trusted, evict) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        inner.open.insert(
            id,
            Entry {
                trusted: trusted.clone(),
                evict: evict.clone(),
                evicting: false,
            },
        );
        Some(Place {
            conns: self.clone(),
            id,
            trusted,
            evict,
        })
    }

    /// Waits until a place is freed.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// How many connections are open (closing ones too).
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_door_makes_room_by_closing_the_oldest_stranger_never_a_token_holder() {
        let conns = Conns::new(3);
        let a = conns.admit().expect("a place while there is room");
        let b = conns.admit().expect("a place while there is room");
        let c = conns.admit().expect("a place while there is room");
        b.trusted.store(true, Ordering::Relaxed);
        // Full: the oldest untrusted (`a`) is told to close.
        let d = conns.admit().expect("room made by closing a stranger");
        assert_eq!(
            conns.open(),
            4,
            "expected `a` still open until it has closed"
        );
        drop(a);
        // Full again: `c` is the oldest stranger; `b` holds the token and stays.
        let e = conns.admit().expect("room made by closing a stranger");
        drop(c);
        d.trusted.store(true, Ordering::Relaxed);
        e.trusted.store(true, Ordering::Relaxed);
        assert!(
            conns.admit().is_none(),
            "expected no place when every connection holds the token"
        );
        drop(b);
        assert!(
            conns.admit().is_some(),
            "expected a place once a connection closed"
        );
    }
}
