//! Identity files: PEM blocks in order — private key, certificate, CA certificates.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;
use crate::cert::CertInfo;

/// A client or host identity: key, certificate and the CAs it trusts.
#[derive(Debug)]
pub struct Identity {
    pub key: PrivateKeyDer<'static>,
    pub key_pem: String,
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    /// The CA certificates: the host CA (to check the proxy) and the user CA.
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub ca_pems: Vec<String>,
    pub info: CertInfo,
}

impl Identity {
    /// Builds an identity from its PEM parts.
    pub fn new(key_pem: &str, cert_pem: &str, ca_pems: &[String]) -> Result<Self, PkiError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::Pem(format!("private key: {e}")))?;
        let cert = certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem("no certificate".into()))?;
        let mut ca_certs = Vec::new();
        for pem in ca_pems {
            ca_certs.extend(certs_from_pem(pem)?);
        }
        let info = CertInfo::parse(&cert)?;
        Ok(Identity {
            key,
            key_pem: key_pem.to_string(),
            cert,
            cert_pem: cert_pem.to_string(),
            ca_certs,
            ca_pems: ca_pems.to_vec(),
            info,
        })
    }

    /// Parses an identity file.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let blocks = pem_blocks(text);
        let mut blocks = blocks.into_iter();
        let key = blocks
            .next()
            .filter(|b| b.contains("PRIVATE KEY"))
            .ok_or_else(|| PkiError::Pem("an identity file starts with a private key".into()))?;
        let cert = blocks
            .next()
            .filter(|b| b.contains("BEGIN CERTIFICATE"))
            .ok_or_else(|| {
                PkiError::Pem("the private key must be followed by a certificate".into())
            })?;
        let cas: Vec<String> = blocks.collect();
        if cas.is_empty() {
            return Err(PkiError::Pem(
                "the identity file holds no CA certificate".into(),
            ));
        }
        Identity::new(&key, &cert, &cas)
    }

    /// The identity file's text.
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for block in std::iter::once(&self.key_pem)
            .chain([&self.cert_pem])
            .chain(&self.ca_pems)
        {
            out.push_str(block.trim_end());
            out.push('\n');
        }
        out
    }
}

/// All certificates in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))
}

/// The text of each `-----BEGIN ...-----` ... `-----END ...-----` block.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                out.extend(current.take());
            }
        }
    }
    out
}
