//! [`RedisEventStore`]: resumable streams in Redis Streams, so a client
//! resumes on any replica.
//!
//! One Redis stream per SSE stream, `{prefix}ev:{session}:{stream}`, whose
//! entry ids are `0-{seq + 1}` (the header is a key of its own, `…:h`,
//! so trimming never drops it): the gateway's own
//! positions, so reading "after event k" is one `XRANGE`. Appends never
//! wait: one writer task per store sends them in order, pipelined, each
//! stream capped (`MAXLEN`) and given a TTL. A tail that waits for new
//! events blocks (`XREAD BLOCK`) on a connection of its own.

use std::time::Duration;

use bytes::Bytes;
use mcp_gateway_core::Answer;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::Value;
use tokio::sync::mpsc;

use super::Redis;
use crate::resume::{EventStore, EventStoreError, StoredEvent, StreamEnd, StreamKey};

/// Bounds of a [`RedisEventStore`].
#[derive(Debug, Clone)]
pub struct RedisEventConfig {
    /// Events kept per stream (older ones are trimmed). Default: 1 000.
    pub max_events: usize,
    /// A stream not written for this long expires. Default: 10 minutes.
    pub ttl: Duration,
    /// Appends waiting for the writer at most; past it, appends are
    /// dropped and counted (a client resuming across the hole gets an
    /// error, never a silent gap). Default: 65 536.
    pub queue: usize,
}

impl Default for RedisEventConfig {
    fn default() -> Self {
        RedisEventConfig {
            max_events: 1000,
            ttl: Duration::from_secs(600),
            queue: 65_536,
        }
    }
}

/// Resumable streams shared by replicas. See the module docs.
#[derive(Clone)]
pub struct RedisEventStore {
    redis: Redis,
    cfg: RedisEventConfig,
    tx: mpsc::Sender<(String, StoredEvent)>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RedisEventStore {
    /// A store on `redis`; starts its writer (so must be called within a
    /// Tokio runtime).
    pub fn new(redis: Redis, cfg: RedisEventConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        tokio::spawn(write_loop(redis.clone(), cfg.clone(), rx));
        RedisEventStore {
            redis,
            cfg,
            tx,
            dropped: Default::default(),
        }
    }

    /// Appends dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn key(&self, k: &StreamKey) -> String {
        self.redis.key(&format!("ev:{}:{}", k.session, k.stream))
    }
}

/// The entry id of position `seq`.
fn entry_id(seq: u64) -> String {
    format!("0-{}", seq + 1)
}

async fn write_loop(
    redis: Redis,
    cfg: RedisEventConfig,
    mut rx: mpsc::Receiver<(String, StoredEvent)>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for (key, e) in &batch {
            let ttl = cfg.ttl.as_millis() as u64;
            let header = format!("{key}:h");
            if e.seq == 0 {
                // Apart from the events, so trimming never drops it.
                pipe.cmd("SET")
                    .arg(&header)
                    .arg(e.wire.as_ref())
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    // Who records the stream: a resuming client on another
                    // replica learns soon if it died.
                    .cmd("SET")
                    .arg(format!("{key}:w"))
                    .arg(redis.replica())
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
                continue;
            }
            let mut cmd = redis::cmd("XADD");
            cmd.arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(cfg.max_events)
                .arg(entry_id(e.seq))
                .arg("w")
                .arg(e.wire.as_ref());
            if let Some(u) = &e.upstream_id {
                cmd.arg("u").arg(u.as_ref());
            }
            match e.end {
                Some(StreamEnd::Done) => {
                    cmd.arg("e").arg("d");
                }
                Some(StreamEnd::Cut) => {
                    cmd.arg("e").arg("c");
                }
                Some(StreamEnd::Paused) => {
                    cmd.arg("e").arg("p");
                }
                None => {}
            }
            pipe.add_command(cmd).ignore();
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(ttl)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&header)
                .arg(ttl)
                .ignore();
        }
        let mut c = redis.conn();
        // An entry id not above the last (a stream written twice after a
        // failover) fails alone; the pipeline goes on.
        let _ = redis
            .run("events append", pipe.query_async::<()>(&mut c))
            .await;
        batch.clear();
    }
}

