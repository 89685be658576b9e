//! HTTP requests to the management API with exact control of the headers sent.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::Ctx;

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// Status and the start of the body, for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.status,
            self.body.chars().take(160).collect::<String>()
        )
    }
}

pub const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// Percent-encodes a path segment (vhost "/" is "%2F").
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Sends a request: `headers` are sent as given (nothing is added but Host and, with a
/// body, Content-Length).
pub fn request(
    ctx: &Ctx,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<Reply, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut builder =
        ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{}", ctx.http_url(), path));
    if let Some((u, p)) = auth {
        builder = builder.header("authorization", basic(u, p));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = match body {
        Some(b) => agent.run(builder.body(b).map_err(|e| e.to_string())?),
        None => agent.run(builder.body(()).map_err(|e| e.to_string())?),
    }
    .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response.into_body().read_to_string().unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A JSON request as guest.
pub fn json(ctx: &Ctx, method: &str, path: &str, body: &Value) -> Result<Reply, String> {
    request(
        ctx,
        method,
        path,
        GUEST,
        &[("content-type", "application/json")],
        Some(body.to_string()),
    )
}

/// A JSON request as guest with a body given as text (for bodies serde_json would not
/// build, such as nesting past its own limit).
pub fn json_text(ctx: &Ctx, method: &str, path: &str, body: String) -> Result<Reply, String> {
    request(
        ctx,
        method,
        path,
        GUEST,
        &[("content-type", "application/json")],
        Some(body),
    )
}

pub fn get(ctx: &Ctx, path: &str) -> Result<Reply, String> {
    request(ctx, "GET", path, GUEST, &[], None)
}

pub fn delete(ctx: &Ctx, path: &str) -> Result<Reply, String> {
    request(ctx, "DELETE", path, GUEST, &[], None)
}

/// Whether a queue exists in "/" (GET over HTTP).
pub fn queue_exists(ctx: &Ctx, name: &str) -> Result<bool, String> {
    let r = get(ctx, &format!("/api/queues/%2F/{}", seg(name)))?;
    match r.status {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(format!("GET queue {name}: {}", r.summary())),
    }
}

pub fn exchange_exists(ctx: &Ctx, name: &str) -> Result<bool, String> {
    let r = get(ctx, &format!("/api/exchanges/%2F/{}", seg(name)))?;
    match r.status {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(format!("GET exchange {name}: {}", r.summary())),
    }
}
