//! The web UI's sessions: the page is served with its security headers, a login sets an
//! HttpOnly SameSite=Strict cookie, state changes under it need the CSRF token, a user
//! without a management tag is refused, and logging out or deleting the user ends it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::Server;

struct Answer {
    status: u16,
    cookie: Option<String>,
    body: Value,
    headers: Vec<(String, String)>,
}

/// One request with the given headers; the session cookie, if one is given, goes along.
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let response = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.content_type("application/json")
                .send(body.map(|b| b.to_string()).unwrap_or_default())
        }
    }
    .expect("HTTP request");
    let status = response.status().as_u16();
    let all: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let cookie = all
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone());
    let text = response.into_body().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        cookie,
        body,
        headers: all,
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_page_is_served_with_its_security_headers() {
    let server = Server::start();
    let page = call("GET", &format!("{}/", server.http_url()), &[], None);
    assert_eq!(page.status, 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert!(header(&page, "content-security-policy").contains("frame-ancestors 'none'"));
    assert!(matches!(&page.body, Value::String(s) if s.contains("/ui/app.js")));
    let js = call(
        "GET",
        &format!("{}/ui/app.js", server.http_url()),
        &[],
        None,
    );
    assert_eq!(js.status, 200);
    assert!(header(&js, "content-type").starts_with("text/javascript"));
    let none = call(
        "GET",
        &format!("{}/ui/../../etc/passwd", server.http_url()),
        &[],
        None,
    );
    assert_eq!(none.status, 404);
}

#[test]
fn sessions_need_the_csrf_token_and_end_with_logout_or_the_user() {
    let server = Server::start();
    server.ctl_ok(&["add_user", "xjk", "123"]);
    server.ctl_ok(&["set_user_tags", "xjk", "administrator"]);
    server.ctl_ok(&["add_user", "plain", "pw"]);
    let url = |p: &str| format!("{}{p}", server.http_url());

    let wrong = call(
        "POST",
        &url("/api/login"),
        &[],
        Some(json!({"username": "xjk", "password": "no"})),
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.cookie.is_none());
    let untagged = call(
        "POST",
        &url("/api/login"),
        &[],
        Some(json!({"username": "plain", "password": "pw"})),
    );
    assert_eq!(untagged.status, 401);
    assert_eq!(untagged.body["reason"], "Not management user");
    assert!(untagged.cookie.is_none());

    let login = call(
        "POST",
        &url("/api/login"),
        &[],
        Some(json!({"username": "xjk", "password": "123"})),
    );
    assert_eq!(login.status, 200, "{:?}", login.body);
    let set = login.cookie.expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(part), "{set} lacks {part}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = login.body["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(login.body["tags"], json!(["administrator"]));

    // Reads need only the cookie; the session hands a reloaded page its token again.
    let me = call("GET", &url("/api/session"), &[("cookie", &cookie)], None);
    assert_eq!(me.status, 200);
    assert_eq!(me.body["csrf_token"], csrf.as_str());
    assert_eq!(
        call("GET", &url("/api/overview"), &[("cookie", &cookie)], None).status,
        200
    );

    // A change without the token, or with another, is refused and does nothing.
    let vhost = url("/api/vhosts/made-by-session");
    let bare = call("PUT", &vhost, &[("cookie", &cookie)], Some(json!({})));
    assert_eq!(bare.status, 403);
    let forged = call(
        "PUT",
        &vhost,
        &[("cookie", &cookie), ("x-csrf-token", &"0".repeat(64))],
        Some(json!({})),
    );
    assert_eq!(forged.status, 403);
    let foreign = call(
        "PUT",
        &vhost,
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "http://evil.example"),
        ],
        Some(json!({})),
    );
    assert_eq!(foreign.status, 403);
    assert!(!server.ctl_ok(&["list_vhosts"]).contains("made-by-session"));
    let ok = call(
        "PUT",
        &vhost,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        Some(json!({})),
    );
    assert_eq!(ok.status, 201, "{:?}", ok.body);

    // A client cannot claim a session user with the internal header.
    let claimed = call(
        "GET",
        &url("/api/overview"),
        &[("x-warren-session-user", "xjk")],
        None,
    );
    assert_eq!(claimed.status, 401);

    // Logging out ends the session.
    let out = call(
        "POST",
        &url("/api/logout"),
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        None,
    );
    assert_eq!(out.status, 204);
    assert!(out.cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(
        call("GET", &url("/api/overview"), &[("cookie", &cookie)], None).status,
        401
    );

    // Removing the user's tags ends what a live session may do at once.
    let again = call(
        "POST",
        &url("/api/login"),
        &[],
        Some(json!({"username": "xjk", "password": "123"})),
    );
    let cookie = again.cookie.unwrap().split(';').next().unwrap().to_string();
    assert_eq!(
        call("GET", &url("/api/overview"), &[("cookie", &cookie)], None).status,
        200
    );
    server.ctl_ok(&["set_user_tags", "xjk"]);
    assert_eq!(
        call("GET", &url("/api/overview"), &[("cookie", &cookie)], None).status,
        401
    );
    server.ctl_ok(&["set_user_tags", "xjk", "administrator"]);
    assert_eq!(
        call("GET", &url("/api/overview"), &[("cookie", &cookie)], None).status,
        401,
        "the session ended; restoring the tag does not revive it"
    );
}
