//! rustls configurations: the proxy's server config (optional client certificates), client
//! configs trusting the cluster's CAs, and the pinned config used on first contact.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::{Arc, RwLock};

use mcpgate_types::{Clock, IdentityKind};

use crate::PkiError;
use crate::ca::CaKind;
use crate::cert::{CertInfo, pin_of_cert};
use crate::identity::Identity;

/// ALPN of the MCP stream from a client bridge.
pub const ALPN_MCP: &[u8] = b"mcpgate-mcp/1";
/// ALPN of an agent's reverse tunnel: HTTP/2 with the streams opened by the proxy (`/2`;
/// `/1` was a hand-made frame multiplexer, so old agents fail the handshake cleanly).
pub const ALPN_TUNNEL: &[u8] = b"mcpgate-tunnel/2";
/// ALPN of the HTTPS API.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// rustls reads the time from the injected clock, so expiry is testable.
#[derive(Debug)]
struct ClockTime(Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        self.0
            .now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .ok()
            .map(UnixTime::since_unix_epoch)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store.add(c.clone()).map_err(tls_err)?;
    }
    Ok(Arc::new(store))
}

/// The server certificate a TLS listener presents, replaceable while it runs (renewal).
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot presenting `host` and the CA certificates after it.
    pub fn new(host: &Identity) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(CertSlot(RwLock::new(certified(host)?))))
    }

    /// Presents `host` to new connections from now on.
    pub fn replace(&self, host: &Identity) -> Result<(), PkiError> {
        let key = certified(host)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

fn certified(host: &Identity) -> Result<Arc<CertifiedKey>, PkiError> {
    let mut chain = vec![host.cert.clone()];
    chain.extend(host.ca_certs.iter().cloned());
    let key = provider()
        .key_provider
        .load_private_key(host.key.clone_key())
        .map_err(tls_err)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The proxy's TLS config: presents the slot's certificate (and its CA), accepts client
/// certificates signed by `client_cas` but does not require one (login needs none; every
/// other endpoint checks).
pub fn server_config(
    cert: Arc<CertSlot>,
    client_cas: &[CertificateDer<'static>],
    clock: Arc<dyn Clock>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_cas)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    let mut config = ServerConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed session would keep a client certificate that has
    // since expired without checking it again. Every connection verifies in full.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client config that trusts `cas` and presents `client`, if any.
pub fn client_config(
    cas: &[CertificateDer<'static>],
    client: Option<&Identity>,
    clock: Arc<dyn Clock>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots(cas)?);
    finish_client(builder, client, alpn)
}

/// A client config for first contact: trusts the server only if its chain holds a CA whose
/// public key has `pin`. Nothing is sent to a server that fails this check.
pub fn pinned_client_config(
    pin: &str,
    client: Option<&Identity>,
    clock: Arc<dyn Clock>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            pin: pin.to_string(),
        }));
    finish_client(builder, client, alpn)
}

fn finish_client(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    client: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = match client {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
            .map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The message of a pin mismatch, recognisable by clients.
pub const PIN_MISMATCH: &str = "the cluster's CA does not match the CA pin";

#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| pin_of_cert(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let roots =
            roots(&[ca.clone().into_owned()]).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        // A pinned CA that did not sign the proxy's certificate (the user CA's fingerprint
        // given for the pin, say) is the same mistake as any other wrong pin.
        inner
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    rustls::Error::General(PIN_MISMATCH.into())
                }
                e => e,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads the identity of a TLS peer whose chain rustls has verified against the cluster's
/// CAs, and checks that the CA that signed it may sign that kind of identity and that it
/// is valid now. Call it on every request, not once per connection.
pub fn peer_identity(
    peer_certs: Option<&[CertificateDer<'_>]>,
    cluster: &str,
    now: std::time::SystemTime,
) -> Result<CertInfo, PkiError> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or_else(|| PkiError::Certificate("no client certificate".into()))?;
    let info = CertInfo::parse(leaf)?;
    let expected_ca = match info.claims.kind {
        IdentityKind::User | IdentityKind::Bot => CaKind::User,
        IdentityKind::Host => CaKind::Host,
    };
    if !info
        .issuer
        .contains(&format!("CN=mcpgate {} CA", expected_ca.as_str()))
    {
        return Err(PkiError::Claims(format!(
            "a {} certificate must be signed by the {} CA",
            info.claims.kind.as_str(),
            expected_ca.as_str()
        )));
    }
    if info.claims.cluster != cluster {
        return Err(PkiError::Claims("certificate of another cluster".into()));
    }
    if !info.valid_at(now) {
        return Err(PkiError::Certificate(
            "certificate expired or not yet valid".into(),
        ));
    }
    Ok(info)
}
