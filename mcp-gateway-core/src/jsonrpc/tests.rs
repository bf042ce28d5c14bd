//! Tests of `jsonrpc`.

use super::*;
use proptest::prelude::*;

fn one(json: &str) -> Result<Message, GatewayError> {
    Envelope::parse(Bytes::copy_from_slice(json.as_bytes())).map(|e| match e {
        Envelope::Single(m) => m,
        Envelope::Batch(_) => panic!("unexpected batch"),
    })
}

#[test]
fn request_fields() {
    let m = one(
        r#"{"jsonrpc":"2.0","id":"a-1","method":"resources/read","params":{"uri":"file:///x"}}"#,
    )
    .unwrap();
    assert_eq!(m.kind(), MessageKind::Request);
    assert_eq!(m.id().unwrap().as_bytes(), br#""a-1""#);
    assert_eq!(m.method(), Some(&Method::ResourcesRead));
    assert_eq!(m.target(), Some("file:///x"));
    assert_eq!(m.arguments(), None);
    let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a": [1, 2]}}}"#).unwrap();
    assert_eq!(&m.arguments().unwrap()[..], br#"{"a": [1, 2]}"#);
}

#[test]
fn escaped_names_are_decoded() {
    let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"a\u00e9b"}}"#)
        .unwrap();
    assert_eq!(m.method(), Some(&Method::ToolsCall));
    assert_eq!(m.target(), Some("aéb"));
}

#[test]
fn notification_response_error() {
    assert_eq!(
        one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .unwrap()
            .kind(),
        MessageKind::Notification
    );
    assert_eq!(
        one(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#)
            .unwrap()
            .kind(),
        MessageKind::Response
    );
    let e = one(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#).unwrap();
    assert_eq!(e.kind(), MessageKind::Error);
    assert!(e.id().is_none());
}

#[test]
fn meta_and_initialize_versions() {
    let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#).unwrap();
    assert_eq!(m.meta_protocol_version(), Some("2026-07-28"));
    let i = one(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#).unwrap();
    assert!(i.is_initialize());
    assert_eq!(i.initialize_protocol_version(), Some("2025-11-25"));
}

#[test]
fn parse_errors_are_32700() {
    for bad in ["", "{", "{\"jsonrpc\":", "nope", "{\"a\":1}}"] {
        let e = one(bad).unwrap_err();
        assert_eq!(e.code(), -32700, "{bad:?}");
    }
}

#[test]
fn shape_errors_are_32600() {
    for bad in [
        r#"{"id":1,"method":"x"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
        r#"{"jsonrpc":"2.0","method":1}"#,
        r#"[1]"#,
        r#"17"#,
    ] {
        let e = Envelope::parse(Bytes::copy_from_slice(bad.as_bytes())).unwrap_err();
        assert_eq!(e.code(), -32600, "{bad}");
    }
    let e = Envelope::parse(Bytes::from_static(b" [ ] ")).unwrap_err();
    assert_eq!(e.code(), -32600);
}

#[test]
fn batch() {
    let env = Envelope::parse(Bytes::from_static(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
    ))
    .unwrap();
    assert_eq!(env.messages().len(), 2);
    assert!(env.has_request());
    assert!(env.single().is_none());
}

fn json_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _/éü\\-\"\\\\\u{1F600}]{0,12}"
}

#[test]
fn repeated_members_are_refused() {
    // The gateway and the backend could each read a different copy.
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","name":"rm"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","n\u0061me":"rm"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"a","io.modelcontextprotocol/protocolVersion":"b"}}}"#,
    ] {
        let e = one(bad).unwrap_err();
        assert_eq!(e.code(), -32600, "{bad}");
    }
}

