//! Property tests of the decision: default deny, deny wins, allows are monotone.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::collections::BTreeMap;

use mcpgate_policy::{Decision, Policy};
use mcpgate_types::Name;
use mcpgate_types::resource::{
    Allow, Deny, LabelSelector, McpCondition, Metadata, OneOrMany, Role, RoleSpec,
};
use proptest::prelude::*;

fn role(name: &str, allow: Vec<String>, deny: Vec<String>) -> Role {
    let mut app_labels = LabelSelector::new();
    app_labels.insert("env".into(), OneOrMany::One("dev".into()));
    Role {
        kind: "role".into(),
        version: "v8".into(),
        metadata: Metadata {
            name: Name::new(name).unwrap(),
            ..Default::default()
        },
        spec: RoleSpec {
            allow: Allow {
                app_labels,
                mcp: Some(McpCondition {
                    tools: allow,
                    ..Default::default()
                }),
                ..Default::default()
            },
            deny: Deny {
                mcp: Some(McpCondition {
                    tools: deny,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c_]{1,4}",
        "[a-c_]{0,2}\\*[a-c_]{0,2}",
        Just("*".to_string()),
        "[a-c]{1,2}".prop_map(|s| format!("^{s}.*$")),
    ]
}

fn labels() -> BTreeMap<String, String> {
    [("env".to_string(), "dev".to_string())].into()
}

proptest! {
    #[test]
    fn deny_always_wins(allow in prop::collection::vec(pattern(), 0..4),
                        deny in prop::collection::vec(pattern(), 1..3),
                        others in prop::collection::vec(pattern(), 0..4),
                        tool in "[a-c_]{0,5}") {
        let roles = vec![role("r1", allow, deny.clone()), role("r2", others, vec![])];
        let p = Policy::compile(&roles, &BTreeMap::new()).unwrap();
        let denied = deny.iter().any(|d| mcpgate_policy::Matcher::new(d).unwrap().matches(&tool));
        if denied {
            prop_assert!(!p.tool(&labels(), &tool).is_allow());
        }
    }

    #[test]
    fn allowed_iff_some_allow_and_no_deny(allow in prop::collection::vec(pattern(), 0..4),
                                          deny in prop::collection::vec(pattern(), 0..3),
                                          tool in "[a-c_]{0,5}") {
        let p = Policy::compile(&[role("r", allow.clone(), deny.clone())], &BTreeMap::new()).unwrap();
        let hit = |ps: &[String]| ps.iter().any(|x| mcpgate_policy::Matcher::new(x).unwrap().matches(&tool));
        prop_assert_eq!(p.tool(&labels(), &tool).is_allow(), hit(&allow) && !hit(&deny));
    }

    #[test]
    fn adding_an_allow_never_removes_access(allow in prop::collection::vec(pattern(), 0..4),
                                            extra in pattern(), tool in "[a-c_]{0,5}") {
        let before = Policy::compile(&[role("r", allow.clone(), vec![])], &BTreeMap::new()).unwrap();
        let mut more = allow.clone();
        more.push(extra);
        let after = Policy::compile(&[role("r", more, vec![])], &BTreeMap::new()).unwrap();
        if before.tool(&labels(), &tool).is_allow() {
            prop_assert!(after.tool(&labels(), &tool).is_allow());
        }
    }

    #[test]
    fn other_apps_are_never_reached(allow in prop::collection::vec(pattern(), 0..4),
                                    env in "[a-z]{1,6}", tool in "[a-c_]{0,5}") {
        prop_assume!(env != "dev");
        let p = Policy::compile(&[role("r", allow, vec![])], &BTreeMap::new()).unwrap();
        let other: BTreeMap<String, String> = [("env".to_string(), env)].into();
        prop_assert!(matches!(p.tool(&other, &tool), Decision::Deny(_)));
    }
}

/// A role allowing `read` only under `/srv/docs/` and denying anything under `/srv/docs/x`.
fn docs_role() -> Role {
    let mut r = role("docs", vec!["read".into()], vec![]);
    let args = |pattern: &str| {
        [(
            "read".to_string(),
            [("path".to_string(), OneOrMany::One(pattern.into()))].into(),
        )]
        .into()
    };
    if let Some(m) = r.spec.allow.mcp.as_mut() {
        m.arguments = args("/srv/docs/**");
    }
    if let Some(m) = r.spec.deny.mcp.as_mut() {
        m.arguments = args("/srv/docs/x/**");
    }
    r
}

/// The reference: where a path of these segments ends up on a POSIX file system, or `None`
/// when it cannot be told (relative, NUL, percent-encoded traversal).
fn resolve(path: &str) -> Option<Vec<String>> {
    if !path.starts_with('/') {
        return None;
    }
    let mut at: Vec<String> = Vec::new();
    for s in path.split('/') {
        if s.contains('\0') || s.to_ascii_lowercase().contains("%2e") {
            return None;
        }
        match s {
            "" | "." => {}
            ".." => {
                at.pop();
            }
            other => at.push(other.to_string()),
        }
    }
    Some(at)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// The argument engine against the reference: allowed exactly when the resolved path is
    /// strictly below /srv/docs and not strictly below /srv/docs/x.
    #[test]
    fn path_rules_match_where_the_path_really_leads(
        segments in prop::collection::vec(
            prop::sample::select(vec!["srv", "docs", "x", "etc", "..", ".", "", "%2e%2e", "a\0"]),
            0..8,
        ),
        absolute in prop::bool::weighted(0.9),
    ) {
        let policy = Policy::compile(&[docs_role()], &BTreeMap::new()).unwrap();
        let path = format!("{}{}", if absolute { "/" } else { "" }, segments.join("/"));
        let args = mcpgate_policy::Arguments::parse(Some(&serde_json::json!({"path": path}).to_string())).unwrap();
        let d = policy.decide_call(&labels(), mcpgate_policy::Subject::Tool, "read", Some(&args));
        let expected = resolve(&path).is_some_and(|at| {
            at.len() > 2 && at[0] == "srv" && at[1] == "docs" && !(at.len() > 3 && at[2] == "x")
        });
        prop_assert_eq!(d.decision.is_allow(), expected, "{:?} -> {:?}", path, d.decision);
    }
}
