//! Tests of the configuration file.

use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:0"
[backend]
name = "weather"
urls = ["http://127.0.0.1:9/mcp"]
credentials.headers = { Authorization = "Bearer b" }

[auth]
resource = "http://127.0.0.1:8080/mcp"
[[auth.api_keys]]
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
subject = "ci"
roles = ["reader"]

[policy]
default = "deny"
[[policy.rules]]
effect = "allow"
roles = ["reader"]
tools = ["get_*"]

[pinning]
mode = "hide"
"#;

#[test]
fn a_good_file_builds() {
    let c = GatewayConfig::parse(GOOD, Path::new(".")).unwrap();
    let built = c.builder().unwrap();
    assert!(built.policy.is_some() && built.pins.is_some());
    assert_eq!(c.listen().unwrap(), Some("127.0.0.1:0".parse().unwrap()));
}

fn error(text: &str) -> ConfigError {
    GatewayConfig::parse(text, Path::new(".")).unwrap_err()
}

#[test]
fn the_http1_server_is_named_in_the_file() {
    let c = GatewayConfig::parse(GOOD, Path::new(".")).unwrap();
    assert_eq!(c.http1_server, None);
    let text = format!("http1_server = \"hyper\"\n{GOOD}");
    let c = GatewayConfig::parse(&text, Path::new(".")).unwrap();
    assert_eq!(c.http1_server, Some(crate::serve::Http1Server::Hyper));
    let e = error(&format!("http1_server = \"nginx\"\n{GOOD}"));
    assert_eq!(e.key.as_deref(), Some("http1_server"), "{e}");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn errors_name_the_line_and_the_key() {
    let e = error(&GOOD.replace("tools = [\"get_*\"]", "toolz = [\"get_*\"]"));
    assert_eq!(e.line, Some(20), "{e}");
    assert!(e.to_string().contains("unknown field `toolz`"), "{e}");

    assert_eq!(e.key.as_deref(), Some("policy.rules.toolz"), "{e}");

    let e = error(&GOOD.replace("mode = \"hide\"", "mode = \"sometimes\""));
    assert_eq!(e.line, Some(23), "{e}");
    assert_eq!(e.key.as_deref(), Some("pinning.mode"), "{e}");
    assert!(e.to_string().contains("sometimes"), "{e}");

    let e = error(&GOOD.replace("ba7816bf", "zz7816bf"));
    assert_eq!(e.line, Some(11), "{e}");
    assert_eq!(e.key.as_deref(), Some("auth.api_keys[0].sha256"));

    let e = error(&GOOD.replace("http://127.0.0.1:9/mcp", "ftp://x/mcp"));
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(e.key.as_deref(), Some("backend.urls[0]"));

    let jwt = format!(
        "{GOOD}\n[auth.jwt]\nalgorithms = [\"RS256\"]\n[[auth.jwt.keys]]\nkid = \"k\"\nalg = \"RS999\"\npem = \"x\"\n"
    );
    let e = error(&jwt);
    assert_eq!(e.key.as_deref(), Some("auth.jwt.keys[0].alg"), "{e}");
    assert_eq!(e.line, Some(29), "{e}");
}

#[test]
fn timeouts_sessions_and_forwarding_come_from_the_file_and_backends_override() {
    let text = format!(
        "trusted_proxies = [\"10.0.0.0/8\"]\n{}\n[timeouts]\nupstream_connect_ms = 500\nupstream_first_byte_secs = 10\nsession_idle_secs = 60\nsession_max_secs = 0\nsse_keepalive_secs = 5\nclient_idle_secs = 9\n[sessions]\nmax_sessions = 7\nevict_idle_secs = 0\n",
        GOOD.replace(
            "name = \"weather\"",
            "name = \"weather\"\nupstream_first_byte_secs = 120\nupstream_idle_secs = 0"
        )
    );
    let c = GatewayConfig::parse(&text, Path::new(".")).unwrap();
    let up = c.upstream_config().unwrap();
    assert_eq!(up.connect_timeout, Duration::from_millis(500));
    assert_eq!(
        up.response_timeout,
        Duration::from_secs(120),
        "the backend's own"
    );
    assert_eq!(up.idle_timeout, None, "0 is off");
    let s = c.timeouts.sessions(c.sessions_config()).unwrap();
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.max_age, None);
    assert_eq!(s.max_sessions, 7);
    assert_eq!(s.evict_idle, Some(Duration::ZERO));
    assert_eq!(
        c.timeouts.sse(SseRelayConfig::default()).keep_alive,
        Some(Duration::from_secs(5))
    );
    let opts = c.timeouts.serve(crate::serve::ServeOptions::default());
    assert_eq!(opts.idle_timeout, Some(Duration::from_secs(9)));
    assert_eq!(opts.header_read_timeout, Some(Duration::from_secs(30)));
    assert!(c
        .trusted_proxies()
        .unwrap()
        .contains("10.1.2.3".parse().unwrap()));

    let e = error(&format!(
        "{GOOD}\n[timeouts]\nupstream_first_byte_secs = 0\n"
    ));
    assert_eq!(
        e.key.as_deref(),
        Some("timeouts.upstream_first_byte_secs"),
        "{e}"
    );
    let e = error(&format!("trusted_proxies = [\"10.0.0.0/40\"]\n{GOOD}"));
    assert_eq!(e.key.as_deref(), Some("trusted_proxies[0]"), "{e}");
    assert_eq!(e.line, Some(1), "{e}");
    let e = error(&format!("{GOOD}\n[timeouts]\nclient_idle = 3\n"));
    assert!(e.to_string().contains("unknown field `client_idle`"), "{e}");
}

#[test]
fn cluster_settings_are_checked_before_anything_connects() {
    let base = "[backend]\nurls = [\"http://127.0.0.1:9/mcp\"]\n";
    for (table, key, says) in [
        ("[cluster]\n", "cluster.redis_url", "required"),
        (
            "[cluster]\nredis_url = \"nope://x\"\n",
            "cluster.redis_url",
            "",
        ),
        (
            "[cluster]\nredis_url = \"redis://127.0.0.1:1/0\"\nlease_secs = 0\n",
            "cluster.lease_secs",
            "more than 0",
        ),
        (
            "[cluster]\nredis_url = \"redis://127.0.0.1:1/0\"\ntimeout_ms = 0\n",
            "cluster.timeout_ms",
            "more than 0",
        ),
        (
            "[cluster]\nsession_ids = \"sealed\"\nseal_keys_env = \"MCPGW_TEST_NO_SUCH_KEYS\"\n",
            "cluster.seal_keys_env",
            "MCPGW_TEST_NO_SUCH_KEYS is not set",
        ),
        (
            "[cluster]\nsession_ids = \"sideways\"\n",
            "cluster.session_ids",
            "",
        ),
    ] {
        let e = error(&format!("{base}{table}"));
        assert_eq!(e.key.as_deref(), Some(key), "{table}: {e}");
        assert!(e.message.contains(says), "{table}: {e}");
    }
    // Checking a file connects to nothing: Redis need not be up.
    let ok = format!(
        "{base}[cluster]\nredis_url = \"redis://127.0.0.1:1/0\"\n[sessions]\nresumption = true\n"
    );
    GatewayConfig::parse(&ok, Path::new(".")).unwrap();
}
