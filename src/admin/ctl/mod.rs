//! `warren ctl`: rabbitmqctl's commands, spoken to a node's management HTTP API.
//!
//! With no flags it reaches the local node: `warren serve` leaves a node file in its data
//! dir with the API's address and a secret token (see [`super::nodefile`]). `--node URL`
//! with `--username`/`--password` reaches any node over basic auth. Output is
//! rabbitmqctl's: an info line ("Listing queues for vhost / ..."), then tab-separated
//! columns under a header; `-q` drops the info line, `-s` the header too, and
//! `--formatter json` prints JSON instead.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

mod client;
mod policies;
mod table;
mod topic;

use client::{Answer, Client, reason_of, seg};
use table::*;

/// `warren ctl`'s own flags (the command's flags may also come after the command).
#[derive(clap::Args, Debug)]
#[command(after_help = COMMANDS_HELP)]
pub struct CtlArgs {
    /// A local node's name (as `warren serve --node-name` gave it, e.g. warren@host), or a
    /// remote node's HTTP API, e.g. http://broker:15672 (needs --username/--password).
    #[arg(long, short = 'n', env = "WARREN_NODE")]
    pub node: Option<String>,
    /// User for basic auth (instead of the local node file's token).
    #[arg(long, short = 'u', env = "WARREN_USERNAME")]
    pub username: Option<String>,
    /// Password for basic auth.
    #[arg(long, env = "WARREN_PASSWORD")]
    pub password: Option<String>,
    /// Data dir of the local node, where its node file is [default: the only node
    /// running here, else warren serve's default data dir].
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The command and its arguments, as rabbitmqctl takes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

const COMMANDS_HELP: &str = "\
Commands (as rabbitmqctl's; -p VHOST, -q, -s, --formatter json may go anywhere):
  add_user USER PASSWORD            delete_user USER
  change_password USER PASSWORD     clear_password USER
  authenticate_user USER PASSWORD   set_user_tags USER [TAG ...]
  list_users
  add_vhost VHOST                   delete_vhost VHOST          list_vhosts
  set_permissions [-p VHOST] USER CONF WRITE READ
  clear_permissions [-p VHOST] USER
  list_permissions [-p VHOST]       list_user_permissions USER
  set_topic_permissions [-p VHOST] USER EXCHANGE WRITE READ
  clear_topic_permissions [-p VHOST] USER [EXCHANGE]
  list_topic_permissions [-p VHOST] list_user_topic_permissions USER
  list_queues [-p VHOST] [COLUMN ...]      list_exchanges [-p VHOST] [COLUMN ...]
  list_bindings [-p VHOST] [COLUMN ...]    list_consumers [-p VHOST] [COLUMN ...]
  list_connections [COLUMN ...]            list_channels [COLUMN ...]
  purge_queue [-p VHOST] QUEUE
  delete_queue [-p VHOST] QUEUE [--if-empty] [--if-unused]
  close_connection NAME|PID EXPLANATION
  status    ping    stop_app    start_app    reset    cluster_status
  join_cluster NODE_ID RAFT_ADDR AMQP_ADDR [HTTP_ADDR]   (run against a member; the new
                                    node runs with `join = true`)
  forget_cluster_node NODE_ID|warren-ID@HOST
  export_definitions PATH|-         import_definitions PATH|-
  set_vhost_limits [-p VHOST] '{\"max-connections\":N,\"max-queues\":N}'
  clear_vhost_limits [-p VHOST]     list_vhost_limits [-p VHOST | --global]
  set_user_limits USER '{\"max-connections\":N,\"max-channels\":N}'
  clear_user_limits USER LIMIT|all  list_user_limits [--user USER | --global]
  set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN DEFINITION
  clear_policy [-p VHOST] NAME      list_policies [-p VHOST]
  set_operator_policy [-p VHOST] [--priority N] [--apply-to queues|all] NAME PATTERN DEFINITION
  clear_operator_policy [-p VHOST] NAME                list_operator_policies [-p VHOST]";

/// Exit codes, as rabbitmqctl's (sysexits).
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EX_USAGE,
            message: message.into(),
        }
    }
}

type CtlResult<T = ()> = Result<T, Failure>;

/// The command line after the command word, with rabbitmqctl's flags taken out.
#[derive(Debug, Default)]
struct Invocation {
    command: String,
    args: Vec<String>,
    vhost: String,
    quiet: bool,
    silent: bool,
    json: bool,
    if_empty: bool,
    if_unused: bool,
    /// `--global`: list every vhost's or user's limits.
    global: bool,
    /// `--user USER` of `list_user_limits`.
    user: Option<String>,
    /// `--priority N` of `set_policy`.
    priority: Option<i64>,
    /// `--apply-to queues|exchanges|all` of `set_policy`.
    apply_to: Option<String>,
}

