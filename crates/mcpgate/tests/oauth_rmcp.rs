//! `rmcp`, the Rust MCP SDK, as an OAuth client of an app at `https://PROXY/mcp/apps/NAME`:
//! its discovery, dynamic registration, PKCE and RFC 9207 issuer check against the proxy's
//! authorization server, a person's login and consent in between, then tools listed and
//! called under the person's roles.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{AuthClient, AuthorizationRequest, OAuthState};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

const ROLES: &str = "kind: role
version: v8
metadata: {name: remote}
spec:
  allow:
    app_labels: {env: remote}
    mcp: {tools: [echo]}
";

/// The value of each hidden form field of a page the proxy rendered.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name}: {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn the_rust_sdk_authorizes_with_oauth_and_calls_a_tool() {
    let s = Scratch::new();
    let marker = marker("oauth-rmcp");
    let d = gateway_daemon(
        &s,
        &recorder_app("notes", "{env: remote}", &s.path("notes.jsonl"), &marker),
        ROLES,
    );
    Person::new(&s, "alice").signup(&d, &invite(&d, "alice", "remote"));
    let url = format!("https://{}/mcp/apps/notes", d.addr);
    let issuer = format!("https://{}", d.addr);
    let ca = std::fs::read(d.data_dir.join("host-ca.pem")).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tools, text, denied) = rt.block_on(async {
        let trusted = || {
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        };
        let mut oauth = OAuthState::new(&url, Some(trusted())).await.unwrap();
        oauth
            .start_authorization(
                AuthorizationRequest::new("http://127.0.0.1:34567/callback")
                    .with_client_name("rmcp test client")
                    .with_scopes(["mcp"]),
            )
            .await
            .unwrap();
        let authorize = oauth.get_authorization_url().await.unwrap();
        assert!(authorize.starts_with(&format!("{issuer}/oauth/authorize?")));

        // The person's browser: the login form (bound to its cookie), then the consent.
        let browser = trusted();
        let page = browser.get(&authorize).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let cookie = page.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = page.text().await.unwrap();
        let post = |path: &str, body: String| {
            browser
                .post(format!("{issuer}{path}"))
                .header("cookie", &cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };
        let consent = post(
            "/oauth/authorize/login",
            form(&[
                ("request", &hidden(&page, "request")),
                ("csrf", &hidden(&page, "csrf")),
                ("username", "alice"),
                ("password", PASSWORD),
                ("otp", ""),
            ]),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        assert!(consent.contains("rmcp test client"), "{consent}");
        let back = post(
            "/oauth/authorize/consent",
            form(&[
                ("request", &hidden(&consent, "request")),
                ("csrf", &hidden(&consent, "csrf")),
                ("decision", "allow"),
            ]),
        )
        .await
        .unwrap();
        assert_eq!(back.status(), 303);
        let callback = back.headers()["location"].to_str().unwrap().to_string();
        // The SDK checks the state and the issuer, and exchanges the code with its verifier.
        oauth.handle_callback_url(&callback).await.unwrap();

        let manager = oauth.into_authorization_manager().unwrap();
        let client = AuthClient::new(trusted(), manager);
        let transport = StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(url.clone()),
        );
        let service = ().serve(transport).await.unwrap();
        let tools: Vec<String> = service
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        let args = json!({"message": "from rmcp"});
        let result = service
            .call_tool(
                CallToolRequestParams::new("echo")
                    .with_arguments(args.as_object().unwrap().clone()),
            )
            .await
            .unwrap();
        let text = serde_json::to_value(&result.content).unwrap()[0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let denied = service
            .call_tool(CallToolRequestParams::new("delete_all"))
            .await
            .unwrap_err()
            .to_string();
        let _ = service.cancel().await;
        (tools, text, denied)
    });
    assert_eq!(tools, ["echo"]);
    assert_eq!(text, r#"{"message": "from rmcp"}"#);
    assert!(denied.contains("access denied"), "{denied}");
    let calls = audit(&d, &["--tool", "echo", "--app", "notes"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user"], "alice");
    assert!(
        calls[0]["oauth_client"]
            .as_str()
            .is_some_and(|c| c.starts_with("mcpgate-")),
        "{calls:?}"
    );
}
