//! The built-in rule policy: allow / deny rules with glob patterns.
//!
//! A rule applies when every selector it has matches: `subjects`, `roles`,
//! `scopes`, `tenants` (the principal has any one of the listed values;
//! patterns allowed) and `backends`; and the target is named by the list
//! for its kind: `tools`, `prompts` or `resources` (URIs and URI
//! templates). A rule without a list for a kind says nothing about that
//! kind. **Deny wins**: any applicable deny rule refuses; otherwise any
//! applicable allow rule allows; otherwise `default` decides (deny unless
//! configured). Patterns: `*` any run of characters, `?` one character.
//!
//! ```
//! use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
//! let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
//!     "default": "deny",
//!     "rules": [
//!         {"effect": "allow", "roles": ["analyst"], "tools": ["get_*", "search"]},
//!         {"effect": "deny", "tools": ["*delete*"]}
//!     ]
//! })).unwrap();
//! let policy = RulePolicy::new(&cfg);
//! // Later, from a file watcher or an admin endpoint, without a restart:
//! policy.replace(&cfg);
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;
use mcp_gateway_core::Principal;
use serde::{Deserialize, Serialize};

use crate::acl::{Access, Decision, Target, ToolPolicy};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let it through.
    Allow,
    /// Refuse it.
    #[default]
    Deny,
}

/// One rule, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Allow or deny.
    pub effect: Effect,
    /// Subject patterns.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Role patterns.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scope patterns.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenant patterns.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Backend name patterns.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Tool name patterns.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompt name patterns.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Resource URI (and URI template) patterns.
    #[serde(default)]
    pub resources: Vec<String>,
}

/// A whole policy, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens when no rule applies. Default: deny.
    #[serde(default)]
    pub default: Effect,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// A rule policy whose rules can be replaced while it serves.
#[derive(Debug)]
pub struct RulePolicy {
    current: ArcSwap<Compiled>,
}

/// The rules in force, with their patterns compiled once (a policy is
/// checked on every call, and changed rarely).
#[derive(Debug)]
struct Compiled {
    cfg: Arc<PolicyConfig>,
    rules: Vec<Rule>,
}

impl Compiled {
    fn new(cfg: &PolicyConfig) -> Self {
        Compiled {
            rules: cfg.rules.iter().map(Rule::new).collect(),
            cfg: Arc::new(cfg.clone()),
        }
    }
}

/// A [`RuleConfig`] with compiled patterns.
#[derive(Debug)]
struct Rule {
    effect: Effect,
    subjects: Vec<Glob>,
    roles: Vec<Glob>,
    scopes: Vec<Glob>,
    tenants: Vec<Glob>,
    backends: Vec<Glob>,
    tools: Vec<Glob>,
    prompts: Vec<Glob>,
    resources: Vec<Glob>,
}

impl Rule {
    fn new(r: &RuleConfig) -> Self {
        let c = |v: &[String]| v.iter().map(|p| Glob::new(p)).collect();
        Rule {
            effect: r.effect,
            subjects: c(&r.subjects),
            roles: c(&r.roles),
            scopes: c(&r.scopes),
            tenants: c(&r.tenants),
            backends: c(&r.backends),
            tools: c(&r.tools),
            prompts: c(&r.prompts),
            resources: c(&r.resources),
        }
    }
}

impl RulePolicy {
    /// A policy with `cfg`.
    pub fn new(cfg: &PolicyConfig) -> Self {
        RulePolicy {
            current: ArcSwap::from_pointee(Compiled::new(cfg)),
        }
    }

