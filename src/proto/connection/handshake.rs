//! The wire side of the handshake: `start-ok` (credentials), `tune-ok` (negotiated
//! limits), `open`, and the connection-class methods of an open connection.

use bytes::{Bytes, BytesMut};

use super::{Connection, ConnectionError, Phase};
use crate::proto::command::{Command, Login};
use crate::proto::constants::*;
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

/// The `server-properties` table warren sends in `connection.start`, advertising the
/// RabbitMQ extensions it implements.
pub fn server_properties(version: &str, cluster_name: &str) -> FieldTable {
    let capabilities: FieldTable = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ]
    .into_iter()
    .map(|name| (name.to_string(), FieldValue::Bool(true)))
    .collect();
    let text = |s: &str| FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()));
    [
        ("capabilities".to_string(), FieldValue::Table(capabilities)),
        ("cluster_name".to_string(), text(cluster_name)),
        (
            "copyright".to_string(),
            text("Copyright (c) the warren authors"),
        ),
        (
            "information".to_string(),
            text("Licensed under the Apache License 2.0"),
        ),
        ("platform".to_string(), text("Rust")),
        ("product".to_string(), text("warren")),
        ("version".to_string(), text(version)),
    ]
    .into_iter()
    .collect()
}

/// Largest encoded `server-properties` table. `connection.start` goes out before tuning,
/// when a client need take frames of [`FRAME_MIN_SIZE`] bytes only; this leaves room for
/// the method's other fields.
const MAX_SERVER_PROPERTIES_BYTES: usize = FRAME_MIN_SIZE as usize - 512;

/// Sets server properties from the config over the built-in ones, as RabbitMQ's
/// `server_properties` setting does: each value is sent as a long string, replacing a
/// built-in property of that name (`product`, `version`, `platform`, ...) or added after
/// them. `capabilities` stays warren's own: it names what is implemented.
pub fn override_server_properties<'a>(
    table: &mut FieldTable,
    overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    for (key, value) in overrides {
        if key.is_empty() || key.len() > 255 {
            return Err(format!(
                "server property name '{key}' must be 1 to 255 bytes long"
            ));
        }
        if key == "capabilities" {
            return Err(
                "server property 'capabilities' is warren's own: it lists what warren implements"
                    .into(),
            );
        }
        table.insert(
            key,
            FieldValue::LongStr(Bytes::copy_from_slice(value.as_bytes())),
        );
    }
    let len = table.encoded_len();
    if len > MAX_SERVER_PROPERTIES_BYTES {
        return Err(format!(
            "server properties take {len} bytes encoded, more than {MAX_SERVER_PROPERTIES_BYTES}: \
             connection.start must fit in a {FRAME_MIN_SIZE}-byte frame"
        ));
    }
    Ok(())
}

