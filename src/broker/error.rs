//! Broker errors as data: each maps to the AMQP close it causes.

use crate::proto::constants::{reply_name, *};
use crate::proto::method::Method;

/// Whether an error closes the channel it happened on or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A soft error: `channel.close`, other channels carry on.
    Channel,
    /// A hard error: `connection.close`.
    Connection,
}

/// An error from handling a client's method, with the reply code and text RabbitMQ uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// Which close it causes.
    pub scope: Scope,
    /// The AMQP reply code.
    pub code: u16,
    /// The reply text, starting with the code's name ("NOT_FOUND - ...").
    pub text: String,
    /// Class of the method that failed (filled in by the dispatcher when 0).
    pub class_id: u16,
    /// Id of the method that failed.
    pub method_id: u16,
}

/// Result of handling one method.
pub type AmqpResult<T> = Result<T, AmqpError>;

impl AmqpError {
    /// An error whose scope follows the code: 3xx/4xx close the channel, 5xx the
    /// connection, as the spec classifies them.
    pub fn new(code: u16, detail: impl AsRef<str>) -> Self {
        let scope = if code >= 500 || code == CONNECTION_FORCED || code == INVALID_PATH {
            Scope::Connection
        } else {
            Scope::Channel
        };
        AmqpError {
            scope,
            code,
            text: format!("{} - {}", reply_name(code), detail.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error, unless one is already recorded.
    pub fn on(mut self, method: &Method) -> Self {
        if self.class_id == 0 {
            self.class_id = method.class_id();
            self.method_id = method.method_id();
        }
        self
    }

    /// Records the method by its ids.
    pub fn on_ids(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
}

/// 404 NOT_FOUND.
pub fn not_found(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(NOT_FOUND, detail)
}

/// 403 ACCESS_REFUSED.
pub fn access_refused(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(ACCESS_REFUSED, detail)
}

/// 405 RESOURCE_LOCKED.
pub fn resource_locked(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(RESOURCE_LOCKED, detail)
}

/// 406 PRECONDITION_FAILED.
pub fn precondition_failed(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(PRECONDITION_FAILED, detail)
}

/// 503 COMMAND_INVALID (a connection error).
pub fn command_invalid(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(COMMAND_INVALID, detail)
}

/// 530 NOT_ALLOWED (a connection error).
pub fn not_allowed(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(NOT_ALLOWED, detail)
}

/// 540 NOT_IMPLEMENTED (a connection error).
pub fn not_implemented(detail: impl AsRef<str>) -> AmqpError {
    AmqpError::new(NOT_IMPLEMENTED, detail)
}

/// How RabbitMQ names a resource in messages: `queue 'q' in vhost '/'`.
pub fn resource(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}
