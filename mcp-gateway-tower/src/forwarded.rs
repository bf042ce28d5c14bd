//! `X-Forwarded-For` and `Forwarded`: who the client is, and what the
//! backend is told about it.
//!
//! A client can write any `X-Forwarded-For` it likes. Unless the peer that
//! connected is a configured trusted proxy (a load balancer in front of the
//! gateway), the client's own `X-Forwarded-For` and `Forwarded` are
//! dropped; either way the gateway appends the address it saw, so the
//! backend gets a chain it can trust as far as the gateway's own hop.
//!
//! Behind a trusted proxy, the client is the rightmost address of
//! `X-Forwarded-For` that is not itself a trusted proxy: that address
//! becomes the request's [`ClientAddr`], which anonymous limits and the
//! audit record key by. The peer stays in [`PeerAddr`].
//!
//! ```
//! use mcp_gateway_tower::forwarded::TrustedProxies;
//!
//! let trusted = TrustedProxies::parse(["10.0.0.0/8", "192.0.2.1"]).unwrap();
//! assert!(trusted.contains("10.1.2.3".parse().unwrap()));
//! assert!(!trusted.contains("192.0.2.2".parse().unwrap()));
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use ipnet::IpNet;

use crate::limit::ClientAddr;

/// The address that connected to the gateway (the client, or the proxy in
/// front of it), when [`forward`] replaced [`ClientAddr`] with the client
/// behind a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Headers a client could forge to look like another address or
/// scheme: dropped from untrusted peers.
static FORGEABLE: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
];

/// The networks whose connections may say who the client is (CIDRs or
/// single addresses). Empty by default: nobody is trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// From `10.0.0.0/8`, `::1` and the like.
    pub fn parse<I, S>(entries: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for e in entries {
            let e = e.as_ref().trim();
            let net = match e.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match e.parse::<IpAddr>() {
                    Ok(a) => IpNet::from(a),
                    Err(_) => {
                        return Err(format!(
                            "{e:?}: not an address or a network (10.0.0.0/8, 192.0.2.1, ::1)"
                        ))
                    }
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets.into()))
    }

    /// Whether `ip` is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4
/// client) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Applies the rules of the module docs to `req`, whose [`ClientAddr`] is
/// the peer that connected: headers for the backend, and the client's
/// address. A request without a [`ClientAddr`] (served without connect
/// information) only loses the client's forwarding headers.
pub fn forward<B>(req: &mut Request<B>, trusted: &TrustedProxies) {
    let Some(peer) = req.extensions().get::<ClientAddr>().map(|a| a.0) else {
        strip(req.headers_mut());
        return;
    };
    let peer_ip = canonical(peer.ip());
    let headers = req.headers_mut();
    if trusted.contains(peer_ip) {
        let client = client_behind(headers, peer_ip, trusted);
        append_for(headers, peer_ip);
        if client != peer_ip {
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut()
                .insert(ClientAddr(SocketAddr::new(client, 0)));
        }
    } else {
        strip(headers);
        headers.insert(X_FORWARDED_FOR.clone(), ip_value(peer_ip));
    }
}

fn strip(h: &mut HeaderMap) {
    // Most requests carry none of them: look before removing.
    if h.contains_key(&X_FORWARDED_FOR) {
        h.remove(&X_FORWARDED_FOR);
    }
    if h.contains_key(&FORWARDED) {
        h.remove(&FORWARDED);
    }
    for n in &FORGEABLE {
        if h.contains_key(n) {
            h.remove(n);
        }
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an address is a valid header value")
}

/// Appends `ip` to the trusted proxy's `X-Forwarded-For` (one header line)
/// and `Forwarded` (when it sent one).
fn append_for(h: &mut HeaderMap, ip: IpAddr) {
    let chain: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = if chain.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", chain.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if h.contains_key(&FORWARDED) {
        let node = match ip {
            IpAddr::V6(_) => format!("for=\"[{ip}]\""),
            IpAddr::V4(_) => format!("for={ip}"),
        };
        let joined: Vec<&str> = h
            .get_all(&FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("{}, {node}", joined.join(", "))) {
            h.insert(FORWARDED.clone(), v);
        }
    }
}

/// The rightmost `X-Forwarded-For` address that is not a trusted proxy;
/// the peer when there is none (or the chain does not parse).
fn client_behind(h: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut last = peer;
    for v in h.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(v) = v.to_str() else { return peer };
        for item in v.rsplit(',') {
            let Some(ip) = parse_node(item.trim()) else {
                return last;
            };
            let ip = canonical(ip);
            if !trusted.contains(ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, xff: &[&str]) -> Request<()> {
        let mut b = Request::builder().extension(ClientAddr(peer.parse().unwrap()));
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        b.header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .body(())
            .unwrap()
    }

    fn xff(r: &Request<()>) -> Vec<&str> {
        r.headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn an_untrusted_peer_cannot_say_who_it_is() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let mut r = req("192.0.2.7:5000", &["1.2.3.4", "5.6.7.8"]);
        forward(&mut r, &trusted);
        assert_eq!(xff(&r), ["192.0.2.7"]);
        assert!(r.headers().get("x-real-ip").is_none());
        assert!(r.headers().get("forwarded").is_none());
        assert_eq!(
            r.extensions().get::<ClientAddr>().unwrap().0,
            "192.0.2.7:5000".parse().unwrap()
        );
        assert!(r.extensions().get::<PeerAddr>().is_none());
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_the_chain_grows() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8", "::1"]).unwrap();
        // The client claims 1.2.3.4 to the first proxy (10.0.0.2), which
        // appends what it saw (203.0.113.9); the second (10.0.0.1)
        // connects to the gateway.
        let mut r = req("10.0.0.1:5000", &["1.2.3.4, 203.0.113.9", "10.0.0.2"]);
        forward(&mut r, &trusted);
        assert_eq!(xff(&r), ["1.2.3.4, 203.0.113.9, 10.0.0.2, 10.0.0.1"]);
        assert_eq!(
            r.extensions().get::<ClientAddr>().unwrap().0.ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the rightmost untrusted address, not what the client claimed"
        );
        assert_eq!(
            r.extensions().get::<PeerAddr>().unwrap().0,
            "10.0.0.1:5000".parse().unwrap()
        );
        assert_eq!(
            r.headers()["forwarded"].to_str().unwrap(),
            "for=6.6.6.6, for=10.0.0.1"
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_chain_is_the_client() {
        let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let mut r = req("127.0.0.1:5000", &[]);
        forward(&mut r, &trusted);
        assert_eq!(xff(&r), ["127.0.0.1"]);
        assert_eq!(
            r.extensions().get::<ClientAddr>().unwrap().0.ip(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // A mapped IPv4 peer matches its IPv4 network.
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(TrustedProxies::parse(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(["example.com"]).is_err());
    }
}
