//! The compliance suite: what every [`Store`] backend must do. Each backend's tests call
//! [`run`] on a fresh, empty store. A failure panics with the property that broke.

#![allow(clippy::unwrap_used)] // a compliance suite panics on the first broken property, by design

use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_types::{AuditEvent, AuditQuery, IdentityKind};

use crate::Store;

/// Runs every check against an empty store.
pub async fn run<S: Store>(store: Arc<S>) {
    kv(&*store).await;
    single_use(store.clone()).await;
    rate(store.clone()).await;
    audit(&*store).await;
}

async fn rate<S: Store>(s: Arc<S>) {
    for n in 1..=3 {
        assert_eq!(s.hit("rate/a", 100, 3).await.unwrap(), Some(n));
    }
    assert_eq!(
        s.hit("rate/a", 100, 3).await.unwrap(),
        None,
        "the limit holds"
    );
    assert_eq!(
        s.hit("rate/b", 100, 3).await.unwrap(),
        Some(1),
        "keys are apart"
    );
    assert_eq!(
        s.hit("rate/a", 101, 3).await.unwrap(),
        Some(1),
        "a new window"
    );
    assert_eq!(s.hit("rate/a", 101, 0).await.unwrap(), None, "a zero limit");
    // Of many concurrent hits, exactly the limit are counted.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.hit("rate/race", 7, 5).await.unwrap().is_some()
        }));
    }
    let mut counted = 0;
    for t in tasks {
        counted += t.await.unwrap() as usize;
    }
    assert_eq!(counted, 5);

    // Leases: at most `limit` unexpired at once; given back, or expired, they free a place.
    assert!(s.lease("conc/a", "1", 2, 100, 160).await.unwrap());
    assert!(s.lease("conc/a", "2", 2, 100, 160).await.unwrap());
    assert!(
        !s.lease("conc/a", "3", 2, 101, 161).await.unwrap(),
        "the limit holds"
    );
    assert!(
        s.lease("conc/b", "1", 2, 101, 161).await.unwrap(),
        "keys are apart"
    );
    s.release("conc/a", "1").await.unwrap();
    assert!(
        s.lease("conc/a", "3", 2, 102, 162).await.unwrap(),
        "a released place"
    );
    assert!(
        s.lease("conc/a", "4", 2, 160, 220).await.unwrap(),
        "an expired place"
    );
    assert!(
        !s.lease("conc/a", "5", 0, 160, 220).await.unwrap(),
        "a zero limit"
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.lease("conc/race", &i.to_string(), 4, 0, 60)
                .await
                .unwrap()
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += t.await.unwrap() as usize;
    }
    assert_eq!(
        taken, 4,
        "of concurrent leases, exactly the limit are taken"
    );
    // A session's leases all go when it ends, on every key; others' stay.
    assert!(s.lease("conc/x", "s1/1", 9, 0, 60).await.unwrap());
    assert!(s.lease("conc/y", "s1/2", 9, 0, 60).await.unwrap());
    assert!(s.lease("conc/y", "s10/1", 2, 0, 60).await.unwrap());
    s.release_all("s1/").await.unwrap();
    assert!(
        s.lease("conc/x", "other", 1, 0, 60).await.unwrap(),
        "s1's place is free"
    );
    assert!(
        !s.lease("conc/y", "other", 1, 0, 60).await.unwrap(),
        "s10's is not"
    );
}

