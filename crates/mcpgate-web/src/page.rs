//! The page shell and the headers every dashboard response carries.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use std::time::SystemTime;

use crate::assets;
use crate::session::Viewer;

/// No inline script or style anywhere, nothing from another origin, never framed.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Adds the security headers to every dashboard response.
pub(crate) async fn secure(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The sections of the navigation, each shown to those whose roles may list its kind.
const NAV: &[(&str, &str, Option<&str>)] = &[
    ("/", "Overview", None),
    ("/audit", "Audit", None),
    ("/audit/live", "Live", None),
    ("/findings", "Findings", Some("event")),
    ("/apps", "Apps", Some("app")),
    ("/users", "Users", Some("user")),
    ("/bots", "Bots", Some("bot")),
    ("/tokens", "Tokens", Some("token")),
    ("/locks", "Locks", Some("lock")),
    ("/roles", "Roles", Some("role")),
];

fn head(title: &str, scripts: &[&str]) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx without the inline style it would add and without eval (strict CSP); error
            // pages (403, 400 with the form's reason) are shown, not dropped.
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"responseHandling":[{"code":"204","swap":false},{"code":"...","swap":true}]}"#;
            title { (title) " · mcpgate" }
            link rel="stylesheet" href=(assets::CSS.path);
            script src=(assets::HTMX.path) integrity=(assets::HTMX.integrity) defer {}
            @for s in scripts {
                script src=(s) defer {}
            }
        }
    }
}

/// A page of the dashboard: navigation for what the viewer may see, then `body`.
pub(crate) fn shell(v: &Viewer, title: &str, body: Markup) -> Response {
    shell_with(v, title, &[], body)
}

pub(crate) fn shell_with(v: &Viewer, title: &str, scripts: &[&str], body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, scripts))
            body hx-boost="true" {
                header {
                    nav {
                        span.brand { "mcpgate" }
                        @for (href, label, kind) in NAV {
                            @if kind.is_none_or(|k| v.can(k, "list")) {
                                @if *href == "/audit/live" {
                                    a href=(href) hx-boost="false" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                        span.who { (v.name()) }
                        form.logout method="post" action="/logout" hx-boost="false" {
                            input type="hidden" name="csrf" value=(v.csrf());
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page with no navigation: login, errors.
pub(crate) fn bare(status: StatusCode, title: &str, message: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, &[]))
            body {
                main.narrow {
                    h1 { (title) }
                    p.message { (message) }
                    p { a href="/" { "Back to the dashboard" } }
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// A page with no navigation around `body`.
pub(crate) fn bare_with(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, &[]))
            body { main.narrow { h1 { (title) } (body) } }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// UTC, to the second, as people read it: `2026-12-02 18:53:30`.
pub(crate) fn time(t: SystemTime) -> String {
    let s = mcpgate_types::audit::rfc3339_micros::format(t);
    // `2026-12-02T18:53:30.123456Z` → `2026-12-02 18:53:30`
    s.get(..19).map(|p| p.replace('T', " ")).unwrap_or(s)
}

/// Percent-encodes a query-string value (everything but unreserved characters).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from pairs whose value is not empty.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// JSON, indented, for a `<pre>`.
pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
