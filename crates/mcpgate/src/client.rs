//! The CLI's HTTPS client of the proxy API: one TLS connection per command, certificate
//! errors explained in plain words.

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use mcpgate_auth::wire::ErrorBody;
use mcpgate_pki::Identity;
use mcpgate_pki::tls::{self, ALPN_HTTP1, PIN_MISMATCH};
use mcpgate_types::SystemClock;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 64 << 20;

/// A client of the proxy's HTTPS API.
pub struct Api {
    addr: String,
    host: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    /// First contact: trust the proxy only if its CA has `pin`.
    pub fn pinned(addr: &str, pin: &str) -> anyhow::Result<Api> {
        if !mcpgate_pki::cert::is_valid_pin(pin) {
            bail!(
                "invalid CA pin {pin:?}: expected sha256: and 64 hex digits, as printed by `mcpgate start`"
            );
        }
        let tls = tls::pinned_client_config(pin, None, Arc::new(SystemClock), &[ALPN_HTTP1])?;
        Api::new(addr, tls)
    }

    /// Trust the CAs of `identity` and present its certificate.
    pub fn with_identity(addr: &str, identity: &Identity) -> anyhow::Result<Api> {
        let tls = tls::client_config(
            &identity.ca_certs,
            Some(identity),
            Arc::new(SystemClock),
            &[ALPN_HTTP1],
        )?;
        Api::new(addr, tls)
    }

    fn new(addr: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Api> {
        let host = host_of(addr)
            .ok_or_else(|| anyhow!("invalid proxy address {addr:?}: expected HOST:PORT"))?;
        Ok(Api {
            addr: addr.to_string(),
            host,
            tls,
        })
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let result = async {
            let mut conn = self.connect().await?;
            let answer = self.send(&mut conn, method, path, body).await;
            conn.task.abort();
            answer
        }
        .await;
        let (status, bytes) = result.map_err(|e| self.explain(e))?;
        decode(status, &bytes)
    }

    /// Opens a TLS connection to the proxy and an HTTP/1.1 session on it.
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to the proxy at {}", self.addr))?
            .with_context(|| format!("cannot reach the proxy at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| anyhow!("invalid proxy host {:?}", self.host))?;
        let stream = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            task: tokio::spawn(conn),
        })
    }

    /// One request on an open connection.
    async fn send<B: Serialize>(
        &self,
        conn: &mut Conn,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let body = match body {
            Some(b) => Full::new(Bytes::from(serde_json::to_vec(b)?)),
            None => Full::new(Bytes::new()),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json")
            .body(body)?;
        let sent = match conn.sender.ready().await {
            Ok(()) => conn.sender.send_request(req).await,
            Err(e) => Err(e),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // The connection task knows why it closed (a TLS alert, for one): prefer that.
                if let Ok(Ok(Err(cause))) =
                    tokio::time::timeout(Duration::from_secs(2), &mut conn.task).await
                {
                    return Err(anyhow::Error::new(cause));
                }
                return Err(e.into());
            }
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::Error::from_boxed(e).context("reading the proxy's answer"))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Turns TLS failures into sentences a user can act on.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        let chain = || {
            e.chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ")
        };
        if let Some(tls) = find_rustls(&e) {
            use rustls::{AlertDescription as A, CertificateError as C, Error as R};
            return match tls {
                R::General(m) if m.contains(PIN_MISMATCH) => anyhow!(
                    "refusing to talk to {}: {PIN_MISMATCH} (check --ca-pin against the pin `mcpgate start` printed)",
                    self.addr
                ),
                R::AlertReceived(A::CertificateExpired) => {
                    anyhow!(
                        "the proxy refused your certificate: it has expired; run `mcpgate login` again"
                    )
                }
                R::AlertReceived(
                    A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::CertificateRevoked,
                ) => {
                    anyhow!(
                        "the proxy refused your certificate ({tls}); it may belong to another cluster"
                    )
                }
                R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    anyhow!("the certificate of the proxy at {} has expired", self.addr)
                }
                R::InvalidCertificate(_) => anyhow!(
                    "the proxy at {} presented a certificate this client does not trust: {tls}",
                    self.addr
                ),
                other => anyhow!("TLS with the proxy at {} failed: {other}", self.addr),
            };
        }
        if text.contains("connection closed before message completed")
            || text.contains("unexpected end of file")
        {
            return anyhow!(
                "the proxy at {} closed the connection ({})",
                self.addr,
                chain()
            );
        }
        e
    }
}

