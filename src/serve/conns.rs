//! Caps on open client connections: one for the whole process, below its
//! file-descriptor limit, and one per client address, so that neither a
//! flood of idle sockets nor one client can use every descriptor.
//!
//! At the process cap the listeners stop accepting (the kernel's backlog
//! holds new connections) until one closes: back-off instead of
//! `accept` failing with "too many open files" in a loop. Past the
//! per-address cap a connection is answered `429` with `Retry-After` (in
//! clear text; over TLS it is closed) and closed. Trusted proxies carry
//! many clients each and are not held to the per-address cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mcp_gateway_tower::forwarded::TrustedProxies;

/// The process's open-file limit (soft), raised to the hard limit first
/// when it is lower. `None` where it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
        if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
            return Some(hard);
        }
        Some(soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The automatic process cap for a descriptor limit: half of what is left
/// after a reserve of 64 (listeners, files, the runtime), since each
/// client connection may hold a backend connection too.
pub fn auto_max_connections(fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(n) => (n.saturating_sub(64) / 2).max(16) as usize,
        None => 10_000,
    }
}

/// The counts the serving threads share.
pub(super) struct ConnLimits {
    max: usize,
    per_client: usize,
    trusted: TrustedProxies,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    freed: tokio::sync::Notify,
}

/// One admitted connection; its counts go back when dropped.
pub(super) struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl ConnLimits {
    /// `max` connections in all (0: no cap), `per_client` per address (0:
    /// no cap).
    pub(super) fn new(max: usize, per_client: usize, trusted: TrustedProxies) -> Arc<Self> {
        Arc::new(ConnLimits {
            max,
            per_client,
            trusted,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Waits while the process is at its cap.
    pub(super) async fn room(&self) {
        if self.max == 0 {
            return;
        }
        let mut warned = false;
        loop {
            let freed = self.freed.notified();
            if self.total.load(Ordering::Acquire) < self.max {
                return;
            }
            if !warned {
                tracing::warn!(
                    max_connections = self.max,
                    "connection cap reached: new connections wait in the backlog"
                );
                warned = true;
            }
            freed.await;
        }
    }

    /// Counts a new connection from `ip`; `None` when that address is at
    /// its cap.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let capped = self.per_client > 0 && !self.trusted.contains(ip);
        if capped {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n as usize >= self.per_client {
                return None;
            }
            *n += 1;
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnSlot {
            limits: self.clone(),
            ip: capped.then_some(ip),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        self.limits.freed.notify_waiters();
    }
}

/// What a connection over its address's cap is told before it is closed.
pub(super) const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 101\r\n\r\n\
{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32055,\"message\":\"too many connections from this client\"}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], -32055);
    }

    #[test]
    fn per_address_counts_come_back() {
        let l = ConnLimits::new(0, 2, TrustedProxies::parse(["10.0.0.1"]).unwrap());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert!(l.admit(ip).is_none(), "the third is over the cap");
        assert!(
            l.admit("192.0.2.2".parse().unwrap()).is_some(),
            "others are not"
        );
        drop(a);
        assert!(l.admit(ip).is_some());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| l.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 5, "a trusted proxy is not capped");
        assert_eq!(l.total.load(Ordering::Acquire), 1 + 5);
        drop(held);
        assert_eq!(l.total.load(Ordering::Acquire), 1);
    }

    #[test]
    fn the_automatic_cap_leaves_room_below_the_descriptor_limit() {
        assert_eq!(auto_max_connections(Some(1024)), 480);
        assert_eq!(auto_max_connections(Some(1_048_576)), 524_256);
        assert!(raise_fd_limit().is_some_and(|n| n > 0));
    }
}
