//! The detectors on synthetic traffic from a seeded generator with a virtual clock: weeks of
//! ordinary work by dozens of identities, then one injected scenario per detector. Each
//! scenario must yield exactly its finding, ordinary traffic almost none, a replay the same,
//! and a saved and resumed engine the same as one that never stopped.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use mcpgate_findings::{Engine, Finding, Kind, Severity, State};
use mcpgate_types::{AuditEvent, IdentityKind};
use serde_json::{Map, Value, json};
use std::time::{Duration, SystemTime};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// Monday, 2026-01-05 00:00 UTC.
const START: u64 = 1_767_571_200;

/// xorshift64*: a small seeded generator, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Who {
    name: String,
    kind: IdentityKind,
    role: &'static str,
    net: String,
}

const DEV_TOOLS: [&str; 5] = ["read_file", "list_dir", "search", "create_issue", "fetch"];
const OPS_TOOLS: [&str; 3] = ["get_status", "restart_service", "read_logs"];
const HOSTS: [&str; 2] = ["api.github.com", "docs.rs"];

fn people() -> Vec<Who> {
    let mut out = Vec::new();
    for i in 0..30 {
        out.push(Who {
            name: format!("u{i}"),
            kind: IdentityKind::User,
            role: if i < 22 { "dev" } else { "ops" },
            net: format!("10.{}.{}.7:40000", i / 10, i),
        });
    }
    for i in 0..10 {
        out.push(Who {
            name: format!("ci{i}"),
            kind: IdentityKind::Bot,
            role: "dev",
            net: format!("10.9.{i}.20:40000"),
        });
    }
    out
}

fn event(
    seq: &mut u64,
    who: &Who,
    at: u64,
    tool: &str,
    args: Value,
    deny: bool,
    session: &str,
) -> AuditEvent {
    *seq += 1;
    let mut f = Map::new();
    f.insert(
        "app".into(),
        json!(if who.role == "ops" && OPS_TOOLS.contains(&tool) {
            "ops"
        } else {
            "work"
        }),
    );
    f.insert("tool".into(), json!(tool));
    f.insert("method".into(), json!("tools/call"));
    f.insert("params".into(), json!({"name": tool, "arguments": args}));
    f.insert(
        "decision".into(),
        json!(if deny { "deny" } else { "allow" }),
    );
    f.insert("client_addr".into(), json!(who.net));
    f.insert("session_id".into(), json!(session));
    AuditEvent {
        id: format!("ev{seq:08}"),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
        kind: "mcp.session.request".into(),
        code: "MG5002I".into(),
        cluster: "sim".into(),
        user: who.name.clone(),
        user_kind: Some(who.kind),
        roles: vec![who.role.into()],
        success: !deny,
        fields: f,
    }
}

fn args_for(who: &Who, tool: &str, r: &mut Rng) -> Value {
    match tool {
        "read_file" | "list_dir" => {
            let dir = ["src", "docs"][r.below(2) as usize];
            json!({"path": format!("/home/{}/{dir}/notes{}.md", who.name, r.below(50))})
        }
        "create_issue" => {
            let repo = ["web", "api"][r.below(2) as usize];
            json!({"repo": format!("acme/{repo}"), "title": "x"})
        }
        "fetch" => {
            let host = HOSTS[r.below(2) as usize];
            json!({"url": format!("https://{host}/page/{}", r.below(99))})
        }
        "read_logs" => json!({"path": "/var/log/app.log"}),
        _ => json!({}),
    }
}