impl Connection {
    pub(super) fn handle_connection_method(
        &mut self,
        method: Method,
        now_ms: u64,
    ) -> Result<(), ConnectionError> {
        match (self.phase, method) {
            (Phase::AwaitingStartOk, Method::ConnectionStartOk(ok)) => {
                let login = parse_login(&ok)?;
                self.commands.push_back(Command::Login(login));
                self.phase = Phase::AwaitingLogin;
                Ok(())
            }
            (Phase::AwaitingTuneOk, Method::ConnectionTuneOk(tune)) => self.apply_tune_ok(&tune),
            (Phase::AwaitingOpen, Method::ConnectionOpen(open)) => {
                self.commands.push_back(Command::OpenVhost {
                    vhost: open.virtual_host,
                });
                self.phase = Phase::AwaitingOpenOk;
                Ok(())
            }
            (_, Method::ConnectionClose(_)) => {
                self.send_method(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}), now_ms);
                self.enter_draining(now_ms);
                Ok(())
            }
            (Phase::Open, Method::ConnectionUpdateSecret(_)) => {
                // Secrets are only meaningful to token-based authentication, which warren
                // does not offer; the password a client logged in with stays valid.
                self.send_method(
                    0,
                    &Method::ConnectionUpdateSecretOk(ConnectionUpdateSecretOk {}),
                    now_ms,
                );
                Ok(())
            }
            // A close-ok nobody asked for during the handshake is harmless; once the
            // connection runs, RabbitMQ refuses it (504, below).
            (phase, Method::ConnectionCloseOk(_)) if phase != Phase::Open => Ok(()),
            (Phase::Open, m) => Err(ConnectionError::new(
                CHANNEL_ERROR,
                "unexpected method in connection state running",
            )
            .on(&m)),
            (_, m) => Err(ConnectionError::new(
                COMMAND_INVALID,
                format!("unexpected method {} during the handshake", m.name()),
            )
            .on(&m)),
        }
    }

    pub(super) fn apply_tune_ok(&mut self, tune: &ConnectionTuneOk) -> Result<(), ConnectionError> {
        let server_frame_max = self.config.frame_max_bytes;
        if tune.frame_max != 0 && tune.frame_max < FRAME_MIN_SIZE {
            return Err(ConnectionError::new(
                NOT_ALLOWED,
                format!("frame_max={} < {} min size", tune.frame_max, FRAME_MIN_SIZE),
            ));
        }
        if tune.frame_max == 0 || tune.frame_max > server_frame_max {
            return Err(ConnectionError::new(
                NOT_ALLOWED,
                format!(
                    "negotiated frame_max = {} is higher than the maximum allowed value ({})",
                    tune.frame_max, server_frame_max
                ),
            ));
        }
        if tune.channel_max == 0 || tune.channel_max > self.config.channel_max {
            return Err(ConnectionError::new(
                NOT_ALLOWED,
                format!(
                    "negotiated channel_max = {} is higher than the maximum allowed value ({})",
                    tune.channel_max, self.config.channel_max
                ),
            ));
        }
        self.frame_max_bytes = tune.frame_max;
        self.channel_max = tune.channel_max;
        self.heartbeat_ms = u64::from(tune.heartbeat) * 1000;
        // Like RabbitMQ, accept payloads of up to frame_max bytes (frames of frame_max + 8):
        // several clients split bodies that way.
        self.decoder
            .set_max_frame_bytes(tune.frame_max.saturating_add(FRAME_OVERHEAD));
        self.phase = Phase::AwaitingOpen;
        Ok(())
    }
}

/// Decodes the credentials of `connection.start-ok` for PLAIN and AMQPLAIN.
pub(super) fn parse_login(ok: &ConnectionStartOk) -> Result<Login, ConnectionError> {
    let refused = |detail: &str| {
        ConnectionError::new(ACCESS_REFUSED, detail).on(&Method::ConnectionStartOk(ok.clone()))
    };
    let (username, password) = match ok.mechanism.as_str() {
        "PLAIN" => {
            // authzid NUL authcid NUL password; the authorization identity is ignored.
            let mut parts = ok.response.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts
                .next()
                .ok_or_else(|| refused("malformed PLAIN response"))?;
            let pass = parts
                .next()
                .ok_or_else(|| refused("malformed PLAIN response"))?;
            (
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            )
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = BytesMut::with_capacity(ok.response.len() + 4);
            framed.extend_from_slice(&(ok.response.len() as u32).to_be_bytes());
            framed.extend_from_slice(&ok.response);
            let table =
                FieldTable::decode(&framed).map_err(|_| refused("malformed AMQPLAIN response"))?;
            let field = |name: &str| match table.get(name) {
                Some(FieldValue::LongStr(s)) => Some(String::from_utf8_lossy(s).into_owned()),
                _ => None,
            };
            match (field("LOGIN"), field("PASSWORD")) {
                (Some(u), Some(p)) => (u, p),
                _ => return Err(refused("AMQPLAIN response lacks LOGIN or PASSWORD")),
            }
        }
        other => {
            return Err(refused(&format!(
                "unsupported authentication mechanism '{other}'"
            )));
        }
    };
    Ok(Login {
        mechanism: ok.mechanism.clone(),
        username,
        password,
        client_properties: ok.client_properties.clone(),
    })
}
