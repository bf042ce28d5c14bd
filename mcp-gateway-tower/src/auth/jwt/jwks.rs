//! Keys from a JWKS endpoint: [`JwksFetcher`], [`HttpJwksFetcher`], [`JwksCache`].

#[allow(unused_imports)]
use super::*;

/// The future a [`JwksFetcher`] returns.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send>>;

/// Fetches a JWKS document. The built-in [`HttpJwksFetcher`] speaks plain
/// `http://`; for `https://` implement this with the HTTP client of your
/// application (reqwest, hyper-rustls, …).
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches the current key set.
    fn fetch(&self) -> FetchFuture;
}

/// Fetches a JWKS over plain HTTP (an identity provider's sidecar, a test).
#[derive(Debug, Clone)]
pub struct HttpJwksFetcher {
    url: http::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl HttpJwksFetcher {
    /// A fetcher for `url` (`http://…`).
    pub fn new(url: &str) -> Result<Self, String> {
        let url: http::Uri = url.parse().map_err(|e| format!("JWKS URL: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(
                "the built-in JWKS fetcher speaks http:// only; pass your own JwksFetcher for https://"
                    .into(),
            );
        }
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(HttpJwksFetcher { url, client })
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch(&self) -> FetchFuture {
        use http_body_util::BodyExt;
        let client = self.client.clone();
        let url = self.url.clone();
        Box::pin(async move {
            let res = tokio::time::timeout(Duration::from_secs(10), client.get(url.clone()))
                .await
                .map_err(|_| format!("JWKS {url}: timed out"))?
                .map_err(|e| format!("JWKS {url}: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("JWKS {url}: HTTP {}", res.status()));
            }
            let body = http_body_util::Limited::new(res.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| format!("JWKS {url}: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("JWKS {url}: {e}"))
        })
    }
}

/// A JWKS kept fresh. See the module docs for when it refetches.
pub struct JwksCache {
    pub(crate) fetcher: Box<dyn JwksFetcher>,
    pub(crate) keys: ArcSwap<Vec<JwtKey>>,
    pub(crate) last_fetch: Mutex<Option<Instant>>,
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    pub(crate) min_refresh: Duration,
    pub(crate) max_age: Duration,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl JwksCache {
    /// A cache over `fetcher`: refetch at most every `min_refresh` on an
    /// unknown `kid`, and whenever the set is older than `max_age`.
    pub fn new(fetcher: impl JwksFetcher, min_refresh: Duration, max_age: Duration) -> Self {
        JwksCache {
            fetcher: Box::new(fetcher),
            keys: ArcSwap::from_pointee(Vec::new()),
            last_fetch: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            min_refresh,
            max_age,
        }
    }

    pub(crate) fn age(&self) -> Option<Duration> {
        self.last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Refetches unless another task just did (single flight) or the last
    /// fetch is more recent than `at_most_every`.
    pub(crate) async fn refresh(&self, at_most_every: Duration) {
        let _guard = self.refreshing.lock().await;
        if self.age().is_some_and(|a| a < at_most_every) {
            return;
        }
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match self.fetcher.fetch().await {
            Ok(set) => {
                let keys = JwtKey::from_jwks(&set);
                tracing::info!(keys = keys.len(), "JWKS refreshed");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the known keys"),
        }
    }
}
