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
