//! The auth service's core: bootstrap, issuance, callers, audit.

use random::random_hex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mcpgate_pki::{CaKind, CertAuthority, CertInfo, Identity};
use mcpgate_policy::Policy;
use mcpgate_store::{AnyStore, Store};
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{Role, Token, TokenKind, User};
use mcpgate_types::{AuditEvent, Claims, Clock, IdentityKind, Name};

use crate::login::RateLimiter;
use crate::wire::CertResponse;
use crate::{AuthError, Result};

/// Whether users enrol and present TOTP codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecondFactor {
    #[default]
    Otp,
    Off,
}

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub cluster: Name,
    pub second_factor: SecondFactor,
    /// A description of the storage, for `admin status`.
    pub storage: String,
    /// The key that encrypts the CA private keys in the storage (AES-256-GCM).
    pub ca_key: CaKey,
}

/// The key-encryption key of the CA private keys. Every auth instance of a cluster needs
/// the same one; the storage alone does not yield the CAs.
#[derive(Clone)]
pub struct CaKey([u8; 32]);

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaKey(..)")
    }
}

impl CaKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        CaKey(bytes)
    }

    /// A new random key.
    pub fn generate() -> Result<Self> {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| AuthError::Internal("no randomness".into()))?;
        Ok(CaKey(k))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> Result<ring::aead::LessSafeKey> {
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &self.0)
            .map_err(|_| AuthError::Internal("bad CA key".into()))?;
        Ok(ring::aead::LessSafeKey::new(key))
    }

    /// Encrypts `plain`, bound to `label`: base64(nonce ‖ ciphertext ‖ tag).
    pub(crate) fn seal(&self, label: &str, plain: &[u8]) -> Result<String> {
        use base64::Engine;
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; 12];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| AuthError::Internal("no randomness".into()))?;
        let mut data = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(label.as_bytes()),
                &mut data,
            )
            .map_err(|_| AuthError::Internal("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypts what [`Self::seal`] produced for the same `label`.
    pub(crate) fn open(&self, label: &str, sealed: &str) -> Result<Vec<u8>> {
        use base64::Engine;
        let wrong = || {
            AuthError::BadRequest(
            "the CA keys in the storage were sealed with another CA key: point auth.ca_key_file at this cluster's key".into(),
        )
        };
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| wrong())?;
        if bytes.len() < 12 + 16 {
            return Err(wrong());
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[..12]);
        let plain = self
            .aead()?
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(label.as_bytes()),
                &mut bytes[12..],
            )
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

/// Default lifetime of a user certificate.
pub const USER_TTL: Duration = Duration::from_secs(8 * 3600);
/// Lifetime of a signup invite.
pub const INVITE_TTL: Duration = Duration::from_secs(3600);
/// The name of the built-in admin identity written to the data dir.
pub const ADMIN_NAME: &str = "admin";
/// The preset role with every admin right.
pub const EDITOR_ROLE: &str = "editor";

/// The preset role for people: every app, but only the tools named in the user's
/// `mcp_tools` trait (deny by default).
pub const ACCESS_ROLE: &str = "access";

const PRESETS: &str = "kind: role
version: v8
metadata: {name: editor, description: Edit all cluster resources (preset)}
spec:
  allow:
    rules: [{resources: ['*'], verbs: ['*']}]
---
kind: role
version: v8
metadata: {name: access, description: Use the MCP tools, resources and prompts named in the user's mcp_tools, mcp_resources and mcp_prompts traits (preset)}
spec:
  allow:
    app_labels: {'*': '*'}
    mcp:
      tools: ['{{internal.mcp_tools}}']
      resources: ['{{internal.mcp_resources}}']
      prompts: ['{{internal.mcp_prompts}}']
    rules: [{resources: [cluster], verbs: [read]}]
---
kind: role
version: v8
metadata: {name: auditor, description: Read the audit log and its findings and see every resource; change nothing (preset)}
spec:
  allow:
    rules:
      - {resources: [event], verbs: [list, read]}
      - {resources: [cluster, role, app, user, bot, token, lock, agent], verbs: [list, read]}
";

/// The authenticated identity behind a request, with its roles compiled now.
#[derive(Debug, Clone)]
pub struct Caller {
    pub info: CertInfo,
    pub policy: Policy,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.info.claims.name
    }

    /// Fails unless the caller's roles allow `verb` on `kind`.
    pub fn require(&self, kind: &str, verb: &str) -> Result<()> {
        if self.policy.admin(kind, verb) {
            Ok(())
        } else {
            Err(AuthError::AccessDenied(format!(
                "{} may not {verb} {kind}",
                self.name()
            )))
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    /// The private key, sealed with the [`CaKey`].
    sealed_key: String,
}

impl StoredCa {
    fn open(&self, kind: CaKind, key: &CaKey) -> Result<CertAuthority> {
        let pem = key.open(&ca_label(kind), &self.sealed_key)?;
        let pem =
            String::from_utf8(pem).map_err(|_| AuthError::Internal("corrupt CA key".into()))?;
        Ok(CertAuthority::from_pem(kind, &self.cert_pem, &pem)?)
    }
}

fn ca_label(kind: CaKind) -> String {
    format!("mcpgate-ca-key:{}", kind.as_str())
}

/// The auth service. Cheap to share behind an `Arc`.
pub struct AuthService {
    pub(crate) store: Arc<AnyStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: AuthConfig,
    pub(crate) user_ca: CertAuthority,
    pub(crate) host_ca: CertAuthority,
    pub(crate) limiter: Mutex<RateLimiter>,
    /// The last checkpoint this instance signed (position, hash): one that disappears or
    /// goes back from it is tampering.
    pub(crate) last_signed: Mutex<Option<(i64, String)>>,
    /// Password checks that may run at once.
    pub(crate) login_permits: tokio::sync::Semaphore,
    /// Bumped on every change to roles, users or apps, so caches of policies know to reload.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// The assertion signing key in use, opened once (by key id).
    pub(crate) jwt_key: Mutex<Option<(String, Arc<ring::signature::EcdsaKeyPair>)>>,
    /// OAuth clients known by their metadata documents, fetched and cached.
    pub cimd: crate::cimd::Fetcher,
    /// Identity providers whose tokens chosen apps accept.
    pub idp: crate::idp::Issuers,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("cluster", &self.config.cluster)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// Opens the cluster's state, creating the CAs and preset roles on first start. The
    /// cluster name of existing state must match the configured one.
    pub async fn open(
        store: Arc<AnyStore>,
        clock: Arc<dyn Clock>,
        config: AuthConfig,
    ) -> Result<Self> {
        let cluster = config.cluster.as_str().to_string();
        if !store.create("cluster/name", cluster.as_bytes()).await? {
            let stored = store.get("cluster/name").await?.unwrap_or_default();
            if stored != cluster.as_bytes() {
                return Err(AuthError::BadRequest(format!(
                    "the storage belongs to cluster {:?}, not {cluster:?}",
                    String::from_utf8_lossy(&stored)
                )));
            }
        }
        let user_ca =
            load_or_create_ca(&store, &cluster, CaKind::User, &config.ca_key, clock.now()).await?;
        let host_ca =
            load_or_create_ca(&store, &cluster, CaKind::Host, &config.ca_key, clock.now()).await?;
        let svc = AuthService {
            store,
            clock,
            config,
            user_ca,
            host_ca,
            limiter: Mutex::new(RateLimiter::default()),
            last_signed: Mutex::new(None),
            login_permits: tokio::sync::Semaphore::new(4),
            epoch: std::sync::atomic::AtomicU64::new(0),
            jwt_key: Mutex::new(None),
            cimd: Default::default(),
            idp: Default::default(),
        };
        // Presets are created once; an admin may change `access` afterwards.
        let (presets, _) = mcpgate_types::resource::parse_resources("presets", PRESETS)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        for preset in presets {
            if let mcpgate_types::resource::Resource::Role(role) = preset {
                let key = role_key(role.metadata.name.as_str());
                svc.store.create(&key, &to_json(&role)?).await?;
            }
        }
        Ok(svc)
    }

    pub fn cluster(&self) -> &str {
        self.config.cluster.as_str()
    }

    /// Changes when roles, users or apps change in this process (see [`Self::bump_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn second_factor(&self) -> SecondFactor {
        self.config.second_factor
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn store(&self) -> &Arc<AnyStore> {
        &self.store
    }

    pub fn user_ca(&self) -> &CertAuthority {
        &self.user_ca
    }

    pub fn host_ca(&self) -> &CertAuthority {
        &self.host_ca
    }

    /// The pin clients use on first contact: the host CA's, which signs the proxy.
    pub fn ca_pin(&self) -> String {
        self.host_ca.pin()
    }

    /// The CA certificates a client stores: host CA first, then user CA.
    pub fn ca_pems(&self) -> Vec<String> {
        vec![
            self.host_ca.cert_pem().to_string(),
            self.user_ca.cert_pem().to_string(),
        ]
    }

    /// Claims of an identity of this cluster (no traits, generation 0).
    pub(crate) fn claims(&self, name: &str, kind: IdentityKind, roles: &[String]) -> Claims {
        Claims {
            name: name.to_string(),
            kind,
            roles: roles.to_vec(),
            traits: Default::default(),
            generation: 0,
            cluster: self.cluster().into(),
            oauth_client: None,
        }
    }

    /// Takes a single-use token of `kind` atomically; fails if it is unknown, used, expired
    /// or of another kind.
    pub(crate) async fn take_token(&self, token: &str, kind: TokenKind) -> Result<Token> {
        let bytes = self
            .store
            .take(&token_key(token))
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let t: Token = from_json(&bytes)?;
        if t.kind != kind || t.expires <= unix_secs(self.now()) {
            return Err(AuthError::InvalidToken);
        }
        Ok(t)
    }

    /// Signs `public_key` for `claims` with the CA for their kind, records `event` (with the
    /// TTL and the generation), and answers with the certificate and the CAs.
    pub(crate) async fn sign(
        &self,
        claims: &Claims,
        public_key: &str,
        ttl: Duration,
        (kind, code): (&str, &str),
    ) -> Result<CertResponse> {
        let ca = if claims.kind == IdentityKind::Host {
            &self.host_ca
        } else {
            &self.user_ca
        };
        let now = self.issue_time(claims).await?;
        let cert = ca.issue(public_key, claims, &[], now, ttl).map_err(|_| {
            AuthError::BadRequest("the public key is not a valid PEM public key".into())
        })?;
        let fields = [
            ("ttl", Value::from(ttl.as_secs())),
            ("generation", Value::from(claims.generation)),
        ];
        self.emit(self.event(kind, code, claims, true, fields))
            .await?;
        Ok(CertResponse {
            cert: pem_cert(&cert),
            cas: self.ca_pems(),
            expires: unix_secs(now + ttl),
            roles: claims.roles.clone(),
        })
    }

    /// When a credential issued now for `claims` counts as issued: now, or — when a lock
    /// voids what was issued before a time still ahead (`admin users update` voids up to the
    /// next whole second) — that time, so a login right after the change is not void too.
    /// At most a second ahead; certificates are backdated far more, so one issued "at" it is
    /// valid at once.
    pub(crate) async fn issue_time(&self, claims: &Claims) -> Result<SystemTime> {
        let now = self.now();
        let secs = unix_secs(now);
        let ahead = self
            .locks()
            .await?
            .iter()
            .filter(|l| l.applies(claims.kind, &claims.name, &claims.roles, secs, Some(secs)))
            .filter_map(|l| l.issued_before)
            .filter(|b| *b > secs && *b <= secs + 1)
            .max();
        Ok(ahead.map_or(now, mcpgate_types::clock::from_unix_secs))
    }

    /// Issues an identity (key generated here) for a host such as the proxy. It is no
    /// agent's: the proxy accepts tunnels only from certificates issued to agents.
    pub fn host_identity(&self, name: &str, sans: &[String], ttl: Duration) -> Result<Identity> {
        let claims = self.claims(name, IdentityKind::Host, &[]);
        self.local_identity(&self.host_ca, &claims, sans, ttl)
    }

    /// Issues a host identity with these claims (the in-process agent's).
    pub fn host_identity_with(&self, claims: &Claims, ttl: Duration) -> Result<Identity> {
        self.local_identity(&self.host_ca, claims, &[], ttl)
    }

    /// Issues the built-in admin identity (role `editor`) kept in the data dir.
    pub async fn admin_identity(&self, ttl: Duration) -> Result<Identity> {
        let claims = self.claims(ADMIN_NAME, IdentityKind::User, &[EDITOR_ROLE.to_string()]);
        let id = self.local_identity(&self.user_ca, &claims, &[], ttl)?;
        self.emit(self.event(
            "cert.create",
            "MG2000I",
            &claims,
            true,
            [("ttl", Value::from(ttl.as_secs()))],
        ))
        .await?;
        Ok(id)
    }

    fn local_identity(
        &self,
        ca: &CertAuthority,
        claims: &Claims,
        sans: &[String],
        ttl: Duration,
    ) -> Result<Identity> {
        let key = rcgen::KeyPair::generate().map_err(mcpgate_pki::PkiError::from)?;
        let cert = ca.issue(&key.public_key_pem(), claims, sans, self.clock.now(), ttl)?;
        Ok(Identity::new(
            &key.serialize_pem(),
            &pem_cert(&cert),
            &self.ca_pems(),
        )?)
    }

    /// Authenticates a request from its verified TLS peer certificates, on every request:
    /// validity now, the right CA for the kind, this cluster; then compiles its roles as
    /// they are stored now (a role change applies to the next request).
    pub async fn caller(
        &self,
        peer: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller> {
        let info = mcpgate_pki::tls::peer_identity(peer, self.cluster(), self.clock.now())
            .map_err(|e| AuthError::Unauthenticated(e.to_string()))?;
        if info.claims.kind == IdentityKind::Host {
            return Err(AuthError::AccessDenied(
                "host certificates cannot call the API".into(),
            ));
        }
        if let Some(lock) = self.lock_for(&info.claims, Some(info.issued())).await? {
            return Err(AuthError::AccessDenied(format!(
                "{} is locked: {}",
                lock.target, lock.message
            )));
        }
        let roles = self.roles(&info.claims.roles).await?;
        let policy = Policy::compile(&roles, &info.claims.traits)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(Caller { info, policy })
    }

    /// Loads roles by name; roles that no longer exist grant nothing.
    pub async fn roles(&self, names: &[String]) -> Result<Vec<Role>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(bytes) = self.store.get(&role_key(name)).await? {
                out.push(from_json(&bytes)?);
            }
        }
        Ok(out)
    }

    pub(crate) async fn user(&self, name: &str) -> Result<Option<User>> {
        match self.store.get(&user_key(name)).await? {
            Some(bytes) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// An audit event stamped now with a fresh id.
    pub fn event<const N: usize>(
        &self,
        kind: &str,
        code: &str,
        who: &Claims,
        success: bool,
        fields: [(&str, Value); N],
    ) -> AuditEvent {
        let map = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        new_event(
            self.cluster(),
            self.clock.now(),
            (kind, code),
            who,
            success,
            map,
        )
    }

    /// Records an event durably before the caller goes on (audit fails closed).
    pub async fn emit(&self, event: AuditEvent) -> Result<()> {
        self.store
            .append_events(std::slice::from_ref(&event))
            .await?;
        Ok(())
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

/// An audit event of `cluster` at `time` with a fresh id.
/// A new audit event (see [`AuditEvent::new`]).
pub fn new_event(
    cluster: &str,
    time: SystemTime,
    kind_code: (&str, &str),
    who: &Claims,
    success: bool,
    fields: Map<String, Value>,
) -> AuditEvent {
    AuditEvent::new(cluster, time, kind_code, who, success, fields)
}

async fn load_or_create_ca(
    store: &AnyStore,
    cluster: &str,
    kind: CaKind,
    key: &CaKey,
    now: SystemTime,
) -> Result<CertAuthority> {
    let name = format!("ca/{}", kind.as_str());
    if let Some(bytes) = store.get(&name).await? {
        return from_json::<StoredCa>(&bytes)?.open(kind, key);
    }
    let ca = CertAuthority::generate(cluster, kind, now)?;
    let stored = StoredCa {
        cert_pem: ca.cert_pem().to_string(),
        sealed_key: key.seal(&ca_label(kind), ca.key_pem().as_bytes())?,
    };
    if store.create(&name, &to_json(&stored)?).await? {
        Ok(ca)
    } else {
        // Another instance created it first: use theirs.
        let bytes = store
            .get(&name)
            .await?
            .ok_or_else(|| AuthError::Internal("CA vanished".into()))?;
        from_json::<StoredCa>(&bytes)?.open(kind, key)
    }
}

pub(crate) fn role_key(name: &str) -> String {
    format!("roles/{name}")
}
pub(crate) fn app_key(name: &str) -> String {
    format!("apps/{name}")
}
pub(crate) fn user_key(name: &str) -> String {
    format!("users/{name}")
}
pub(crate) fn token_key(token: &str) -> String {
    format!("tokens/{}", token_id(token))
}

/// Tokens are stored under a hash of themselves, so reading the storage does not reveal a
/// usable token.
pub fn token_id(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| AuthError::Internal(e.to_string()))
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| AuthError::Internal(format!("corrupt stored value: {e}")))
}

pub(crate) use mcpgate_types::hex;

/// PEM text of a DER certificate.
pub fn pem_cert(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A random identifier (16 bytes, 32 hex digits) for events and sessions.
pub fn random_id() -> String {
    random_hex(16)
}

mod random {
    use ring::rand::SecureRandom;

    /// `n` random bytes from the system CSPRNG, as hex.
    pub fn random_hex(n: usize) -> String {
        let mut bytes = vec![0u8; n];
        // The system RNG failing is unrecoverable; an all-zero id would still be unique
        // enough not to corrupt state, but tokens use `random_token`, which propagates.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        super::hex(&bytes)
    }
}

/// A random single-use secret (32 bytes, hex).
/// Whether two secrets are equal, compared in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn random_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    Ok(hex(&bytes))
}