#[test]
fn broken_json_wins_over_a_wrong_shape() {
    // Misshapen early (`method` is a number), broken later: -32700.
    assert_eq!(
        one(r#"{"jsonrpc":"2.0","method":1,"id":}"#)
            .unwrap_err()
            .code(),
        -32700
    );
    assert_eq!(
        one("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"} x")
            .unwrap_err()
            .code(),
        -32700
    );
    assert_eq!(one("\u{feff}{}").unwrap_err().code(), -32700);
    assert_eq!(
        Envelope::parse(Bytes::from_static(b"{\"a\":\"\xff\"}"))
            .unwrap_err()
            .code(),
        -32700
    );
}

#[test]
fn positional_params_carry_no_target() {
    let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["x"]}"#).unwrap();
    assert_eq!(m.target(), None);
    assert_eq!(m.arguments(), None);
}

/// What the envelope should say about a message, worked out from a
/// `serde_json::Value` independently of the scanner: `Err(code)` or the
/// kind, id, method, target, versions and arguments.
type Expected = Result<
    (
        MessageKind,
        Option<serde_json::Value>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<serde_json::Value>,
    ),
    i32,
>;

fn oracle(v: &serde_json::Value) -> Expected {
    use serde_json::Value as V;
    let o = v.as_object().ok_or(-32600)?;
    let string = |v: Option<&V>| -> Result<Option<String>, i32> {
        match v {
            None | Some(V::Null) => Ok(None),
            Some(V::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(-32600),
        }
    };
    let jsonrpc = string(o.get("jsonrpc"))?;
    let method = string(o.get("method"))?;
    let (mut name, mut uri, mut pv, mut meta, mut args) = (None, None, None, None, None);
    match o.get("params") {
        None | Some(V::Null) | Some(V::Array(_)) => {}
        Some(V::Object(p)) => {
            name = string(p.get("name"))?;
            uri = string(p.get("uri"))?;
            pv = string(p.get("protocolVersion"))?;
            meta = match p.get("_meta") {
                None | Some(V::Null) | Some(V::Array(_)) => None,
                Some(V::Object(m)) => string(m.get("io.modelcontextprotocol/protocolVersion"))?,
                Some(_) => return Err(-32600),
            };
            args = p.get("arguments").filter(|a| !a.is_null()).cloned();
        }
        Some(_) => return Err(-32600),
    }
    if jsonrpc.as_deref() != Some("2.0") {
        return Err(-32600);
    }
    let id = match o.get("id") {
        None | Some(V::Null) => None,
        Some(i @ (V::Number(_) | V::String(_))) => Some(i.clone()),
        Some(_) => return Err(-32600),
    };
    let id_null = o.get("id") == Some(&V::Null);
    let kind = match (&method, o.contains_key("result"), o.contains_key("error")) {
        (Some(_), false, false) if id_null => return Err(-32600),
        (Some(_), false, false) if id.is_some() => MessageKind::Request,
        (Some(_), false, false) => MessageKind::Notification,
        (None, true, false) if id.is_some() => MessageKind::Response,
        (None, false, true) => MessageKind::Error,
        _ => return Err(-32600),
    };
    let m = method.as_deref().map(Method::parse);
    let (target, args) = match m {
        Some(Method::ToolsCall | Method::PromptsGet) => (name, args),
        Some(Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe) => {
            (uri, None)
        }
        _ => (None, None),
    };
    let meta = if m.is_some() { meta } else { None };
    let pv = if m == Some(Method::Initialize) {
        pv
    } else {
        None
    };
    Ok((kind, id, method, target, meta, pv, args))
}

fn observed(m: &Message) -> Expected {
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    Ok((
        m.kind(),
        m.id().map(|i| json(i.as_bytes())),
        m.method().map(|x| x.as_str().to_owned()),
        m.target().map(str::to_owned),
        m.meta_protocol_version().map(str::to_owned),
        m.initialize_protocol_version().map(str::to_owned),
        m.arguments().map(|a| json(a)),
    ))
}

fn arb_member() -> impl Strategy<Value = Option<serde_json::Value>> {
    use serde_json::json;
    prop_oneof![
        Just(None),
        Just(Some(json!(null))),
        Just(Some(json!(7))),
        Just(Some(json!(true))),
        Just(Some(json!({"k": [1, "two"]}))),
        Just(Some(json!([]))),
        json_string().prop_map(|s| Some(json!(s))),
    ]
}

fn arb_message() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let method = prop_oneof![
        Just(Some(json!("tools/call"))),
        Just(Some(json!("resources/read"))),
        Just(Some(json!("initialize"))),
        arb_member(),
    ];
    let jsonrpc = prop_oneof![4 => Just(Some(json!("2.0"))), 1 => arb_member()];
    let params = prop_oneof![
        arb_member(),
        (
            arb_member(),
            arb_member(),
            arb_member(),
            arb_member(),
            arb_member(),
            arb_member()
        )
            .prop_map(|(name, uri, pv, meta, args, other)| {
                let mut p = members(&[
                    ("name", name),
                    ("uri", uri),
                    ("protocolVersion", pv),
                    ("arguments", args),
                    ("other", other),
                ]);
                if let Some(m) = meta {
                    p.insert(
                        "_meta".into(),
                        json!({"io.modelcontextprotocol/protocolVersion": m, "x": 1}),
                    );
                }
                Some(serde_json::Value::Object(p))
            }),
    ];
    (
        jsonrpc,
        arb_member(),
        method,
        params,
        prop_oneof![3 => Just(None), 1 => arb_member()],
        prop_oneof![3 => Just(None), 1 => arb_member()],
    )
        .prop_map(|(jsonrpc, id, method, params, result, error)| {
            serde_json::Value::Object(members(&[
                ("jsonrpc", jsonrpc),
                ("id", id),
                ("method", method),
                ("params", params),
                ("result", result),
                ("error", error),
            ]))
        })
}

