//! One HTTPS GET, for what the auth service fetches itself: client metadata documents
//! (`cimd`, with its address checks) and identity providers' keys (`idp`). HTTP/1.1 over
//! rustls, no redirects followed, the body capped.

use http_body_util::{BodyExt, Limited};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The whole request, from connecting to the last byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A client configuration trusting `roots`, speaking HTTP/1.1.
pub(crate) fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(roots.clone())
            .with_no_client_auth()
    })
    .unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    });
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// The system's roots, read once.
pub(crate) fn system_roots() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Arc::new(client_config(roots))
    })
    .clone()
}

/// What a server answered.
pub(crate) struct Answer {
    pub status: axum::http::StatusCode,
    pub cache_control: Option<String>,
    pub body: bytes::Bytes,
}

/// `GET path` from `host` (its certificate checked for that name) at `addr`, the body at
/// most `max` bytes.
pub(crate) async fn at(
    addr: SocketAddr,
    host: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    max: usize,
) -> Result<Answer, String> {
    tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host} is not a valid host name"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host} failed: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let port = addr.port();
        let authority = match (port, host.contains(':')) {
            (443, false) => host.to_string(),
            (443, true) => format!("[{host}]"),
            (_, false) => format!("{host}:{port}"),
            (_, true) => format!("[{host}]:{port}"),
        };
        let req = axum::http::Request::get(path)
            .header(axum::http::header::HOST, authority)
            .header(axum::http::header::ACCEPT, "application/json")
            .header(axum::http::header::USER_AGENT, "mcpgate")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let cache_control = res
            .headers()
            .get(axum::http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = if status.is_redirection() {
            bytes::Bytes::new()
        } else {
            Limited::new(res.into_body(), max)
                .collect()
                .await
                .map_err(|_| format!("the document is larger than {max} bytes"))?
                .to_bytes()
        };
        Ok(Answer {
            status,
            cache_control,
            body,
        })
    })
    .await
    .map_err(|_| format!("{host} took longer than {} s", TIMEOUT.as_secs()))?
}

/// `GET url` (https; the name resolved as usual: for URLs an admin configured), which must
/// answer 200.
pub(crate) async fn get(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    max: usize,
) -> Result<bytes::Bytes, String> {
    let uri: axum::http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    if uri.scheme_str() != Some("https") {
        return Err("not an https URL".into());
    }
    let authority = uri.authority().ok_or("no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(443);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let a = at(addr, &host, path, tls, max).await?;
    if a.status != axum::http::StatusCode::OK {
        return Err(format!("the server answered {}", a.status));
    }
    Ok(a.body)
}
