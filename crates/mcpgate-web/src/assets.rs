//! The dashboard's static files, embedded in the binary: no CDN, no other origin.
//!
//! htmx is vendored from npm (`htmx.org@2.0.11`, Zero-Clause BSD, its licence beside it)
//! and pinned by its SHA-384: the page asks the browser to check it (subresource
//! integrity) and a test checks the embedded bytes against the same digest.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    /// `sha384-…`, for the `integrity` attribute.
    pub integrity: &'static str,
    /// Named by version: cached for good.
    pub immutable: bool,
}

pub const HTMX: Asset = Asset {
    path: "/assets/htmx-2.0.11.min.js",
    bytes: include_bytes!("../assets/htmx-2.0.11.min.js"),
    content_type: "text/javascript; charset=utf-8",
    integrity: "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg",
    immutable: true,
};

pub const CSS: Asset = Asset {
    path: "/assets/app.css",
    bytes: include_bytes!("../assets/app.css"),
    content_type: "text/css; charset=utf-8",
    integrity: "",
    immutable: false,
};

pub const LIVE: Asset = Asset {
    path: "/assets/live.js",
    bytes: include_bytes!("../assets/live.js"),
    content_type: "text/javascript; charset=utf-8",
    integrity: "",
    immutable: false,
};

pub const ALL: [&Asset; 3] = [&HTMX, &CSS, &LIVE];

/// `GET /assets/FILE`.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = ALL
        .iter()
        .find(|a| a.path.strip_prefix("/assets/") == Some(file.as_str()))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base64(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn vendored_htmx_is_the_pinned_one() {
        let digest = ring::digest::digest(&ring::digest::SHA384, HTMX.bytes);
        assert_eq!(
            format!("sha384-{}", base64(digest.as_ref())),
            HTMX.integrity
        );
    }
}
