//! Health of backend instances: active MCP probes, passive outlier
//! detection, and the signal that cuts calls off a lost instance.
//!
//! | module | holds |
//! | --- | --- |
//! | `state` | [`InstanceState`]: one instance's health, load and drain, in atomics |
//! | `probe` | the active probe: what it sends, and the task that sends it |
//! | `watch` | what a call through an instance reports back (passive detection), and the response body that ends cleanly when its instance is lost |
//!
//! An instance takes new sessions and stateless calls while it is
//! *eligible*: healthy by its probes (or not probed), not ejected by
//! passive detection, not draining, not removed. An instance that becomes
//! unhealthy or ejected is *lost*: its calls in flight end at once with a
//! JSON-RPC error (-32050; in the SSE stream when one is open), and the
//! session router moves its sessions elsewhere on their next request.

use std::time::Duration;

mod probe;
mod state;
mod watch;

pub(crate) use self::probe::{expect_result, spawn_probe};
pub use self::probe::{HealthProbe, ProbeTarget, PROBE_CLIENT_NAME};
pub(crate) use self::state::LossWatch;
pub use self::state::{Condition, InstanceState};
pub(crate) use self::watch::{lost_call, Outstanding, Watched};

/// How the instances of a backend are watched and chosen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Active probes; `None`: none (instances are healthy until passive
    /// detection ejects them).
    pub active: Option<ActiveHealth>,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// How a new session or a stateless call picks among eligible
    /// instances. Default: least outstanding requests.
    pub balance: Balance,
    /// How long a draining instance keeps its sessions before they move.
    /// Default 5 min (`drain_timeout_secs`).
    pub drain_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            active: None,
            outlier: OutlierConfig::default(),
            balance: Balance::LeastOutstanding,
            drain_timeout: Duration::from_secs(300),
        }
    }
}

impl HealthConfig {
    /// Sets [`active`](Self::active).
    pub fn active(mut self, active: Option<ActiveHealth>) -> Self {
        self.active = active;
        self
    }
    /// Sets [`outlier`](Self::outlier).
    pub fn outlier(mut self, outlier: OutlierConfig) -> Self {
        self.outlier = outlier;
        self
    }
    /// Sets [`drain_timeout`](Self::drain_timeout).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }
    /// Sets [`balance`](Self::balance).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }
}

/// Active probes of each instance.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActiveHealth {
    /// Time between probes. Default 10 s.
    pub interval: Duration,
    /// Time a probe may take. Default 2 s.
    pub timeout: Duration,
    /// Failed probes in a row that mark an instance unhealthy. Default 2.
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that mark it healthy again. Default 2.
    pub healthy_threshold: u32,
    /// What the probe sends. Default [`Probe::Ping`].
    pub probe: Probe,
    /// A probe of your own, used instead of [`probe`](Self::probe).
    pub custom: Option<CustomProbe>,
}

/// A [`HealthProbe`] of your own (see [`ActiveHealth::custom`]).
#[derive(Clone)]
pub struct CustomProbe(pub std::sync::Arc<dyn HealthProbe>);

impl std::fmt::Debug for CustomProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomProbe")
    }
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            probe: Probe::Ping,
            custom: None,
        }
    }
}

impl ActiveHealth {
    /// Probes with `probe` instead of a built-in one.
    pub fn custom(mut self, probe: std::sync::Arc<dyn HealthProbe>) -> Self {
        self.custom = Some(CustomProbe(probe));
        self
    }

    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Sets both thresholds.
    pub fn thresholds(mut self, unhealthy: u32, healthy: u32) -> Self {
        self.unhealthy_threshold = unhealthy.max(1);
        self.healthy_threshold = healthy.max(1);
        self
    }
    /// Sets [`probe`](Self::probe).
    pub fn probe(mut self, p: Probe) -> Self {
        self.probe = p;
        self
    }
}

/// What an active probe sends (see `docs/resilience.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Probe {
    /// `initialize` (client name [`PROBE_CLIENT_NAME`]) and
    /// `notifications/initialized` once, then a `ping` on that probe
    /// session each time; a probe session the backend forgot (404) is
    /// initialized again within the same probe.
    Ping,
    /// A stateless 2026-07-28 `server/discover` each time.
    Discover,
}

/// Passive outlier detection: instances that keep failing real calls are
/// ejected for a while.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Failures in a row (connect failures, 5xx, timeouts, broken
    /// streams) that eject an instance; 0 turns detection off. Default 3.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    /// Default 5 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 5 min.
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// How a new session or a stateless call picks among eligible instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Balance {
    /// The instance with the fewest requests in flight (ties: in turn).
    #[default]
    LeastOutstanding,
    /// Each eligible instance in turn.
    RoundRobin,
}
