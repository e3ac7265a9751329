//! A certificate authority of the cluster.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;
use std::time::{Duration, SystemTime};

use mcpgate_types::Claims;

use crate::PkiError;
use crate::cert::{CLAIMS_OID, pin_of_cert};

/// Which authority: the user CA signs user and bot certificates, the host CA signs proxy and
/// agent certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    User,
    Host,
}

impl CaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CaKind::User => "user",
            CaKind::Host => "host",
        }
    }
}

/// A CA: its self-signed certificate and private key (ECDSA P-256).
pub struct CertAuthority {
    kind: CaKind,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
/// Certificates start a minute early to tolerate clock skew between hosts.
pub const BACKDATE: Duration = Duration::from_secs(60);

impl CertAuthority {
    /// Generates a new CA valid for ten years from `now`.
    pub fn generate(cluster: &str, kind: CaKind, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_name(cluster, kind);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Self::from_pem(kind, &cert_pem, &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key in PEM.
    pub fn from_pem(kind: CaKind, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = crate::identity::certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem("no CA certificate".into()))?;
        Ok(Self {
            kind,
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
    }

    pub fn kind(&self) -> CaKind {
        self.kind
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key in PKCS#8 PEM, for storage. Handle with care.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs `msg` with the CA's key (ECDSA P-256 with SHA-256, an ASN.1 signature): what
    /// vouches for the audit log's checkpoints.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        Ok(rcgen::SigningKey::sign(self.issuer.key(), msg)?)
    }

    /// Whether `sig` is this CA's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            self.issuer.key().public_key_raw(),
        )
        .verify(msg, sig)
        .is_ok()
    }

    /// `sha256:<hex>` of the CA's public key: what clients pin on first contact.
    pub fn pin(&self) -> String {
        // Sound: our own certificate always parses.
        pin_of_cert(&self.cert_der).unwrap_or_default()
    }

    /// Issues a certificate for `public_key_pem` carrying `claims`, valid from `now` until
    /// `now + ttl`. Host certificates also get `sans` and may serve TLS.
    pub fn issue(
        &self,
        public_key_pem: &str,
        claims: &Claims,
        sans: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let public_key = SubjectPublicKeyInfo::from_pem(public_key_pem)
            .map_err(|_| PkiError::Pem("invalid public key".into()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, claims.name.as_str());
        dn.push(DnType::OrganizationName, claims.cluster.as_str());
        params.distinguished_name = dn;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(serial()?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if self.kind == CaKind::Host {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            for san in sans {
                params.subject_alt_names.push(match san.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(san.as_str().try_into()?),
                });
            }
        }
        let json = serde_json::to_vec(claims).map_err(|e| PkiError::Claims(e.to_string()))?;
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                CLAIMS_OID,
                der_octet_string(&json),
            ));
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&public_key, &self.issuer)?.der().clone())
    }
}

fn ca_name(cluster: &str, kind: CaKind) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("mcpgate {} CA", kind.as_str()));
    dn.push(DnType::OrganizationName, cluster);
    dn
}

fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Tls("no randomness".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// DER OCTET STRING around `content` (the extension value is an OCTET STRING of JSON).
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}