    /// Swaps in new rules; requests already deciding finish with the old.
    pub fn replace(&self, cfg: &PolicyConfig) {
        self.current.store(Arc::new(Compiled::new(cfg)));
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<PolicyConfig> {
        self.current.load().cfg.clone()
    }
}

fn any_match(patterns: &[Glob], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

fn principal_matches(patterns: &[Glob], values: &[String]) -> bool {
    patterns.is_empty() || values.iter().any(|v| any_match(patterns, v))
}

fn applies(rule: &Rule, a: &Access<'_>) -> bool {
    let names = match a.target {
        Target::Tool(_) => &rule.tools,
        Target::Prompt(_) => &rule.prompts,
        Target::Resource(_) | Target::ResourceTemplate(_) => &rule.resources,
    };
    if names.is_empty() || !any_match(names, a.target.name()) {
        return false;
    }
    if !rule.backends.is_empty() && !any_match(&rule.backends, a.backend) {
        return false;
    }
    let has_principal_selectors = !(rule.subjects.is_empty()
        && rule.roles.is_empty()
        && rule.scopes.is_empty()
        && rule.tenants.is_empty());
    match a.principal {
        None => !has_principal_selectors,
        Some(p) => principal_applies(rule, p),
    }
}

fn principal_applies(rule: &Rule, p: &Principal) -> bool {
    (rule.subjects.is_empty() || any_match(&rule.subjects, p.subject()))
        && principal_matches(&rule.roles, p.roles())
        && principal_matches(&rule.scopes, p.scopes())
        && (rule.tenants.is_empty() || p.tenant().is_some_and(|t| any_match(&rule.tenants, t)))
}

impl ToolPolicy for RulePolicy {
    fn check(&self, a: &Access<'_>) -> Decision {
        let cur = self.current.load();
        let mut allowed = false;
        for (i, rule) in cur.rules.iter().enumerate() {
            if applies(rule, a) {
                match rule.effect {
                    Effect::Deny => return Decision::Deny(Some(format!("rule {} denies", i + 1))),
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed || cur.cfg.default == Effect::Allow {
            Decision::Allow
        } else {
            Decision::Deny(Some("no rule allows it".into()))
        }
    }
}

/// A glob pattern compiled once: the common shapes (`name`, `prefix*`,
/// `*suffix`, `*part*`, `*`) are matched without the general loop.
#[derive(Debug, Clone)]
pub struct Glob {
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<memchr::memmem::Finder<'static>>),
    General(Box<str>),
}

impl Glob {
    /// Compiles `pattern` (`*` any run, `?` one character).
    pub fn new(pattern: &str) -> Self {
        let shape = if pattern.contains('?') {
            Shape::General(pattern.into())
        } else {
            let inner = pattern.trim_start_matches('*').trim_end_matches('*');
            let (lead, trail) = (pattern.starts_with('*'), pattern.ends_with('*'));
            if inner.contains('*') {
                Shape::General(pattern.into())
            } else if inner.is_empty() && lead {
                Shape::Any
            } else {
                match (lead, trail) {
                    (false, false) => Shape::Exact(inner.into()),
                    (false, true) => Shape::Prefix(inner.into()),
                    (true, false) => Shape::Suffix(inner.into()),
                    (true, true) => Shape::Contains(Box::new(
                        memchr::memmem::Finder::new(inner.as_bytes()).into_owned(),
                    )),
                }
            }
        };
        Glob { shape }
    }

    /// Whether `text` matches, as [`glob`] says.
    pub fn matches(&self, text: &str) -> bool {
        match &self.shape {
            Shape::Any => true,
            Shape::Exact(s) => **s == *text,
            Shape::Prefix(s) => text.starts_with(&**s),
            Shape::Suffix(s) => text.ends_with(&**s),
            Shape::Contains(f) => f.find(text.as_bytes()).is_some(),
            Shape::General(p) => glob(p, text),
        }
    }
}

/// `*` matches any run (including empty), `?` one character; everything
/// else literally. Iterative with one backtrack point: linear-ish, no
/// regex engine, no pathological blow-up.
pub fn glob(pattern: &str, text: &str) -> bool {
    // No allocation on the common paths (a [`Glob`] with `?` or an inner
    // `*` comes here on every check). ASCII (tool names, most URIs) matches
    // byte by byte; otherwise `?` must take a whole character, so the two
    // are compared as chars.
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    if pattern.is_ascii() && text.is_ascii() {
        return glob_in(pattern.as_bytes(), text.as_bytes(), b'*', b'?');
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_in(&p, &t, '*', '?')
}

/// Wildcard matching with backtracking to the last `*` only (linear in
/// practice, never exponential).
fn glob_in<T: PartialEq + Copy>(p: &[T], t: &[T], star_sym: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star_sym {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star_sym)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("get_*", "get_weather"));
        assert!(!glob("get_*", "set_weather"));
        assert!(glob("*delete*", "bulk_delete_all"));
        assert!(glob("file:///docs/*", "file:///docs/a/b.md"));
        assert!(glob("t?st", "test"));
        assert!(!glob("t?st", "tst"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        // No wildcard: equality.
        assert!(glob("search", "search"));
        assert!(!glob("search", "search2"));
        // `?` takes one character, not one byte, outside ASCII.
        assert!(glob("caf?", "café"));
        assert!(glob("*é*", "résumé"));
        assert!(!glob("caf?", "cafés"));
    }

    #[test]
    fn compiled_globs_match_as_glob_does() {
        let patterns = [
            "",
            "*",
            "**",
            "get_*",
            "get_**",
            "*_weather",
            "*delete*",
            "**delete**",
            "search",
            "a*b",
            "a*b*c",
            "t?st",
            "*?",
            "caf?",
            "*é*",
            "é*",
            "*é",
            "file:///docs/*",
        ];
        let texts = [
            "",
            "get_weather",
            "get_",
            "set_weather",
            "bulk_delete_all",
            "delete",
            "search",
            "search2",
            "ab",
            "aXXbYYc",
            "test",
            "café",
            "résumé",
            "é",
            "file:///docs/a/b.md",
        ];
        for p in patterns {
            let g = Glob::new(p);
            for t in texts {
                assert_eq!(g.matches(t), glob(p, t), "pattern {p:?}, text {t:?}");
            }
        }
    }

    fn access<'a>(p: Option<&'a Principal>, t: Target<'a>) -> Access<'a> {
        Access {
            principal: p,
            backend: "weather",
            method: "tools/call",
            target: t,
        }
    }

    #[test]
    fn deny_wins_default_deny_and_swaps() {
        let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
            "rules": [
                {"effect": "allow", "roles": ["analyst"], "tools": ["get_*", "search"]},
                {"effect": "allow", "tools": ["ping"]},
                {"effect": "deny", "subjects": ["mallory"], "tools": ["*"]},
                {"effect": "allow", "tenants": ["acme"], "backends": ["weather"], "resources": ["file:///acme/*"]}
            ]
        }))
        .unwrap();
        let pol = RulePolicy::new(&cfg);
        let ana = Principal::builder("ann")
            .roles(["analyst"])
            .tenant("acme")
            .build();
        let mal = Principal::builder("mallory").roles(["analyst"]).build();
        assert!(pol
            .check(&access(Some(&ana), Target::Tool("get_weather")))
            .is_allow());
        assert!(!pol
            .check(&access(Some(&ana), Target::Tool("delete_city")))
            .is_allow());
        assert!(!pol
            .check(&access(Some(&mal), Target::Tool("get_weather")))
            .is_allow());
        assert!(pol.check(&access(None, Target::Tool("ping"))).is_allow());
        assert!(!pol
            .check(&access(None, Target::Tool("get_weather")))
            .is_allow());
        assert!(pol
            .check(&access(Some(&ana), Target::Resource("file:///acme/x")))
            .is_allow());
        assert!(!pol
            .check(&access(Some(&mal), Target::Resource("file:///acme/x")))
            .is_allow());
        assert!(!pol
            .check(&access(Some(&ana), Target::Prompt("get_x")))
            .is_allow());
        pol.replace(&PolicyConfig {
            default: Effect::Allow,
            rules: vec![],
        });
        assert!(pol
            .check(&access(Some(&mal), Target::Tool("anything")))
            .is_allow());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_value::<PolicyConfig>(serde_json::json!({
            "rules": [{"effect": "allow", "tool": ["x"]}]
        }))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `tool`"), "{e}");
    }
}
