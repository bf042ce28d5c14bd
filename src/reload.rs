//! Reloading the configuration file without a restart: on SIGHUP, and
//! when `watch = true`, whenever the file changes (checked every second).
//!
//! A reload changes the backend's instances and the policy rules:
//! - a URL added to `backend.urls` becomes a new instance (probed at once);
//! - a URL removed is drained, then removed at the drain deadline (its
//!   sessions move to the other instances);
//! - a URL changed is both: the old one drains, the new one is added;
//! - a change to the backend's client settings (credentials, TLS,
//!   upstream timeouts) replaces every instance the same way;
//! - `[policy]` rules are replaced.
//!
//! Other settings (listen address, TLS, authentication, limits, health
//! intervals) take effect on restart. A file that fails validation changes
//! nothing: the error is logged and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mcp_gateway_tower::rules::RulePolicy;
use mcp_gateway_tower::upstream::Instances;

use crate::config::{ConfigError, GatewayConfig};

/// Reloads one file into a running gateway.
pub struct Reloader {
    file: PathBuf,
    /// Folds the command-line overrides into a freshly read file.
    fold: Box<dyn Fn(&mut GatewayConfig) + Send + Sync>,
    policy: Option<Arc<RulePolicy>>,
    instances: Instances,
    live: Mutex<Vec<Live>>,
    /// With `[backends.NAME]`: what the aggregate was built from.
    aggregate: Option<String>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// An instance the file put there, still in service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    index: usize,
    url: String,
    fingerprint: String,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Instances added (their indexes).
    pub added: Vec<usize>,
    /// Instances retiring (drained, then removed).
    pub retired: Vec<usize>,
}

impl Reloader {
    /// A reloader of `file` into a gateway started from `started` (the
    /// file as it was read at start, flags folded in), whose instances
    /// `0..n` are that file's URLs in order.
    pub fn new(
        file: PathBuf,
        started: &GatewayConfig,
        fold: Box<dyn Fn(&mut GatewayConfig) + Send + Sync>,
        policy: Option<Arc<RulePolicy>>,
        instances: Instances,
    ) -> Self {
        let fingerprint = started.backend_fingerprint();
        let live = started
            .backend
            .urls
            .iter()
            .enumerate()
            .map(|(index, u)| Live {
                index,
                url: u.get_ref().clone(),
                fingerprint: fingerprint.clone(),
            })
            .collect();
        Reloader {
            file,
            fold,
            policy,
            instances,
            live: Mutex::new(live),
            aggregate: (!started.backends.is_empty()).then(|| started.aggregate_fingerprint()),
        }
    }

    /// Reads the file again and applies it; on any error nothing changes.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let mut cfg = GatewayConfig::load(&self.file)?;
        (self.fold)(&mut cfg);
        if !cfg.backends.is_empty() || self.aggregate.is_some() {
            // Several named backends: their instances are the aggregate's
            // own; a change to them takes a restart.
            if Some(cfg.aggregate_fingerprint()) != self.aggregate {
                tracing::warn!("[backends] or [aggregate] changed: restart the gateway to apply it (the policy is reloaded)");
            }
            if let Some(p) = &self.policy {
                p.replace(&cfg.policy.clone().unwrap_or_default());
            }
            return Ok(Reloaded::default());
        }
        if cfg.backend_is_bridged() {
            // A stdio or legacy SSE backend runs servers of its own: a
            // change to it takes a restart.
            tracing::info!("the [backend] is a stdio or legacy SSE backend: its settings apply at restart (the policy is reloaded)");
            if let Some(p) = &self.policy {
                p.replace(&cfg.policy.clone().unwrap_or_default());
            }
            return Ok(Reloaded::default());
        }
        let fingerprint = cfg.backend_fingerprint();
        // Everything is built before anything changes.
        let built = cfg.backend_instances()?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = Reloaded::default();
        live.retain(|l| {
            let keep = built
                .iter()
                .any(|(u, _)| *u == l.url && fingerprint == l.fingerprint);
            if !keep {
                self.instances.retire(l.index);
                done.retired.push(l.index);
            }
            keep
        });
        for (url, instance) in built {
            if live.iter().any(|l| l.url == url) {
                continue;
            }
            let index = self.instances.add(url.clone(), instance);
            done.added.push(index);
            live.push(Live {
                index,
                url,
                fingerprint: fingerprint.clone(),
            });
        }
        if let Some(p) = &self.policy {
            p.replace(&cfg.policy.clone().unwrap_or_default());
        }
        Ok(done)
    }

    fn reload_and_log(&self, why: &str) {
        match self.reload() {
            Ok(r) => tracing::info!(
                file = %self.file.display(), trigger = why, added = ?r.added, retiring = ?r.retired,
                "configuration reloaded (backend instances and policy; other settings need a restart)"
            ),
            Err(e) => tracing::error!(
                trigger = why, error = %e,
                "configuration not reloaded: the file is invalid; nothing changed"
            ),
        }
    }

    /// Reloads on SIGHUP and, with `watch`, when the file changes.
    pub fn spawn(self: Arc<Self>, watch: bool) {
        #[cfg(unix)]
        {
            let me = self.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    me.reload_and_log("SIGHUP");
                }
            });
        }
        if watch {
            // Taken now, before anything can change the file unseen.
            let mut seen = stamp(&self.file);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let now = stamp(&self.file);
                    if now != seen {
                        seen = now;
                        self.reload_and_log("file changed");
                    }
                }
            });
        }
    }
}

/// What tells a changed file: modification time, length and content hash.
fn stamp(file: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(file).ok()?;
    let text = std::fs::read(file).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    Some((meta.modified().ok()?, meta.len(), h.finish()))
}