fn parse_invocation(words: &[String]) -> CtlResult<Invocation> {
    let mut inv = Invocation {
        vhost: "/".into(),
        ..Invocation::default()
    };
    let mut rest = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-p" | "--vhost" => {
                inv.vhost = it
                    .next()
                    .ok_or_else(|| Failure::usage(format!("{w} needs a vhost")))?
                    .clone();
            }
            "-q" | "--quiet" => inv.quiet = true,
            "-s" | "--silent" => {
                inv.quiet = true;
                inv.silent = true;
            }
            "--no-table-headers" => inv.silent = true,
            "--formatter" => {
                let f = it
                    .next()
                    .ok_or_else(|| Failure::usage("--formatter needs a value"))?;
                inv.json = set_formatter(f)?;
            }
            "-e" | "--if-empty" => inv.if_empty = true,
            "--global" => inv.global = true,
            "--user" => {
                let user = it
                    .next()
                    .ok_or_else(|| Failure::usage("--user needs a user name"))?;
                inv.user = Some(user.clone());
            }
            "-u" | "--if-unused" => inv.if_unused = true,
            "--priority" => {
                let n = it
                    .next()
                    .ok_or_else(|| Failure::usage("--priority needs a number"))?;
                inv.priority = Some(
                    n.parse()
                        .map_err(|_| Failure::usage(format!("--priority {n}: not an integer")))?,
                );
            }
            "--apply-to" => {
                let a = it
                    .next()
                    .ok_or_else(|| Failure::usage("--apply-to needs queues, exchanges or all"))?;
                inv.apply_to = Some(a.clone());
            }
            "-t" | "--timeout" => {
                it.next();
            }
            _ => {
                if let Some(v) = w.strip_prefix("--vhost=") {
                    inv.vhost = v.into();
                } else if let Some(u) = w.strip_prefix("--user=") {
                    inv.user = Some(u.into());
                } else if let Some(f) = w.strip_prefix("--formatter=") {
                    inv.json = set_formatter(f)?;
                } else if w.starts_with("--timeout=") {
                } else {
                    rest.push(w.clone());
                }
            }
        }
    }
    if rest.is_empty() {
        return Err(Failure::usage("no command given"));
    }
    inv.command = rest.remove(0);
    inv.args = rest;
    Ok(inv)
}

fn set_formatter(f: &str) -> CtlResult<bool> {
    match f {
        "json" => Ok(true),
        "table" | "string" => Ok(false),
        other => Err(Failure::usage(format!("unsupported formatter '{other}'"))),
    }
}

