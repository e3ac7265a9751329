//! The auth service with a real SQLite store and a fake clock: bootstrap, invites, signup,
//! TOTP login, replay, rate limits, TTL caps, expiry, admin rights, restart.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_auth::login::otp_code;
use mcpgate_auth::wire::LoginRequest;
use mcpgate_auth::{AuthConfig, AuthError, AuthService, Caller, SecondFactor};
use mcpgate_store::{AnyStore, SqliteStore, Store};
use mcpgate_types::resource::Kind;
use mcpgate_types::{AuditQuery, Clock, FakeClock, Name};

const ROLES: &str = "kind: role
version: v8
metadata: {name: dev}
spec:
  options: {max_session_ttl: 2h}
  allow:
    app_labels: {env: dev}
    mcp: {tools: [echo]}
";

struct Env {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: FakeClock,
    key: mcpgate_auth::CaKey,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Env {
            _dir: dir,
            path,
            clock: FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            key: mcpgate_auth::CaKey::generate().unwrap(),
        }
    }

    async fn open(&self, second_factor: SecondFactor) -> AuthService {
        let store = Arc::new(AnyStore::Sqlite(SqliteStore::open(&self.path).unwrap()));
        let config = AuthConfig {
            cluster: Name::new("test.local").unwrap(),
            second_factor,
            storage: "sqlite".into(),
            ca_key: self.key.clone(),
        };
        AuthService::open(store, Arc::new(self.clock.clone()), config)
            .await
            .unwrap()
    }
}

async fn admin(auth: &AuthService) -> Caller {
    let id = auth
        .admin_identity(Duration::from_secs(3600))
        .await
        .unwrap();
    auth.caller(Some(std::slice::from_ref(&id.cert)))
        .await
        .unwrap()
}

/// A cluster with the test roles, and its admin.
async fn with_roles(env: &Env, second_factor: SecondFactor) -> (AuthService, Caller) {
    let auth = env.open(second_factor).await;
    let adm = admin(&auth).await;
    auth.create_resources(&adm, "roles.yaml", ROLES, false)
        .await
        .unwrap();
    (auth, adm)
}

/// A user of role dev who has signed up with `password` (no second factor).
async fn signed_up(auth: &AuthService, adm: &Caller, name: &str, password: &str) {
    let (invite, _) = auth
        .invite(adm, name, &["dev".into()], Default::default())
        .await
        .unwrap();
    auth.signup(&invite, password, None).await.unwrap();
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap()
}

fn login_req(
    user: &str,
    password: &str,
    otp: Option<String>,
    key: &rcgen::KeyPair,
) -> LoginRequest {
    LoginRequest {
        user: user.into(),
        password: password.into(),
        otp,
        public_key: key.public_key_pem(),
        ttl_secs: None,
    }
}

fn secret_of(uri: &str) -> String {
    uri.split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn invite_signup_login_with_totp() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Otp).await;
    let adm = admin(&auth).await;
    auth.create_resources(&adm, "roles.yaml", ROLES, false)
        .await
        .unwrap();
    let (invite, expires) = auth
        .invite(&adm, "alice", &["dev".into()], Default::default())
        .await
        .unwrap();
    assert_eq!(expires, 1_800_000_000 + 3600);

    assert!(
        matches!(
            auth.signup(&invite, "short", None).await,
            Err(AuthError::BadRequest(_))
        ),
        "weak password refused"
    );
    // The second factor is confirmed with a code before the account is active; a wrong
    // code or none is refused and leaves the invite usable.
    let secret = mcpgate_auth::login::new_otp_secret().unwrap();
    let code = otp_code(&secret, env.clock.now()).unwrap();
    for bad in [
        None,
        Some((secret.as_str(), "000000")),
        Some(("AAAA", code.as_str())),
    ] {
        assert!(
            matches!(
                auth.signup(&invite, "correct horse battery", bad).await,
                Err(AuthError::BadRequest(_))
            ),
            "{bad:?}"
        );
    }
    let signup = auth
        .signup(&invite, "correct horse battery", Some((&secret, &code)))
        .await
        .unwrap();
    let uri = signup.otp_uri.expect("TOTP enrolled");
    assert!(uri.starts_with("otpauth://totp/test.local:alice?secret="));
    assert!(
        matches!(
            auth.signup(&invite, "correct horse battery", Some((&secret, &code)))
                .await,
            Err(AuthError::InvalidToken)
        ),
        "invite is single-use"
    );

    let k = key();
    assert_eq!(secret_of(&uri), secret);
    // Password alone is not enough.
    let e = auth
        .login(&login_req("alice", "correct horse battery", None, &k), None)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::InvalidCredentials));
    let code = otp_code(&secret, env.clock.now()).unwrap();
    let cert = auth
        .login(
            &login_req("alice", "correct horse battery", Some(code.clone()), &k),
            None,
        )
        .await
        .unwrap();
    assert_eq!(cert.roles, vec!["dev"]);
    assert_eq!(
        cert.expires,
        1_800_000_000 + 7200,
        "capped by max_session_ttl 2h"
    );
    assert_eq!(cert.cas.len(), 2);
    // The same code cannot be replayed.
    let e = auth
        .login(
            &login_req("alice", "correct horse battery", Some(code), &k),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::OtpReused));

    // The certificate authenticates until it expires, by the injected clock.
    let der = mcpgate_pki::identity::certs_from_pem(&cert.cert).unwrap();
    let caller = auth.caller(Some(&der)).await.unwrap();
    assert_eq!(caller.name(), "alice");
    assert!(
        matches!(
            auth.get_resources(&caller, Kind::Role, None).await,
            Err(AuthError::AccessDenied(_))
        ),
        "dev has no admin rules"
    );
    env.clock.advance(Duration::from_secs(7201));
    assert!(matches!(
        auth.caller(Some(&der)).await,
        Err(AuthError::Unauthenticated(_))
    ));

    let events = auth
        .search_audit(
            &adm,
            &AuditQuery {
                kind: Some("user.login".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let outcomes: Vec<bool> = events.iter().map(|e| e.success).collect();
    assert_eq!(
        outcomes,
        vec![false, true, false],
        "every login attempt is audited"
    );
    assert_eq!(events[1].field("method"), Some("password+otp"));
}

#[tokio::test]
async fn wrong_passwords_are_indistinguishable_and_rate_limited() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    auth.create_resources(&adm, "roles.yaml", ROLES, false)
        .await
        .unwrap();
    let (invite, _) = auth
        .invite(&adm, "bob", &["dev".into()], Default::default())
        .await
        .unwrap();
    assert!(
        auth.signup(&invite, "bob's long password", None)
            .await
            .unwrap()
            .otp_uri
            .is_none()
    );
    let k = key();
    let unknown = auth
        .login(&login_req("nobody", "whatever password", None, &k), None)
        .await
        .unwrap_err();
    let wrong = auth
        .login(&login_req("bob", "wrong password!!", None, &k), None)
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        wrong.to_string(),
        "no user enumeration"
    );
    for _ in 0..4 {
        let _ = auth
            .login(&login_req("bob", "wrong password!!", None, &k), None)
            .await;
    }
    let limited = auth
        .login(&login_req("bob", "bob's long password", None, &k), None)
        .await
        .unwrap_err();
    assert!(matches!(limited, AuthError::RateLimited), "{limited}");
    env.clock.advance(Duration::from_secs(301));
    let mut req = login_req("bob", "bob's long password", None, &k);
    req.ttl_secs = Some(60);
    let ok = auth.login(&req, None).await.unwrap();
    assert_eq!(ok.expires, 1_800_000_000 + 301 + 60, "--ttl asks for less");
}

