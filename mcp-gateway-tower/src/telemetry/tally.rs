//! Calls, cost, tokens and progress counted in process by label set, and
//! read by the meter at collection: the cost-attribution counters cost a
//! pointer hash and an atomic add per call, not an SDK record each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use opentelemetry::{KeyValue, Value};

use super::names::*;

/// A label value, interned by [`Cap`](super::metrics): equal values of one
/// label are one allocation, so identity is equality and hashing the
/// pointer is enough.
#[derive(Clone, Debug)]
pub(crate) struct Label(pub(crate) Arc<str>);

impl Label {
    pub(crate) fn value(&self) -> Value {
        Value::from(self.0.clone())
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const u8 as usize).hash(state)
    }
}

/// The labels of one series of the cost-attribution counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) struct TallyKey {
    pub(crate) method: Option<Label>,
    pub(crate) target: Option<(&'static str, Label)>,
    pub(crate) backend: Option<Label>,
    pub(crate) outcome: &'static str,
    pub(crate) error: Option<Label>,
    pub(crate) rpc_status: Option<Label>,
    pub(crate) tenant: Option<Label>,
    pub(crate) principal: Option<Label>,
    /// Only in the operation-duration histogram's key.
    pub(crate) version: Option<Label>,
}

impl TallyKey {
    /// The attributes: all of them, or without the outcome and error ones
    /// (cost, tokens and progress are not split by outcome).
    pub(crate) fn attributes(&self, with_outcome: bool) -> Vec<KeyValue> {
        let mut a = self.call_attributes();
        if with_outcome {
            a.push(KeyValue::new(OUTCOME, self.outcome));
            if let Some(c) = &self.rpc_status {
                a.push(KeyValue::new(RPC_STATUS, c.value()));
            }
            if let Some(e) = &self.error {
                a.push(KeyValue::new(ERROR_TYPE, e.value()));
            }
        }
        if let Some(t) = &self.tenant {
            a.push(KeyValue::new(TENANT, t.value()));
        }
        if let Some(p) = &self.principal {
            a.push(KeyValue::new(PRINCIPAL, p.value()));
        }
        if let Some(v) = &self.version {
            a.push(KeyValue::new(PROTOCOL_VERSION, v.value()));
        }
        a
    }

    /// What the call was and where it went: method, target, backend.
    pub(crate) fn call_attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(8);
        if let Some(m) = &self.method {
            a.push(KeyValue::new(METHOD, m.value()));
        }
        if let Some((k, t)) = &self.target {
            a.push(KeyValue::new(*k, t.value()));
        }
        if let Some(b) = &self.backend {
            a.push(KeyValue::new(BACKEND, b.value()));
        }
        a
    }

    /// The attributes of the operation-duration histogram.
    pub(crate) fn histogram_attributes(&self) -> Vec<KeyValue> {
        self.attributes(true)
    }
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    cost: AtomicU64,
    tokens: AtomicU64,
    progress: AtomicU64,
}

/// Which count a reader wants.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Calls,
    Cost,
    Tokens,
    Progress,
}

/// The counts by label set, up to `max_series` sets (later ones are
/// counted under one set labelled `_other`).
pub(crate) struct Tally {
    map: RwLock<HashMap<TallyKey, Arc<Counts>, foldhash::fast::RandomState>>,
    max_series: usize,
    other: Label,
}

impl Tally {
    pub(crate) fn new(max_series: usize) -> Self {
        Tally {
            map: RwLock::default(),
            max_series: max_series.max(1),
            other: Label(OTHER.into()),
        }
    }

    /// One call of `key`, with what it was charged.
    pub(crate) fn add(&self, key: TallyKey, cost: u64, tokens: u64, progress: u64) {
        let found = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let counts = match found {
            Some(c) => c,
            None => {
                let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
                let key = if map.len() >= self.max_series && !map.contains_key(&key) {
                    TallyKey {
                        method: Some(self.other.clone()),
                        outcome: OTHER,
                        ..Default::default()
                    }
                } else {
                    key
                };
                map.entry(key).or_default().clone()
            }
        };
        counts.calls.fetch_add(1, Ordering::Relaxed);
        for (c, n) in [
            (&counts.cost, cost),
            (&counts.tokens, tokens),
            (&counts.progress, progress),
        ] {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The totals of `which` by attribute set (at collection).
    pub(crate) fn read(&self, which: Count) -> Vec<(Vec<KeyValue>, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<Vec<KeyValue>, u64> = HashMap::new();
        for (k, c) in map.iter() {
            let (n, with_outcome) = match which {
                Count::Calls => (c.calls.load(Ordering::Relaxed), true),
                Count::Cost => (c.cost.load(Ordering::Relaxed), false),
                Count::Tokens => (c.tokens.load(Ordering::Relaxed), false),
                Count::Progress => (c.progress.load(Ordering::Relaxed), false),
            };
            if n > 0 {
                *out.entry(k.attributes(with_outcome)).or_default() += n;
            }
        }
        out.into_iter().collect()
    }
}
