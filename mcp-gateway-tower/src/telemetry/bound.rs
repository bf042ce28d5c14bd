//! Histograms recorded through handles bound to their label sets, found
//! by a pointer hash of interned labels: the SDK's own lookup hashes every
//! attribute's text with SipHash on each record, most of what a record
//! cost.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

use opentelemetry::metrics::{BoundHistogram, Histogram};
use opentelemetry::KeyValue;

/// One histogram's bound handles by label set, up to `max` sets (past it,
/// records go through the unbound instrument: still counted, just slower).
pub(crate) struct Bound<K> {
    hist: Histogram<f64>,
    map: RwLock<HashMap<K, BoundHistogram<f64>, foldhash::fast::RandomState>>,
    max: usize,
}

impl<K: Hash + Eq> Bound<K> {
    pub(crate) fn new(hist: Histogram<f64>, max: usize) -> Self {
        Bound {
            hist,
            map: RwLock::default(),
            max,
        }
    }

    /// Records `v` in the series of `key`, whose attributes `attrs` makes
    /// (called only the first time a key is seen).
    pub(crate) fn record(&self, key: K, v: f64, attrs: impl FnOnce(&K) -> Vec<KeyValue>) {
        if let Some(b) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            b.record(v);
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get(&key) {
            b.record(v);
            return;
        }
        let a = attrs(&key);
        if map.len() >= self.max {
            drop(map);
            self.hist.record(v, &a);
            return;
        }
        let b = self.hist.bind(&a);
        b.record(v);
        map.insert(key, b);
    }
}