/// An object of the members that are present.
fn members(
    pairs: &[(&str, Option<serde_json::Value>)],
) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some(((*k).to_owned(), v.clone()?)))
        .collect()
}

proptest! {
    /// The scanner-based parser says what an independent reading of the
    /// same message through `serde_json::Value` says, for well- and
    /// ill-shaped messages, compact or pretty, with escaped keys.
    #[test]
    fn agrees_with_a_value_based_reading(
        msg in arb_message(),
        pretty in any::<bool>(),
        escape_keys in any::<bool>(),
    ) {
        let mut text = if pretty { serde_json::to_string_pretty(&msg).unwrap() } else { serde_json::to_string(&msg).unwrap() };
        if escape_keys {
            text = text.replace("\"id\"", "\"\\u0069d\"").replace("\"name\"", "\"n\\u0061me\"");
        }
        let ours = one(&text).map_err(|e| e.code()).and_then(|m| observed(&m));
        prop_assert_eq!(ours, oracle(&msg), "{}", text);
    }

    /// Whatever the names and ids, the parser recovers exactly what a
    /// serialiser wrote, and the id text is the serialiser's.
    #[test]
    fn recovers_what_was_written(
        name in json_string(),
        method in prop_oneof![Just("tools/call".to_string()), Just("prompts/get".to_string()), json_string()],
        id in prop_oneof![any::<i64>().prop_map(|n| serde_json::json!(n)), json_string().prop_map(|s| serde_json::json!(s))],
        extra in proptest::collection::vec((json_string(), any::<i32>()), 0..4),
    ) {
        let mut params = serde_json::Map::new();
        params.insert("name".into(), serde_json::json!(name));
        for (k, v) in &extra { if k != "name" && k != "uri" && k != "_meta" && k != "protocolVersion" { params.insert(k.clone(), serde_json::json!(v)); } }
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string();
        let m = one(&body).unwrap();
        prop_assert_eq!(m.method().unwrap().as_str(), method.as_str());
        let id_text = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(m.id().unwrap().as_bytes(), id_text.as_bytes());
        if method == "tools/call" || method == "prompts/get" {
            prop_assert_eq!(m.target(), Some(name.as_str()));
        }
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Envelope::parse(Bytes::from(bytes));
    }
}