#[tokio::test]
async fn create_is_all_or_nothing_and_needs_force_to_replace() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Otp).await;
    let adm = admin(&auth).await;
    let bad = format!(
        "{ROLES}---\nkind: role\nversion: v8\nmetadata: {{name: broken}}\nspec:\n  allow:\n    mcp: {{tools: ['^(x$']}}\n"
    );
    let e = auth
        .create_resources(&adm, "r.yaml", &bad, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("role broken: allow.mcp.tools[0]"),
        "{e}"
    );
    assert!(
        matches!(
            auth.get_resources(&adm, Kind::Role, Some("dev")).await,
            Err(AuthError::NotFound(_))
        ),
        "nothing half-written"
    );
    let r = auth
        .create_resources(&adm, "r.yaml", ROLES, false)
        .await
        .unwrap();
    assert_eq!(r.created, vec!["role dev"]);
    assert!(matches!(
        auth.create_resources(&adm, "r.yaml", ROLES, false).await,
        Err(AuthError::AlreadyExists(_))
    ));
    let r = auth
        .create_resources(&adm, "r.yaml", ROLES, true)
        .await
        .unwrap();
    assert_eq!(r.updated, vec!["role dev"]);
    auth.remove_resource(&adm, Kind::Role, "dev", true)
        .await
        .unwrap();
    assert!(matches!(
        auth.remove_resource(&adm, Kind::Role, "dev", true).await,
        Err(AuthError::NotFound(_))
    ));
    let kinds: Vec<String> = auth
        .search_audit(
            &adm,
            &AuditQuery {
                kind: None,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.starts_with("resource."))
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["resource.create", "resource.update", "resource.delete"]
    );
}

