//! The connection slots of a listener that evicts instead of waiting (the
//! admin listener, SPEC §6): when every slot is taken, a new connection
//! takes the slot of the oldest connection that is idle or has not yet sent
//! a complete request head. A connection is *busy* from the moment its
//! request head arrived until hyper has taken its whole response body; a
//! busy connection is never evicted.
//!
//! Why: the admin port is bound on `0.0.0.0` in Kubernetes. Waiting for a
//! slot, as the proxy listener does, lets anything that reaches the port
//! hold every slot with half-sent heads for the whole header timeout, and
//! the kubelet then restarts a healthy sidecar for failing its liveness
//! probe. Evicting the oldest non-busy connection costs a well-behaved
//! client nothing: probes and scrapers send their request at once.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

/// The connections of one listener, oldest first.
#[derive(Clone, Default)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Accept order of the next connection: keys grow with age.
    next: u64,
    connections: BTreeMap<u64, Connection>,
}

/// What eviction needs to know of one connection.
struct Connection {
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// A connection's place in [`Slots`]; it leaves when this is dropped.
pub struct Registration {
    id: u64,
    slots: Slots,
    /// Fired when the connection is evicted: its task drops it at once.
    pub evicted: CancellationToken,
    /// Requests whose response hyper has not yet taken whole.
    pub busy: Arc<AtomicUsize>,
}

impl Slots {
    /// Adds a connection just accepted, the youngest.
    pub fn register(&self) -> Registration {
        let (busy, evicted) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.connections.insert(id, Connection { busy: busy.clone(), evict: evicted.clone() });
        Registration { id, slots: self.clone(), evicted, busy }
    }

    /// Evicts the oldest connection that is not busy; false if every one is.
    pub fn evict_oldest_idle(&self) -> bool {
        let mut inner = self.lock();
        let oldest = inner.connections.iter().find(|(_, c)| c.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
        match oldest.and_then(|id| inner.connections.remove(&id)) {
            Some(connection) => {
                connection.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slots.lock().connections.remove(&self.id);
    }
}

/// One request of a connection in progress: the connection is busy until
/// this is dropped (with the response body, once hyper has taken it whole).
pub struct Busy(Option<Arc<AtomicUsize>>);

impl Busy {
    /// Marks a request begun on a connection tracked by `busy`; `None`
    /// tracks nothing (a listener that does not evict).
    pub fn begin(busy: Option<&Arc<AtomicUsize>>) -> Busy {
        if let Some(busy) = busy {
            busy.fetch_add(1, Ordering::AcqRel);
        }
        Busy(busy.cloned())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(busy) = &self.0 {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy until hyper drops it,
    /// which it does once the last frame is taken (or the connection ends).
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Busy,
    }
}

impl<B> Tracked<B> {
    /// `inner`, keeping `busy` until it is dropped.
    pub fn new(inner: B, busy: Busy) -> Tracked<B> {
        Tracked { inner, busy }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_connection_that_is_not_busy_is_evicted() {
        let slots = Slots::default();
        let (first, second, third) = (slots.register(), slots.register(), slots.register());
        let request = Busy::begin(Some(&first.busy));
        assert!(slots.evict_oldest_idle());
        assert!(!first.evicted.is_cancelled(), "a busy connection is spared");
        assert!(second.evicted.is_cancelled(), "the oldest idle one goes");
        assert!(!third.evicted.is_cancelled());

        drop(request);
        assert!(slots.evict_oldest_idle());
        assert!(first.evicted.is_cancelled(), "idle again once its response was taken");
        assert!(slots.evict_oldest_idle());
        assert!(third.evicted.is_cancelled());
        assert!(!slots.evict_oldest_idle(), "nothing left");
    }

    #[test]
    fn a_busy_connection_stays_until_every_request_is_done_and_a_closed_one_leaves() {
        let slots = Slots::default();
        let only = slots.register();
        let body = Tracked::new(http_body_util::Empty::<bytes::Bytes>::new(), Busy::begin(Some(&only.busy)));
        assert!(!slots.evict_oldest_idle());
        drop(body);
        drop(only);
        assert!(!slots.evict_oldest_idle(), "a connection that ended has left");
        let untracked = Busy::begin(None);
        drop(untracked);
    }
}