/// Runs `warren ctl`; `default_data_dir` is `warren serve`'s default.
pub fn run(args: CtlArgs, default_data_dir: PathBuf) -> ExitCode {
    match run_inner(args, default_data_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run_inner(args: CtlArgs, default_data_dir: PathBuf) -> CtlResult {
    let inv = parse_invocation(&args.command)?;
    let client = Client::new(&args, default_data_dir)?;
    let mut ctl = Ctl {
        client,
        inv,
        out: std::io::stdout().lock(),
    };
    ctl.dispatch()
}

// ----- commands -----

struct Ctl<W: Write> {
    client: Client,
    inv: Invocation,
    out: W,
}

impl<W: Write> Ctl<W> {
    fn dispatch(&mut self) -> CtlResult {
        let cmd = self.inv.command.clone();
        let args = self.inv.args.clone();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match (cmd.as_str(), a.as_slice()) {
            ("add_user", [user, pass]) => self.add_user(user, pass),
            ("delete_user", [user]) => self.delete_user(user),
            ("change_password", [user, pass]) => self.change_password(user, Some(pass)),
            ("clear_password", [user]) => self.change_password(user, None),
            ("authenticate_user", [user, pass]) => self.authenticate_user(user, pass),
            ("set_user_tags", [user, tags @ ..]) => self.set_user_tags(user, tags),
            ("list_users", []) => self.list_users(),
            ("add_vhost", [vhost]) => self.add_vhost(vhost),
            ("delete_vhost", [vhost]) => self.delete_vhost(vhost),
            ("list_vhosts", cols) => self.list_vhosts(cols),
            ("set_permissions", [user, conf, write, read]) => {
                self.set_permissions(user, conf, write, read)
            }
            ("clear_permissions", [user]) => self.clear_permissions(user),
            ("list_permissions", []) => self.list_permissions(),
            ("list_user_permissions", [user]) => self.list_user_permissions(user),
            ("set_topic_permissions", [user, exchange, write, read]) => {
                self.set_topic_permissions(user, exchange, write, read)
            }
            ("clear_topic_permissions", [user]) => self.clear_topic_permissions(user, None),
            ("clear_topic_permissions", [user, exchange]) => {
                self.clear_topic_permissions(user, Some(exchange))
            }
            ("list_topic_permissions", []) => self.list_topic_permissions(),
            ("list_user_topic_permissions", [user]) => self.list_user_topic_permissions(user),
            ("list_queues", cols) => self.list_vhost_objects("queues", cols),
            ("list_exchanges", cols) => self.list_vhost_objects("exchanges", cols),
            ("list_bindings", cols) => self.list_vhost_objects("bindings", cols),
            ("list_consumers", cols) => self.list_vhost_objects("consumers", cols),
            ("list_connections", cols) => self.list_node_objects("connections", cols),
            ("list_channels", cols) => self.list_node_objects("channels", cols),
            ("purge_queue", [queue]) => self.purge_queue(queue),
            ("delete_queue", [queue]) => self.delete_queue(queue),
            ("close_connection", [name, why]) => self.close_connection(name, why),
            ("status", []) => self.status(),
            ("cluster_status", []) => self.cluster_status(),
            ("join_cluster", [id, raft, amqp]) => self.join_cluster(id, raft, amqp, None),
            ("join_cluster", [id, raft, amqp, http]) => {
                self.join_cluster(id, raft, amqp, Some(http))
            }
            ("forget_cluster_node", [node]) => self.forget_cluster_node(node),
            ("ping", []) => self.ping(),
            ("stop_app", []) => self.app("stop_app", "Stopping warren application on node"),
            ("start_app", []) => self.app("start_app", "Starting node"),
            ("reset", []) => self.app("reset", "Resetting node"),
            ("export_definitions", [path]) => self.export_definitions(path),
            ("import_definitions", [path]) => self.import_definitions(path),
            ("set_vhost_limits", [definition]) => self.set_vhost_limits(definition),
            ("clear_vhost_limits", []) => self.clear_vhost_limits(),
            ("list_vhost_limits", []) => self.list_vhost_limits(),
            ("set_user_limits", [user, definition]) => self.set_user_limits(user, definition),
            ("clear_user_limits", [user, limit]) => self.clear_user_limits(user, limit),
            ("list_user_limits", []) => self.list_user_limits(None),
            ("list_user_limits", [user]) => self.list_user_limits(Some(user)),
            ("set_policy", [name, pattern, definition]) => {
                self.set_policy(false, name, pattern, definition)
            }
            ("clear_policy", [name]) => self.clear_policy(false, name),
            ("list_policies", []) => self.list_policies(false),
            ("set_operator_policy", [name, pattern, definition]) => {
                self.set_policy(true, name, pattern, definition)
            }
            ("clear_operator_policy", [name]) => self.clear_policy(true, name),
            ("list_operator_policies", []) => self.list_policies(true),
            ("help", _) => {
                self.say(COMMANDS_HELP);
                Ok(())
            }
            _ => Err(Failure::usage(format!(
                "Error: invalid command or arguments: {}\n\n{COMMANDS_HELP}",
                std::iter::once(cmd.as_str())
                    .chain(a.iter().copied())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))),
        }
    }

    /// An info line, unless quiet (or JSON output, which must stay parseable).
    fn info(&mut self, line: impl AsRef<str>) {
        if !self.inv.quiet && !self.inv.json {
            let _ = writeln!(self.out, "{}", line.as_ref());
        }
    }

    fn say(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", line.as_ref());
    }

    fn vhost(&self) -> String {
        self.inv.vhost.clone()
    }

    // ----- users -----

    fn add_user(&mut self, user: &str, pass: &str) -> CtlResult {
        self.info(format!("Adding user \"{user}\" ..."));
        let body = json!({ "password": pass, "tags": [] });
        self.client.must(
            "PUT",
            &format!("/api/users/{}", seg(user)),
            Some(&body),
            &[("if-none-match", "*")],
        )?;
        Ok(())
    }

    fn delete_user(&mut self, user: &str) -> CtlResult {
        self.info(format!("Deleting user \"{user}\" ..."));
        self.client
            .must("DELETE", &format!("/api/users/{}", seg(user)), None, &[])?;
        Ok(())
    }

    fn change_password(&mut self, user: &str, pass: Option<&str>) -> CtlResult {
        let body = match pass {
            Some(p) => {
                self.info(format!("Changing password for user \"{user}\" ..."));
                json!({ "password": p })
            }
            None => {
                self.info(format!("Clearing password for user \"{user}\" ..."));
                json!({ "password_hash": "" })
            }
        };
        self.client.must(
            "PUT",
            &format!("/api/users/{}", seg(user)),
            Some(&body),
            &[("if-match", "*")],
        )?;
        Ok(())
    }

    fn authenticate_user(&mut self, user: &str, pass: &str) -> CtlResult {
        self.info(format!("Authenticating user \"{user}\" ..."));
        let body = json!({ "username": user, "password": pass });
        let a = self
            .client
            .request("POST", "/api/warren/authenticate", Some(&body), &[])?;
        if a.status == 200 && a.body["authenticated"] == true {
            self.say("Success");
            Ok(())
        } else {
            Err(Failure {
                code: EX_DATAERR,
                message: format!(
                    "Error: failed to authenticate user \"{user}\"\nuser '{user}' - invalid credentials"
                ),
            })
        }
    }

    fn set_user_tags(&mut self, user: &str, tags: &[&str]) -> CtlResult {
        self.info(format!(
            "Setting tags for user \"{user}\" to [{}] ...",
            tags.join(", ")
        ));
        let body = json!({ "tags": tags });
        self.client.must(
            "PUT",
            &format!("/api/users/{}", seg(user)),
            Some(&body),
            &[("if-match", "*")],
        )?;
        Ok(())
    }

    fn list_users(&mut self) -> CtlResult {
        self.info("Listing users ...");
        let users = self.client.get("/api/users")?;
        let cols: &[Column] = &[("user", "name"), ("tags", "tags")];
        self.table(&users, cols, &["user", "tags"])
    }

    // ----- vhosts and permissions -----

    fn add_vhost(&mut self, vhost: &str) -> CtlResult {
        self.info(format!("Adding vhost \"{vhost}\" ..."));
        // Adding a vhost that exists succeeds, as with rabbitmqctl.
        self.client
            .must("PUT", &format!("/api/vhosts/{}", seg(vhost)), None, &[])?;
        Ok(())
    }

    fn delete_vhost(&mut self, vhost: &str) -> CtlResult {
        self.info(format!("Deleting vhost \"{vhost}\" ..."));
        self.client
            .must("DELETE", &format!("/api/vhosts/{}", seg(vhost)), None, &[])?;
        Ok(())
    }

    fn list_vhosts(&mut self, cols: &[&str]) -> CtlResult {
        self.info("Listing vhosts ...");
        let vhosts = self.client.get("/api/vhosts")?;
        let all: &[Column] = &[
            ("name", "name"),
            ("tracing", "tracing"),
            ("messages", "messages"),
            ("description", "description"),
            ("tags", "tags"),
        ];
        let wanted = if cols.is_empty() { &["name"][..] } else { cols };
        self.table(&vhosts, all, wanted)
    }

    fn set_permissions(&mut self, user: &str, conf: &str, write: &str, read: &str) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!(
            "Setting permissions for user \"{user}\" in vhost \"{vhost}\" ..."
        ));
        let body = json!({ "configure": conf, "write": write, "read": read });
        self.client.must(
            "PUT",
            &format!("/api/permissions/{}/{}", seg(&vhost), seg(user)),
            Some(&body),
            &[],
        )?;
        Ok(())
    }

    fn clear_permissions(&mut self, user: &str) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!(
            "Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ..."
        ));
        self.client.must(
            "DELETE",
            &format!("/api/permissions/{}/{}", seg(&vhost), seg(user)),
            None,
            &[],
        )?;
        Ok(())
    }

    fn list_permissions(&mut self) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!("Listing permissions for vhost \"{vhost}\" ..."));
        let perms = self
            .client
            .get(&format!("/api/vhosts/{}/permissions", seg(&vhost)))?;
        let cols: &[Column] = &[
            ("user", "user"),
            ("configure", "configure"),
            ("write", "write"),
            ("read", "read"),
        ];
        self.table(&perms, cols, &["user", "configure", "write", "read"])
    }

    fn list_user_permissions(&mut self, user: &str) -> CtlResult {
        self.info(format!("Listing permissions for user \"{user}\" ..."));
        let perms = self
            .client
            .get(&format!("/api/users/{}/permissions", seg(user)))?;
        let cols: &[Column] = &[
            ("vhost", "vhost"),
            ("configure", "configure"),
            ("write", "write"),
            ("read", "read"),
        ];
        self.table(&perms, cols, &["vhost", "configure", "write", "read"])
    }

    // ----- listings -----

    fn list_vhost_objects(&mut self, what: &str, cols: &[&str]) -> CtlResult {
        let vhost = self.vhost();
        let (all, default): (&[Column], &[&str]) = match what {
            "queues" => (QUEUE_COLUMNS, &["name", "messages"]),
            "exchanges" => (EXCHANGE_COLUMNS, &["name", "type"]),
            "bindings" => (
                BINDING_COLUMNS,
                &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ],
            ),
            _ => (
                CONSUMER_COLUMNS,
                &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "active",
                    "arguments",
                ],
            ),
        };
        if what == "queues" {
            self.info("Timeout: 60.0 seconds ...");
        }
        self.info(format!("Listing {what} for vhost {vhost} ..."));
        let items = self.client.get(&format!("/api/{what}/{}", seg(&vhost)))?;
        let wanted = if cols.is_empty() { default } else { cols };
        self.table(&items, all, wanted)
    }

    fn list_node_objects(&mut self, what: &str, cols: &[&str]) -> CtlResult {
        let (all, default): (&[Column], &[&str]) = match what {
            "connections" => (
                CONNECTION_COLUMNS,
                &["user", "peer_host", "peer_port", "state"],
            ),
            _ => (
                CHANNEL_COLUMNS,
                &["pid", "user", "consumer_count", "messages_unacknowledged"],
            ),
        };
        self.info(format!("Listing {what} ..."));
        let items = self.client.get(&format!("/api/{what}"))?;
        let wanted = if cols.is_empty() { default } else { cols };
        self.table(&items, all, wanted)
    }

    /// Prints `items` (a JSON array) as rabbitmqctl does: a header, then one
    /// tab-separated row per item; or as JSON.
    fn table(&mut self, items: &Value, all: &[Column], wanted: &[&str]) -> CtlResult {
        let mut cols = Vec::new();
        let mut bad = Vec::new();
        for w in wanted {
            match all.iter().find(|(name, _)| name == w) {
                Some(c) => cols.push(*c),
                None => bad.push(*w),
            }
        }
        if !bad.is_empty() {
            let valid: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
            return Err(Failure::usage(format!(
                "Error:\nInfo key(s) {} are not supported. Valid keys: {}",
                bad.join(","),
                valid.join(", ")
            )));
        }
        let empty = Vec::new();
        let rows = items.as_array().unwrap_or(&empty);
        if self.inv.json {
            let out: Vec<Value> = rows
                .iter()
                .map(|item| {
                    Value::Object(
                        cols.iter()
                            .map(|(name, path)| (name.to_string(), lookup(item, path)))
                            .collect(),
                    )
                })
                .collect();
            self.say(serde_json::to_string_pretty(&out).unwrap_or_default());
            return Ok(());
        }
        if !self.inv.silent {
            let header: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
            self.say(header.join("\t"));
        }
        for item in rows {
            let cells: Vec<String> = cols
                .iter()
                .map(|(_, path)| cell(&lookup(item, path)))
                .collect();
            self.say(cells.join("\t"));
        }
        Ok(())
    }

    // ----- queues and connections -----

    fn purge_queue(&mut self, queue: &str) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!("Purging queue '{queue}' in vhost '{vhost}' ..."));
        self.client.must(
            "DELETE",
            &format!("/api/queues/{}/{}/contents", seg(&vhost), seg(queue)),
            None,
            &[],
        )?;
        Ok(())
    }

    fn delete_queue(&mut self, queue: &str) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!("Deleting queue '{queue}' on vhost '{vhost}' ..."));
        let path = format!("/api/queues/{}/{}", seg(&vhost), seg(queue));
        let before = self.client.get(&path)?;
        let mut query = Vec::new();
        if self.inv.if_empty {
            query.push("if-empty=true");
        }
        if self.inv.if_unused {
            query.push("if-unused=true");
        }
        let full = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        self.client.must("DELETE", &full, None, &[])?;
        let n = before["messages_ready"].as_u64().unwrap_or(0);
        self.say(format!(
            "Queue was successfully deleted with {n} ready messages"
        ));
        Ok(())
    }

    fn close_connection(&mut self, name: &str, why: &str) -> CtlResult {
        self.info(format!("Closing connection {name}, reason: {why}..."));
        self.client.must(
            "DELETE",
            &format!("/api/connections/{}", seg(name)),
            None,
            &[("x-reason", why)],
        )?;
        Ok(())
    }

    // ----- the node -----

    fn ping(&mut self) -> CtlResult {
        let node = self.client.node_name.clone();
        self.info(format!(
            "Will ping {node}. This only checks that the node answers."
        ));
        self.client.get("/api/health/checks/alarms")?;
        self.say("Ping succeeded");
        Ok(())
    }

    /// rabbitmqctl's join_cluster, turned round: Raft adds members on its leader, so this
    /// runs against a member (the leader, or a follower that redirects) and names the new
    /// node, which waits with `join = true`. It returns once the node votes.
    fn join_cluster(&mut self, id: &str, raft: &str, amqp: &str, http: Option<&str>) -> CtlResult {
        let addr = |what: &str, text: &str| {
            text.parse::<std::net::SocketAddr>()
                .map_err(|_| Failure::usage(format!("{what} {text:?}: give IP:PORT")))
        };
        let id_n: u64 = id
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::usage(format!("node id {id:?}: a whole number from 1")))?;
        let mut body =
            json!({ "raft": addr("raft address", raft)?, "amqp": addr("AMQP address", amqp)? });
        if let Some(h) = http {
            body["http"] = json!(addr("HTTP address", h)?);
        }
        let name = crate::cluster::settings::node_name(id_n, addr("AMQP address", amqp)?.ip());
        let to = self.client.node_name.clone();
        self.info(format!("Clustering node {name} with {to}"));
        self.client.must(
            "PUT",
            &format!("/api/cluster/members/{id_n}"),
            Some(&body),
            &[],
        )?;
        // It joined as a learner; the leader promotes it once it has caught up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let nodes = self.client.get("/api/nodes")?;
            let voter = nodes.as_array().is_some_and(|all| {
                all.iter().any(|n| {
                    n["cluster_id"].as_u64() == Some(id_n)
                        && n["raft_voter"].as_bool() == Some(true)
                })
            });
            if voter {
                self.info(format!("Node {name} caught up and votes"));
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Failure {
                    code: EX_UNAVAILABLE,
                    message: format!(
                        "Error: node {name} joined as a learner but has not caught up within 120 s; is it running with `join = true` and reachable at {raft}?"
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// rabbitmqctl's forget_cluster_node: removes a member (run against another; the
    /// node removed stops if it still runs).
    fn forget_cluster_node(&mut self, node: &str) -> CtlResult {
        self.info(format!("Removing node {node} from the cluster"));
        self.client.must(
            "DELETE",
            &format!("/api/cluster/members/{}", seg(node)),
            None,
            &[],
        )?;
        Ok(())
    }

    /// rabbitmqctl's cluster_status: the members, which of them run, and (warren's
    /// addition) each one's Raft role and how far its log is behind the leader's.
    fn cluster_status(&mut self) -> CtlResult {
        let o = self.client.get("/api/overview")?;
        let nodes = self.client.get("/api/nodes")?;
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        if self.inv.json {
            self.say(json!({ "cluster_name": o["cluster_name"], "nodes": nodes }).to_string());
            return Ok(());
        }
        let me = o["node"].as_str().unwrap_or("?").to_string();
        self.info(format!("Cluster status of node {me} ..."));
        let name = |n: &Value| n["name"].as_str().unwrap_or("?").to_string();
        let mut lines = vec![
            "Basics".to_string(),
            String::new(),
            format!(
                "Cluster name: {}",
                o["cluster_name"].as_str().unwrap_or(&me)
            ),
            String::new(),
            "Disk Nodes".to_string(),
            String::new(),
        ];
        lines.extend(nodes.iter().map(name));
        lines.extend([String::new(), "Running Nodes".to_string(), String::new()]);
        lines.extend(
            nodes
                .iter()
                .filter(|n| n["running"].as_bool() == Some(true))
                .map(name),
        );
        if nodes.iter().any(|n| n.get("cluster_role").is_some()) {
            lines.extend([String::new(), "Raft".to_string(), String::new()]);
            for n in &nodes {
                let index = n
                    .get("raft_match_index")
                    .or_else(|| n.get("raft_last_index"))
                    .and_then(Value::as_u64)
                    .map_or("unknown".to_string(), |i| i.to_string());
                let lag = n["raft_lag"]
                    .as_u64()
                    .map_or("unknown".to_string(), |l| l.to_string());
                lines.push(format!(
                    "{}: {}, log index {index}, lag {lag}",
                    name(n),
                    n["cluster_role"].as_str().unwrap_or("?")
                ));
            }
            if let Some(l) = nodes.iter().find_map(|n| n.get("raft_commit_latency")) {
                let ms = |key: &str| l[key].as_u64().unwrap_or(0) as f64 / 1000.0;
                lines.push(format!(
                    "Commit latency on the leader over the last {} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} batches; {} since it started)",
                    l["window_s"].as_u64().unwrap_or(0),
                    ms("p50_us"),
                    ms("p99_us"),
                    ms("max_us"),
                    l["window_commits"].as_u64().unwrap_or(0),
                    l["commits"].as_u64().unwrap_or(0),
                ));
            }
        }
        lines.extend([
            String::new(),
            "Network Partitions".to_string(),
            String::new(),
            "(none)".to_string(),
        ]);
        for line in lines {
            self.say(line);
        }
        Ok(())
    }

    fn status(&mut self) -> CtlResult {
        let o = self.client.get("/api/overview")?;
        let nodes = self.client.get("/api/nodes")?;
        let n = nodes.get(0).cloned().unwrap_or(Value::Null);
        if self.inv.json {
            self.say(json!({ "overview": o, "node": n }).to_string());
            return Ok(());
        }
        let node = o["node"].as_str().unwrap_or("?").to_string();
        self.info(format!("Status of node {node} ..."));
        let uptime_s = n["uptime"].as_u64().unwrap_or(0) / 1000;
        let running = !n["being_drained"].as_bool().unwrap_or(false);
        let lines = [
            "Runtime".to_string(),
            String::new(),
            format!("OS PID: {}", n["os_pid"].as_str().unwrap_or("?")),
            format!(
                "Product name: {}",
                o["product_name"].as_str().unwrap_or("warren")
            ),
            format!(
                "Product version: {}",
                o["product_version"].as_str().unwrap_or("?")
            ),
            format!(
                "RabbitMQ compatibility: {}",
                o["rabbitmq_version"].as_str().unwrap_or("?")
            ),
            format!("Uptime (seconds): {uptime_s}"),
            format!("AMQP application running: {running}"),
            String::new(),
            "Memory".to_string(),
            String::new(),
            format!(
                "Total memory used: {:.4} gb",
                n["mem_used"].as_f64().unwrap_or(0.0) / 1e9
            ),
            String::new(),
            "File Descriptors".to_string(),
            String::new(),
            format!("Used: {}", n["fd_used"]),
            String::new(),
            "Totals".to_string(),
            String::new(),
            format!("Connection count: {}", o["object_totals"]["connections"]),
            format!("Queue count: {}", o["object_totals"]["queues"]),
            format!(
                "Virtual host count: {}",
                self.client
                    .get("/api/vhosts")?
                    .as_array()
                    .map_or(0, Vec::len)
            ),
            format!("Messages: {}", o["queue_totals"]["messages"]),
            String::new(),
            "Listeners".to_string(),
            String::new(),
        ];
        for l in lines {
            self.say(l);
        }
        if let Some(ls) = o["listeners"].as_array() {
            for l in ls {
                self.say(format!(
                    "Interface: {}, port: {}, protocol: {}",
                    l["ip_address"].as_str().unwrap_or("?"),
                    l["port"],
                    l["protocol"].as_str().unwrap_or("?")
                ));
            }
        }
        Ok(())
    }

    fn app(&mut self, action: &str, what: &str) -> CtlResult {
        let node = self.client.node_name.clone();
        self.info(format!("{what} {node} ..."));
        self.client
            .must("POST", &format!("/api/warren/{action}"), None, &[])?;
        Ok(())
    }

    fn export_definitions(&mut self, path: &str) -> CtlResult {
        let defs = self.client.get("/api/definitions")?;
        let text = serde_json::to_string_pretty(&defs).unwrap_or_default();
        if path == "-" {
            self.say(text);
            return Ok(());
        }
        self.info(format!(
            "Exporting definitions in JSON to a file at \"{path}\" ..."
        ));
        std::fs::write(path, text + "\n").map_err(|e| Failure {
            code: EX_SOFTWARE,
            message: format!("Error: cannot write {path}: {e}"),
        })
    }

    fn import_definitions(&mut self, path: &str) -> CtlResult {
        let mut text = String::new();
        let read = if path == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(path).map(|t| text = t)
        };
        read.map_err(|e| Failure {
            code: EX_DATAERR,
            message: format!("Error: cannot read {path}: {e}"),
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| Failure {
            code: EX_DATAERR,
            message: format!("Error: {path} is not JSON: {e}"),
        })?;
        self.info(format!(
            "Importing definitions in JSON from a file at \"{path}\" ..."
        ));
        self.client
            .must("POST", "/api/definitions", Some(&doc), &[])?;
        self.info("Successfully imported definitions");
        Ok(())
    }
}

/// A limits definition given on the command line, as JSON.
fn limits_argument(definition: &str) -> CtlResult<Value> {
    serde_json::from_str(definition).map_err(|e| Failure {
        code: EX_UNAVAILABLE,
        message: format!("Error:\nJSON decoding error. Reason: {e}"),
    })
}

/// A failed limits command, as rabbitmqctl reports it: the node's validation message.
fn limits_failure(a: &Answer) -> Failure {
    Failure {
        code: EX_UNAVAILABLE,
        message: format!("Error:\n{}", reason_of(a)),
    }
}

/// The limits object of a listing entry, printed as rabbitmqctl prints it.
fn limits_text(entry: &Value) -> String {
    entry["value"].to_string()
}

impl<W: Write> Ctl<W> {
    // ----- limits -----

    fn vhost_missing(vhost: &str) -> Failure {
        Failure {
            code: EX_DATAERR,
            message: format!("Virtual host '{vhost}' does not exist"),
        }
    }

    fn user_missing(user: &str) -> Failure {
        Failure {
            code: EX_NOUSER,
            message: format!("Error:\nUser \"{user}\" does not exist"),
        }
    }

    fn set_vhost_limits(&mut self, definition: &str) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!(
            "Setting vhost limits to \"{definition}\" for vhost \"{vhost}\" ..."
        ));
        let value = limits_argument(definition)?;
        let path = format!("/api/vhost-limits/{}", seg(&vhost));
        let a = self
            .client
            .request("PUT", &path, Some(&json!({ "value": value })), &[])?;
        match a.status {
            200..=299 => Ok(()),
            404 => Err(Self::vhost_missing(&vhost)),
            _ => Err(limits_failure(&a)),
        }
    }

    fn clear_vhost_limits(&mut self) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!("Clearing vhost \"{vhost}\" limits ..."));
        let path = format!("/api/vhost-limits/{}", seg(&vhost));
        let a = self.client.request("DELETE", &path, None, &[])?;
        match a.status {
            200..=299 => Ok(()),
            404 => Err(Failure {
                code: EX_UNAVAILABLE,
                message: "Error:\nParameter does not exist".into(),
            }),
            _ => Err(limits_failure(&a)),
        }
    }

    fn list_vhost_limits(&mut self) -> CtlResult {
        if self.inv.global {
            self.info("Listing limits for all vhosts ...");
            let all = self.client.get("/api/vhost-limits")?;
            let rows = Self::limit_rows(&all, "vhost");
            return self.table(
                &rows,
                &[("vhost", "vhost"), ("limits", "limits")],
                &["vhost", "limits"],
            );
        }
        let vhost = self.vhost();
        self.info(format!("Listing limits for vhost \"{vhost}\" ..."));
        let path = format!("/api/vhost-limits/{}", seg(&vhost));
        let a = self.client.request("GET", &path, None, &[])?;
        match a.status {
            200..=299 => {}
            404 => return Err(Self::vhost_missing(&vhost)),
            _ => return Err(limits_failure(&a)),
        }
        let text = a.body.get(0).map(limits_text).unwrap_or_default();
        if self.inv.json {
            let node = self.client.node_name.clone();
            self.say(json!({ "node": node, "result": "ok", "value": text }).to_string());
        } else {
            self.say(text);
        }
        Ok(())
    }

    fn set_user_limits(&mut self, user: &str, definition: &str) -> CtlResult {
        self.info(format!(
            "Setting user limits to \"{definition}\" for user \"{user}\" ..."
        ));
        let value = limits_argument(definition)?;
        let path = format!("/api/user-limits/{}", seg(user));
        let a = self
            .client
            .request("PUT", &path, Some(&json!({ "value": value })), &[])?;
        match a.status {
            200..=299 => Ok(()),
            404 => Err(Self::user_missing(user)),
            _ => Err(limits_failure(&a)),
        }
    }

    fn clear_user_limits(&mut self, user: &str, limit: &str) -> CtlResult {
        let path = if limit == "all" {
            self.info(format!("Clearing all limits for user \"{user}\" ..."));
            format!("/api/user-limits/{}", seg(user))
        } else {
            self.info(format!(
                "Clearing \"{limit}\" limit for user \"{user}\" ..."
            ));
            format!("/api/user-limits/{}/{}", seg(user), seg(limit))
        };
        let a = self.client.request("DELETE", &path, None, &[])?;
        match a.status {
            200..=299 => Ok(()),
            404 => Err(Self::user_missing(user)),
            _ => Err(limits_failure(&a)),
        }
    }

    /// `list_user_limits [--user USER | USER | --global]`; with no user, rabbitmqctl's
    /// default user, guest.
    fn list_user_limits(&mut self, positional: Option<&str>) -> CtlResult {
        if self.inv.global {
            self.info("Listing limits for all users ...");
            let all = self.client.get("/api/user-limits")?;
            let rows = Self::limit_rows(&all, "user");
            return self.table(
                &rows,
                &[("user", "user"), ("limits", "limits")],
                &["user", "limits"],
            );
        }
        let user = positional
            .map(str::to_string)
            .or_else(|| self.inv.user.clone())
            .unwrap_or_else(|| "guest".into());
        self.info(format!("Listing limits for user \"{user}\" ..."));
        let path = format!("/api/user-limits/{}", seg(&user));
        let a = self.client.request("GET", &path, None, &[])?;
        match a.status {
            200..=299 => {}
            404 => return Err(Self::user_missing(&user)),
            _ => return Err(limits_failure(&a)),
        }
        let text = a.body.get(0).map_or_else(|| "{}".to_string(), limits_text);
        if self.inv.json {
            self.say(json!({ "message": text }).to_string());
        } else {
            self.say(text);
        }
        Ok(())
    }

    /// A limits listing as table rows: the owner (`key`) and the limits as JSON text.
    fn limit_rows(all: &Value, key: &str) -> Value {
        let empty = Vec::new();
        Value::Array(
            all.as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|e| json!({ key: e[key], "limits": limits_text(e) }))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags_may_follow_the_command() {
        let inv = parse_invocation(&words("set_permissions -p v1 xjk .* .* .*")).unwrap();
        assert_eq!(inv.command, "set_permissions");
        assert_eq!(inv.vhost, "v1");
        assert_eq!(inv.args, ["xjk", ".*", ".*", ".*"]);
        let inv =
            parse_invocation(&words("-q list_queues name messages --formatter json")).unwrap();
        assert!(inv.quiet && inv.json);
        assert_eq!(inv.args, ["name", "messages"]);
        assert!(parse_invocation(&words("-p")).is_err());
    }

    #[test]
    fn cells_print_like_rabbitmqctl() {
        assert_eq!(cell(&json!(["administrator"])), "[administrator]");
        assert_eq!(cell(&json!({})), "[]");
        assert_eq!(
            cell(&json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})),
            "[{\"x-message-ttl\",1000},{\"x-dead-letter-exchange\",\"dlx\"}]"
        );
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(seg("/"), "%2F");
        assert_eq!(seg("a b"), "a%20b");
    }
}
