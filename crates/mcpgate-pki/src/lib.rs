//! Certificates: the cluster's two authorities, the certificates they issue, identity files
//! and the rustls configurations that check them.
//!
//! - [`ca`]: [`CertAuthority`] — generate, persist, issue client and host certificates.
//! - [`cert`]: read the [`Claims`](mcpgate_types::Claims) back out of a certificate; CA pins.
//! - [`identity`]: the PEM identity file (key, certificate, CA certificates).
//! - [`tls`]: rustls server and client configs with an injected clock and pin checking.
//!
//! One crypto provider everywhere: ring (rustls, rcgen).

pub mod ca;
pub mod cert;
pub mod identity;
pub mod tls;

pub use ca::{CaKind, CertAuthority};
pub use cert::{CertInfo, pin_of_cert};
pub use identity::Identity;

/// Errors of certificate work.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate that does not parse as X.509.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// A certificate without valid mcpgate claims.
    #[error("certificate carries no valid mcpgate identity: {0}")]
    Claims(String),
    /// A PEM file that is not what it should be.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}
