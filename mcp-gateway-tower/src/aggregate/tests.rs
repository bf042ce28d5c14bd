use super::names::{Cursor, Kind, Naming, Template, Unresolved};
use super::PrefixMode;
use std::collections::HashSet;
use std::sync::Arc;

fn naming(prefix: PrefixMode) -> Naming {
    let n = Naming::new(vec!["db".into(), "tickets".into()], prefix, "__");
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| Arc::from(*s))
            .collect::<HashSet<Arc<str>>>()
    };
    n.catalog.replace(0, Kind::Tool, set(&["echo", "query"]));
    n.catalog.replace(1, Kind::Tool, set(&["echo", "open"]));
    n.catalog
        .replace(0, Kind::Resource, set(&["file:///a", "file:///same"]));
    n.catalog
        .replace(1, Kind::Resource, set(&["file:///b", "file:///same"]));
    n.catalog
        .replace(1, Kind::Template, set(&["tickets://{id}/comments{?page}"]));
    n
}

#[test]
fn always_prefixes_every_name_and_routes_by_the_prefix() {
    let n = naming(PrefixMode::Always);
    assert_eq!(n.client_name(Kind::Tool, 0, "query"), "db__query");
    assert_eq!(n.resolve(Kind::Tool, "db__echo"), Ok((0, "echo")));
    assert_eq!(n.resolve(Kind::Tool, "tickets__echo"), Ok((1, "echo")));
    // A backend's own name may hold the separator: only the first splits.
    assert_eq!(n.resolve(Kind::Tool, "db__a__b"), Ok((0, "a__b")));
    assert_eq!(n.resolve(Kind::Tool, "echo"), Err(Unresolved::Unknown));
    assert_eq!(
        n.resolve(Kind::Tool, "nope__echo"),
        Err(Unresolved::Unknown)
    );
}

#[test]
fn conflicts_prefixes_only_shared_names() {
    let n = naming(PrefixMode::Conflicts);
    assert_eq!(n.client_name(Kind::Tool, 0, "query"), "query");
    assert_eq!(n.client_name(Kind::Tool, 1, "echo"), "tickets__echo");
    assert_eq!(n.resolve(Kind::Tool, "query"), Ok((0, "query")));
    assert_eq!(n.resolve(Kind::Tool, "open"), Ok((1, "open")));
    assert_eq!(n.resolve(Kind::Tool, "db__echo"), Ok((0, "echo")));
    assert_eq!(
        n.resolve(Kind::Tool, "echo"),
        Err(Unresolved::Ambiguous(vec![0, 1]))
    );
    assert_eq!(n.resolve(Kind::Tool, "missing"), Err(Unresolved::Unknown));
}

#[test]
fn never_routes_by_the_catalog_and_reports_shared_names() {
    let n = naming(PrefixMode::Never);
    assert_eq!(n.client_name(Kind::Tool, 1, "echo"), "echo");
    assert_eq!(n.resolve(Kind::Tool, "open"), Ok((1, "open")));
    assert_eq!(
        n.resolve(Kind::Tool, "echo"),
        Err(Unresolved::Ambiguous(vec![0, 1]))
    );
    let c = n.catalog.conflicts(Kind::Tool);
    assert_eq!(c.len(), 1);
    assert_eq!(&*c[0].0, "echo");
}

#[test]
fn uris_pass_unless_shared_and_shared_ones_are_rewritten_reversibly() {
    let n = naming(PrefixMode::Conflicts);
    assert_eq!(n.client_name(Kind::Resource, 0, "file:///a"), "file:///a");
    let shown = n
        .client_name(Kind::Resource, 1, "file:///same")
        .into_owned();
    assert_eq!(shown, "mcpgw://tickets/file:///same");
    assert_eq!(n.resolve(Kind::Resource, &shown), Ok((1, "file:///same")));
    assert_eq!(n.resolve(Kind::Resource, "file:///b"), Ok((1, "file:///b")));
    assert_eq!(
        n.resolve(Kind::Resource, "file:///same"),
        Err(Unresolved::Ambiguous(vec![0, 1]))
    );
    // Not listed, but a template of one backend matches it.
    assert_eq!(
        n.resolve(Kind::Resource, "tickets://42/comments?page=2"),
        Ok((1, "tickets://42/comments?page=2"))
    );
    assert_eq!(
        n.resolve(Kind::Resource, "other://x"),
        Err(Unresolved::Unknown)
    );
}

#[test]
fn templates_match_like_rfc_6570_expansions() {
    let t = Template::parse("file:///{path}");
    assert!(t.matches("file:///a").is_some());
    assert!(t.matches("file:///a/b").is_none());
    assert!(Template::parse("file:///{+path}")
        .matches("file:///a/b")
        .is_some());
    let q = Template::parse("test://items/{id}{?page,size}");
    assert!(q.matches("test://items/7").is_some());
    assert!(q.matches("test://items/7?page=1&size=2").is_some());
    assert!(q.matches("test://other/7").is_none());
    assert!(
        Template::parse("{x}").matches("anything").is_none(),
        "no literal: no claim"
    );
}

#[test]
fn cursors_round_trip_and_foreign_ones_are_refused() {
    let c = Cursor {
        member: 1,
        inner: Some("page:2/x".into()),
    };
    assert_eq!(Cursor::decode(&c.encode(), 2), Some(c.clone()));
    assert_eq!(Cursor::decode(&c.encode(), 1), None, "member out of range");
    let first = Cursor {
        member: 0,
        inner: None,
    };
    assert_eq!(Cursor::decode(&first.encode(), 2), Some(first));
    assert_eq!(Cursor::decode("not base64 !", 2), None);
    assert_eq!(Cursor::decode("bm9jb2xvbg", 2), None, "no separator");
}

#[test]
fn frames_of_whole_events_get_their_ids_prefixed_as_they_are() {
    use super::stream::ids_only;
    let frame = b"id: 0\ndata: \n\nevent: message\nid: 0/1\ndata: {\"result\":{}}\n\n";
    let out = ids_only(frame, Some(2)).unwrap();
    assert_eq!(
        &out[..],
        b"id: 2.0\ndata: \n\nevent: message\nid: 2.0/1\ndata: {\"result\":{}}\n\n"
    );
    let crlf = b"id:7\r\ndata: x\r\n\r\n";
    assert_eq!(
        &ids_only(crlf, Some(0)).unwrap()[..],
        b"id:0.7\r\ndata: x\r\n\r\n"
    );
    assert_eq!(
        &ids_only(frame, None).unwrap()[..],
        &frame[..],
        "no prefix: unchanged"
    );
    // A message naming a method is read event by event; so is a frame
    // that ends inside an event.
    assert!(ids_only(b"data: {\"method\":\"x\"}\n\n", Some(1)).is_none());
    assert!(ids_only(b"id: 1\ndata: {\"res", Some(1)).is_none());
}
