//! What the client calls things, and which backend they belong to: the
//! prefix rules, the catalog of every backend's names, the reversible form
//! of a conflicting URI, URI templates, and the merged lists' cursors.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;

use super::PrefixMode;
use crate::body::lock;

/// What a name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A tool (`tools/list`, `tools/call`).
    Tool,
    /// A prompt (`prompts/list`, `prompts/get`, completions of a prompt).
    Prompt,
    /// A resource URI (`resources/list`, `resources/read`, subscriptions).
    Resource,
    /// A resource template (`resources/templates/list`, completions of a
    /// template).
    Template,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Tool, Kind::Prompt, Kind::Resource, Kind::Template];

    fn index(self) -> usize {
        self as usize
    }

    /// The list method of this kind.
    pub(crate) fn list_method(self) -> &'static str {
        match self {
            Kind::Tool => "tools/list",
            Kind::Prompt => "prompts/list",
            Kind::Resource => "resources/list",
            Kind::Template => "resources/templates/list",
        }
    }

    /// The array of a list result, and the field that names an item.
    pub(crate) fn members(self) -> (&'static str, &'static str) {
        match self {
            Kind::Tool => ("tools", "name"),
            Kind::Prompt => ("prompts", "name"),
            Kind::Resource => ("resources", "uri"),
            Kind::Template => ("resourceTemplates", "uriTemplate"),
        }
    }

    /// The capability a server advertises for this kind.
    pub(crate) fn capability(self) -> &'static str {
        match self {
            Kind::Tool => "tools",
            Kind::Prompt => "prompts",
            Kind::Resource | Kind::Template => "resources",
        }
    }

    /// The kind whose list a `notifications/…/list_changed` announces.
    pub(crate) fn of_list_changed(method: &str) -> &'static [Kind] {
        match method {
            "notifications/tools/list_changed" => &[Kind::Tool],
            "notifications/prompts/list_changed" => &[Kind::Prompt],
            "notifications/resources/list_changed" => &[Kind::Resource, Kind::Template],
            _ => &[],
        }
    }

    fn is_uri(self) -> bool {
        matches!(self, Kind::Resource | Kind::Template)
    }
}

/// The scheme of a rewritten URI: `mcpgw://{backend}/{the backend's URI}`.
pub const URI_PREFIX: &str = "mcpgw://";

/// Why a name could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No backend has it.
    Unknown,
    /// Several backends have it under this name (the members' indexes).
    Ambiguous(Vec<usize>),
}

#[derive(Default, Clone)]
struct Data {
    /// Per kind: name → the members that have it.
    owners: [HashMap<Arc<str>, Vec<usize>>; 4],
    /// Per member and kind: its names.
    names: Vec<[HashSet<Arc<str>>; 4]>,
    /// Per member: its templates, parsed.
    templates: Vec<Vec<(Arc<str>, Template)>>,
}

impl Data {
    fn reindex(&mut self, kind: Kind) {
        let k = kind.index();
        let mut owners: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (m, names) in self.names.iter().enumerate() {
            for n in &names[k] {
                owners.entry(n.clone()).or_default().push(m);
            }
        }
        self.owners[k] = owners;
        if kind == Kind::Template {
            self.templates = self
                .names
                .iter()
                .map(|n| {
                    n[k].iter()
                        .map(|t| (t.clone(), Template::parse(t)))
                        .collect()
                })
                .collect();
        }
    }
}

/// Every backend's names, as last listed: what routes an unprefixed name
/// and decides which names conflict. Read without a lock.
pub(crate) struct Catalog {
    data: ArcSwap<Data>,
    edit: Mutex<()>,
}

impl Catalog {
    pub(crate) fn new(members: usize) -> Self {
        let d = Data {
            names: vec![Default::default(); members],
            templates: vec![Vec::new(); members],
            ..Default::default()
        };
        Catalog {
            data: ArcSwap::from_pointee(d),
            edit: Mutex::new(()),
        }
    }

