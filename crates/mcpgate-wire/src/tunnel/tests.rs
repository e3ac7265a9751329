//! The multiplexer over an in-memory pipe: flow control per stream, announcements, open
//! metadata, keepalive and teardown.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::agent::{Incoming, Listener, Session};
use super::proxy::{Connection, Opener};
use super::*;
use crate::OpenMeta;

/// What the test agent does with each session, by app name: `echo` copies the client's
/// bytes back, `flood` writes [`FLOOD`] bytes (counting what its writer accepted), anything
/// else is handed to the test.
struct Behaviour {
    announces: Vec<Announce>,
    flooded: Arc<AtomicUsize>,
    sessions: mpsc::UnboundedSender<Session>,
}

const FLOOD: usize = 8 << 20;

async fn pair() -> (Opener, Listener<DuplexStream>, Connection) {
    let (agent_io, proxy_io) = tokio::io::duplex(64 << 10);
    let agent = tokio::spawn(agent::handshake(agent_io));
    let (opener, conn) = proxy::handshake(proxy_io).await.unwrap();
    let listener = agent.await.unwrap().unwrap();
    (opener, listener, conn)
}

fn run_agent(
    mut listener: Listener<DuplexStream>,
    b: Behaviour,
) -> tokio::task::JoinHandle<Result<Option<()>, WireError>> {
    tokio::spawn(async move {
        loop {
            match listener.next().await? {
                None => return Ok(None),
                Some(Incoming::Announcer(mut a)) => {
                    let announces = b.announces.clone();
                    tokio::spawn(async move {
                        for x in &announces {
                            a.send(x).await.unwrap();
                        }
                        // Keep the control stream open, as an agent does.
                        std::future::pending::<()>().await;
                        drop(a);
                    });
                }
                Some(Incoming::Session(s)) if s.meta.app == "echo" => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = (s.reader, s.writer);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
                Some(Incoming::Session(s)) if s.meta.app == "flood" => {
                    let flooded = b.flooded.clone();
                    tokio::spawn(async move {
                        let mut w = s.writer;
                        let chunk = vec![7u8; 64 << 10];
                        let mut left = FLOOD;
                        while left > 0 {
                            let n = w.write(&chunk[..left.min(chunk.len())]).await.unwrap();
                            flooded.fetch_add(n, Ordering::SeqCst);
                            left -= n;
                        }
                        w.shutdown().await.unwrap();
                    });
                }
                Some(Incoming::Session(s)) => {
                    let _ = b.sessions.send(s);
                }
            }
        }
    })
}

fn meta(app: &str) -> OpenMeta {
    OpenMeta {
        app: app.into(),
        addr: "192.0.2.7:4242".parse().unwrap(),
        certs: crate::encode_certs(&[rustls_pki_types::CertificateDer::from(vec![1u8, 2, 3])]),
        session: Some(format!("s-{app}")),
    }
}

fn announce(agent: &str, apps: usize) -> Announce {
    let apps = (0..apps)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "kind": "app", "version": "v3",
                "metadata": {"name": format!("app-{i}"), "labels": {"env": "dev"}},
                "spec": {"uri": "mcp+stdio://", "mcp": {"command": "true"}}
            }))
            .unwrap()
        })
        .collect();
    Announce {
        agent: agent.into(),
        apps,
        selectors: vec![[("env".to_string(), "dev".to_string())].into()],
        version: "0.1.0".into(),
        tools: Default::default(),
    }
}

fn behaviour() -> (Behaviour, mpsc::UnboundedReceiver<Session>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let b = Behaviour {
        announces: vec![announce("edge", 1)],
        flooded: Arc::new(AtomicUsize::new(0)),
        sessions: tx,
    };
    (b, rx)
}