fn find_rustls(e: &anyhow::Error) -> Option<&rustls::Error> {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
    }
    None
}

/// An HTTP/1.1 connection to the proxy and the task driving it.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<hyper::Result<()>>,
}

/// An answer's body as `R`, or the proxy's error sentence.
fn decode<R: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> anyhow::Result<R> {
    if status.is_success() {
        return serde_json::from_slice(bytes).context("the proxy sent an unexpected answer");
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => Err(anyhow!(e.error)),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let first = text.lines().next().unwrap_or_default();
            Err(anyhow!("the proxy answered {status}: {first}"))
        }
    }
}

/// Calls over one connection kept open between them (reopened once if it dropped), for
/// daemons that talk to the proxy all the time.
pub struct KeepAlive {
    api: Api,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl KeepAlive {
    pub fn new(api: Api) -> KeepAlive {
        KeepAlive {
            api,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let mut slot = self.conn.lock().await;
        for attempt in 0..2 {
            let reused = slot.as_ref().is_some_and(|c| !c.sender.is_closed());
            if !reused {
                *slot = Some(self.api.connect().await.map_err(|e| self.api.explain(e))?);
            }
            let Some(conn) = slot.as_mut() else { continue };
            match self.api.send(conn, method.clone(), path, body).await {
                Ok((status, bytes)) => return decode(status, &bytes),
                Err(e) => {
                    if let Some(c) = slot.take() {
                        c.task.abort();
                    }
                    // A kept connection the proxy closed meanwhile: try once on a new one.
                    if !(reused && attempt == 0) {
                        return Err(self.api.explain(e));
                    }
                }
            }
        }
        Err(anyhow!("the proxy at {} did not answer", self.api.addr))
    }
}

/// The host part of `HOST:PORT` or `[v6]:PORT`.
/// The proxy's port when an address names none.
pub const DEFAULT_PORT: u16 = 3080;

/// A proxy address as a person may write it — `HOST`, `HOST:PORT`, `https://HOST[:PORT][/]`,
/// `[::1]:PORT` — as `HOST:PORT`.
pub fn proxy_addr(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.starts_with("http://") {
        return Err(format!(
            "{text:?}: the proxy speaks only TLS; write https://HOST[:PORT] or HOST:PORT"
        ));
    }
    let t = t
        .strip_prefix("https://")
        .unwrap_or(t)
        .trim_end_matches('/');
    if t.contains('/') || t.is_empty() {
        return Err(format!("{text:?} is not a proxy address (HOST[:PORT])"));
    }
    let bare_ipv6 = !t.starts_with('[') && t.matches(':').count() > 1;
    let addr = if bare_ipv6 {
        if t.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{text:?} is not a proxy address (HOST[:PORT])"));
        }
        format!("[{t}]:{DEFAULT_PORT}")
    } else if host_of(t).is_some() {
        t.to_string()
    } else if (t.starts_with('[') && t.ends_with(']')) || !t.contains(':') {
        format!("{t}:{DEFAULT_PORT}")
    } else {
        return Err(format!("{text:?} is not a proxy address (HOST[:PORT])"));
    };
    Ok(addr)
}

pub fn host_of(addr: &str) -> Option<String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        port.parse::<u16>().ok()?;
        return Some(host.to_string());
    }
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn proxy_addresses_as_people_write_them() {
        use super::proxy_addr;
        for (given, want) in [
            ("gate.example.com", "gate.example.com:3080"),
            ("gate.example.com:443", "gate.example.com:443"),
            ("https://gate.example.com", "gate.example.com:3080"),
            ("https://gate.example.com:8443/", "gate.example.com:8443"),
            ("127.0.0.1:3080", "127.0.0.1:3080"),
            ("[::1]", "[::1]:3080"),
            ("[::1]:4000", "[::1]:4000"),
            ("::1", "[::1]:3080"),
        ] {
            assert_eq!(proxy_addr(given).as_deref(), Ok(want), "{given}");
        }
        for bad in [
            "http://gate",
            "gate:port",
            "https://gate/path",
            "",
            "a:b:c",
            "[::1]:abc",
        ] {
            assert!(proxy_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:3080").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            host_of("gate.example.com:443").as_deref(),
            Some("gate.example.com")
        );
        assert_eq!(host_of("[::1]:3080").as_deref(), Some("::1"));
        assert_eq!(host_of("nohost"), None);
        assert_eq!(host_of(":3080"), None);
        assert_eq!(host_of("h:port"), None);
    }
}
