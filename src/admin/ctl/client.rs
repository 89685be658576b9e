//! The HTTP side of `warren ctl`: one node's management API, authenticated by the node
//! file's token or basic auth.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::super::nodefile::{NodeFile, registered};
use super::{CtlArgs, CtlResult, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_UNAVAILABLE, Failure};

/// Talks to one node's HTTP API.
pub(super) struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
    pub(super) node_name: String,
}

/// A response: status and parsed JSON body (null when empty).
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl Client {
    pub(super) fn new(args: &CtlArgs, default_data_dir: PathBuf) -> CtlResult<Client> {
        let basic = |user: &str, pass: &str| {
            let raw = format!("{user}:{pass}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        let (base, auth, node_name) = match &args.node {
            Some(url) if url.contains("://") => {
                let (Some(user), Some(pass)) = (&args.username, &args.password) else {
                    return Err(Failure::usage(
                        "--node URL needs --username and --password (or WARREN_USERNAME/WARREN_PASSWORD)",
                    ));
                };
                (url.clone(), basic(user, pass), url.clone())
            }
            name => {
                let nf = find_local_node(args, name.as_deref(), default_data_dir)?;
                let auth = match (&args.username, &args.password) {
                    (Some(u), Some(p)) => basic(u, p),
                    _ => format!("Bearer {}", nf.token),
                };
                (nf.url, auth, nf.node)
            }
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build();
        Ok(Client {
            agent: config.into(),
            base: base.trim_end_matches('/').to_string(),
            auth,
            node_name,
        })
    }

    pub(super) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> CtlResult<Answer> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| Failure {
            code: EX_UNAVAILABLE,
            message: format!(
                "Error: unable to perform an operation on node '{}'. Please see diagnostics information and suggestions below.\n\n{url}: {e}\n\nIs the node running (`warren serve`)?",
                self.node_name
            ),
        };
        let payload = body.map(Value::to_string);
        let response = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                r = r.header("authorization", &self.auth);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            _ => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                r = r.header("authorization", &self.auth);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.content_type("application/json")
                    .send(payload.unwrap_or_default())
            }
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(unreachable)?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status == 401 {
            let reason = body["reason"].as_str().unwrap_or("not authorised");
            return Err(Failure {
                code: EX_UNAVAILABLE,
                message: format!("Error: access refused by the node: {reason}"),
            });
        }
        Ok(Answer { status, body })
    }

    /// A request that must succeed (2xx); otherwise fails with the node's reason.
    pub(super) fn must(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> CtlResult<Value> {
        let a = self.request(method, path, body, headers)?;
        if (200..300).contains(&a.status) {
            return Ok(a.body);
        }
        let reason = reason_of(&a);
        let code = match a.status {
            404 if reason.starts_with("User") => EX_NOUSER,
            404 => EX_DATAERR,
            _ => EX_SOFTWARE,
        };
        Err(Failure {
            code,
            message: format!("Error:\n{reason}"),
        })
    }

    pub(super) fn get(&self, path: &str) -> CtlResult<Value> {
        self.must("GET", path, None, &[])
    }
}

pub(super) fn reason_of(a: &Answer) -> String {
    match (&a.body["reason"], &a.body) {
        (Value::String(r), _) => r.clone(),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Null) => format!("HTTP {}", a.status),
        (_, other) => other.to_string(),
    }
}

/// Percent-encodes one path segment.
pub(super) fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The local node to talk to: the one named `name` among the registered nodes; else the
/// node of `--data-dir`; else the only registered node; else the node of the default data
/// dir. Several registered nodes and no name is an error that lists them.
fn find_local_node(
    args: &CtlArgs,
    name: Option<&str>,
    default_data_dir: PathBuf,
) -> CtlResult<NodeFile> {
    let unavailable = |message: String| Failure {
        code: EX_UNAVAILABLE,
        message,
    };
    let listed = |nodes: &[NodeFile]| {
        nodes
            .iter()
            .map(|n| format!("  {} (pid {}, data dir {})", n.node, n.pid, n.data_dir))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(name) = name {
        let nodes = registered();
        return nodes
            .iter()
            .find(|n| n.node == name)
            .cloned()
            .ok_or_else(|| {
                unavailable(format!(
                    "Error: no local node named {name} is running. Running here:\n{}",
                    if nodes.is_empty() {
                        "  none".to_string()
                    } else {
                        listed(&nodes)
                    }
                ))
            });
    }
    if let Some(dir) = &args.data_dir {
        return NodeFile::read(dir)
            .map_err(|e| unavailable(format!("Error: unable to find the local node: {e}")));
    }
    let nodes = registered();
    match nodes.as_slice() {
        [one] => Ok(one.clone()),
        [] => NodeFile::read(&default_data_dir)
            .map_err(|e| unavailable(format!("Error: unable to find the local node: {e}"))),
        several => Err(unavailable(format!(
            "Error: {} local nodes are running; choose one with -n NAME (or --data-dir):\n{}",
            several.len(),
            listed(several)
        ))),
    }
}
