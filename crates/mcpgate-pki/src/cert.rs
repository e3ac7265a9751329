//! Reading certificates: claims, validity, issuer, pins.

use rustls_pki_types::CertificateDer;
use std::time::SystemTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use mcpgate_types::Claims;

use crate::PkiError;

/// The OID of the mcpgate claims extension (private arc; JSON in an OCTET STRING).
pub const CLAIMS_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 99999, 7, 1];

/// What a certificate says and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub claims: Claims,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
}

impl CertInfo {
    /// When the certificate was issued (its validity starts a little earlier, for clock
    /// skew), in Unix seconds.
    pub fn issued(&self) -> i64 {
        mcpgate_types::clock::unix_secs(self.not_before + crate::ca::BACKDATE)
    }

    /// Parses a certificate issued by an mcpgate CA.
    pub fn parse(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::Certificate(e.to_string()))?;
        let oid = x509_parser::oid_registry::Oid::from(CLAIMS_OID)
            .map_err(|_| PkiError::Claims("bad oid".into()))?;
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .ok_or_else(|| PkiError::Claims("no claims extension".into()))?;
        let (_, content) = x509_parser::der_parser::der::parse_der_octetstring(ext.value)
            .map_err(|e| PkiError::Claims(e.to_string()))?;
        let bytes = content
            .as_slice()
            .map_err(|e| PkiError::Claims(e.to_string()))?;
        let claims: Claims =
            serde_json::from_slice(bytes).map_err(|e| PkiError::Claims(e.to_string()))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        if cn != claims.name {
            return Err(PkiError::Claims(
                "common name does not match the claims".into(),
            ));
        }
        let validity = cert.validity();
        Ok(CertInfo {
            claims,
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
            issuer: cert.issuer().to_string(),
        })
    }

    /// The common name of a certificate's issuer, if it parses.
    pub fn issuer_cn(der: &[u8]) -> Option<String> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        cert.issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    }

    /// Whether the certificate is valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn pin_of_cert(der: &CertificateDer<'_>) -> Result<String, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Certificate(e.to_string()))?;
    Ok(pin_of_spki(cert.tbs_certificate.subject_pki.raw))
}

/// Whether `sig` (ECDSA P-256, SHA-256, ASN.1) over `msg` was made with the key of the
/// certificate `der`: what checks a CA's signature where only its certificate is at hand.
pub fn signed_by_cert(der: &CertificateDer<'_>, msg: &[u8], sig: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &cert.tbs_certificate.subject_pki.subject_public_key.data,
        )
        .verify(msg, sig)
        .is_ok()
    })
}

/// `sha256:<hex>` of SubjectPublicKeyInfo bytes.
pub fn pin_of_spki(spki: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    format!("sha256:{}", mcpgate_types::hex(digest.as_ref()))
}

/// Whether `pin` is written as `sha256:` and 64 lowercase hex digits.
pub fn is_valid_pin(pin: &str) -> bool {
    pin.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