async fn kv<S: Store>(s: &S) {
    assert_eq!(
        s.get("roles/dev").await.unwrap(),
        None,
        "empty store has nothing"
    );
    s.put("roles/dev", b"one").await.unwrap();
    assert_eq!(
        s.get("roles/dev").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    s.put("roles/dev", b"two").await.unwrap();
    assert_eq!(
        s.get("roles/dev").await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "put overwrites"
    );

    assert!(
        !s.create("roles/dev", b"three").await.unwrap(),
        "create refuses an existing key"
    );
    assert!(
        s.create("roles/ops", b"x").await.unwrap(),
        "create makes a new key"
    );
    assert_eq!(
        s.get("roles/dev").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );

    assert!(
        !s.compare_and_swap("roles/dev", b"wrong", b"z")
            .await
            .unwrap(),
        "cas with a stale value fails"
    );
    assert!(
        s.compare_and_swap("roles/dev", b"two", b"z").await.unwrap(),
        "cas with the current value succeeds"
    );
    assert!(
        !s.compare_and_swap("roles/none", b"", b"z").await.unwrap(),
        "cas on a missing key fails"
    );
    assert_eq!(
        s.get("roles/dev").await.unwrap().as_deref(),
        Some(&b"z"[..])
    );

    // Prefix listing is exact: roles/ but not roles2/ or role/.
    s.put("role/x", b"-").await.unwrap();
    s.put("roles2/x", b"-").await.unwrap();
    s.put("roles/a.b", b"1").await.unwrap();
    let keys: Vec<String> = s
        .list("roles/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec!["roles/a.b", "roles/dev", "roles/ops"],
        "list is by prefix, in key order"
    );
    assert!(s.list("nothing/").await.unwrap().is_empty());

    // Binary values survive.
    let bin: Vec<u8> = (0..=255u8).collect();
    s.put("bin/all", &bin).await.unwrap();
    assert_eq!(s.get("bin/all").await.unwrap(), Some(bin));

    // Several keys at once; missing ones are skipped.
    s.put("pending/a", b"1").await.unwrap();
    s.put("pending/b", b"2").await.unwrap();
    s.put("pending/c", b"3").await.unwrap();
    s.delete_many(&["pending/a".into(), "pending/c".into(), "pending/zz".into()])
        .await
        .unwrap();
    let left: Vec<String> = s
        .list("pending/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        left,
        ["pending/b"],
        "delete_many removes exactly the named keys"
    );
    s.delete_many(&[]).await.unwrap();

    assert!(s.delete("roles/ops").await.unwrap());
    assert!(
        !s.delete("roles/ops").await.unwrap(),
        "second delete finds nothing"
    );
    assert_eq!(s.get("roles/ops").await.unwrap(), None);
}

async fn single_use<S: Store>(s: Arc<S>) {
    s.put("tokens/t1", b"secret").await.unwrap();
    assert_eq!(
        s.take("tokens/t1").await.unwrap().as_deref(),
        Some(&b"secret"[..])
    );
    assert_eq!(
        s.take("tokens/t1").await.unwrap(),
        None,
        "a token is taken once"
    );

    // Of many concurrent takes of one token, exactly one wins.
    for round in 0..5 {
        let key = format!("tokens/race{round}");
        s.put(&key, b"v").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (s, key) = (s.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                s.take(&key).await.unwrap().is_some()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as usize;
        }
        assert_eq!(wins, 1, "exactly one concurrent take wins");
    }
}

fn event(id: &str, secs: u64, kind: &str, user: &str, extra: &[(&str, &str)]) -> AuditEvent {
    let mut fields = Map::new();
    for (k, v) in extra {
        fields.insert((*k).into(), Value::from(*v));
    }
    AuditEvent {
        id: id.into(),
        time: SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_800_000_000 + secs)
            + Duration::from_micros(7),
        kind: kind.into(),
        code: "MG0000I".into(),
        cluster: "c".into(),
        user: user.into(),
        user_kind: Some(IdentityKind::User),
        roles: vec!["dev".into()],
        success: true,
        fields,
    }
}

