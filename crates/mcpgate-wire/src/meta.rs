//! What travels beside the bytes of a tunnel: who opened a stream, and what an agent serves.

use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use mcpgate_types::resource::App;

/// Who opened a stream, as the proxy saw it. The agent verifies the certificates itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMeta {
    pub app: String,
    pub addr: SocketAddr,
    /// DER certificates, base64.
    pub certs: Vec<String>,
    /// The session id the proxy recorded for this stream: the agent's events of this
    /// session carry it, and the auth service stores them only for the agent it was
    /// routed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// What an agent serves, sent when the tunnel opens and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub agent: String,
    /// The apps it serves now.
    pub apps: Vec<App>,
    /// Its selectors of cluster apps, so the proxy can route an app created a moment ago.
    #[serde(default)]
    pub selectors: Vec<BTreeMap<String, String>>,
    /// The agent's mcpgate version.
    #[serde(default)]
    pub version: String,
    /// The tools each app's server offers (summaries, unfiltered: the proxy filters them
    /// for each caller).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, Vec<serde_json::Value>>,
}

/// Whether an agent with these `agent.resources` selectors serves a cluster app: every
/// label of some selector matches (`*` as a value matches any; `"*": "*"` matches all apps).
pub fn selects(selectors: &[BTreeMap<String, String>], app: &App) -> bool {
    selectors
        .iter()
        .any(|sel| mcpgate_types::resource::labels_match(sel, &app.metadata.labels))
}

/// DER certificates as base64 strings, for [`OpenMeta::certs`].
pub fn encode_certs(certs: &[CertificateDer<'_>]) -> Vec<String> {
    certs
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
        .collect()
}

/// The certificates of [`OpenMeta::certs`]; `None` if any is not base64.
pub fn decode_certs(certs: &[String]) -> Option<Vec<CertificateDer<'static>>> {
    certs
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .map(CertificateDer::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn certs_round_trip_and_garbage_is_refused() {
        let certs = vec![
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![]),
        ];
        let back = decode_certs(&encode_certs(&certs)).unwrap();
        assert_eq!(back, certs);
        assert!(decode_certs(&["not base64!".into()]).is_none());
    }
}
