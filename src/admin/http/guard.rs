//! Protections of the HTTP API against browsers and password guessing.
//!
//! **Cross-site requests.** A page on another site can make a browser send simple requests
//! (GET, and POST with a form or text body) to the API, with credentials the browser has
//! cached. Anything else (PUT, DELETE, a JSON content type, a custom header) makes the
//! browser ask first with a CORS preflight, which this API never grants. So a request that
//! changes state must carry `Content-Type: application/json` or an `X-Requested-With`
//! header (DELETE needs neither: browsers always preflight it), and when it carries an
//! `Origin` header, that origin must be this API's own. Otherwise it is refused before any
//! credential is looked at: 415, or 403 for a foreign origin.
//!
//! **Password guessing.** Failed logins are logged with the peer's address and slow down
//! further attempts from that address: after a few failures, attempts are spaced out by a
//! delay that doubles with each failure (up to a ceiling), and attempts that would have to
//! wait too long are refused at once without checking the password. The record of peers is
//! a bounded map; failures are forgotten after a quiet minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Whether the media type is JSON (`application/json`, with or without parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `origin` (scheme://host[:port]) names the host the request was sent to. The
/// scheme may be https: behind a TLS-terminating proxy that keeps the Host header, the
/// page's origin is https while this server speaks http.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Refuses state-changing requests a browser could have sent on behalf of another site.
pub(super) fn check_cross_site(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !same_origin(origin, headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("cross-origin request refused: Origin '{origin}' is not this API's"),
            ));
        }
    }
    if *method != Method::DELETE && !is_json(headers) && !headers.contains_key("x-requested-with") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "requests that change state need Content-Type: application/json (or an X-Requested-With header)",
        ));
    }
    Ok(())
}

/// The longest path and query a request may have, as RabbitMQ's web server allows
/// (8,000 bytes): what a listing's query names (columns, sort keys, a name pattern) is
/// applied to every item listed, so its size is bounded here.
pub(super) const MAX_REQUEST_TARGET: usize = 8_000;

/// Refuses a request whose path and query are past [`MAX_REQUEST_TARGET`] with 414.
pub(super) fn check_request_target(uri: &axum::http::Uri) -> Result<(), ApiError> {
    let len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_REQUEST_TARGET {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request's path and query are {len} bytes, more than {MAX_REQUEST_TARGET}"),
        ));
    }
    Ok(())
}

/// Middleware applying [`check_request_target`] and [`check_cross_site`].
pub(super) async fn cross_site_layer(request: Request, next: Next) -> Response {
    let checked = check_request_target(request.uri())
        .and_then(|()| check_cross_site(request.method(), request.headers()));
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Failures allowed before attempts are slowed down.
const FREE_FAILURES: u32 = 3;
/// The spacing between attempts after the first slowed one; it doubles per failure.
const BASE_SPACING: Duration = Duration::from_millis(250);
/// The largest spacing between attempts: a peer guessing passwords gets one guess a
/// second at most.
const MAX_SPACING: Duration = Duration::from_secs(1);
/// Attempts that would wait longer than this are refused at once.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most peers remembered; past it the one quiet the longest is forgotten.
const MAX_PEERS: usize = 4096;

/// Failed logins of one peer.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next attempt may be checked.
    next_slot: Instant,
}

/// Failed logins per peer, and when each peer may try next.
#[derive(Debug, Default)]
pub(super) struct LoginThrottle {
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

/// Whom failures are counted against: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so single IPv6 addresses would be free to change).
pub(super) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        // The map holds no invariant a panic could break half-way.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long an attempt from `ip` must wait before its password is checked, having
    /// reserved its turn; `None` when it would wait too long and is refused.
    pub(super) fn admit(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut peers = self.lock();
        let key = peer_key(ip);
        let Some(f) = peers.get_mut(&key) else {
            return Some(Duration::ZERO);
        };
        if now.duration_since(f.last) > FORGET_AFTER {
            peers.remove(&key);
            return Some(Duration::ZERO);
        }
        if f.count < FREE_FAILURES {
            return Some(Duration::ZERO);
        }
        let slot = f.next_slot.max(now);
        let wait = slot.duration_since(now);
        if wait > MAX_WAIT {
            return None;
        }
        let doublings = (f.count - FREE_FAILURES).min(16);
        let spacing = BASE_SPACING.saturating_mul(1 << doublings).min(MAX_SPACING);
        f.next_slot = slot + spacing;
        Some(wait)
    }

