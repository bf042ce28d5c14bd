//! [`AuthChain`]: several authenticators, the first that knows the credential decides.

#[allow(unused_imports)]
use super::*;

/// Several authenticators; the first that does not say
/// [`AuthOutcome::NotMine`] decides.
#[derive(Default, Clone)]
pub struct AuthChain {
    links: Vec<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthChain")
            .field("links", &self.links.len())
            .finish()
    }
}

impl AuthChain {
    /// An empty chain (every request is `NotMine`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an authenticator.
    pub fn with(mut self, a: impl Authenticator) -> Self {
        self.links.push(Arc::new(a));
        self
    }

    /// Appends a shared authenticator.
    pub fn with_shared(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.links.push(a);
        self
    }
}

impl Authenticator for AuthChain {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome> {
        for (i, a) in self.links.iter().enumerate() {
            match a.authenticate(parts).now() {
                Ok(AuthOutcome::NotMine) => continue,
                Ok(decided) => return Answer::ready(decided),
                // This link waits: so does the rest of the chain.
                Err(pending) => {
                    return Answer::pending(async move {
                        match pending.await {
                            AuthOutcome::NotMine => {}
                            decided => return decided,
                        }
                        for a in &self.links[i + 1..] {
                            match a.authenticate(parts).await {
                                AuthOutcome::NotMine => continue,
                                decided => return decided,
                            }
                        }
                        AuthOutcome::NotMine
                    })
                }
            }
        }
        Answer::ready(AuthOutcome::NotMine)
    }

    fn credential_headers(&self) -> Vec<HeaderName> {
        self.links
            .iter()
            .flat_map(|a| a.credential_headers())
            .collect()
    }
}