#[tokio::test]
async fn restart_keeps_the_cluster() {
    let env = Env::new();
    let (pin, user_pin) = {
        let auth = env.open(SecondFactor::Otp).await;
        let adm = admin(&auth).await;
        auth.create_resources(&adm, "r.yaml", ROLES, false)
            .await
            .unwrap();
        (auth.ca_pin(), auth.user_ca().pin())
    };
    let auth = env.open(SecondFactor::Otp).await;
    assert_eq!(auth.ca_pin(), pin);
    assert_eq!(auth.user_ca().pin(), user_pin);
    let adm = admin(&auth).await;
    assert_eq!(
        auth.get_resources(&adm, Kind::Role, Some("dev"))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bot_certificates_expire_renew_by_generation_and_catch_copies() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Otp).await;
    let adm = admin(&auth).await;
    auth.create_resources(&adm, "roles.yaml", ROLES, false)
        .await
        .unwrap();
    let (token, expires) = auth
        .add_bot(&adm, "ci", &["dev".into()], Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(expires, 1_800_000_000 + 1800, "join tokens live 30 minutes");

    let k = key();
    let first = auth
        .bot_join(&token, &k.public_key_pem(), Some(3600))
        .await
        .unwrap();
    assert_eq!(
        first.expires,
        1_800_000_000 + 600,
        "capped by the bot's --ttl"
    );
    assert!(
        matches!(
            auth.bot_join(&token, &k.public_key_pem(), None).await,
            Err(AuthError::InvalidToken)
        ),
        "single use"
    );
    let der = mcpgate_pki::identity::certs_from_pem(&first.cert).unwrap();
    let gen1 = auth.caller(Some(&der)).await.unwrap().info;
    assert_eq!(gen1.claims.generation, 1);

    // Renewal: the next generation, valid from the (fake) time of renewal.
    env.clock.advance(Duration::from_secs(300));
    let second = auth
        .bot_renew(&gen1, &k.public_key_pem(), Some(600))
        .await
        .unwrap();
    assert_eq!(second.expires, 1_800_000_000 + 300 + 600);
    let gen2 = auth
        .caller(Some(
            &mcpgate_pki::identity::certs_from_pem(&second.cert).unwrap(),
        ))
        .await
        .unwrap()
        .info;
    assert_eq!(gen2.claims.generation, 2);

    // The first certificate expires on schedule, without sleeping.
    env.clock.advance(Duration::from_secs(301));
    assert!(matches!(
        auth.caller(Some(&der)).await,
        Err(AuthError::Unauthenticated(_))
    ));

    // Presenting generation 1 again means a copy: the bot is locked, and says why.
    let e = auth
        .bot_renew(&gen1, &k.public_key_pem(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bot ci is locked"), "{e}");
    assert!(auth.lock_for(&gen2.claims, None).await.unwrap().is_some());
    assert!(
        auth.bot_renew(&gen2, &k.public_key_pem(), None)
            .await
            .is_err(),
        "the real bot is locked too"
    );
    let events = auth
        .search_audit(
            &adm,
            &AuditQuery {
                kind: Some("bot.lock.generation_mismatch".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].fields["presented"], 1);
    assert_eq!(events[0].fields["current"], 2);

    // A lock with a TTL lifts itself by the clock.
    let (t2, _) = auth
        .add_bot(&adm, "other", &["dev".into()], None)
        .await
        .unwrap();
    let other = auth.bot_join(&t2, &k.public_key_pem(), None).await.unwrap();
    let other = auth
        .caller(Some(
            &mcpgate_pki::identity::certs_from_pem(&other.cert).unwrap(),
        ))
        .await
        .unwrap()
        .info;
    auth.lock(
        &adm,
        mcpgate_types::resource::LockTarget::Role("dev".into()),
        Some(Duration::from_secs(60)),
        "maintenance",
    )
    .await
    .unwrap();
    assert!(auth.lock_for(&other.claims, None).await.unwrap().is_some());
    env.clock.advance(Duration::from_secs(61));
    assert!(auth.lock_for(&other.claims, None).await.unwrap().is_none());
}

#[tokio::test]
async fn ca_private_keys_are_sealed_in_the_storage() {
    let mut env = Env::new();
    let pin = env.open(SecondFactor::Off).await.ca_pin();
    // Nothing in the storage reads as a private key.
    let raw = std::fs::read(&env.path).unwrap();
    let wal = std::fs::read(env.path.with_extension("db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(
            !String::from_utf8_lossy(bytes).contains("PRIVATE KEY"),
            "a CA key is stored in the clear"
        );
    }
    // The same key opens them again; another key cannot, and says so.
    assert_eq!(env.open(SecondFactor::Off).await.ca_pin(), pin);
    env.key = mcpgate_auth::CaKey::generate().unwrap();
    let store = Arc::new(AnyStore::Sqlite(SqliteStore::open(&env.path).unwrap()));
    let config = AuthConfig {
        cluster: Name::new("test.local").unwrap(),
        second_factor: SecondFactor::Off,
        storage: "sqlite".into(),
        ca_key: env.key.clone(),
    };
    let err = AuthService::open(store, Arc::new(env.clock.clone()), config)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("sealed with another CA key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_renewed_agent_keeps_its_open_tunnel_but_its_old_certificate_opens_nothing_new() {
    use mcpgate_auth::agents::Standing;
    use mcpgate_types::resource::{AgentScope, TokenKind};
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    let scope = AgentScope {
        apps: vec!["rec".into()],
        ..Default::default()
    };
    let (token, _) = auth
        .add_token(&adm, TokenKind::Agent, None, Some("edge"), scope)
        .await
        .unwrap();
    let k = key();
    let first = auth
        .agent_join(&token, "edge", &k.public_key_pem(), &[])
        .await
        .unwrap();
    let der = mcpgate_pki::identity::certs_from_pem(&first.cert).unwrap();
    let gen1 = mcpgate_pki::CertInfo::parse(&der[0]).unwrap();
    assert_eq!(gen1.claims.generation, 1);
    let good = |s: Standing| matches!(s, Standing::Good(_));
    assert!(good(
        auth.agent_standing(&gen1.claims, false).await.unwrap()
    ));
    // It renews: generation 2.
    auth.agent_renew(&gen1, &key().public_key_pem())
        .await
        .unwrap();
    // The tunnel it dialled with generation 1 stays up until it re-dials...
    assert!(good(auth.agent_standing(&gen1.claims, true).await.unwrap()));
    // ...but generation 1 opens no new tunnel and makes no API call (a copy would).
    assert!(!good(
        auth.agent_standing(&gen1.claims, false).await.unwrap()
    ));
}

#[tokio::test]
async fn a_rotated_assertion_key_stays_published_while_its_assertions_live() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    let kids = |jwks: serde_json::Value| {
        let mut k: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    let first = kids(auth.jwks().await.unwrap());
    assert_eq!(first.len(), 1, "a key exists before anything is signed");
    let second = auth.rotate_jwt(&adm).await.unwrap();
    let both = kids(auth.jwks().await.unwrap());
    assert!(
        both.contains(&first[0]) && both.contains(&second),
        "overlap: {both:?}"
    );
    env.clock
        .advance(mcpgate_auth::jwt::ASSERTION_TTL + Duration::from_secs(120));
    assert_eq!(
        kids(auth.jwks().await.unwrap()),
        vec![second],
        "then the old key goes"
    );
    let changes = auth
        .store()
        .search_events(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.fields.get("kind").and_then(|k| k.as_str()) == Some("jwt_key"))
        .count();
    assert_eq!(changes, 1, "the rotation is audited");
}

#[tokio::test]
async fn an_assertion_is_made_only_for_a_live_unlocked_session_and_its_apps_uri() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    let alice = auth
        .admin_identity(Duration::from_secs(3600))
        .await
        .unwrap()
        .info;
    let uri = "mcp+https://tools.example/mcp";
    auth.open_session("s1", "edge", &alice, "tools", Some(uri.into()))
        .await
        .unwrap();
    let a = auth.assertion("edge", "s1", uri).await.unwrap();
    let now = mcpgate_types::clock::unix_secs(env.clock.now());
    assert!(a.expires > now && a.expires <= now + 600, "{}", a.expires);
    for (agent, audience) in [
        ("other-agent", uri),
        ("edge", "mcp+https://bank.example/mcp"),
    ] {
        let err = auth.assertion(agent, "s1", audience).await.unwrap_err();
        assert!(
            matches!(err, AuthError::AccessDenied(_)),
            "{agent} {audience}: {err}"
        );
    }
    // Locked: none.
    auth.lock(
        &adm,
        mcpgate_types::resource::LockTarget::User(alice.claims.name.clone()),
        None,
        "incident",
    )
    .await
    .unwrap();
    let err = auth.assertion("edge", "s1", uri).await.unwrap_err();
    assert!(err.to_string().contains("incident"), "{err}");
    // Ended: none.
    auth.open_session("s2", "edge", &alice, "tools", Some(uri.into()))
        .await
        .unwrap();
    auth.close_session("s2").await.unwrap();
    let err = auth.assertion("edge", "s2", uri).await.unwrap_err();
    assert!(err.to_string().contains("ended"), "{err}");
}

/// A denied `tools/call` by `user` at `secs` past a fixed instant.
fn denial(id: &str, user: &str, secs: u64, tool: &str) -> mcpgate_types::AuditEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("app".into(), "work".into());
    fields.insert("tool".into(), tool.into());
    fields.insert("decision".into(), "deny".into());
    fields.insert("session_id".into(), "s".into());
    mcpgate_types::AuditEvent {
        id: id.into(),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
        kind: "mcp.session.request".into(),
        code: "MG5003W".into(),
        cluster: "test".into(),
        user: user.into(),
        user_kind: Some(mcpgate_types::IdentityKind::User),
        roles: vec!["dev".into()],
        success: false,
        fields,
    }
}

/// Ten denials over four tools, 10 s apart, from `start`.
fn burst(user: &str, start: u64, tag: &str) -> Vec<mcpgate_types::AuditEvent> {
    (0..10)
        .map(|i| {
            denial(
                &format!("{tag}{i}"),
                user,
                start + i * 10,
                ["a", "b", "c", "d"][i as usize % 4],
            )
        })
        .collect()
}

#[tokio::test]
async fn findings_are_read_once_from_a_cursor_kept_across_restarts_and_expected_ones_stay_quiet() {
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    auth.store()
        .append_events(&burst("alice", 0, "a"))
        .await
        .unwrap();
    let found = auth.findings(&adm, 0).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let first = &found[0];
    assert_eq!(first.finding.identity, "user/alice");
    assert_eq!(first.triage, mcpgate_auth::findings::Triage::Open);
    // Read again: nothing new, nothing twice.
    assert_eq!(auth.update_findings().await.unwrap(), 0);
    assert_eq!(auth.findings(&adm, 0).await.unwrap().len(), 1);

    // Marked expected: the same kind of thing from alice is no longer reported; bob's is.
    let t = auth
        .triage(
            &adm,
            &first.finding.id,
            mcpgate_auth::findings::Triage::Expected,
        )
        .await
        .unwrap();
    assert_eq!(t.triage, mcpgate_auth::findings::Triage::Expected);
    auth.store()
        .append_events(&burst("alice", 3600, "b"))
        .await
        .unwrap();
    auth.store()
        .append_events(&burst("bob", 3600, "c"))
        .await
        .unwrap();
    drop(auth);

    // A restart goes on from the cursor: only the new events are read.
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    let found = auth.findings(&adm, 0).await.unwrap();
    let who: Vec<&str> = found.iter().map(|f| f.finding.identity.as_str()).collect();
    assert_eq!(who, ["user/alice", "user/bob"], "{found:?}");
    assert_eq!(found[0].triage, mcpgate_auth::findings::Triage::Expected);
}

#[tokio::test]
async fn findings_agree_on_sqlite_and_postgresql() {
    let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: findings on PostgreSQL (set MCPGATE_TEST_POSTGRES_URL to run it)");
        return;
    };
    // Two bursts, a quiet stretch, another burst; some of the same instant.
    let mut events = burst("alice", 0, "a");
    events.extend(burst("bob", 5, "b"));
    events.extend(burst("alice", 7200, "c"));
    events.push(denial("d0", "carol", 7200, "a"));
    let env = Env::new();
    let sqlite = env.open(SecondFactor::Off).await;
    let (db_url, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
    let found = {
        let store = Arc::new(AnyStore::Postgres(
            mcpgate_store::PostgresStore::connect(&db_url)
                .await
                .unwrap(),
        ));
        let config = AuthConfig {
            cluster: Name::new("test.local").unwrap(),
            second_factor: SecondFactor::Off,
            storage: "postgres".into(),
            ca_key: env.key.clone(),
        };
        let pg = AuthService::open(store, Arc::new(env.clock.clone()), config)
            .await
            .unwrap();
        let mut found = Vec::new();
        for auth in [&sqlite, &pg] {
            // Appended in two batches, read in between: the cursor carries over.
            auth.store().append_events(&events[..15]).await.unwrap();
            auth.update_findings().await.unwrap();
            auth.store().append_events(&events[15..]).await.unwrap();
            let adm = admin(auth).await;
            let list: Vec<_> = auth
                .findings(&adm, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|s| {
                    (
                        s.finding.id,
                        s.finding.kind,
                        s.finding.identity,
                        s.finding.evidence,
                    )
                })
                .collect();
            found.push(list);
        }
        found
    };
    drop_db.await;
    assert_eq!(found[0].len(), 3, "{:?}", found[0]);
    assert_eq!(found[0], found[1], "SQLite and PostgreSQL agree");
}

/// A dashboard session lasts no longer than the certificate the same login would get (the
/// role's max_session_ttl, 2h); once its time is up the sweep ends it, audited, and its
/// cookie opens nothing.
#[tokio::test]
async fn dashboard_sessions_end_when_their_time_is_up_and_are_swept() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    signed_up(&auth, &adm, "dana", "dana's long password").await;
    let web = auth
        .web_login("dana", "dana's long password", None, None)
        .await
        .unwrap();
    assert_eq!(web.session.expires, 1_800_000_000 + 2 * 3600);
    let (caller, _) = auth.web_caller(&web.token).await.unwrap();
    assert_eq!(caller.info.claims.name, "dana");
    env.clock.advance(Duration::from_secs(2 * 3600 - 1));
    assert_eq!(auth.sweep_web_sessions().await.unwrap(), 0, "still live");
    env.clock.advance(Duration::from_secs(1));
    assert_eq!(auth.sweep_web_sessions().await.unwrap(), 1);
    assert_eq!(auth.sweep_web_sessions().await.unwrap(), 0, "ended once");
    assert!(matches!(
        auth.web_caller(&web.token).await,
        Err(AuthError::Unauthenticated(_))
    ));
    let ended = events_of(&auth, &adm, "web.session.end").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].user, "dana");
    assert_eq!(ended[0].fields["reason"], "expired");
}

