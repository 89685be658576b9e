//! Browser sessions for the web UI.
//!
//! `POST /api/login` with `{"username", "password"}` checks the password as basic auth
//! would (the same throttle, the same tags rule, guest only from loopback) and sets a
//! session cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it), `Path=/`, and a lifetime. The answer carries a CSRF token that the page keeps
//! in memory only; every request that changes state under a session must send it back in
//! `X-CSRF-Token`, so a forged request that somehow carried the cookie still fails.
//! `GET /api/session` hands a reloaded page its user and token again; `POST /api/logout`
//! ends the session.
//!
//! A session names a user, not the user's rights: each request looks the user up again, so
//! a deleted user or a removed tag ends what the session may do at once. Sessions expire
//! after [`IDLE`] without a request and [`LIFETIME`] after login. A user keeps at most
//! [`MAX_SESSIONS_PER_USER`] (a login past that ends the user's least recently used), and
//! at most [`MAX_SESSIONS`] are kept in all: a login past that ends the least recently used
//! session of the user holding the most, so that no user's logins end others' sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::super::nodefile::{new_token, same_secret};
use super::serve::OverTls;
use super::{ApiError, ApiResult, State};

/// The cookie's name.
pub(super) const COOKIE: &str = "warren_session";
/// A session ends this long after its last request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, however busy.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 4096;
/// Most sessions one user keeps at once.
pub const MAX_SESSIONS_PER_USER: usize = 64;
/// An internal header carrying a valid session's user to the handlers; any value a client
/// sent under this name is removed.
pub(super) const SESSION_USER_HEADER: &str = "x-warren-session-user";
/// The header a state-changing request under a session carries its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Clone)]
struct Session {
    user: String,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) < IDLE && now.duration_since(self.created) < LIFETIME
    }
}

/// The live sessions, by cookie value.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Each entry is written whole: a panic cannot leave one half-changed.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `user`; returns its cookie value and CSRF token.
    fn start(&self, user: &str, now: Instant) -> std::io::Result<(String, String)> {
        let id = new_token()?;
        let csrf = new_token()?;
        let mut map = self.lock();
        map.retain(|_, s| s.live(now));
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        for s in map.values() {
            *per_user.entry(s.user.as_str()).or_default() += 1;
        }
        // The user's own least recently used session makes room when it has its share;
        // otherwise, when all are taken, that of the user holding the most.
        let evict_from = if per_user.get(user).copied().unwrap_or(0) >= MAX_SESSIONS_PER_USER {
            Some(user.to_string())
        } else if map.len() >= MAX_SESSIONS {
            per_user
                .iter()
                .max_by_key(|(u, n)| (**n, std::cmp::Reverse(**u)))
                .map(|(u, _)| u.to_string())
        } else {
            None
        };
        if let Some(victim) = evict_from
            && let Some(oldest) = map
                .iter()
                .filter(|(_, s)| s.user == victim)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        assert!(map.len() <= MAX_SESSIONS, "sessions are bounded");
        debug_assert!(
            map.values().filter(|s| s.user == user).count() <= MAX_SESSIONS_PER_USER,
            "a user's sessions are bounded"
        );
        Ok((id, csrf))
    }

    /// The live session with this cookie value, marked used.
    fn touch(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.lock();
        let live = map.get(id).is_some_and(|s| s.live(now));
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_used = now;
        Some(s.clone())
    }

    fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Ends every session of `user` (after a failed re-check: the user is gone or lost
    /// its management tags).
    pub(super) fn end_user(&self, user: &str) {
        self.lock().retain(|_, s| s.user != user);
    }
}

/// The session cookie's value in a request, if it has one.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Middleware: a request without an `Authorization` header but with a live session's
/// cookie is marked with the session's user ([`SESSION_USER_HEADER`]); a state-changing one
/// must carry the session's CSRF token, or it is refused with 403.
pub(super) async fn session_layer(s: State, mut request: Request, next: Next) -> Response {
    request.headers_mut().remove(SESSION_USER_HEADER);
    let has_basic = request.headers().contains_key(header::AUTHORIZATION);
    let cookie = cookie_of(request.headers());
    if let (false, Some(id)) = (has_basic, cookie) {
        if let Some(session) = s.sessions.touch(&id, Instant::now()) {
            let safe = matches!(*request.method(), Method::GET | Method::HEAD);
            let token_ok = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| same_secret(t, &session.csrf));
            let logging_in = request.uri().path() == "/api/login";
            if !safe && !token_ok && !logging_in {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "missing or wrong CSRF token for this session",
                )
                .into_response();
            }
            if let Ok(v) = HeaderValue::from_str(&session.user) {
                request.headers_mut().insert(SESSION_USER_HEADER, v);
            }
        }
    }
    next.run(request).await
}