    /// The members that have `name` of `kind`.
    pub(crate) fn owners(&self, kind: Kind, name: &str) -> Vec<usize> {
        self.data.load().owners[kind.index()]
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn owner_count(&self, kind: Kind, name: &str) -> usize {
        self.data.load().owners[kind.index()]
            .get(name)
            .map_or(0, Vec::len)
    }

    fn has(&self, kind: Kind, member: usize, name: &str) -> bool {
        self.data.load().names[member][kind.index()].contains(name)
    }

    /// Replaces `member`'s names of `kind` (after a full listing).
    pub(crate) fn replace(&self, member: usize, kind: Kind, names: HashSet<Arc<str>>) {
        let _g = lock(&self.edit);
        let mut d = Data::clone(&self.data.load());
        d.names[member][kind.index()] = names;
        d.reindex(kind);
        self.data.store(Arc::new(d));
    }

    /// Adds names seen on a page of `member`'s list (no change: no copy).
    pub(crate) fn add<'a>(&self, member: usize, kind: Kind, names: impl Iterator<Item = &'a str>) {
        let fresh: Vec<&str> = {
            let d = self.data.load();
            let have = &d.names[member][kind.index()];
            names.filter(|n| !have.contains(*n)).collect()
        };
        if fresh.is_empty() {
            return;
        }
        let _g = lock(&self.edit);
        let mut d = Data::clone(&self.data.load());
        for n in fresh {
            d.names[member][kind.index()].insert(Arc::from(n));
        }
        d.reindex(kind);
        self.data.store(Arc::new(d));
    }

    /// Names of `kind` that several members have: (name, members).
    pub(crate) fn conflicts(&self, kind: Kind) -> Vec<(Arc<str>, Vec<usize>)> {
        let mut out: Vec<_> = self.data.load().owners[kind.index()]
            .iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        out.sort();
        out
    }

    /// The members whose templates match `uri`, best first (longest
    /// literal text matched).
    fn template_owners(&self, uri: &str) -> Vec<usize> {
        let d = self.data.load();
        let mut best: Vec<(usize, usize)> = Vec::new();
        for (m, ts) in d.templates.iter().enumerate() {
            if let Some(score) = ts.iter().filter_map(|(_, t)| t.matches(uri)).max() {
                best.push((score, m));
            }
        }
        best.sort_by_key(|b| std::cmp::Reverse(b.0));
        match best.as_slice() {
            [] => Vec::new(),
            [(top, _), ..] => best
                .iter()
                .filter(|(s, _)| s == top)
                .map(|(_, m)| *m)
                .collect(),
        }
    }
}

/// The prefix rules over the members' names.
pub(crate) struct Naming {
    pub(crate) members: Vec<Arc<str>>,
    pub(crate) prefix: PrefixMode,
    pub(crate) separator: Box<str>,
    finder: memchr::memmem::Finder<'static>,
    pub(crate) catalog: Catalog,
}

impl Naming {
    pub(crate) fn new(members: Vec<Arc<str>>, prefix: PrefixMode, separator: &str) -> Self {
        let n = members.len();
        Naming {
            members,
            prefix,
            separator: separator.into(),
            finder: memchr::memmem::Finder::new(separator.as_bytes()).into_owned(),
            catalog: Catalog::new(n),
        }
    }

