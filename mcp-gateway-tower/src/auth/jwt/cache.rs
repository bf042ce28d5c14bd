//! Tokens verified lately, so a repeated token is not verified again.

#[allow(unused_imports)]
use super::*;

const SHARDS: usize = 16;

/// Token hash → (principal, valid until).
type Shard = Mutex<HashMap<[u8; 32], (Principal, Instant)>>;

/// Verified tokens by hash, sharded so concurrent requests rarely meet.
pub(crate) struct TokenCache {
    shards: Vec<Shard>,
    per_shard: usize,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, h: &[u8; 32]) -> &Shard {
        &self.shards[h[0] as usize % SHARDS]
    }

    pub(crate) fn get(&self, h: &[u8; 32]) -> Option<(Principal, Instant)> {
        let mut m = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        match m.get(h) {
            Some((p, until)) if Instant::now() < *until => Some((p.clone(), *until)),
            Some(_) => {
                m.remove(h);
                None
            }
            None => None,
        }
    }

    pub(crate) fn put(&self, h: [u8; 32], p: Principal, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut m = self.shard(&h).lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= self.per_shard {
            let now = Instant::now();
            m.retain(|_, (_, until)| *until > now);
            if m.len() >= self.per_shard {
                // Still full of live tokens: start over rather than grow.
                m.clear();
            }
        }
        m.insert(h, (p, Instant::now() + ttl));
    }
}

/// Tokens a thread verified or found lately, by the token itself: no
/// SHA-256 to compute and no lock or counter shared with other threads
/// (the principal is a detached copy). Small: the shared cache behind it
/// holds the rest.
///
/// Looked up by a tag of the token's end, then compared whole: hashing
/// a whole token (hundreds of bytes) cost more than the rest of the
/// lookup. The end is a signature, as good as random; tokens whose tags
/// collide only miss here (the shared cache, by SHA-256, still finds them),
/// and an entry gets in only by verifying, so a crafted collision buys an
/// attacker nothing.
#[derive(Default)]
pub(crate) struct Recent {
    map: HashMap<u64, Remembered, foldhash::fast::RandomState>,
}

/// A token of [`Recent`], its principal, and until when it is good.
struct Remembered {
    token: Box<[u8]>,
    principal: Principal,
    until: Instant,
}

/// Tokens each thread keeps in [`Recent`].
const RECENT: usize = 256;

/// [`Recent`]'s tag of `token`: its length and last 16 bytes.
pub(crate) fn tag(token: &[u8]) -> u64 {
    let tail = &token[token.len().saturating_sub(16)..];
    let mut t = token.len() as u64;
    for chunk in tail.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        t = t.rotate_left(29) ^ u64::from_le_bytes(w);
    }
    t
}

impl Recent {
    pub(crate) fn get(&mut self, token: &[u8]) -> Option<Principal> {
        let tag = tag(token);
        let r = self.map.get(&tag)?;
        if *r.token != *token {
            return None;
        }
        if Instant::now() < r.until {
            return Some(r.principal.clone());
        }
        self.map.remove(&tag);
        None
    }

    pub(crate) fn put(&mut self, token: &str, p: &Principal, until: Instant) {
        if self.map.len() >= RECENT {
            let now = Instant::now();
            self.map.retain(|_, r| r.until > now);
            if self.map.len() >= RECENT {
                self.map.clear();
            }
        }
        let token = token.as_bytes();
        self.map.insert(
            tag(token),
            Remembered {
                token: token.into(),
                principal: p.detached(),
                until,
            },
        );
    }
}