/// Guesses sent all at once are limited like guesses one after another: each is counted
/// before it is checked, so no more than the limit are ever checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_are_limited_like_guesses_in_turn() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    signed_up(&auth, &adm, "erin", "erin's long password").await;
    let auth = Arc::new(auth);
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move {
                auth.web_login("erin", &format!("wrong guess {i:02}"), None, None)
                    .await
            })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        match g.await.unwrap() {
            Err(AuthError::InvalidCredentials) => checked += 1,
            Err(AuthError::RateLimited) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a wrong password logged in"),
        }
    }
    assert_eq!(checked, 5, "only as many guesses as the limit were checked");
    // The right password is limited now too, until the window passes.
    assert!(matches!(
        auth.web_login("erin", "erin's long password", None, None)
            .await,
        Err(AuthError::RateLimited)
    ));
    env.clock.advance(Duration::from_secs(301));
    assert!(
        auth.web_login("erin", "erin's long password", None, None)
            .await
            .is_ok()
    );
}

/// The cluster signs the chain's head; a log cut short of a checkpoint, or a checkpoint
/// not signed by the cluster, does not verify.
#[tokio::test]
async fn a_log_cut_short_of_its_signed_checkpoint_does_not_verify() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    for _ in 0..4 {
        auth.create_resources(&adm, "roles.yaml", ROLES, true)
            .await
            .unwrap();
    }
    let v = auth.verify_audit(&adm).await.unwrap();
    assert!(v.intact && v.checkpoint.is_none(), "{v:?}");
    let at = auth
        .checkpoint_audit()
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(auth.checkpoint_audit().await.unwrap(), None, "nothing new");
    let v = auth.verify_audit(&adm).await.unwrap();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.checkpoint.as_ref().map(|c| c.seq), Some(at));
    // More events, then the newest ones cut off, down below the checkpoint.
    auth.invite(&adm, "fay", &["dev".into()], Default::default())
        .await
        .unwrap();
    let db = rusqlite::Connection::open(&env.path).unwrap();
    db.execute("DELETE FROM audit WHERE rowid >= ?1", [at - 1])
        .unwrap();
    let v = auth.verify_audit(&adm).await.unwrap();
    assert!(!v.intact);
    assert_eq!(v.seq, Some(at));
    assert!(
        v.problem.as_deref().unwrap().contains(&format!(
            "cut short: it ends at seq {}, but the checkpoint",
            at - 2
        )),
        "{v:?}"
    );
    // A checkpoint written by someone else is refused as such.
    let forged = serde_json::json!({"seq": 1, "hash": "00", "time": 0, "signature": "AAAA"});
    db.execute(
        "UPDATE kv SET value = ?1 WHERE key = 'audit/checkpoint'",
        [serde_json::to_vec(&forged).unwrap()],
    )
    .unwrap();
    let v = auth.verify_audit(&adm).await.unwrap();
    assert!(
        v.problem
            .as_deref()
            .unwrap()
            .contains("not signed by this cluster"),
        "{v:?}"
    );
}