/// `days` of ordinary work from day `from`: people on weekdays 09–17 UTC, bots at any hour;
/// every tool of the role and every value used on the first day; a stray denial now and then.
fn ordinary(people: &[Who], from: u64, days: u64, seed: u64, seq: &mut u64) -> Vec<AuditEvent> {
    let mut r = Rng(seed);
    let mut out = Vec::new();
    for day in from..from + days {
        let weekday = day % 7 < 5;
        for who in people {
            let person = who.kind == IdentityKind::User;
            if person && !weekday {
                continue;
            }
            // Half the developers also deploy.
            let deployer = who.kind == IdentityKind::User
                && who.role == "dev"
                && who.name[1..].parse::<u32>().is_ok_and(|i| i <= 10);
            let tools: Vec<&str> = match (who.role, deployer) {
                ("ops", _) => OPS_TOOLS.to_vec(),
                (_, true) => DEV_TOOLS.iter().copied().chain(["deploy"]).collect(),
                _ => DEV_TOOLS.to_vec(),
            };
            let session = format!("s-{}-{day}", who.name);
            let calls = 12 + r.below(10);
            for c in 0..calls {
                let hour = if person { 9 + r.below(8) } else { r.below(24) };
                let at = START + day * DAY + hour * HOUR + r.below(HOUR);
                // The first day walks every tool and value, so nothing is new later.
                let tool = if day == 0 {
                    tools[c as usize % tools.len()]
                } else {
                    tools[r.below(tools.len() as u64) as usize]
                };
                let mut args = args_for(who, tool, &mut r);
                if day == 0 && tool == "fetch" {
                    args = json!({"url": format!("https://{}/", HOSTS[(c as usize / tools.len()) % 2])});
                }
                if day == 0 && (tool == "read_file" || tool == "list_dir") {
                    let dir = ["src", "docs"][(c as usize / tools.len()) % 2];
                    args = json!({"path": format!("/home/{}/{dir}/a.md", who.name)});
                }
                if day == 0 && tool == "create_issue" {
                    let repo = ["acme/web", "acme/api"][(c as usize / tools.len()) % 2];
                    args = json!({ "repo": repo });
                }
                let deny = r.below(400) == 0;
                out.push(event(seq, who, at, tool, args, deny, &session));
            }
        }
    }
    out.sort_by_key(|e| e.time);
    out
}

fn run(engine: &mut Engine, events: &[AuditEvent]) -> Vec<Finding> {
    events.iter().flat_map(|e| engine.observe(e)).collect()
}

/// An engine that has read four weeks of ordinary work, and the sequence counter.
fn trained(people: &[Who]) -> (Engine, u64) {
    let mut seq = 0;
    let mut engine = Engine::default();
    let base = ordinary(people, 0, 28, 7, &mut seq);
    let noise = run(&mut engine, &base);
    assert!(
        noise.iter().all(|f| f.severity == Severity::Low),
        "ordinary work raised {:?}",
        noise
            .iter()
            .filter(|f| f.severity != Severity::Low)
            .collect::<Vec<_>>()
    );
    (engine, seq)
}

fn at(day: u64, hour: u64, minute: u64) -> u64 {
    START + day * DAY + hour * HOUR + minute * 60
}

