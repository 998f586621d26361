//! The live page at `GET /`: every service's versions side by side with
//! their weights and window figures as charts, the rollout's step and hold,
//! the guard's verdicts and trips, endpoint health, the release history, and
//! the operator's buttons.
//!
//! Four small files built into the binary (`include_str!`): nothing is
//! fetched from elsewhere, and changing the page needs no build step. The
//! page polls `/status` and `/services/{name}/history` and sends actions to
//! the admin API with the token typed into it, held in a script variable
//! only. Served with a strict Content-Security-Policy — scripts and styles
//! only from this origin, no inline code, no framing — and `nosniff`; the
//! script writes every name with `textContent`, never as markup.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::AdminResponse;

const INDEX: &str = include_str!("index.html");
const APP: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");
const ICON: &str = include_str!("icon.svg");

/// What the page may load and do: its own scripts, styles and API calls,
/// nothing inline, nothing from elsewhere, never inside a frame.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /`.
pub fn index() -> AdminResponse {
    page(INDEX, "text/html; charset=utf-8")
}

/// `GET /page/{asset}`: the script and the style sheet.
pub fn asset(name: &str) -> AdminResponse {
    match name {
        "app.js" => page(APP, "text/javascript; charset=utf-8"),
        "style.css" => page(STYLE, "text/css; charset=utf-8"),
        "icon.svg" => page(ICON, "image/svg+xml"),
        _ => super::plain(
            StatusCode::NOT_FOUND,
            "no such page asset; the page is at GET /",
        ),
    }
}

fn page(body: &'static str, content_type: &'static str) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // A new veer brings a new page: never a stale script beside a new API.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_nothing_outside_its_origin_and_runs_nothing_inline() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", APP),
            ("style.css", STYLE),
            ("icon.svg", ICON),
        ] {
            // The SVG namespace is a name, never fetched.
            let text = text
                .replace("'http://www.w3.org/2000/svg'", "")
                .replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://"), "{name} names an external URL");
            assert!(!text.contains("https://"), "{name} names an external URL");
            assert!(
                !text.contains("innerHTML"),
                "{name} writes markup from data"
            );
            assert!(!text.contains("localStorage"), "{name} stores something");
            assert!(!text.contains("sessionStorage"), "{name} stores something");
            assert!(!text.contains("document.cookie"), "{name} uses cookies");
        }
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains("style="), "inline style");
        assert!(!INDEX.contains("<style"), "inline style");
    }
}