/// An event altered after the last checkpoint is caught when the next one would be signed:
/// no checkpoint over it, and the break is in the log at once.
#[tokio::test]
async fn no_checkpoint_is_signed_over_a_broken_chain() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    let first = auth
        .checkpoint_audit()
        .await
        .unwrap()
        .expect("a checkpoint");
    for _ in 0..3 {
        auth.create_resources(&adm, "roles.yaml", ROLES, true)
            .await
            .unwrap();
    }
    let db = rusqlite::Connection::open(&env.path).unwrap();
    db.execute(
        "UPDATE audit SET data = replace(data, 'dev', 'ops') WHERE rowid = ?1",
        [first + 2],
    )
    .unwrap();
    assert_eq!(auth.checkpoint_audit().await.unwrap(), None);
    assert_eq!(auth.checkpoint_audit().await.unwrap(), None, "told once");
    let broken = events_of(&auth, &adm, "audit.chain.broken").await;
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].fields["seq"], first + 2);
    let v = auth.verify_audit(&adm).await.unwrap();
    assert_eq!(v.seq, Some(first + 2));
    assert_eq!(v.events as i64, first + 1, "the events before it were good");
}

/// A log rewritten by someone without the CA key does not get signed: the checkpoint it
/// would extend must be the cluster's, still there, and not behind the last one signed.
#[tokio::test]
async fn a_rewritten_log_is_never_signed() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    auth.checkpoint_audit()
        .await
        .unwrap()
        .expect("a checkpoint");
    auth.create_resources(&adm, "roles.yaml", ROLES, true)
        .await
        .unwrap();
    let db = rusqlite::Connection::open(&env.path).unwrap();
    // Removed: refused, and told.
    let kept: Vec<u8> = db
        .query_row(
            "SELECT value FROM kv WHERE key = 'audit/checkpoint'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute("DELETE FROM kv WHERE key = 'audit/checkpoint'", [])
        .unwrap();
    assert_eq!(auth.checkpoint_audit().await.unwrap(), None);
    assert!(
        chain_breaks(&auth, &adm).await[0].contains("was removed"),
        "{:?}",
        chain_breaks(&auth, &adm).await
    );
    // Forged (another instance, which signed nothing yet, sees it): refused.
    let forged = serde_json::json!({"cluster": "test.local", "seq": 1, "hash": "00", "time": 0, "signature": "AAAA"});
    db.execute(
        "INSERT INTO kv (key, value) VALUES ('audit/checkpoint', ?1)",
        [serde_json::to_vec(&forged).unwrap()],
    )
    .unwrap();
    let other = env.open(SecondFactor::Off).await;
    assert_eq!(other.checkpoint_audit().await.unwrap(), None);
    assert!(
        chain_breaks(&other, &adm)
            .await
            .iter()
            .any(|p| p.contains("not signed by this cluster")),
        "{:?}",
        chain_breaks(&other, &adm).await
    );
    // The real one back: signing goes on.
    db.execute(
        "UPDATE kv SET value = ?1 WHERE key = 'audit/checkpoint'",
        [kept],
    )
    .unwrap();
    assert!(other.checkpoint_audit().await.unwrap().is_some());
}