#[test]
fn each_injected_scenario_yields_exactly_its_finding() {
    let people = people();
    let (base, seq0) = trained(&people);
    let by = |n: &str| people.iter().find(|w| w.name == n).unwrap();
    // Day 29 is a Friday: work hours.
    let d = 30;
    type Scenario = (
        Kind,
        &'static str,
        Vec<(u64, &'static str, Value, bool, &'static str)>,
    );
    let scenarios: Vec<Scenario> = vec![
        // A developer deploys for the first time: many developers do.
        (
            Kind::FirstToolUse,
            "u15",
            vec![(at(d, 10, 0), "deploy", json!({}), false, "x0")],
        ),
        // A developer restarts a service: no developer ever does.
        (
            Kind::RareToolForRole,
            "u1",
            vec![(at(d, 10, 0), "restart_service", json!({}), false, "x1")],
        ),
        // Sixty searches in half an hour, against two or three an hour.
        (
            Kind::VolumeSpike,
            "u7",
            (0..60)
                .map(|i| (at(d, 10, 0) + i * 30, "search", json!({}), false, "x7"))
                .collect(),
        ),
        // Twelve denials over four tools in three minutes.
        (
            Kind::DenialBurst,
            "u2",
            (0..12)
                .map(|i| {
                    (
                        at(d, 11, 0) + i * 15,
                        ["delete_repo", "drop_table", "read_secrets", "admin_panel"]
                            [i as usize % 4],
                        json!({}),
                        true,
                        "x2",
                    )
                })
                .collect(),
        ),
        // A written-off laptop, it seems.
        (
            Kind::NewNetwork,
            "u3",
            vec![(at(d, 12, 0), "search", json!({}), false, "x3")],
        ),
        // A folder never read before.
        (
            Kind::NewArgumentValue,
            "u4",
            vec![(
                at(d, 13, 0),
                "read_file",
                json!({"path": "/srv/payroll/2026.csv"}),
                false,
                "x4",
            )],
        ),
        // An issue filed at three in the morning.
        (
            Kind::OffHoursWrite,
            "u5",
            vec![(
                at(d, 3, 0),
                "create_issue",
                json!({"repo": "acme/web"}),
                false,
                "x5",
            )],
        ),
        // A secret read, then a fetch to a known host, in one session.
        (
            Kind::ReadThenSend,
            "u6",
            vec![
                (
                    at(d, 14, 0),
                    "read_file",
                    json!({"path": "/home/u6/src/.env"}),
                    false,
                    "x6",
                ),
                (
                    at(d, 14, 2),
                    "fetch",
                    json!({"url": "https://docs.rs/upload"}),
                    false,
                    "x6",
                ),
            ],
        ),
    ];
    for (kind, name, calls) in scenarios {
        let mut engine = base.clone();
        let mut seq = seq0;
        let mut who = Who {
            name: name.into(),
            kind: IdentityKind::User,
            role: by(name).role,
            net: by(name).net.clone(),
        };
        if kind == Kind::NewNetwork {
            who.net = "203.0.113.9:51000".into();
        }
        let events: Vec<AuditEvent> = calls
            .into_iter()
            .map(|(t, tool, args, deny, session)| {
                event(&mut seq, &who, t, tool, args, deny, session)
            })
            .collect();
        let found = run(&mut engine, &events);
        assert_eq!(found.len(), 1, "{kind:?}: {found:#?}");
        assert_eq!(found[0].kind, kind, "{found:#?}");
        assert_eq!(found[0].identity, format!("user/{name}"));
        assert!(!found[0].evidence.is_empty() && !found[0].explanation.is_empty());
        if kind == Kind::DenialBurst {
            // It fires on the tenth denial, as it happens, not after the burst is over.
            assert_eq!(found[0].evidence.len(), 10, "{found:#?}");
            assert_eq!(found[0].time, (at(d, 11, 0) + 9 * 15) as i64 * 1_000_000);
        }
    }
}

#[test]
fn ordinary_traffic_raises_almost_nothing() {
    let people = people();
    let (mut engine, mut seq) = trained(&people);
    // Two more weeks, another seed: a control run.
    let control = ordinary(&people, 28, 14, 99, &mut seq);
    let found = run(&mut engine, &control);
    let identity_days = people.len() as f64 * 14.0;
    let per_thousand = found.len() as f64 * 1000.0 / identity_days;
    assert!(
        found.iter().all(|f| f.severity == Severity::Low),
        "{found:#?}"
    );
    assert!(
        per_thousand <= 2.0,
        "{per_thousand} per 1000 identity-days: {found:#?}"
    );
}

#[test]
fn a_replay_and_a_resumed_engine_find_the_same() {
    let people = people();
    let mut seq = 0;
    let mut events = ordinary(&people, 0, 21, 5, &mut seq);
    // Novelty after the warm-up, so there is something to find.
    let stranger = Who {
        name: "u9".into(),
        kind: IdentityKind::User,
        role: "dev",
        net: "198.51.100.4:1".into(),
    };
    events.push(event(
        &mut seq,
        &stranger,
        at(20, 10, 0),
        "restart_service",
        json!({}),
        false,
        "z",
    ));
    let once = run(&mut Engine::default(), &events);
    let twice = run(&mut Engine::default(), &events);
    assert!(!once.is_empty());
    assert_eq!(once, twice, "a replay is deterministic");
    // Stop half-way, save the state as JSON, resume.
    let (first, second) = events.split_at(events.len() / 2);
    let mut engine = Engine::default();
    let mut resumed = run(&mut engine, first);
    let saved = serde_json::to_string(&engine.state).unwrap();
    let state: State = serde_json::from_str(&saved).unwrap();
    let mut engine = Engine::resume(Default::default(), state);
    resumed.extend(run(&mut engine, second));
    assert_eq!(once, resumed, "a restart changes nothing");
}