async fn audit<S: Store>(s: &S) {
    let events = vec![
        event("e1", 1, "user.login", "alice", &[("method", "password")]),
        event(
            "e2",
            2,
            "mcp.session.request",
            "alice",
            &[
                ("app", "github"),
                ("tool", "read_file"),
                ("decision", "allow"),
            ],
        ),
        event(
            "e3",
            3,
            "mcp.session.request",
            "bob",
            &[
                ("app", "github"),
                ("tool", "delete_repo"),
                ("decision", "deny"),
            ],
        ),
        event(
            "e4",
            4,
            "mcp.session.request",
            "bob",
            &[("app", "fs"), ("tool", "read_file"), ("decision", "allow")],
        ),
        event("e5", 5, "cert.create", "bob", &[]),
    ];
    s.append_events(&events[..3]).await.unwrap();
    // Shipping a batch again (after a crash, say) keeps one copy of each event.
    s.append_events(&events[1..]).await.unwrap();
    s.append_events(&[]).await.unwrap();

    let ids = |v: Vec<AuditEvent>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let all = s.search_events(&AuditQuery::default()).await.unwrap();
    assert_eq!(all, events, "events come back whole, once, oldest first");

    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.user = Some("bob".into())))
            .await
            .unwrap()),
        ["e3", "e4", "e5"]
    );
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.app = Some("github".into())))
            .await
            .unwrap()),
        ["e2", "e3"]
    );
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.tool = Some("read_file".into())))
            .await
            .unwrap()),
        ["e2", "e4"]
    );
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.decision = Some("deny".into())))
            .await
            .unwrap()),
        ["e3"]
    );
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.kind = Some("cert.create".into())))
            .await
            .unwrap()),
        ["e5"]
    );
    let since = mcpgate_types::clock::unix_micros(events[3].time);
    assert_eq!(
        ids(s
            .search_events(&q(|q| q.since_micros =
                Some(mcpgate_types::clock::unix_micros(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_004)
                ))))
            .await
            .unwrap()),
        ["e4", "e5"]
    );
    let mut both = AuditQuery {
        since_micros: Some(since),
        user: Some("bob".into()),
        ..Default::default()
    };
    assert_eq!(ids(s.search_events(&both).await.unwrap()), ["e4", "e5"]);
    both.limit = Some(1);
    assert_eq!(
        ids(s.search_events(&both).await.unwrap()),
        ["e5"],
        "limit keeps the newest"
    );
    // Read forward in the order they were written, from a position.
    let forward = s.events_after(0, 3).await.unwrap();
    assert_eq!(
        forward
            .iter()
            .map(|(_, e)| e.id.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2", "e3"]
    );
    let rest = s.events_after(forward[2].0, 100).await.unwrap();
    assert_eq!(
        rest.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(),
        ["e4", "e5"],
        "from after the last position read"
    );
    assert!(rest[0].0 > forward[2].0 && rest[1].0 > rest[0].0);
    assert!(
        s.search_events(&q(|q| q.user = Some("nobody".into())))
            .await
            .unwrap()
            .is_empty()
    );
    // Events of the same instant come back in the order they were appended.
    let mut same: Vec<AuditEvent> = ["z1", "a2", "m3"]
        .iter()
        .map(|id| event(id, 9, "same.time", "carol", &[]))
        .collect();
    s.append_events(&same[..1]).await.unwrap();
    s.append_events(&same[1..]).await.unwrap();
    let got = s
        .search_events(&q(|q| q.kind = Some("same.time".into())))
        .await
        .unwrap();
    same.truncate(3);
    assert_eq!(got, same, "ties keep append order");
    paging(s).await;
    tallies(s).await;
    large_batch(s).await;
    // A field named like the event's own cannot stand for it.
    let forged = event(
        "forged",
        701,
        "audit.view",
        "alice",
        &[("user", "mallory"), ("success", "x")],
    );
    s.append_events(&[forged]).await.unwrap();
    let got = s
        .search_events(&AuditQuery {
            id: Some("forged".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "stored and found");
    assert_eq!(got[0].user, "alice");
    assert_eq!(got[0].fields["field.user"], "mallory");
    // A user and a bot of the same name are two identities.
    let mut bot = event("namesake-bot", 700, "mcp.session.request", "alice", &[]);
    bot.user_kind = Some(mcpgate_types::IdentityKind::Bot);
    s.append_events(&[bot]).await.unwrap();
    let alice = |kind: &str| AuditQuery {
        user: Some("alice".into()),
        user_kind: Some(kind.into()),
        kind: Some("mcp.session.request".into()),
        ..AuditQuery::default()
    };
    let ids = |v: Vec<AuditEvent>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert!(
        !ids(s.search_events(&alice("user")).await.unwrap()).contains(&"namesake-bot".to_string())
    );
    assert_eq!(
        ids(s.search_events(&alice("bot")).await.unwrap()),
        ["namesake-bot"]
    );
    // Filters are values, not SQL.
    assert!(
        s.search_events(&q(|q| q.user = Some("x' OR '1'='1".into())))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The overview's figures: counts by hour, tool, app, user and decision over the whole set,
/// and the newest durations.
async fn tallies<S: Store>(s: &S) {
    let mut events = Vec::new();
    for i in 0..6u64 {
        let mut e = event(
            &format!("t{i}"),
            18_000 + i * 1_800, // two per hour over three hours
            "tally.call",
            if i < 4 { "una" } else { "vic" },
            &[
                ("tool", if i % 2 == 0 { "read" } else { "write" }),
                ("app", "tallied"),
                ("decision", if i == 5 { "deny" } else { "allow" }),
            ],
        );
        e.fields
            .insert("duration_ms".into(), Value::from(i as f64 + 0.5));
        events.push(e);
    }
    s.append_events(&events).await.unwrap();
    let q = AuditQuery {
        kind: Some("tally.call".into()),
        ..AuditQuery::default()
    };
    let mut t = s.tally_events(&q, 3_600_000_000).await.unwrap();
    t.sort_by(|a, b| (a.bucket_us, &a.tool, &a.user).cmp(&(b.bucket_us, &b.tool, &b.user)));
    let total: u64 = t.iter().map(|g| g.calls).sum();
    assert_eq!(total, 6);
    assert_eq!(
        t.iter().filter(|g| g.denied).map(|g| g.calls).sum::<u64>(),
        1
    );
    let buckets: std::collections::BTreeSet<i64> = t.iter().map(|g| g.bucket_us).collect();
    assert_eq!(buckets.len(), 3, "three hours");
    assert!(buckets.iter().all(|b| b % 3_600_000_000 == 0));
    assert_eq!(
        t.iter()
            .filter(|g| g.user == "una" && g.tool.as_deref() == Some("read"))
            .map(|g| g.calls)
            .sum::<u64>(),
        2
    );
    let mut d = s.durations(&q, 4).await.unwrap();
    d.sort_by(f64::total_cmp);
    assert_eq!(d, [2.5, 3.5, 4.5, 5.5], "the newest four");
}

/// A batch as large as a remote agent's spool may ship after a long outage is stored whole,
/// in the order it came, and shipping it again adds nothing.
async fn large_batch<S: Store>(s: &S) {
    use mcpgate_types::Page;
    let batch: Vec<AuditEvent> = (0..7_000u64)
        .map(|i| {
            event(
                &format!("big{i:05}"),
                5_000 + i / 100,
                "big.batch",
                "bulk",
                &[],
            )
        })
        .collect();
    s.append_events(&batch).await.unwrap();
    s.append_events(&batch[..3_000]).await.unwrap();
    let mut q = AuditQuery {
        kind: Some("big.batch".into()),
        limit: Some(10_000),
        ..AuditQuery::default()
    };
    let got = s.page_events(&q, Page::Newest).await.unwrap();
    assert_eq!(got.len(), 7_000, "every event of the batch, once");
    assert!(
        got.iter()
            .rev()
            .map(|(_, e)| &e.id)
            .eq(batch.iter().map(|e| &e.id)),
        "in the order appended"
    );
    q.id = Some("big06999".into());
    assert_eq!(s.search_events(&q).await.unwrap().len(), 1);
    // Free text found in few events and in many (SQLite: through its index, and by reading
    // the newest events), in two characters (no trigram), the same answers.
    q.id = None;
    for (text, n) in [
        ("BIG06999", 1),
        ("big.batch", 7_000),
        ("g0", 7_000),
        ("06999", 1),
    ] {
        q.text = Some(text.into());
        assert_eq!(
            s.page_events(&q, Page::Newest).await.unwrap().len(),
            n,
            "free text {text}"
        );
    }
}

/// Keyset paging and the explorer's filters: every event of a filtered set is seen exactly
/// once, paging back and forth, whatever ties in time there are.
async fn paging<S: Store>(s: &S) {
    use mcpgate_types::Page;
    let mut events = Vec::new();
    for i in 0..25u64 {
        let mut e = event(
            &format!("p{i:02}"),
            100 + i / 3, // three events per second: ties to break
            "mcp.session.request",
            if i % 2 == 0 { "pat" } else { "quinn" },
            &[
                ("app", "pages"),
                (
                    "tool",
                    if i % 5 == 0 {
                        "write_file"
                    } else {
                        "read_file"
                    },
                ),
                ("method", "tools/call"),
                ("session_id", if i < 10 { "s-one" } else { "s-two" }),
                ("decision", if i % 4 == 0 { "deny" } else { "allow" }),
            ],
        );
        e.roles = if i % 3 == 0 {
            vec!["ops".into(), "dev".into()]
        } else {
            vec!["developer".into()]
        };
        e.fields.insert(
            "params".into(),
            serde_json::json!({"path": format!("/srv/Doc{i}")}),
        );
        events.push(e);
    }
    s.append_events(&events).await.unwrap();
    let q = AuditQuery {
        app: Some("pages".into()),
        limit: Some(7),
        ..Default::default()
    };
    // Forward (older) to the end, then back (newer) to the start.
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut page = Page::Newest;
    loop {
        let rows = s.page_events(&q, page).await.unwrap();
        if rows.is_empty() {
            break;
        }
        let last = &rows[rows.len() - 1];
        page = Page::Older(mcpgate_types::Cursor {
            time_us: mcpgate_types::clock::unix_micros(last.1.time),
            pos: last.0,
        });
        pages.push(rows.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>());
        seen.extend(rows.into_iter().map(|(_, e)| e.id));
    }
    let mut newest_first: Vec<String> = events.iter().rev().map(|e| e.id.clone()).collect();
    assert_eq!(seen, newest_first, "each event once, newest first");
    assert_eq!(pages.len(), 4);
    let first_of_last = &pages[3][0];
    let at = events.iter().position(|e| &e.id == first_of_last).unwrap();
    let back = s
        .page_events(
            &q,
            Page::Newer(mcpgate_types::Cursor {
                time_us: mcpgate_types::clock::unix_micros(events[at].time),
                pos: s
                    .page_events(
                        &AuditQuery {
                            limit: Some(1),
                            text: Some(format!("\"{first_of_last}\"")),
                            ..Default::default()
                        },
                        Page::Newest,
                    )
                    .await
                    .unwrap()[0]
                    .0,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>(),
        pages[2],
        "the page before, newest first"
    );
    newest_first.clear();
    // A live tail: what was stored after a position, in stored order, filtered.
    let tail = s
        .page_events(
            &AuditQuery {
                user: Some("pat".into()),
                app: Some("pages".into()),
                ..Default::default()
            },
            Page::After(back[back.len() - 1].0),
        )
        .await
        .unwrap();
    let tail_ids: Vec<&str> = tail.iter().map(|(_, e)| e.id.as_str()).collect();
    let from = events
        .iter()
        .position(|e| e.id == back[back.len() - 1].1.id)
        .unwrap();
    let want: Vec<&str> = events[from + 1..]
        .iter()
        .filter(|e| e.user == "pat")
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(tail_ids, want);
    assert!(tail.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        s.page_events(
            &AuditQuery {
                id: Some("p07".into()),
                ..Default::default()
            },
            Page::Newest
        )
        .await
        .unwrap()
        .len(),
        1
    );

    let ids = |q: AuditQuery| async move {
        let mut v: Vec<String> = s
            .page_events(&q, Page::Newest)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        v.sort();
        v
    };
    let base = || AuditQuery {
        app: Some("pages".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(AuditQuery {
            tool: Some("write_*".into()),
            ..base()
        })
        .await,
        ["p00", "p05", "p10", "p15", "p20"]
    );
    assert_eq!(
        ids(AuditQuery {
            tool: Some("read_fil?".into()),
            ..base()
        })
        .await
        .len(),
        20
    );
    assert!(
        ids(AuditQuery {
            tool: Some("READ_*".into()),
            ..base()
        })
        .await
        .is_empty(),
        "tool globs are case-sensitive"
    );
    assert_eq!(
        ids(AuditQuery {
            role: Some("ops".into()),
            ..base()
        })
        .await
        .len(),
        9,
        "whole role names: ops, not developer"
    );
    assert!(
        ids(AuditQuery {
            role: Some("dev%".into()),
            ..base()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        ids(AuditQuery {
            session: Some("s-one".into()),
            decision: Some("deny".into()),
            ..base()
        })
        .await,
        ["p00", "p04", "p08"]
    );
    assert_eq!(
        ids(AuditQuery {
            method: Some("tools/call".into()),
            user: Some("quinn".into()),
            ..base()
        })
        .await
        .len(),
        12
    );
    assert_eq!(
        ids(AuditQuery {
            text: Some("/srv/doc1".into()),
            ..base()
        })
        .await,
        [
            "p01", "p10", "p11", "p12", "p13", "p14", "p15", "p16", "p17", "p18", "p19"
        ],
        "free text, case-insensitive"
    );
    assert!(
        ids(AuditQuery {
            text: Some("%".into()),
            ..base()
        })
        .await
        .is_empty(),
        "LIKE wildcards in free text are literal"
    );
    let t = |secs: u64| {
        mcpgate_types::clock::unix_micros(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
        )
    };
    assert_eq!(
        ids(AuditQuery {
            since_micros: Some(t(101)),
            until_micros: Some(t(102)),
            ..base()
        })
        .await,
        ["p03", "p04", "p05"],
        "since inclusive, until exclusive"
    );
}

/// For tests on PostgreSQL: creates a uniquely named database at the server of `url`;
/// returns its URL and a future that drops it.
pub async fn fresh_postgres(url: &str) -> (String, impl std::future::Future<Output = ()>) {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("MCPGATE_TEST_POSTGRES_URL={url} is set but unreachable: {e}"));
    tokio::spawn(conn);
    let name = format!(
        "mcpgate_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db_url = with_database(url, &name);
    let drop = async move {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    };
    (db_url, drop)
}

fn with_database(url: &str, db: &str) -> String {
    // postgres://user@host:port/db?params -> same with db replaced
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
