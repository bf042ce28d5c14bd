//! [`SealedSessionStore`]: no store at all. The session id *is* the
//! session's routing state (backend instance, backend session id, owner,
//! protocol version, start), encrypted and authenticated with AES-256-GCM,
//! so any replica with the key serves any session without a lookup.
//!
//! - **Keys** come from the environment as `kid:base64key` pairs, the
//!   first one sealing, every one opening ([`SealKeys::parse`]): rotate by
//!   putting a new key first and dropping the old one once the sessions it
//!   sealed have expired. Each key is expanded once, at start; nothing is
//!   derived per request.
//! - **Lifetime**: a sealed id is refused after [`SealedConfig::ttl`]
//!   from its start. Its client then starts a new session.
//! - **Revocation** after `DELETE` (or a backend's loss of the session):
//!   with Redis, the id's nonce is stored until the id would expire and
//!   published, so every replica refuses it within one round trip (each
//!   keeps the revoked nonces in memory; none asks Redis per request).
//!   Without Redis only the replica that ended the session knows: others
//!   accept the id until its lifetime ends. That is the trade-off: keep
//!   the lifetime short without Redis.
//! - What a sealed id cannot carry: the recorded setup (the `initialize`
//!   body, kilobytes), so failover replays need a store. Sessions are not
//!   ended when idle, only at the end of their lifetime: the replica that
//!   sealed one keeps its id until then (not its state) to end it at its
//!   backend and give back what limits held for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use mcp_gateway_core::session::{RemoteEnd, SessionId, SessionRecord, SessionStore, StoreError};
use mcp_gateway_core::{Answer, ProtocolVersion};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{unix_ms, Notice, Redis, RemoteEnds};

const AAD: &[u8] = b"mcp-gateway sealed session v1";
const FORMAT: u8 = 1;

/// The keys that seal and open session ids. See the module docs.
pub struct SealKeys {
    current: u8,
    keys: HashMap<u8, LessSafeKey>,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("SealKeys")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

impl SealKeys {
    /// Reads `kid:base64key[,kid:base64key…]`: key ids 0–255, keys of 32
    /// bytes (standard base64); the first seals. Generate one with
    /// `openssl rand -base64 32`.
    pub fn parse(spec: &str) -> Result<SealKeys, String> {
        let mut current = None;
        let mut keys = HashMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kid, key) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not `kid:base64key`"))?;
            let kid: u8 = kid
                .trim()
                .parse()
                .map_err(|_| format!("key id `{kid}` is not a number from 0 to 255"))?;
            let raw = STANDARD
                .decode(key.trim())
                .map_err(|e| format!("key {kid} is not base64: {e}"))?;
            if raw.len() != 32 {
                return Err(format!("key {kid} has {} bytes, not 32", raw.len()));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| format!("key {kid} is unusable"))?;
            if keys.insert(kid, LessSafeKey::new(unbound)).is_some() {
                return Err(format!("key id {kid} appears twice"));
            }
            current.get_or_insert(kid);
        }
        let current = current.ok_or("no key given")?;
        Ok(SealKeys { current, keys })
    }
}

/// Settings of a [`SealedSessionStore`].
#[derive(Debug, Clone)]
pub struct SealedConfig {
    /// How long a sealed id is accepted after its session started.
    /// Default: 1 hour.
    pub ttl: Duration,
}

