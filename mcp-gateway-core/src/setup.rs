//! [`SessionSetup`]: what a session's client said to set it up, kept so
//! that the session can be set up again on another backend instance
//! (failover, drain) without the client noticing.

use std::sync::Mutex;

use bytes::Bytes;

/// The recorded setup of one session: the client's `initialize` request
/// and the requests since that changed the session's state at the backend
/// (`logging/setLevel`, `resources/subscribe` / `unsubscribe`).
///
/// Failover replays them, in this order, on a new instance: `initialize`,
/// `notifications/initialized`, the last `logging/setLevel`, then one
/// `resources/subscribe` per URI still subscribed. The bodies are the
/// client's own bytes; the answers to the replayed requests go nowhere.
#[derive(Debug)]
pub struct SessionSetup {
    initialize: Bytes,
    later: Mutex<Later>,
}

#[derive(Debug, Default, Clone)]
struct Later {
    log_level: Option<Bytes>,
    /// (URI, the `resources/subscribe` body), in subscription order.
    subscriptions: Vec<(Box<str>, Bytes)>,
}

/// Each URI is kept once; a session subscribing to more than this many
/// replays only the first ones (bounded like everything else).
const MAX_SUBSCRIPTIONS: usize = 1024;

impl SessionSetup {
    /// The setup of a session that started with this `initialize` body.
    pub fn new(initialize: Bytes) -> Self {
        SessionSetup {
            initialize,
            later: Mutex::default(),
        }
    }

    /// A setup restored from its parts (a store that keeps records
    /// elsewhere): see [`SessionSetup::parts`].
    pub fn from_parts(
        initialize: Bytes,
        log_level: Option<Bytes>,
        subscriptions: Vec<(Box<str>, Bytes)>,
    ) -> Self {
        let mut subscriptions = subscriptions;
        subscriptions.truncate(MAX_SUBSCRIPTIONS);
        SessionSetup {
            initialize,
            later: Mutex::new(Later {
                log_level,
                subscriptions,
            }),
        }
    }

    /// What was recorded: the `initialize` body, the last
    /// `logging/setLevel` body, and (URI, `resources/subscribe` body) per
    /// live subscription.
    #[allow(clippy::type_complexity)]
    pub fn parts(&self) -> (Bytes, Option<Bytes>, Vec<(Box<str>, Bytes)>) {
        let later = self.later().clone();
        (
            self.initialize.clone(),
            later.log_level,
            later.subscriptions,
        )
    }

    /// The client's `initialize` request, byte for byte.
    pub fn initialize(&self) -> &Bytes {
        &self.initialize
    }

    fn later(&self) -> std::sync::MutexGuard<'_, Later> {
        self.later.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a `logging/setLevel` request (the last one wins).
    pub fn set_log_level(&self, body: Bytes) {
        self.later().log_level = Some(body);
    }

    /// Records a `resources/subscribe` of `uri`.
    pub fn subscribe(&self, uri: &str, body: Bytes) {
        let mut later = self.later();
        if let Some(s) = later.subscriptions.iter_mut().find(|(u, _)| &**u == uri) {
            s.1 = body;
        } else if later.subscriptions.len() < MAX_SUBSCRIPTIONS {
            later.subscriptions.push((uri.into(), body));
        }
    }

    /// Records a `resources/unsubscribe` of `uri`.
    pub fn unsubscribe(&self, uri: &str) {
        self.later().subscriptions.retain(|(u, _)| &**u != uri);
    }

    /// The requests to replay after `initialize` and
    /// `notifications/initialized`: the log level, then the subscriptions.
    pub fn replay(&self) -> Vec<Bytes> {
        let later = self.later().clone();
        later
            .log_level
            .into_iter()
            .chain(later.subscriptions.into_iter().map(|(_, b)| b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_the_last_level_then_live_subscriptions_in_order() {
        let s = SessionSetup::new(Bytes::from_static(b"init"));
        assert!(s.replay().is_empty());
        s.set_log_level(Bytes::from_static(b"debug"));
        s.set_log_level(Bytes::from_static(b"info"));
        s.subscribe("file:///a", Bytes::from_static(b"sub a"));
        s.subscribe("file:///b", Bytes::from_static(b"sub b"));
        s.subscribe("file:///a", Bytes::from_static(b"sub a again"));
        s.unsubscribe("file:///b");
        assert_eq!(
            s.replay(),
            vec![
                Bytes::from_static(b"info"),
                Bytes::from_static(b"sub a again")
            ]
        );
        assert_eq!(s.initialize(), &Bytes::from_static(b"init"));
    }
}