/// One echo round trip on a new stream.
async fn round_trip(opener: &Opener, i: usize) {
    let (mut r, mut w) = opener.open(&meta("echo")).await.unwrap();
    let msg = format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n");
    w.write_all(msg.as_bytes()).await.unwrap();
    w.shutdown().await.unwrap();
    let mut back = String::new();
    r.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn a_stalled_reader_stalls_only_its_own_stream() {
    let (opener, listener, conn) = pair().await;
    tokio::spawn(conn);
    let (b, _sessions) = behaviour();
    let flooded = b.flooded.clone();
    run_agent(listener, b);

    // The proxy opens a stream whose client never reads; the agent writes 8 MiB into it.
    let (mut stalled, _keep) = opener.open(&meta("flood")).await.unwrap();
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = flooded.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let held = flooded.load(Ordering::SeqCst);
    assert!(held > 0, "the agent wrote nothing");
    assert!(
        held <= STREAM_WINDOW as usize,
        "the writer took {held} bytes, more than the stream window"
    );

    // Twenty other sessions answer promptly meanwhile.
    let opener = Arc::new(opener);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let opener = opener.clone();
        set.spawn(async move { round_trip(&opener, i).await });
    }
    timeout(Duration::from_secs(5), async {
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("other streams stalled behind the one slow reader");
    assert_eq!(
        flooded.load(Ordering::SeqCst),
        held,
        "the stalled stream's writer must be pending, not buffering"
    );

    // Reading again lets the stalled stream finish, every byte intact.
    let mut got = Vec::new();
    timeout(Duration::from_secs(20), stalled.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), FLOOD);
    assert!(got.iter().all(|&b| b == 7));
}

#[tokio::test]
async fn announcements_and_open_metadata_arrive_intact() {
    let (opener, listener, conn) = pair().await;
    tokio::spawn(conn);
    let (mut b, mut sessions) = behaviour();
    let (first, second) = (announce("edge", 1), announce("edge", 300));
    b.announces = vec![first.clone(), second.clone()];
    run_agent(listener, b);

    let mut announcements = opener.announcements().await.unwrap();
    assert_eq!(announcements.next().await.unwrap(), Some(first));
    // Larger than a stream window: read as the proxy consumes it.
    assert_eq!(announcements.next().await.unwrap(), Some(second));

    let sent = meta("held");
    let (mut r, mut w) = opener.open(&sent).await.unwrap();
    let s = sessions.recv().await.unwrap();
    assert_eq!(s.meta, sent);
    assert_eq!(
        crate::decode_certs(&s.meta.certs).unwrap()[0].as_ref(),
        &[1, 2, 3]
    );
    // Both directions carry bytes untouched; ends are ends.
    let (mut ar, mut aw) = (s.reader, s.writer);
    w.write_all(b"to agent").await.unwrap();
    w.shutdown().await.unwrap();
    let mut got = Vec::new();
    ar.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"to agent");
    aw.write_all(b"to client").await.unwrap();
    aw.shutdown().await.unwrap();
    got.clear();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"to client");
}

#[tokio::test]
async fn dropping_the_connection_ends_every_stream() {
    let (opener, listener, conn) = pair().await;
    let conn = tokio::spawn(conn);
    let (b, mut sessions) = behaviour();
    let agent = run_agent(listener, b);
    let mut proxy_ends = Vec::new();
    let mut agent_ends = Vec::new();
    for _ in 0..3 {
        let (r, w) = opener.open(&meta("held")).await.unwrap();
        proxy_ends.push((r, w));
        agent_ends.push(sessions.recv().await.unwrap());
    }

    conn.abort();
    let ended = timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap();
    assert!(!matches!(ended, Ok(Some(()))));
    for (mut r, _w) in proxy_ends {
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(5), r.read_to_end(&mut buf)).await;
        assert!(matches!(read, Ok(Err(_))), "{read:?}");
    }
    for s in agent_ends {
        let (mut r, mut w) = (s.reader, s.writer);
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(5), r.read_to_end(&mut buf)).await;
        assert!(matches!(read, Ok(Err(_))), "{read:?}");
        assert!(w.write_all(b"late").await.is_err());
    }
    assert!(opener.open(&meta("held")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_dropped() {
    let (_opener, listener, conn) = pair().await;
    // The agent never drives its side again, so pings go unanswered.
    let started = tokio::time::Instant::now();
    let ended = timeout(Duration::from_secs(60), conn).await.unwrap();
    assert!(matches!(ended, Err(WireError::Silent(_))), "{ended:?}");
    assert!(started.elapsed() >= DEAD_AFTER);
    assert!(started.elapsed() <= DEAD_AFTER + PING_EVERY * 2);
    drop(listener);
}

#[tokio::test]
async fn unreadable_open_metadata_is_refused_and_the_tunnel_goes_on() {
    let (opener, listener, conn) = pair().await;
    tokio::spawn(conn);
    let (b, _sessions) = behaviour();
    run_agent(listener, b);
    for garbage in [&b"not json"[..], b"{\"app\":1}", b"", b"\xff\xfe"] {
        let value = http::HeaderValue::from_bytes(garbage).unwrap();
        let (mut r, _w) = opener.open_raw(value).await.unwrap();
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
    round_trip(&opener, 1).await;
}