    /// The member named `name`.
    pub(crate) fn member(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| &**m == name)
    }

    /// The name the client sees for `member`'s `own` name.
    pub(crate) fn client_name<'a>(&self, kind: Kind, member: usize, own: &'a str) -> Cow<'a, str> {
        if kind.is_uri() {
            if self.prefix != PrefixMode::Never && self.catalog.owner_count(kind, own) > 1 {
                return Cow::Owned(format!("{URI_PREFIX}{}/{own}", self.members[member]));
            }
            return Cow::Borrowed(own);
        }
        let prefixed = match self.prefix {
            PrefixMode::Always => true,
            PrefixMode::Never => false,
            PrefixMode::Conflicts => self.catalog.owner_count(kind, own) > 1,
        };
        if prefixed {
            Cow::Owned(format!("{}{}{own}", self.members[member], self.separator))
        } else {
            Cow::Borrowed(own)
        }
    }

    /// `db__query` → (db, `query`), if `db` is a member.
    fn split<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        let at = self.finder.find(name.as_bytes())?;
        let (head, rest) = (&name[..at], &name[at + self.separator.len()..]);
        Some((self.member(head)?, rest))
    }

    /// The member and its own name for the client's `name` of `kind`.
    pub(crate) fn resolve<'a>(
        &self,
        kind: Kind,
        name: &'a str,
    ) -> Result<(usize, &'a str), Unresolved> {
        if kind.is_uri() {
            return self.resolve_uri(kind, name);
        }
        match self.prefix {
            PrefixMode::Always => self.split(name).ok_or(Unresolved::Unknown),
            PrefixMode::Never => match self.catalog.owners(kind, name).as_slice() {
                [m] => Ok((*m, name)),
                [] => Err(Unresolved::Unknown),
                many => Err(Unresolved::Ambiguous(many.to_vec())),
            },
            PrefixMode::Conflicts => {
                let owners = self.catalog.owners(kind, name);
                if let [m] = owners.as_slice() {
                    return Ok((*m, name));
                }
                if let Some((m, own)) = self.split(name) {
                    if self.catalog.has(kind, m, own) || self.catalog.owner_count(kind, own) == 0 {
                        return Ok((m, own));
                    }
                }
                if owners.len() > 1 {
                    Err(Unresolved::Ambiguous(owners))
                } else {
                    Err(Unresolved::Unknown)
                }
            }
        }
    }

    fn resolve_uri<'a>(&self, kind: Kind, uri: &'a str) -> Result<(usize, &'a str), Unresolved> {
        if let Some(rest) = uri.strip_prefix(URI_PREFIX) {
            if let Some((head, own)) = rest.split_once('/') {
                if let Some(m) = self.member(head) {
                    return Ok((m, own));
                }
            }
        }
        match self.catalog.owners(kind, uri).as_slice() {
            [m] => return Ok((*m, uri)),
            [] => {}
            many => return Err(Unresolved::Ambiguous(many.to_vec())),
        }
        if kind == Kind::Resource {
            match self.catalog.template_owners(uri).as_slice() {
                [m] => return Ok((*m, uri)),
                [] => {}
                many => return Err(Unresolved::Ambiguous(many.to_vec())),
            }
        }
        Err(Unresolved::Unknown)
    }

    /// Is the catalog needed to route names (not in `always` mode, or
    /// for URIs)?
    pub(crate) fn needs_catalog(&self, kind: Kind) -> bool {
        kind.is_uri() || self.prefix != PrefixMode::Always
    }
}

/// A URI template (RFC 6570), for routing: literal text must match, an
/// expression matches any text (`{x}`: no `/`, `?` or `#`; `{+x}`, `{#x}`:
/// anything; `{?x}`, `{&x}`: the rest of a query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Simple,
    Reserved,
    Query,
}

impl Template {
    pub(crate) fn parse(t: &str) -> Template {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                parts.push(Part::Literal(rest[open..].to_owned()));
                rest = "";
                break;
            };
            let expr = &rest[open + 1..open + close];
            parts.push(match expr.chars().next() {
                Some('+' | '#') => Part::Reserved,
                Some('?' | '&') => Part::Query,
                _ => Part::Simple,
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Template(parts)
    }

    /// The number of literal bytes matched, if `uri` matches.
    pub(crate) fn matches(&self, uri: &str) -> Option<usize> {
        fn go(parts: &[Part], s: &str) -> bool {
            match parts.split_first() {
                None => s.is_empty(),
                Some((Part::Literal(l), rest)) => {
                    s.strip_prefix(l.as_str()).is_some_and(|s| go(rest, s))
                }
                Some((Part::Query, rest)) => {
                    // Optional: either absent, or up to the end / a `#`.
                    let end = s.find('#').unwrap_or(s.len());
                    go(rest, &s[end..]) || go(rest, s)
                }
                Some((p, rest)) => {
                    let stop = |c: char| *p == Part::Simple && matches!(c, '/' | '?' | '#');
                    let limit = s.find(stop).unwrap_or(s.len());
                    (1..=limit)
                        .rev()
                        .any(|i| s.is_char_boundary(i) && go(rest, &s[i..]))
                }
            }
        }
        let literal: usize = self
            .0
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.len(),
                _ => 0,
            })
            .sum();
        (literal > 0 && go(&self.0, uri)).then_some(literal)
    }
}

/// A merged list's cursor: which member's page comes next, and that
/// member's own cursor (none: its first page). Opaque to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) member: usize,
    pub(crate) inner: Option<String>,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        let raw = format!("{}:{}", self.member, self.inner.as_deref().unwrap_or(""));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything the gateway did not issue (or a member index
    /// out of range).
    pub(crate) fn decode(s: &str, members: usize) -> Option<Cursor> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (m, inner) = raw.split_once(':')?;
        let member: usize = m.parse().ok()?;
        (member < members).then(|| Cursor {
            member,
            inner: (!inner.is_empty()).then(|| inner.to_owned()),
        })
    }
}
