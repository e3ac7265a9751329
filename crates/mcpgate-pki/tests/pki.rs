//! Certificates end to end through real rustls handshakes over in-memory pipes, with a fake
//! clock: issuance, claims, pins, expiry, the wrong CA.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_pki::tls::{self, ALPN_HTTP1};
use mcpgate_pki::{CaKind, CertAuthority, CertInfo, Identity};
use mcpgate_types::{Claims, Clock, FakeClock, IdentityKind};
use rcgen::KeyPair;
use rustls::pki_types::ServerName;

const CLUSTER: &str = "test.local";

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn claims(name: &str, kind: IdentityKind) -> Claims {
    Claims {
        name: name.into(),
        kind,
        roles: vec!["dev".into()],
        traits: BTreeMap::from([("mcp_tools".into(), vec!["echo".into()])]),
        generation: 0,
        cluster: CLUSTER.into(),
        oauth_client: None,
    }
}

struct Cluster {
    user_ca: CertAuthority,
    host_ca: CertAuthority,
    proxy: Identity,
}

fn identity(
    ca: &CertAuthority,
    c: &Claims,
    sans: &[String],
    now: SystemTime,
    ttl: Duration,
    cas: &[&CertAuthority],
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = ca.issue(&key.public_key_pem(), c, sans, now, ttl).unwrap();
    let cert_pem = rustls_pem(&cert);
    let cas: Vec<String> = cas.iter().map(|c| c.cert_pem().to_string()).collect();
    Identity::new(&key.serialize_pem(), &cert_pem, &cas).unwrap()
}

fn rustls_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn cluster(now: SystemTime) -> Cluster {
    let user_ca = CertAuthority::generate(CLUSTER, CaKind::User, now).unwrap();
    let host_ca = CertAuthority::generate(CLUSTER, CaKind::Host, now).unwrap();
    let proxy = identity(
        &host_ca,
        &claims("proxy", IdentityKind::Host),
        &["localhost".into(), "127.0.0.1".into()],
        now,
        Duration::from_secs(86400),
        &[&host_ca],
    );
    Cluster {
        user_ca,
        host_ca,
        proxy,
    }
}

/// Runs a handshake in memory; returns the verified peer identity as the server sees it.
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<Option<Vec<rustls::pki_types::CertificateDer<'static>>>, String> {
    let mut c =
        rustls::ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            // TLS 1.3: the server sees the client certificate after the client's last flight.
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()
                    .map_err(|e| format!("server: {e}"))?;
            }
            return Ok(s
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()));
        }
    }
    Err("handshake did not finish".into())
}

#[test]
fn client_certificate_carries_claims_and_is_checked_per_request() {
    let clock = FakeClock::new(start());
    let cl = cluster(clock.now());
    let alice = identity(
        &cl.user_ca,
        &claims("alice", IdentityKind::User),
        &[],
        clock.now(),
        Duration::from_secs(3600),
        &[&cl.host_ca, &cl.user_ca],
    );
    let server = tls::server_config(
        tls::CertSlot::new(&cl.proxy).unwrap(),
        &[cl.user_ca.cert_der().clone(), cl.host_ca.cert_der().clone()],
        Arc::new(clock.clone()),
        &[ALPN_HTTP1],
    )
    .unwrap();
    let client = tls::client_config(
        &[cl.host_ca.cert_der().clone()],
        Some(&alice),
        Arc::new(clock.clone()),
        &[ALPN_HTTP1],
    )
    .unwrap();
    let peer = handshake(server.clone(), client.clone()).unwrap();
    let info = tls::peer_identity(peer.as_deref(), CLUSTER, clock.now()).unwrap();
    assert_eq!(info.claims, claims("alice", IdentityKind::User));

    // An hour later the same certificate is refused by the handshake and by the per-request check.
    clock.advance(Duration::from_secs(3601));
    assert!(tls::peer_identity(peer.as_deref(), CLUSTER, clock.now()).is_err());
    let err = handshake(server, client).unwrap_err();
    assert!(err.contains("expired") || err.contains("Expired"), "{err}");
}

#[test]
fn a_user_claim_signed_by_the_host_ca_is_refused() {
    let clock = FakeClock::new(start());
    let cl = cluster(clock.now());
    let forged = identity(
        &cl.host_ca,
        &claims("mallory", IdentityKind::User),
        &[],
        clock.now(),
        Duration::from_secs(3600),
        &[&cl.host_ca],
    );
    let err = tls::peer_identity(
        Some(std::slice::from_ref(&forged.cert)),
        CLUSTER,
        clock.now(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("must be signed by the user CA"),
        "{err}"
    );
    let err = tls::peer_identity(
        Some(std::slice::from_ref(&forged.cert)),
        "other.cluster",
        clock.now(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("user CA"), "{err}");
}

#[test]
fn pinned_first_contact() {
    let clock = FakeClock::new(start());
    let cl = cluster(clock.now());
    let server = tls::server_config(
        tls::CertSlot::new(&cl.proxy).unwrap(),
        &[cl.user_ca.cert_der().clone()],
        Arc::new(clock.clone()),
        &[ALPN_HTTP1],
    )
    .unwrap();
    let good = tls::pinned_client_config(
        &cl.host_ca.pin(),
        None,
        Arc::new(clock.clone()),
        &[ALPN_HTTP1],
    )
    .unwrap();
    assert_eq!(handshake(server.clone(), good).unwrap(), None);
    let other = CertAuthority::generate(CLUSTER, CaKind::Host, clock.now()).unwrap();
    let bad = tls::pinned_client_config(&other.pin(), None, Arc::new(clock.clone()), &[ALPN_HTTP1])
        .unwrap();
    let err = handshake(server, bad).unwrap_err();
    assert!(err.contains(tls::PIN_MISMATCH), "{err}");
    assert!(mcpgate_pki::cert::is_valid_pin(&cl.host_ca.pin()));
}

#[test]
fn ca_and_identity_round_trip_through_pem() {
    let clock = FakeClock::new(start());
    let cl = cluster(clock.now());
    let again = CertAuthority::from_pem(CaKind::User, cl.user_ca.cert_pem(), &cl.user_ca.key_pem())
        .unwrap();
    assert_eq!(again.pin(), cl.user_ca.pin());
    let bob = identity(
        &again,
        &claims("bob", IdentityKind::Bot),
        &[],
        clock.now(),
        Duration::from_secs(60),
        &[&cl.host_ca, &cl.user_ca],
    );
    // Issued by the reloaded CA, verified against the original's certificate.
    let info =
        tls::peer_identity(Some(std::slice::from_ref(&bob.cert)), CLUSTER, clock.now()).unwrap();
    assert_eq!(info.claims.kind, IdentityKind::Bot);
    let text = bob.to_pem();
    let parsed = Identity::parse(&text).unwrap();
    assert_eq!(parsed.info, bob.info);
    assert_eq!(parsed.ca_certs.len(), 2);
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
    for bad in [
        "",
        "garbage",
        &text[text.find("-----BEGIN CERTIFICATE").unwrap()..],
    ] {
        assert!(Identity::parse(bad).is_err());
    }
    assert!(CertInfo::parse(b"not a cert").is_err());
}