/// What a login form sends.
#[derive(Debug, Deserialize)]
pub(super) struct Login {
    username: String,
    password: String,
}

fn set_cookie(value: &str, max_age: Duration, tls: OverTls) -> HeaderValue {
    let secure = if tls.0 { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&cookie).expect("a cookie of hex digits is a header value")
}

/// Whether the request came over HTTPS (requests built in tests carry no mark).
fn over_tls(tls: Option<Extension<OverTls>>) -> OverTls {
    tls.map_or(OverTls(false), |Extension(t)| t)
}

/// `POST /api/login`.
pub(super) async fn login(
    s: State,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("expected {{\"username\", \"password\"}}: {e}"))
    })?;
    let who = super::login_with_password(&s, &headers, &login.username, &login.password).await?;
    let (id, csrf) = s.sessions.start(&who.name, Instant::now()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    tracing::info!(user = ?who.name, "web UI login");
    let mut response =
        axum::Json(json!({ "name": who.name, "tags": who.tags, "csrf_token": csrf }))
            .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, LIFETIME, over_tls(tls)));
    Ok(response)
}

/// `GET /api/session`: the session's user and CSRF token, for a page that was reloaded.
pub(super) async fn session(s: State, headers: HeaderMap) -> ApiResult {
    let who = super::authenticate(&s, &headers).await?;
    let session = cookie_of(&headers)
        .and_then(|id| s.sessions.touch(&id, Instant::now()))
        .filter(|_| headers.contains_key(SESSION_USER_HEADER))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "no session"))?;
    super::ok_json(json!({ "name": who.name, "tags": who.tags, "csrf_token": session.csrf }))
}

/// `POST /api/logout`: ends the session (the CSRF check already ran) and clears the cookie.
pub(super) async fn logout(
    s: State,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
) -> ApiResult {
    if let Some(id) = cookie_of(&headers) {
        s.sessions.end(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie("", Duration::ZERO, over_tls(tls)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_or_old_and_stay_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, csrf) = sessions.start("ann", t0).unwrap();
        assert_eq!(csrf.len(), 64);
        assert_eq!(sessions.touch(&id, t0 + IDLE / 2).unwrap().user, "ann");
        // Used within the idle time, again and again, it still ends at its lifetime.
        let mut t = t0;
        while t + IDLE / 2 < t0 + LIFETIME {
            t += IDLE / 2;
            assert!(sessions.touch(&id, t).is_some());
        }
        assert!(sessions.touch(&id, t0 + LIFETIME).is_none());
        let (id2, _) = sessions.start("bob", t0).unwrap();
        assert!(sessions.touch(&id2, t0 + IDLE).is_none(), "idle too long");
        for i in 0..MAX_SESSIONS + 10 {
            sessions.start(&format!("u{i}"), t0).unwrap();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn one_users_logins_do_not_end_other_users_sessions() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (ann, _) = sessions.start("ann", t0).unwrap();
        let (bob, _) = sessions.start("bob", t0).unwrap();
        // Many logins of one user end only that user's own least recently used sessions.
        let mut mallory = Vec::new();
        for i in 0..MAX_SESSIONS + 100 {
            let t = t0 + Duration::from_millis(i as u64 + 1);
            mallory.push(sessions.start("mallory", t).unwrap().0);
        }
        let now = t0 + Duration::from_secs(10);
        assert!(
            sessions.touch(&ann, now).is_some(),
            "ann's session survived"
        );
        assert!(
            sessions.touch(&bob, now).is_some(),
            "bob's session survived"
        );
        let kept = mallory
            .iter()
            .filter(|id| sessions.lock().contains_key(*id))
            .count();
        assert_eq!(kept, MAX_SESSIONS_PER_USER);
        assert!(
            sessions.lock().contains_key(mallory.last().unwrap()),
            "the newest is kept"
        );
        // With every place taken by many users, a login ends a session of the user holding
        // the most, not the oldest session of all.
        let sessions = Sessions::default();
        let (ann, _) = sessions.start("ann", t0).unwrap();
        let users = MAX_SESSIONS / MAX_SESSIONS_PER_USER;
        for u in 0..users {
            for i in 0..MAX_SESSIONS_PER_USER {
                let t = t0 + Duration::from_millis((u * MAX_SESSIONS_PER_USER + i) as u64 + 1);
                sessions.start(&format!("u{u}"), t).unwrap();
            }
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert!(
            sessions.touch(&ann, now).is_some(),
            "ann's one session survived"
        );
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warren_session=abc; b=2"),
        );
        assert_eq!(cookie_of(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xwarren_session=abc"),
        );
        assert_eq!(cookie_of(&h), None);
    }
}