/// A stored entry from a stream entry.
fn entry(id: &str, fields: &std::collections::HashMap<String, Value>) -> Option<StoredEvent> {
    let seq = id.strip_prefix("0-")?.parse::<u64>().ok()?.checked_sub(1)?;
    let bytes = |name: &str| match fields.get(name) {
        Some(Value::BulkString(b)) => Some(Bytes::copy_from_slice(b)),
        Some(Value::SimpleString(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    };
    let end = match bytes("e").as_deref() {
        Some(b"d") => Some(StreamEnd::Done),
        Some(b"c") => Some(StreamEnd::Cut),
        Some(b"p") => Some(StreamEnd::Paused),
        _ => None,
    };
    Some(StoredEvent {
        seq,
        upstream_id: bytes("u"),
        wire: bytes("w").unwrap_or_default(),
        end,
    })
}

impl EventStore for RedisEventStore {
    fn append(&self, key: &StreamKey, event: StoredEvent) {
        if self.tx.try_send((self.key(key), event)).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(dropped = n + 1, "event store writer behind: events dropped");
            }
        }
    }

    fn read(
        &self,
        key: &StreamKey,
        after: u64,
        wait: Duration,
    ) -> Answer<'_, Result<Vec<StoredEvent>, EventStoreError>> {
        let k = self.key(key);
        Answer::pending(async move {
            let mut c = self.redis.conn();
            let start = format!("({}", entry_id(after));
            let mut pipe = redis::pipe();
            // The stream exists once its header or an event is written.
            pipe.cmd("EXISTS")
                .arg(&k)
                .arg(format!("{k}:h"))
                .cmd("XRANGE")
                .arg(&k)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000);
            let (exists, range): (u32, StreamRangeReply) = self
                .redis
                .run("events read", pipe.query_async(&mut c))
                .await
                .map_err(EventStoreError::Backend)?;
            if exists == 0 {
                return Err(EventStoreError::Unknown);
            }
            let mut out: Vec<StoredEvent> = range
                .ids
                .iter()
                .filter_map(|e| entry(&e.id, &e.map))
                .collect();
            if out.is_empty() && !wait.is_zero() {
                let mut b = self
                    .redis
                    .blocking_conn()
                    .await
                    .map_err(|e| EventStoreError::Backend(e.to_string()))?;
                let opts = StreamReadOptions::default()
                    .block(wait.as_millis() as usize)
                    .count(1000);
                let last = entry_id(after);
                let reply: Result<Option<StreamReadReply>, _> = tokio::time::timeout(
                    wait + self.redis.timeout(),
                    redis::cmd("XREAD")
                        .arg(&opts)
                        .arg("STREAMS")
                        .arg(&k)
                        .arg(&last)
                        .query_async(&mut b),
                )
                .await
                .map_err(|_| EventStoreError::Backend("no answer".into()))?;
                let reply = reply.map_err(|e| EventStoreError::Backend(e.to_string()))?;
                if let Some(r) = reply {
                    for s in r.keys {
                        out.extend(s.ids.iter().filter_map(|e| entry(&e.id, &e.map)));
                    }
                }
            }
            if out.first().is_some_and(|e| e.seq > after + 1) {
                return Err(EventStoreError::Gap);
            }
            Ok(out)
        })
    }

    fn writer_alive(&self, key: &StreamKey) -> Answer<'_, bool> {
        let k = format!("{}:w", self.key(key));
        Answer::pending(async move {
            let mut c = self.redis.conn();
            let writer: Option<String> = match self
                .redis
                .run(
                    "events writer",
                    redis::cmd("GET").arg(&k).query_async(&mut c),
                )
                .await
            {
                Ok(w) => w,
                // Not known now: the drain's own bound decides.
                Err(_) => return true,
            };
            let Some(writer) = writer else { return true };
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.redis.alive_key(&writer));
            self.redis
                .run("events writer", exists.query_async::<bool>(&mut c))
                .await
                .unwrap_or(true)
        })
    }

    fn header(&self, key: &StreamKey) -> Answer<'_, Result<Bytes, EventStoreError>> {
        let k = self.key(key);
        Answer::pending(async move {
            let mut c = self.redis.conn();
            // The header may still be on its way from another replica's
            // writer: the client saw an event of the stream, so it exists.
            let h = format!("{k}:h");
            for attempt in 0..5u32 {
                let found: Option<Vec<u8>> = self
                    .redis
                    .run(
                        "events header",
                        redis::cmd("GET").arg(&h).query_async(&mut c),
                    )
                    .await
                    .map_err(EventStoreError::Backend)?;
                if let Some(wire) = found {
                    return Ok(Bytes::from(wire));
                }
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            Err(EventStoreError::Unknown)
        })
    }
}
