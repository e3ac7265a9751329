//! Login, logout and who is looking.
//!
//! The session cookie is `__Host-` prefixed, `Secure`, `HttpOnly` and `SameSite=Strict`, and
//! lives no longer than the session (which lives no longer than the user's certificate
//! would). Every form carries the session's CSRF token; the login form, before there is a
//! session, carries a random value that must equal a short-lived cookie of its own.

use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use std::sync::Arc;

use mcpgate_auth::api::ConnInfo;
use mcpgate_auth::web::WebSession;
use mcpgate_auth::{AuthError, Caller, SecondFactor};
use mcpgate_types::clock::unix_secs;

use crate::{Web, WebError, WebResult, page};

pub(crate) const COOKIE: &str = "__Host-mcpgate_session";
const LOGIN_COOKIE: &str = "__Host-mcpgate_login";

/// The person (or bot) behind a request, checked on this request.
pub(crate) struct Viewer {
    pub caller: Caller,
    pub session: WebSession,
}

impl Viewer {
    pub fn name(&self) -> &str {
        self.caller.name()
    }

    /// Whether `e` is the viewer's own: their name and their kind (a bot or host of the
    /// same name is someone else).
    pub fn owns(&self, e: &mcpgate_types::AuditEvent) -> bool {
        e.user == self.name() && e.user_kind == Some(self.caller.info.claims.kind)
    }

    /// The filter that keeps a viewer who may not list events to their own: `(user, kind)`.
    pub fn own_filter(&self) -> (Option<String>, Option<String>) {
        if self.can("event", "list") {
            (None, None)
        } else {
            (
                Some(self.name().to_string()),
                Some(self.caller.info.claims.kind.as_str().to_string()),
            )
        }
    }

    /// Whether the viewer's roles allow `verb` on `kind`.
    pub fn can(&self, kind: &str, verb: &str) -> bool {
        self.caller.policy.admin(kind, verb)
    }

    pub fn csrf(&self) -> &str {
        &self.session.csrf
    }

    /// Fails unless `given` is this session's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), WebError> {
        if same(given, &self.session.csrf) {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "the form is stale or came from another site; reload the page and try again".into(),
            ))
        }
    }
}

use mcpgate_auth::service::same_secret as same;

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    let v = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

/// Who is looking: the session behind the cookie, valid and unlocked now.
pub(crate) async fn viewer(web: &Web, headers: &HeaderMap) -> Result<Viewer, WebError> {
    let token = cookie(headers, COOKIE).ok_or(WebError::Login)?;
    let (caller, session) = web.auth.web_caller(token).await?;
    Ok(Viewer { caller, session })
}

#[derive(Deserialize, Default)]
pub(crate) struct Next {
    next: Option<String>,
}

/// Only a path on this site: made of the characters a URL path and query hold as they
/// are (no whitespace or control characters, which browsers drop, turning `/\t/host` into
/// `//host`; no `\`), and never `//host`.
fn local(next: Option<&str>) -> &str {
    let plain = |n: &str| {
        n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%?".contains(&b))
    };
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && plain(n) => n,
        _ => "/",
    }
}

fn login_page(
    web: &Web,
    status: StatusCode,
    csrf: &str,
    next: &str,
    error: Option<&str>,
) -> Response {
    let otp_required = web.auth.second_factor() == SecondFactor::Otp;
    let body = html! {
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            (login_fields(otp_required))
            button type="submit" { "Log in" }
        }
        p.hint { "The same account as " code { "mcpgate login" } "." }
    };
    let mut r = page::bare_with(status, &format!("Log in to {}", web.auth.cluster()), body);
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, csrf, 600));
    r
}

/// `GET /login`.
pub(crate) async fn form(State(web): State<Arc<Web>>, Query(q): Query<Next>) -> WebResult {
    let csrf = mcpgate_auth::service::random_token().map_err(WebError::from)?;
    Ok(login_page(
        &web,
        StatusCode::OK,
        &csrf,
        local(q.next.as_deref()),
        None,
    ))
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    otp: String,
    csrf: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: the same checks as `mcpgate login`, then the session cookie.
pub(crate) async fn login(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> WebResult {
    let fresh = mcpgate_auth::service::random_token().map_err(WebError::from)?;
    let next = local(Some(&f.next)).to_string();
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same(c, &f.csrf)) {
        return Ok(login_page(
            &web,
            StatusCode::FORBIDDEN,
            &fresh,
            &next,
            Some("The login form expired; try again."),
        ));
    }
    let otp = Some(f.otp.trim()).filter(|o| !o.is_empty());
    match web
        .auth
        .web_login(&f.username, &f.password, otp, Some(conn.addr.ip()))
        .await
    {
        Ok(login) => {
            let max_age = login.session.expires - unix_secs(std::time::SystemTime::now());
            let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(COOKIE, &login.token, max_age.max(1)),
            );
            h.append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
            Ok(r)
        }
        Err(e) if let Some(status) = refused_login(&e) => Ok(login_page(
            &web,
            status,
            &fresh,
            &next,
            Some(&e.to_string()),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The status a login form answers a refused login with (shown on the form again), or
/// `None` for an error that is not the person's.
pub(crate) fn refused_login(e: &AuthError) -> Option<StatusCode> {
    match e {
        AuthError::InvalidCredentials | AuthError::OtpReused => Some(StatusCode::UNAUTHORIZED),
        AuthError::RateLimited => Some(StatusCode::TOO_MANY_REQUESTS),
        AuthError::AccessDenied(_) => Some(StatusCode::FORBIDDEN),
        _ => None,
    }
}

/// The login form's fields, named as people's password managers and the OAuth flow expect
/// them (`username`, `password`, `otp`).
pub(crate) fn login_fields(otp_required: bool) -> maud::Markup {
    html! {
        label { "User name" input name="username" autocomplete="username" required autofocus; }
        label { "Password" input name="password" type="password" autocomplete="current-password" required; }
        label {
            @if otp_required { "One-time code" } @else { "One-time code (if you enrolled one)" }
            input name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required[otp_required];
        }
    }
}

/// `GET /logout`: a button, since logging out changes state.
pub(crate) async fn logout_form(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    Ok(page::shell(
        &v,
        "Log out",
        html! {
            form method="post" action="/logout" hx-boost="false" {
                input type="hidden" name="csrf" value=(v.csrf());
                button type="submit" { "Log out of " (web.auth.cluster()) }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends the session and forgets the cookie.
pub(crate) async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    v.check_csrf(&f.csrf)?;
    if let Some(token) = cookie(&headers, COOKIE) {
        web.auth.web_logout(token).await?;
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, clear_cookie(COOKIE));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::local;

    #[test]
    fn next_is_only_ever_a_path_here() {
        for ok in ["/", "/audit?user=bob&decision=deny", "/audit/events/a%2Fb"] {
            assert_eq!(local(Some(ok)), ok);
        }
        for bad in [
            "//evil.example/",
            "/\t/evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "/\n/evil",
            "/ /evil",
            "evil",
        ] {
            assert_eq!(local(Some(bad)), "/", "{bad:?}");
        }
    }
}
