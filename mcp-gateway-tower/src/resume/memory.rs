//! [`InMemoryEventStore`]: resumable streams kept in process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mcp_gateway_core::Answer;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{EventStore, EventStoreError, StoredEvent, StreamKey};
use crate::body::lock;

/// Bounds of an [`InMemoryEventStore`].
#[derive(Debug, Clone)]
pub struct MemoryEventConfig {
    /// Streams kept at once; the least recently written goes first.
    /// Default: 10 000.
    pub max_streams: usize,
    /// Events kept per stream; older ones are dropped (a client resuming
    /// from before them gets an error, not a silent gap). Default: 1 000.
    pub max_events: usize,
    /// A stream not written for this long is forgotten. Default: 10
    /// minutes.
    pub ttl: Duration,
}

impl Default for MemoryEventConfig {
    fn default() -> Self {
        MemoryEventConfig {
            max_streams: 10_000,
            max_events: 1_000,
            ttl: Duration::from_secs(600),
        }
    }
}

struct Stream {
    header: Bytes,
    events: VecDeque<StoredEvent>,
    /// Events up to this position were dropped for room.
    dropped: u64,
    written: Instant,
    notify: Arc<Notify>,
}

/// Resumable streams in process, bounded in streams, events and time: the
/// single-gateway [`EventStore`].
pub struct InMemoryEventStore {
    cfg: MemoryEventConfig,
    streams: Mutex<HashMap<StreamKey, Stream>>,
    /// Streams added so far.
    added: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventStore")
            .field("cfg", &self.cfg)
            .field("streams", &lock(&self.streams).len())
            .finish()
    }
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new(MemoryEventConfig::default())
    }
}

impl InMemoryEventStore {
    /// A store with these bounds.
    pub fn new(cfg: MemoryEventConfig) -> Self {
        InMemoryEventStore {
            cfg,
            streams: Mutex::new(HashMap::new()),
            added: Default::default(),
        }
    }

    /// Streams kept now.
    pub fn streams(&self) -> usize {
        lock(&self.streams).len()
    }

    fn make_room(&self, map: &mut HashMap<StreamKey, Stream>, now: Instant) {
        // Expired streams go every 1 024 new streams, or when full: a new
        // stream does not pay for a walk over all of them.
        let n = self
            .added
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 1024 == 0 || map.len() >= self.cfg.max_streams.max(1) {
            map.retain(|_, s| now.duration_since(s.written) < self.cfg.ttl);
        }
        while map.len() >= self.cfg.max_streams.max(1) {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.written)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
}

impl EventStore for InMemoryEventStore {
    fn append(&self, key: &StreamKey, event: StoredEvent) {
        let now = Instant::now();
        let mut map = lock(&self.streams);
        if !map.contains_key(key) {
            self.make_room(&mut map, now);
        }
        let s = map.entry(key.clone()).or_insert_with(|| Stream {
            header: Bytes::new(),
            events: VecDeque::new(),
            dropped: 0,
            written: now,
            notify: Arc::new(Notify::new()),
        });
        s.written = now;
        if event.seq == 0 {
            s.header = event.wire;
            return;
        }
        if s.events.len() >= self.cfg.max_events.max(1) {
            if let Some(old) = s.events.pop_front() {
                s.dropped = old.seq;
            }
        }
        s.events.push_back(event);
        s.notify.notify_waiters();
    }

    fn read(
        &self,
        key: &StreamKey,
        after: u64,
        wait: Duration,
    ) -> Answer<'_, Result<Vec<StoredEvent>, EventStoreError>> {
        let notified = {
            let map = lock(&self.streams);
            let Some(s) = map.get(key) else {
                return Answer::ready(Err(EventStoreError::Unknown));
            };
            if after < s.dropped {
                return Answer::ready(Err(EventStoreError::Gap));
            }
            let found: Vec<StoredEvent> =
                s.events.iter().filter(|e| e.seq > after).cloned().collect();
            if !found.is_empty() || wait.is_zero() {
                return Answer::ready(Ok(found));
            }
            // Registered before the lock is let go: no append is missed.
            let mut n = Box::pin(s.notify.clone().notified_owned());
            n.as_mut().enable();
            n
        };
        let key = key.clone();
        Answer::pending(async move {
            let _ = tokio::time::timeout(wait, notified).await;
            self.read(&key, after, Duration::ZERO).await
        })
    }

    fn header(&self, key: &StreamKey) -> Answer<'_, Result<Bytes, EventStoreError>> {
        Answer::ready(
            lock(&self.streams)
                .get(key)
                .map(|s| s.header.clone())
                .ok_or(EventStoreError::Unknown),
        )
    }
}