/// The events of type `kind`.
async fn events_of(auth: &AuthService, adm: &Caller, kind: &str) -> Vec<mcpgate_types::AuditEvent> {
    auth.search_audit(
        adm,
        &AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        },
    )
    .await
    .unwrap()
}

/// The problems `audit.chain.broken` events told.
async fn chain_breaks(auth: &AuthService, adm: &Caller) -> Vec<String> {
    events_of(auth, adm, "audit.chain.broken")
        .await
        .into_iter()
        .map(|e| e.fields["problem"].as_str().unwrap().to_string())
        .collect()
}

/// Twelve chained events and a checkpoint over all of them (its signature is not what is
/// tested here: the verifier is told to accept it).
async fn chained<S: Store>(store: &S) {
    let events: Vec<mcpgate_types::AuditEvent> = (1..=12)
        .map(|i| {
            mcpgate_types::AuditEvent::new(
                "test.local",
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + i),
                ("mcp.session.request", "MG5002I"),
                &mcpgate_types::Claims {
                    name: "alice".into(),
                    kind: mcpgate_types::IdentityKind::User,
                    roles: vec!["dev".into()],
                    traits: Default::default(),
                    generation: 0,
                    cluster: "test.local".into(),
                    oauth_client: None,
                },
                true,
                Default::default(),
            )
        })
        .collect();
    for e in &events {
        store.append_events(std::slice::from_ref(e)).await.unwrap();
    }
    let (head, hash) = store.chain_head().await.unwrap().unwrap();
    assert_eq!(head, 12);
    let hash: String = hash.unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let checkpoint = serde_json::json!({"cluster": "test.local", "seq": 12, "hash": hash, "time": 0, "signature": "AAAA"});
    store
        .put(
            "audit/checkpoint",
            &serde_json::to_vec(&checkpoint).unwrap(),
        )
        .await
        .unwrap();
}

/// The tamperings the issue names, and the seq `admin audit verify` must name for each.
const TAMPERINGS: [(&str, &str, i64); 4] = [
    (
        "edit",
        "UPDATE {audit} SET data = replace(data, 'alice', 'mallory') WHERE {seq} = 5",
        5,
    ),
    ("delete", "DELETE FROM {audit} WHERE {seq} = 7", 8),
    (
        "reorder",
        "UPDATE {audit} SET {seq} = -3 WHERE {seq} = 3; UPDATE {audit} SET {seq} = 3 WHERE {seq} = 4; UPDATE {audit} SET {seq} = 4 WHERE {seq} = -3",
        3,
    ),
    ("truncate", "DELETE FROM {audit} WHERE {seq} > 9", 12),
];