impl Default for SealedConfig {
    fn default() -> Self {
        SealedConfig {
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Nonces are a random fixed field drawn when the store starts (and again
/// whenever the counter wraps) and a counter: unique per key without a
/// system call per session (NIST SP 800-38D, 8.2.1).
struct Nonces {
    fixed: [u8; 8],
    counter: u32,
}

type NonceBytes = [u8; NONCE_LEN];

struct Inner {
    keys: SealKeys,
    cfg: SealedConfig,
    redis: Option<Redis>,
    rng: SystemRandom,
    nonces: std::sync::Mutex<Nonces>,
    /// Revoked nonces → when the id expires anyway (Unix ms).
    revoked: RwLock<HashMap<NonceBytes, u64>>,
    /// Sessions moved since they were sealed (a drain): id → record.
    moved: RwLock<HashMap<Arc<str>, Arc<SessionRecord>>>,
    /// The ids this replica sealed, until they end or expire (Unix ms):
    /// what the sweep ends at their backend, giving back their slots.
    minted: std::sync::Mutex<HashMap<Arc<str>, u64>>,
    live: AtomicUsize,
    remote_end: RemoteEnds,
}

/// Sealed ids a replica remembers for its sweep at most; past it the
/// oldest are forgotten (their backends expire them).
const MAX_MINTED: usize = 1_000_000;

/// Sessions whose state is sealed into their ids. See the module docs.
#[derive(Clone)]
pub struct SealedSessionStore(Arc<Inner>);

impl std::fmt::Debug for SealedSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSessionStore")
            .field("keys", &self.0.keys)
            .field("cfg", &self.0.cfg)
            .finish_non_exhaustive()
    }
}

impl SealedSessionStore {
    /// A store sealing with `keys`; revocations shared through `redis`
    /// when given.
    pub fn new(keys: SealKeys, cfg: SealedConfig, redis: Option<Redis>) -> Self {
        let rng = SystemRandom::new();
        let mut fixed = [0u8; 8];
        rng.fill(&mut fixed).expect("the system's random generator");
        let inner = Arc::new(Inner {
            keys,
            cfg,
            redis: redis.clone(),
            rng,
            nonces: std::sync::Mutex::new(Nonces { fixed, counter: 0 }),
            revoked: RwLock::new(HashMap::new()),
            moved: RwLock::new(HashMap::new()),
            minted: std::sync::Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            remote_end: RemoteEnds::default(),
        });
        if let Some(redis) = redis {
            let weak = Arc::downgrade(&inner);
            redis.listen(move |n| {
                let Some(inner) = weak.upgrade() else { return };
                match n {
                    Notice::Revoked(id) => {
                        // Ended on another replica: refused here too, and
                        // what this replica holds for it let go.
                        let store = SealedSessionStore(inner.clone());
                        if let Some((_, nonce, eol)) = store.open_with_nonce(id) {
                            inner.revoke_here(nonce, eol);
                        }
                        inner.forget_minted(id);
                        inner.remote_end.ended(id);
                    }
                    Notice::Resync => {
                        // Revocations published while the channel was away
                        // are read back from Redis.
                        if let Ok(rt) = tokio::runtime::Handle::try_current() {
                            rt.spawn(load_revocations(inner));
                        }
                    }
                    _ => {}
                }
            });
        }
        SealedSessionStore(inner)
    }

    /// Seals `rec`'s routing state into a session id.
    pub fn seal(&self, rec: &SessionRecord) -> Result<String, StoreError> {
        let inner = &self.0;
        let mut plain = Vec::with_capacity(64);
        plain.push(FORMAT);
        let started = unix_ms().saturating_sub(rec.age().as_millis() as u64);
        plain.extend_from_slice(&started.to_le_bytes());
        let instance = u16::try_from(rec.instance())
            .map_err(|_| StoreError::Backend("instance index too large to seal".into()))?;
        plain.extend_from_slice(&instance.to_le_bytes());
        plain.push(u8::from(rec.detached()));
        let field = |plain: &mut Vec<u8>, v: Option<&[u8]>| -> Result<(), StoreError> {
            let v = v.unwrap_or_default();
            let n = u16::try_from(v.len())
                .map_err(|_| StoreError::Backend("field too large to seal".into()))?;
            plain.extend_from_slice(&n.to_le_bytes());
            plain.extend_from_slice(v);
            Ok(())
        };
        field(
            &mut plain,
            rec.protocol_version().map(|v| v.as_str().as_bytes()),
        )?;
        field(&mut plain, rec.owner().map(str::as_bytes))?;
        field(&mut plain, rec.upstream_header().map(|h| h.as_bytes()))?;
        let nonce = inner.next_nonce()?;
        let key = &inner.keys.keys[&inner.keys.current];
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut plain,
        )
        .map_err(|_| StoreError::Backend("sealing failed".into()))?;
        let mut token = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        token.push(inner.keys.current);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&plain);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// Opens a sealed id: the session's record, or `None` for an id that
    /// was not sealed by these keys, is past its lifetime, or was revoked.
    pub fn open(&self, id: &str) -> Option<SessionRecord> {
        self.open_with_nonce(id).map(|(rec, _, _)| rec)
    }

    /// [`open`](Self::open), with the id's nonce and end of life.
    fn open_with_nonce(&self, id: &str) -> Option<(SessionRecord, NonceBytes, u64)> {
        self.unseal(id, true)
    }

    /// Opens `id`; `live` refuses it past its lifetime or revoked.
    fn unseal(&self, id: &str, live: bool) -> Option<(SessionRecord, NonceBytes, u64)> {
        let inner = &self.0;
        let mut raw = URL_SAFE_NO_PAD.decode(id).ok()?;
        if raw.len() < 1 + NONCE_LEN + 16 {
            return None;
        }
        let key = inner.keys.keys.get(&raw[0])?;
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().ok()?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut raw[1 + NONCE_LEN..],
            )
            .ok()?;
        let mut r = Reader(plain);
        if r.u8()? != FORMAT {
            return None;
        }
        let started = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let instance = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let detached = r.u8()? != 0;
        let version = r.field()?;
        let owner = r.field()?;
        let upstream = r.field()?;
        let now = unix_ms();
        let eol = started + inner.cfg.ttl.as_millis() as u64;
        if live && now >= eol {
            return None;
        }
        if live {
            let revoked = inner.revoked.read().unwrap_or_else(|e| e.into_inner());
            if !revoked.is_empty() && revoked.contains_key(&nonce) {
                return None;
            }
        }
        let version = std::str::from_utf8(version)
            .ok()
            .and_then(ProtocolVersion::parse);
        let owner = (!owner.is_empty()).then(|| String::from_utf8_lossy(owner).into_owned());
        let upstream = (!upstream.is_empty())
            .then(|| http::HeaderValue::from_bytes(upstream).ok())
            .flatten();
        let rec = SessionRecord::new(SessionId::from_string(id), instance as usize, upstream)
            .with_protocol_version(version)
            .with_owner(owner)
            .with_detached(detached)
            .with_age(Duration::from_millis(now.saturating_sub(started)));
        Some((rec, nonce, eol))
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<NonceBytes> {
    if s.len() != NONCE_LEN * 2 {
        return None;
    }
    let mut out = [0u8; NONCE_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn field(&mut self) -> Option<&'a [u8]> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        self.take(n as usize)
    }
}

impl Inner {
    fn next_nonce(&self) -> Result<NonceBytes, StoreError> {
        let mut n = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if n.counter == u32::MAX {
            self.rng
                .fill(&mut n.fixed)
                .map_err(|_| StoreError::Backend("no randomness for a nonce".into()))?;
            n.counter = 0;
        }
        n.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&n.fixed);
        nonce[8..].copy_from_slice(&n.counter.to_be_bytes());
        Ok(nonce)
    }

    fn forget_minted(&self, id: &str) {
        if self
            .minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_some()
        {
            let _ = self
                .live
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    fn revoke_here(&self, nonce: NonceBytes, until: u64) {
        let mut r = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        if r.len() >= 1_000_000 {
            let now = unix_ms();
            r.retain(|_, until| *until > now);
        }
        r.insert(nonce, until);
    }
}

/// Reads every revocation kept in Redis into this replica's set.
async fn load_revocations(inner: Arc<Inner>) {
    let Some(redis) = inner.redis.clone() else {
        return;
    };
    let pattern = redis.key("rv:*");
    let prefix = redis.key("rv:");
    let mut c = redis.conn();
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)) = redis
            .run(
                "revocations",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async::<(u64, Vec<String>)>(&mut c),
            )
            .await
        else {
            return;
        };
        let until = unix_ms() + inner.cfg.ttl.as_millis() as u64;
        for k in keys {
            if let Some(nonce) = k.strip_prefix(&prefix).and_then(from_hex) {
                inner.revoke_here(nonce, until);
            }
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

impl SessionStore for SealedSessionStore {
    fn insert(&self, record: SessionRecord) -> Answer<'_, Result<Arc<SessionRecord>, StoreError>> {
        let token = match self.seal(&record) {
            Ok(t) => t,
            Err(e) => return Answer::ready(Err(e)),
        };
        let rec = SessionRecord::new(
            SessionId::from_string(token),
            record.instance(),
            record.upstream_header().cloned(),
        )
        .with_protocol_version(record.protocol_version())
        .with_owner(record.owner().map(str::to_owned))
        .with_setup(record.setup().cloned());
        let eol = unix_ms().saturating_sub(record.age().as_millis() as u64)
            + self.0.cfg.ttl.as_millis() as u64;
        {
            let mut minted = self.0.minted.lock().unwrap_or_else(|e| e.into_inner());
            if minted.len() >= MAX_MINTED {
                let oldest = minted
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    minted.remove(&k);
                }
            }
            minted.insert(rec.id().as_str().into(), eol);
        }
        self.0.live.fetch_add(1, Ordering::Relaxed);
        Answer::ready(Ok(Arc::new(rec)))
    }

    fn get(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        {
            let moved = self.0.moved.read().unwrap_or_else(|e| e.into_inner());
            if !moved.is_empty() {
                if let Some(rec) = moved.get(id) {
                    if self.open(id).is_some() {
                        return Answer::ready(Some(rec.clone()));
                    }
                }
            }
        }
        Answer::ready(self.open(id).map(Arc::new))
    }

    fn remove(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let Some((rec, nonce, eol)) = self.open_with_nonce(id) else {
            return Answer::ready(None);
        };
        let inner = &self.0;
        inner.revoke_here(nonce, eol);
        inner.forget_minted(id);
        let nonce = to_hex(&nonce);
        let notice_id = id.to_owned();
        inner
            .moved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let rec = Arc::new(rec);
        let Some(redis) = inner.redis.clone() else {
            return Answer::ready(Some(rec));
        };
        Answer::pending(async move {
            let ttl = eol.saturating_sub(unix_ms()).max(1);
            let key = redis.key(&format!("rv:{nonce}"));
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("PUBLISH")
                .arg(redis.channel())
                .arg(redis.notice('r', &notice_id))
                .ignore();
            let mut c = redis.conn();
            let _ = redis.run("revoke", pipe.query_async::<()>(&mut c)).await;
            Some(rec)
        })
    }

    fn sweep(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        let now = unix_ms();
        let inner = &self.0;
        inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
        inner
            .moved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| self.open(id).is_some());
        // The sessions sealed here that reached the end of their lifetime:
        // ended (audit, slots) and closed at their backend by the router.
        let expired: Vec<Arc<str>> = {
            let mut minted = inner.minted.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<Arc<str>> = minted
                .iter()
                .filter(|(_, eol)| **eol <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                minted.remove(id);
            }
            gone
        };
        let _ = inner
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(expired.len()))
            });
        Answer::ready(
            expired
                .iter()
                .filter_map(|id| self.unseal(id, false).map(|(rec, _, _)| Arc::new(rec)))
                .collect(),
        )
    }

    fn update(&self, record: SessionRecord) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let id: Arc<str> = record.id().as_str().into();
        if self.open(&id).is_none() {
            return Answer::ready(None);
        }
        let rec = Arc::new(record);
        let mut moved = self.0.moved.write().unwrap_or_else(|e| e.into_inner());
        if moved.len() < 100_000 {
            moved.insert(id, rec.clone());
        }
        Answer::ready(Some(rec))
    }

    fn records(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        Answer::ready(
            self.0
                .moved
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.0.live.load(Ordering::Relaxed)
    }

    fn on_remote_end(&self, hook: RemoteEnd) {
        self.0.remote_end.add(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(spec: &str) -> SealKeys {
        SealKeys::parse(spec).unwrap()
    }

    const K1: &str = "1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "2:HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

    fn record() -> SessionRecord {
        SessionRecord::new(
            SessionId::random(),
            3,
            Some(http::HeaderValue::from_static("backend-session")),
        )
        .with_protocol_version(Some(ProtocolVersion::V2025_11_25))
        .with_owner(Some("key:ann".into()))
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn a_sealed_id_carries_the_route_and_opens_only_with_the_keys() {
        let store = SealedSessionStore::new(keys(K1), SealedConfig::default(), None);
        let rec = block(store.insert(record())).unwrap();
        let id = rec.id().as_str().to_owned();
        assert!(id.bytes().all(|b| b.is_ascii_graphic()), "{id}");
        let back = block(store.get(&id)).unwrap();
        assert_eq!(back.instance(), 3);
        assert_eq!(back.upstream_id(), Some("backend-session"));
        assert_eq!(back.owner(), Some("key:ann"));
        assert_eq!(back.protocol_version(), Some(ProtocolVersion::V2025_11_25));
        // Another key cannot open it; a flipped byte does not open.
        let other = SealedSessionStore::new(keys(K2), SealedConfig::default(), None);
        assert!(block(other.get(&id)).is_none());
        let mut bytes = URL_SAFE_NO_PAD.decode(&id).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(block(store.get(&URL_SAFE_NO_PAD.encode(bytes))).is_none());
        assert!(block(store.get("not-a-session")).is_none());
    }

    #[test]
    fn keys_rotate_by_id_and_removal_revokes() {
        let old = SealedSessionStore::new(keys(K1), SealedConfig::default(), None);
        let id = block(old.insert(record()))
            .unwrap()
            .id()
            .as_str()
            .to_owned();
        // The new key seals; the old one still opens.
        let both =
            SealedSessionStore::new(keys(&format!("{K2},{K1}")), SealedConfig::default(), None);
        assert!(block(both.get(&id)).is_some());
        let fresh = block(both.insert(record()))
            .unwrap()
            .id()
            .as_str()
            .to_owned();
        assert!(block(old.get(&fresh)).is_none());
        assert!(block(both.remove(&id)).is_some());
        assert!(block(both.get(&id)).is_none());
        assert!(block(both.remove(&id)).is_none());
    }

    #[test]
    fn an_expired_id_is_refused() {
        let store = SealedSessionStore::new(
            keys(K1),
            SealedConfig {
                ttl: Duration::from_secs(60),
            },
            None,
        );
        let old = record().with_age(Duration::from_secs(61));
        let id = block(store.insert(old)).unwrap().id().as_str().to_owned();
        assert!(block(store.get(&id)).is_none());
        // The replica that sealed it ends it once (audit, slots, backend).
        let swept = block(store.sweep());
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].id().as_str(), id);
        assert_eq!(swept[0].upstream_id(), Some("backend-session"));
        assert!(block(store.sweep()).is_empty());
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn bad_key_specs_are_explained() {
        for (spec, says) in [
            ("", "no key"),
            ("abc", "kid:base64key"),
            ("300:AAAA", "0 to 255"),
            ("1:AAAA", "not 32"),
            (&format!("{K1},{K1}"), "twice"),
        ] {
            let e = SealKeys::parse(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
