//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, the MCP
//! authorization specification's preferred way for a client to identify itself): the client
//! id is an https URL, and the authorization server fetches the client's metadata from it.
//!
//! The URL comes from whoever opens an authorization request, so the fetch is made safe
//! against server-side request forgery: https only; the name resolved once and every address
//! it gives must be public (no loopback, private, link-local, shared, multicast or reserved
//! range, IPv4-mapped, -compatible, NAT64 and 6to4 IPv6 forms judged by the IPv4 address they
//! carry), and the connection goes to that vetted address (no second resolution to rebind);
//! certificates checked against the system's roots; no redirects; 5 KiB at most; 5 seconds at
//! most. An optional list of domains narrows it further. Documents are kept as long as their
//! `Cache-Control` says (5 minutes when it says nothing, a day at most).

use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The largest document read.
const MAX_DOCUMENT: usize = 5 << 10;
/// The whole fetch, from resolving to the last byte.
const TIMEOUT: Duration = Duration::from_secs(6);
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Documents kept at most (those that expire soonest are dropped first).
const MAX_CACHED: usize = 1024;
/// Fetches at once.
const MAX_FETCHING: usize = 8;
/// How long a failed fetch's answer is given again without fetching.
const FAILED_TTL: Duration = Duration::from_secs(60);

/// A client's metadata as its document states it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Document {
    pub client_id: String,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// Fetches and caches client metadata documents.
pub struct Fetcher {
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Fetches at once, at most: a flood of unseen client ids waits here.
    fetching: tokio::sync::Semaphore,
    /// Client ids whose fetch failed, and until when that answer stands.
    failed: Mutex<HashMap<String, (Instant, String)>>,
    /// Tests only: private addresses allowed (a local server), with its own roots.
    private_ok: bool,
    domains: Mutex<Option<Vec<String>>>,
    cache: Mutex<HashMap<String, (Instant, Document)>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            tls: OnceLock::new(),
            fetching: tokio::sync::Semaphore::new(MAX_FETCHING),
            failed: Mutex::new(HashMap::new()),
            private_ok: false,
            domains: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

/// Whether `ip` is an address of the public internet.
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| public_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    match s {
        // ::/96, IPv4-compatible (and :: and ::1).
        [0, 0, 0, 0, 0, 0, hi, lo] => hi != 0 && embedded(hi, lo),
        // NAT64: the well-known prefix and the local-use one (64:ff9b:1::/48).
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => embedded(hi, lo),
        [0x64, 0xff9b, 1, ..] => embedded(s[6], s[7]),
        // SIIT's IPv4-translated addresses (::ffff:0:a.b.c.d).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => embedded(hi, lo),
        // 6to4 carries its IPv4 address in bits 16..48.
        [0x2002, hi, lo, ..] => embedded(hi, lo),
        _ => {
            let first = s[0];
            !(ip.is_multicast()
                || first & 0xfe00 == 0xfc00 // unique local
                || first & 0xffc0 == 0xfe80 // link-local
                || first & 0xffc0 == 0xfec0 // site-local (deprecated)
                || (first == 0x2001 && s[1] == 0x0db8) // documentation
                || (first == 0x2001 && s[1] == 0) // Teredo
                || (first == 0x0100 && s[1..4] == [0, 0, 0])) // discard
        }
    }
}

/// Whether `id` names a client by its metadata document (an https URL).
pub fn is_document_id(id: &str) -> bool {
    id.starts_with("https://")
}

/// The host, port and path of a client id URL, if it is one the draft allows: https, a
/// host, a path other than `/`, no fragment, no user information, no dot segments.
fn parse(id: &str) -> Result<(String, u16, String), String> {
    let bad = |why: &str| Err(format!("client_id {id:?} {why}"));
    if id.len() > 2000 {
        return bad("is too long");
    }
    if id.contains('#') {
        return bad("has a fragment");
    }
    let uri: axum::http::Uri = match id.parse() {
        Ok(u) => u,
        Err(_) => return bad("is not a URL"),
    };
    if uri.scheme_str() != Some("https") {
        return bad("is not an https URL");
    }
    let Some(authority) = uri.authority() else {
        return bad("has no host");
    };
    if authority.as_str().contains('@') {
        return bad("carries user information");
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if path == "/" || path.is_empty() {
        return bad("has no path");
    }
    if uri
        .path()
        .split('/')
        .any(|seg| seg == "." || seg == ".." || seg.eq_ignore_ascii_case("%2e%2e"))
    {
        return bad("has dot segments");
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, authority.port_u16().unwrap_or(443), path.to_string()))
}