/// Edited, deleted, reordered and truncated rows in SQLite and in PostgreSQL: the verifier
/// names the exact seq each time.
#[tokio::test]
async fn each_tampering_in_either_store_is_named_by_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, sql, seq) in TAMPERINGS {
        let path = dir.path().join(format!("{kind}.db"));
        let store = SqliteStore::open(&path).unwrap();
        chained(&store).await;
        let v = mcpgate_auth::integrity::verify_log(&store, "test.local", |_, _| true)
            .await
            .unwrap();
        assert!(v.intact, "{kind}: {v:?}");
        let sql = sql.replace("{audit}", "audit").replace("{seq}", "rowid");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(&sql)
            .unwrap();
        let v = mcpgate_auth::integrity::verify_log(&store, "test.local", |_, _| true)
            .await
            .unwrap();
        assert_eq!(
            (v.intact, v.seq),
            (false, Some(seq)),
            "sqlite {kind}: {v:?}"
        );
    }
    let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must test PostgreSQL"
        );
        eprintln!("SKIPPED: PostgreSQL (MCPGATE_TEST_POSTGRES_URL is not set)");
        return;
    };
    for (kind, sql, seq) in TAMPERINGS {
        let (db, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
        let store = mcpgate_store::PostgresStore::connect(&db).await.unwrap();
        chained(&store).await;
        let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let sql = sql
            .replace("{audit}", "mcpgate_audit")
            .replace("{seq}", "seq");
        client.batch_execute(&sql).await.unwrap();
        let v = mcpgate_auth::integrity::verify_log(&store, "test.local", |_, _| true)
            .await
            .unwrap();
        assert_eq!(
            (v.intact, v.seq),
            (false, Some(seq)),
            "postgres {kind}: {v:?}"
        );
        drop((client, store));
        task.abort();
        drop_db.await;
    }
}

/// An agent says what a call counts against; the roles of the session's identity say how
/// much, and the places a session held go when it ends, whatever its agent did.
#[tokio::test]
async fn an_agent_says_what_to_count_and_the_roles_say_how_much() {
    use mcpgate_types::limits::Counter;
    let env = Env::new();
    let auth = env.open(SecondFactor::Off).await;
    let adm = admin(&auth).await;
    let role = "kind: role\nversion: v8\nmetadata: {name: metered}\nspec:\n  options:\n    mcp_limits: {calls_per_minute: 2, concurrent_calls: 1}\n";
    auth.create_resources(&adm, "r.yaml", role, false)
        .await
        .unwrap();
    let mut who = auth
        .admin_identity(Duration::from_secs(3600))
        .await
        .unwrap()
        .info;
    who.claims.name = "una".into();
    who.claims.roles = vec!["metered".into()];
    auth.open_session("s1", "edge", &who, "tools", None)
        .await
        .unwrap();
    let greedy = |concurrent| Counter {
        scope: "identity".into(),
        tool: None,
        limit: u32::MAX,
        role: "made-up".into(),
        concurrent,
    };
    for call in ["1", "2"] {
        assert_eq!(
            auth.count_call("edge", "s1", call, &[greedy(false)])
                .await
                .unwrap(),
            None
        );
    }
    let over = auth
        .count_call("edge", "s1", "3", &[greedy(false)])
        .await
        .unwrap()
        .expect("over the roles' limit");
    assert_eq!(
        (over.counter.limit, over.counter.role.as_str()),
        (2, "metered")
    );
    assert_eq!(
        auth.count_call("edge", "s1", "4", &[greedy(true)])
            .await
            .unwrap(),
        None
    );
    assert!(
        auth.count_call("edge", "s1", "5", &[greedy(true)])
            .await
            .unwrap()
            .is_some(),
        "one call at once"
    );
    // Another agent cannot count for this session.
    assert!(
        auth.count_call("other", "s1", "6", &[greedy(true)])
            .await
            .is_err()
    );
    // The session ends: its place is free, though its agent never gave it back.
    auth.close_session("s1").await.unwrap();
    auth.open_session("s2", "edge", &who, "tools", None)
        .await
        .unwrap();
    assert_eq!(
        auth.count_call("edge", "s2", "1", &[greedy(true)])
            .await
            .unwrap(),
        None
    );
}

/// An OAuth authorization from request to tokens, as the pages and the token endpoint drive
/// it: `(the code's redirect, the verifier)`.
async fn oauth_code(
    auth: &AuthService,
    client: &str,
    user: &str,
) -> (mcpgate_auth::oauth::AfterLogin, String) {
    use base64::Engine;
    let verifier = "v".repeat(43) + user;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let params = mcpgate_auth::oauth::AuthorizeParams {
        response_type: Some("code".into()),
        client_id: Some(client.into()),
        redirect_uri: Some("http://127.0.0.1:5555/cb".into()),
        state: Some("s".into()),
        scope: Some("mcp".into()),
        code_challenge: Some(challenge),
        code_challenge_method: Some("S256".into()),
        resource: Some(format!("{ISSUER}/mcp/apps/tools")),
    };
    let pending = auth
        .oauth_begin(ISSUER, &params, "browser-1", None)
        .await
        .unwrap();
    // The request belongs to the browser that opened it, and to its form.
    assert!(
        auth.oauth_pending(&pending.id, "browser-2", &pending.csrf)
            .await
            .is_err()
    );
    assert!(
        auth.oauth_pending(&pending.id, "browser-1", "forged")
            .await
            .is_err()
    );
    let pending = auth
        .oauth_pending(&pending.id, "browser-1", &pending.csrf)
        .await
        .unwrap();
    let after = auth
        .oauth_login(ISSUER, pending, user, "correct horse", None, None)
        .await
        .unwrap();
    (after, verifier)
}