    /// Records a failed login from `ip`.
    pub(super) fn failed(&self, ip: IpAddr, now: Instant) {
        let mut peers = self.lock();
        let key = peer_key(ip);
        if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
            peers.retain(|_, f| now.duration_since(f.last) <= FORGET_AFTER);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k)
            {
                peers.remove(&oldest);
            }
        }
        let f = peers.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            next_slot: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// Peers remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn state_changes_need_json_or_a_custom_header_and_their_own_origin() {
        let json = [("content-type", "application/json; charset=utf-8")];
        assert!(check_cross_site(&Method::PUT, &headers(&json)).is_ok());
        assert!(check_cross_site(&Method::GET, &headers(&[])).is_ok());
        assert!(check_cross_site(&Method::DELETE, &headers(&[])).is_ok());
        assert!(check_cross_site(&Method::POST, &headers(&[("x-requested-with", "x")])).is_ok());
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let e = check_cross_site(&Method::POST, &headers(&form)).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(check_cross_site(&Method::POST, &headers(&[])).is_err());
        let own = [
            ("content-type", "application/json"),
            ("host", "localhost:15672"),
            ("origin", "http://localhost:15672"),
        ];
        assert!(check_cross_site(&Method::PUT, &headers(&own)).is_ok());
        let foreign = [
            ("content-type", "application/json"),
            ("host", "localhost:15672"),
            ("origin", "http://evil.example"),
        ];
        let e = check_cross_site(&Method::DELETE, &headers(&foreign)).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let proxied = [
            ("content-type", "application/json"),
            ("host", "broker.example"),
            ("origin", "https://broker.example"),
        ];
        assert!(check_cross_site(&Method::PUT, &headers(&proxied)).is_ok());
        let other_port = [
            ("content-type", "application/json"),
            ("host", "localhost:15672"),
            ("origin", "http://localhost:8080"),
        ];
        assert!(check_cross_site(&Method::PUT, &headers(&other_port)).is_err());
        let null = [("content-type", "application/json"), ("origin", "null")];
        assert!(check_cross_site(&Method::POST, &headers(&null)).is_err());
    }

    #[test]
    fn long_request_targets_are_refused() {
        let at = |n: usize| -> axum::http::Uri {
            format!("/api/queues?columns={}", "a".repeat(n))
                .parse()
                .unwrap()
        };
        let base = "/api/queues?columns=".len();
        assert!(check_request_target(&at(MAX_REQUEST_TARGET - base)).is_ok());
        let e = check_request_target(&at(MAX_REQUEST_TARGET - base + 1)).unwrap_err();
        assert_eq!(e.status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn failures_space_out_attempts_and_are_forgotten() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.admit(ip, t0), Some(Duration::ZERO));
            t.failed(ip, t0);
        }
        // Concurrent attempts queue behind each other instead of all going at once.
        assert_eq!(t.admit(ip, t0), Some(Duration::ZERO));
        assert_eq!(t.admit(ip, t0), Some(BASE_SPACING));
        assert_eq!(t.admit(ip, t0), Some(BASE_SPACING * 2));
        for _ in 0..10 {
            t.failed(ip, t0);
        }
        let mut refused = false;
        for _ in 0..100 {
            if t.admit(ip, t0).is_none() {
                refused = true;
                break;
            }
        }
        assert!(refused, "attempts that would wait too long are refused");
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(t.admit(other, t0), Some(Duration::ZERO));
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.admit(ip, later), Some(Duration::ZERO));
        // One /64 is one peer.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
    }

    #[test]
    fn the_peer_map_is_bounded() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 100) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(t.len(), MAX_PEERS);
    }
}