/// How long a response may be kept, from its `Cache-Control`.
fn ttl(cache_control: Option<&str>) -> Option<Duration> {
    let Some(cc) = cache_control else {
        return Some(DEFAULT_TTL);
    };
    let mut ttl = DEFAULT_TTL;
    for d in cc.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return None;
        }
        if let Some(secs) = d.strip_prefix("max-age=") {
            ttl = Duration::from_secs(secs.trim_matches('"').parse().unwrap_or(0));
        }
    }
    Some(ttl.min(MAX_TTL))
}

impl Fetcher {
    /// Only clients under these domains (a domain and its subdomains); `None`: any.
    pub fn set_domains(&self, domains: Option<Vec<String>>) {
        *self.domains.lock().unwrap_or_else(|p| p.into_inner()) = domains.map(|d| {
            d.into_iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect()
        });
    }

    #[cfg(test)]
    fn for_tests(roots: rustls::RootCertStore) -> Fetcher {
        let f = Fetcher {
            private_ok: true,
            ..Fetcher::default()
        };
        let _ = f.tls.set(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ));
        f
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.get_or_init(crate::fetch::system_roots).clone()
    }

    /// The document at `id`, from the cache while it is fresh.
    pub async fn document(&self, id: &str) -> Result<Document, String> {
        if let Some((until, doc)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id)
            && *until > Instant::now()
        {
            return Ok(doc.clone());
        }
        if let Some((until, why)) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            && *until > Instant::now()
        {
            return Err(why.clone());
        }
        let _turn = self
            .fetching
            .acquire()
            .await
            .map_err(|_| "shutting down".to_string())?;
        let fetched = tokio::time::timeout(TIMEOUT, self.fetch(id))
            .await
            .map_err(|_| {
                format!(
                    "the client metadata at {id} took longer than {} s",
                    TIMEOUT.as_secs()
                )
            })
            .and_then(|r| r);
        let (doc, keep) = match fetched {
            Ok(f) => f,
            Err(why) => {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                failed.retain(|_, (until, _)| *until > now);
                if failed.len() < MAX_CACHED {
                    failed.insert(id.to_string(), (now + FAILED_TTL, why.clone()));
                }
                return Err(why);
            }
        };
        if let Some(keep) = keep.filter(|k| !k.is_zero()) {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED
                && let Some(soonest) = cache
                    .iter()
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&soonest);
            }
            cache.insert(id.to_string(), (now + keep, doc.clone()));
        }
        Ok(doc)
    }

    async fn fetch(&self, id: &str) -> Result<(Document, Option<Duration>), String> {
        let (host, port, path) = parse(id)?;
        if let Some(domains) = self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let h = host.to_ascii_lowercase();
            if !domains
                .iter()
                .any(|d| h == *d || h.ends_with(&format!(".{d}")))
            {
                return Err(format!(
                    "client_id {id:?}: clients from {host} are not accepted here"
                ));
            }
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("client_id {id:?}: cannot resolve {host}: {e}"))?
                .collect(),
        };
        // Every address the name gives must be public: one private answer among public ones
        // is how a rebinding attack would get in.
        if addrs.is_empty() || (!self.private_ok && addrs.iter().any(|a| !public(a.ip()))) {
            return Err(format!(
                "client_id {id:?}: {host} is not a public internet address"
            ));
        }
        let answer = crate::fetch::at(addrs[0], &host, &path, self.tls(), MAX_DOCUMENT)
            .await
            .map_err(|e| format!("client_id {id:?}: {e}"))?;
        if answer.status.is_redirection() {
            return Err(format!(
                "client_id {id:?}: the server answered with a redirect, which is not followed"
            ));
        }
        if answer.status != axum::http::StatusCode::OK {
            return Err(format!(
                "client_id {id:?}: the server answered {}",
                answer.status
            ));
        }
        let keep = ttl(answer.cache_control.as_deref());
        let body = answer.body;
        let doc: Document = serde_json::from_slice(&body)
            .map_err(|e| format!("client_id {id:?}: the document is not client metadata: {e}"))?;
        if doc.client_id != id {
            return Err(format!(
                "client_id {id:?}: the document names another client_id ({:?})",
                doc.client_id
            ));
        }
        if doc.client_secret.is_some()
            || doc
                .token_endpoint_auth_method
                .as_deref()
                .is_some_and(|m| m != "none")
        {
            return Err(format!(
                "client_id {id:?}: only public clients (token_endpoint_auth_method none) are supported"
            ));
        }
        if doc.redirect_uris.is_empty() {
            return Err(format!(
                "client_id {id:?}: the document has no redirect_uris"
            ));
        }
        Ok((doc, keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched_from() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!public(private.parse().unwrap()), "{private}");
        }
        for ok in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::",
        ] {
            assert!(public(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn client_id_urls_as_the_draft_allows_them() {
        assert_eq!(
            parse("https://app.example/oauth/client.json").unwrap(),
            ("app.example".into(), 443, "/oauth/client.json".into())
        );
        assert_eq!(
            parse("https://[::1]:8443/c").unwrap(),
            ("::1".into(), 8443, "/c".into())
        );
        for bad in [
            "http://app.example/client.json",
            "https://app.example/",
            "https://app.example",
            "https://app.example/a#b",
            "https://u:p@app.example/client.json",
            "https://app.example/a/../client.json",
            "https://app.example/./client.json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_control_sets_how_long_a_document_is_kept() {
        assert_eq!(ttl(None), Some(DEFAULT_TTL));
        assert_eq!(ttl(Some("max-age=60")), Some(Duration::from_secs(60)));
        assert_eq!(ttl(Some("public, max-age=999999")), Some(MAX_TTL));
        assert_eq!(ttl(Some("no-store")), None);
    }

    type Reply = Box<dyn Fn(u16) -> String + Send + Sync>;

    /// A TLS server on loopback (a certificate for `localhost`) answering every request with
    /// `reply(its port)` (raw HTTP); counts the connections it accepted.
    async fn server_at(
        reply: impl Fn(u16) -> String,
    ) -> (
        u16,
        rustls::RootCertStore,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![ca.cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(ca.signing_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = reply(port);
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, roots, hits)
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    fn id(port: u16) -> String {
        format!("https://localhost:{port}/client.json")
    }

    fn doc(port: u16, extra: &str) -> String {
        format!(
            r#"{{"client_id":"{}","client_name":"Example","redirect_uris":["http://127.0.0.1:5000/cb"]{extra}}}"#,
            id(port)
        )
    }

    #[tokio::test]
    async fn a_document_is_fetched_checked_and_cached_and_nothing_else_is_followed() {
        // A good document, kept for its max-age: one fetch for two lookups.
        let (port, roots, hits) =
            server_at(|p| answer("200 OK", "cache-control: max-age=60\r\n", &doc(p, ""))).await;
        let f = Fetcher::for_tests(roots);
        let got = f.document(&id(port)).await.unwrap();
        assert_eq!(got.client_name.as_deref(), Some("Example"));
        assert_eq!(got.redirect_uris, ["http://127.0.0.1:5000/cb"]);
        f.document(&id(port)).await.unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A redirect is not followed; too large, another client_id, a secret: refused.
        let cases: Vec<(Reply, &str)> = vec![
            (
                Box::new(|_| answer("302 Found", "location: https://127.0.0.1/\r\n", "")),
                "redirect",
            ),
            (
                Box::new(|p| {
                    let pad = format!(r#","pad":"{}""#, "x".repeat(6000));
                    answer("200 OK", "", &doc(p, &pad))
                }),
                "larger than",
            ),
            (
                Box::new(|_| {
                    answer(
                        "200 OK",
                        "",
                        r#"{"client_id":"https://other.example/c","redirect_uris":["https://a/cb"]}"#,
                    )
                }),
                "another client_id",
            ),
            (
                Box::new(|p| answer("200 OK", "", &doc(p, r#","client_secret":"s""#))),
                "public clients",
            ),
        ];
        for (reply, why) in cases {
            let (port, roots, _) = server_at(reply).await;
            let e = Fetcher::for_tests(roots)
                .document(&id(port))
                .await
                .unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }

        // Without the tests' exception, a loopback document is never even connected to.
        let (port, _, hits) = server_at(|p| answer("200 OK", "", &doc(p, ""))).await;
        let e = Fetcher::default().document(&id(port)).await.unwrap_err();
        assert!(e.contains("not a public internet address"), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