const ISSUER: &str = "https://proxy.test:3080";

fn code_of(redirect: &str) -> String {
    redirect
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn oauth_tokens_expire_and_a_grant_ends_with_the_login_it_came_from() {
    use mcpgate_auth::oauth::{AfterLogin, Registration, TokenRequest};
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    signed_up(&auth, &adm, "bob", "correct horse").await;
    let client = auth
        .oauth_register(
            Registration {
                redirect_uris: vec!["http://127.0.0.1:0/cb".into()],
                client_name: Some("Tool\u{202e}Evil".into()),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(client.via, "dcr");
    let login_time = env.clock.now();

    // First time: the person is asked; the code is single-use and bound to its verifier.
    let (after, verifier) = oauth_code(&auth, &client.client_id, "bob").await;
    let AfterLogin::Consent(pending) = after else {
        panic!("a new client needs consent")
    };
    assert_eq!(pending.client_name, "Tool\\u{202e}Evil (registered itself)");
    let redirect = auth.oauth_consent(ISSUER, *pending, true).await.unwrap();
    assert!(redirect.contains(&format!("iss={}", "https%3A%2F%2Fproxy.test%3A3080")));
    let exchange = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code_of(&redirect)),
        redirect_uri: Some("http://127.0.0.1:5555/cb".into()),
        client_id: Some(client.client_id.clone()),
        code_verifier: Some(verifier),
        ..Default::default()
    };
    let tokens = auth.oauth_token(&exchange).await.unwrap();
    assert_eq!(tokens.expires_in, 600);
    let resource = format!("{ISSUER}/mcp/apps/tools");
    let bearer = auth
        .oauth_bearer(&tokens.access_token, &resource)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bearer.claims.name, "bob");
    assert_eq!(
        bearer.claims.oauth_client.as_deref(),
        Some(client.client_id.as_str())
    );
    // The session's certificate: the person's claims with the client, until the grant ends.
    let chain = auth.oauth_chain(&bearer).unwrap();
    let info =
        mcpgate_pki::tls::peer_identity(Some(&chain), "test.local", env.clock.now()).unwrap();
    assert_eq!(info.claims, bearer.claims);
    assert_eq!(
        info.not_after.duration_since(login_time).unwrap().as_secs(),
        2 * 3600,
        "role dev's max_session_ttl"
    );

    // Ten minutes later the access token is refused; the refresh token still works.
    env.clock.advance(Duration::from_secs(601));
    let refused = auth
        .oauth_bearer(&tokens.access_token, &resource)
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.why.contains("expired"), "{}", refused.why);
    let refresh = |token: &str| TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(token.into()),
        client_id: Some(client.client_id.clone()),
        ..Default::default()
    };
    let second = auth
        .oauth_token(&refresh(tokens.refresh_token.as_deref().unwrap()))
        .await
        .unwrap();
    assert!(
        auth.oauth_bearer(&second.access_token, &resource)
            .await
            .unwrap()
            .is_ok()
    );
    // Near the login's end, tokens live only as long as it has left; past it, nothing.
    env.clock.advance(Duration::from_secs(2 * 3600 - 601 - 100));
    let last = auth
        .oauth_token(&refresh(second.refresh_token.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(last.expires_in, 100);
    env.clock.advance(Duration::from_secs(100));
    let ended = auth
        .oauth_token(&refresh(last.refresh_token.as_deref().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(ended.error, "invalid_grant");
    assert!(
        auth.oauth_bearer(&last.access_token, &resource)
            .await
            .unwrap()
            .is_err()
    );

    // The consent is remembered for this person and client: straight back with a code.
    let (after, _) = oauth_code(&auth, &client.client_id, "bob").await;
    let AfterLogin::Redirect(to) = after else {
        panic!("consent is remembered")
    };
    assert!(to.starts_with("http://127.0.0.1:5555/cb?code="), "{to}");

    // What has ended is swept from storage.
    env.clock.advance(Duration::from_secs(3600));
    assert!(auth.sweep_oauth().await.unwrap() > 0);
    for prefix in [
        "oauth/grants/",
        "oauth/access/",
        "oauth/refresh/",
        "oauth/codes/",
        "oauth/requests/",
    ] {
        let left = auth.store().list(prefix).await.unwrap();
        assert!(left.is_empty(), "{prefix}: {} left", left.len());
    }
}

#[tokio::test]
async fn a_login_in_the_same_second_as_a_users_change_is_not_voided_by_it() {
    let env = Env::new();
    let (auth, adm) = with_roles(&env, SecondFactor::Off).await;
    signed_up(&auth, &adm, "bob", "correct horse").await;
    let k = key();
    let before = auth
        .login(&login_req("bob", "correct horse", None, &k), None)
        .await
        .unwrap();
    let cert = |pem: &str| {
        use rustls_pki_types::pem::PemObject;
        vec![rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()]
    };
    // The change voids every certificate issued up to the next whole second...
    auth.update_user(&adm, "bob", Some(vec!["dev".into()]), None)
        .await
        .unwrap();
    assert!(auth.caller(Some(&cert(&before.cert))).await.is_err());
    // ...but not the one of a login in that same second (the clock has not moved).
    let after = auth
        .login(&login_req("bob", "correct horse", None, &k), None)
        .await
        .unwrap();
    let caller = auth.caller(Some(&cert(&after.cert))).await.unwrap();
    assert_eq!(caller.name(), "bob");
}
