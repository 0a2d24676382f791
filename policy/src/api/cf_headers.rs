//! The headers CF's policy server puts on every external answer, and its CORS preflight:
//! `X-Content-Type-Options: nosniff`, `X-XSS-Protection: 1; mode=block`,
//! `X-Frame-Options: deny`, `Content-Security-Policy: frame-ancestors 'none'`;
//! `OPTIONS` on a known path answers 200 with `Access-Control-Allow-Methods` (the methods of the
//! routes on that path) and `Access-Control-Allow-Headers: authorization`; an `Origin` among the
//! allowed CORS domains (or `*`) is echoed as `Access-Control-Allow-Origin`
//! (`handlers/cors_options_handler.go`, `no_sniff_header_handler.go`,
//! `x_xss_protection_handler.go`).
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The external routes as CF lists them (its order decides the order of the allowed methods),
/// then Tapestry's own; `:v` matches one segment as CF's `:version` (`\w+`), `*` any non-empty
/// segment.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/networking"),
    ("GET", "/health"),
    ("GET", "/networking/:v/external/whoami"),
    ("POST", "/networking/:v/external/policies"),
    ("POST", "/networking/:v/external/policies/delete"),
    ("GET", "/networking/:v/external/policies"),
    ("POST", "/networking/:v/external/policies/cleanup"),
    ("GET", "/networking/:v/external/tags"),
    ("DELETE", "/networking/:v/external/apps/*"),
    ("GET", "/networking/:v/external/security_groups"),
    ("POST", "/networking/:v/external/security_groups"),
    ("GET", "/networking/:v/external/security_groups/*"),
    ("PUT", "/networking/:v/external/security_groups/*"),
    ("DELETE", "/networking/:v/external/security_groups/*"),
    ("GET", "/networking/:v/external/routes"),
    ("POST", "/networking/:v/external/routes"),
    ("POST", "/networking/:v/external/routes/delete"),
    ("GET", "/networking/:v/external/leases"),
    ("POST", "/networking/:v/external/leases"),
];

fn matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(":v"), Some(seg))
                if !seg.is_empty()
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {}
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b && a != ":v" && a != "*" => {}
            _ => return false,
        }
    }
}

/// The methods allowed on `path` (`GET,POST,OPTIONS`), or `None` for an unknown path.
pub fn allowed_methods(path: &str) -> Option<String> {
    let mut methods: Vec<&str> = Vec::new();
    for (m, p) in ROUTES {
        if matches(p, path) && !methods.contains(m) {
            methods.push(m);
        }
    }
    if methods.is_empty() {
        return None;
    }
    methods.push("OPTIONS");
    Some(methods.join(","))
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The middleware: answers the preflight and adds the headers to every answer.
pub async fn layer(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .and_then(|o| {
            s.cors_domains
                .iter()
                .find(|d| d.as_str() == o || d.as_str() == "*")
                .cloned()
        });
    let preflight = if req.method() == Method::OPTIONS {
        allowed_methods(req.uri().path())
    } else {
        None
    };
    let mut resp = match &preflight {
        Some(_) => StatusCode::OK.into_response(),
        None => next.run(req).await,
    };
    let h = resp.headers_mut();
    if let Some(methods) = &preflight {
        set(h, "access-control-allow-methods", methods);
        set(h, "access-control-allow-headers", "authorization");
    }
    if let Some(o) = origin {
        set(h, "access-control-allow-origin", &o);
    }
    set(h, "x-frame-options", "deny");
    set(h, "content-security-policy", "frame-ancestors 'none'");
    set(h, "x-xss-protection", "1; mode=block");
    set(h, "x-content-type-options", "nosniff");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_per_path_in_cfs_order() {
        assert_eq!(
            allowed_methods("/networking/v1/external/policies").as_deref(),
            Some("POST,GET,OPTIONS")
        );
        assert_eq!(
            allowed_methods("/networking/v0/external/policies/cleanup").as_deref(),
            Some("POST,OPTIONS")
        );
        assert_eq!(allowed_methods("/").as_deref(), Some("GET,OPTIONS"));
        assert_eq!(
            allowed_methods("/networking/v1/external/apps/some-app").as_deref(),
            Some("DELETE,OPTIONS")
        );
        assert_eq!(allowed_methods("/networking/v-1/external/policies"), None);
        assert_eq!(allowed_methods("/nope"), None);
        assert_eq!(allowed_methods("/networking//external/tags"), None);
    }
}
