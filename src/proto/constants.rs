//! Protocol constants: the protocol header, frame types and sizes, reply codes and class ids,
//! as given by the AMQP 0-9-1 specification with RabbitMQ's errata.

/// The eight bytes a client sends before its first frame.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that closes every frame.
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame_max a peer may negotiate, and the limit in force before tuning.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Bytes before a frame's payload: type (1), channel (2), payload size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Bytes a frame adds to its payload: the header and the frame-end octet.
pub const FRAME_OVERHEAD: u32 = 8;

/// The reply code of a normal close.
pub const REPLY_SUCCESS: u16 = 200;
/// Soft error: the message was too large for the server to accept.
pub const CONTENT_TOO_LARGE: u16 = 311;
/// Soft error: a mandatory message could not be routed.
pub const NO_ROUTE: u16 = 312;
/// Soft error: an immediate message had no consumer to take it.
pub const NO_CONSUMERS: u16 = 313;
/// Hard error: the operator closed the connection.
pub const CONNECTION_FORCED: u16 = 320;
/// Hard error: the virtual host does not exist.
pub const INVALID_PATH: u16 = 402;
/// Soft error: the client lacks the permission.
pub const ACCESS_REFUSED: u16 = 403;
/// Soft error: the named entity does not exist.
pub const NOT_FOUND: u16 = 404;
/// Soft error: the entity is in exclusive use by another connection.
pub const RESOURCE_LOCKED: u16 = 405;
/// Soft error: a precondition of the request failed (e.g. an inequivalent redeclare).
pub const PRECONDITION_FAILED: u16 = 406;
/// Hard error: a malformed frame.
pub const FRAME_ERROR: u16 = 501;
/// Hard error: a frame whose fields have illegal values.
pub const SYNTAX_ERROR: u16 = 502;
/// Hard error: a method that is invalid in the current state.
pub const COMMAND_INVALID: u16 = 503;
/// Hard error: a channel that is not open, or already open.
pub const CHANNEL_ERROR: u16 = 504;
/// Hard error: a frame the peer did not expect (e.g. a body without a header).
pub const UNEXPECTED_FRAME: u16 = 505;
/// Hard error: the server ran out of a resource.
pub const RESOURCE_ERROR: u16 = 506;
/// Hard error: the request is not allowed by the server's rules.
pub const NOT_ALLOWED: u16 = 530;
/// Hard error: the method is not implemented.
pub const NOT_IMPLEMENTED: u16 = 540;
/// Hard error: the server failed internally.
pub const INTERNAL_ERROR: u16 = 541;

/// The `connection` class.
pub const CLASS_CONNECTION: u16 = 10;
/// The `channel` class.
pub const CLASS_CHANNEL: u16 = 20;
/// The `access` class (deprecated, kept for old clients).
pub const CLASS_ACCESS: u16 = 30;
/// The `exchange` class.
pub const CLASS_EXCHANGE: u16 = 40;
/// The `queue` class.
pub const CLASS_QUEUE: u16 = 50;
/// The `basic` class.
pub const CLASS_BASIC: u16 = 60;
/// The `confirm` class (RabbitMQ extension).
pub const CLASS_CONFIRM: u16 = 85;
/// The `tx` class.
pub const CLASS_TX: u16 = 90;

/// RabbitMQ's upper-case name for a reply code, as used at the start of reply texts
/// ("NOT_FOUND - no queue 'x' in vhost '/'"). Unknown codes give `"UNKNOWN_ERROR"`.
pub fn reply_name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "REPLY_SUCCESS",
        CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        NO_ROUTE => "NO_ROUTE",
        NO_CONSUMERS => "NO_CONSUMERS",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        INVALID_PATH => "INVALID_PATH",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "UNKNOWN_ERROR",
    }
}

/// Whether a reply code is a hard error, which closes the whole connection rather than
/// one channel (the spec's "hard-error" class).
pub fn is_hard_error(code: u16) -> bool {
    matches!(
        code,
        CONNECTION_FORCED
            | INVALID_PATH
            | FRAME_ERROR
            | SYNTAX_ERROR
            | COMMAND_INVALID
            | CHANNEL_ERROR
            | UNEXPECTED_FRAME
            | RESOURCE_ERROR
            | NOT_ALLOWED
            | NOT_IMPLEMENTED
            | INTERNAL_ERROR
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_names_match_rabbitmq() {
        assert_eq!(reply_name(NOT_FOUND), "NOT_FOUND");
        assert_eq!(reply_name(PRECONDITION_FAILED), "PRECONDITION_FAILED");
        assert_eq!(reply_name(ACCESS_REFUSED), "ACCESS_REFUSED");
        assert_eq!(reply_name(NOT_IMPLEMENTED), "NOT_IMPLEMENTED");
        assert_eq!(reply_name(1), "UNKNOWN_ERROR");
    }

    #[test]
    fn hard_and_soft_errors_follow_the_spec() {
        for soft in [
            CONTENT_TOO_LARGE,
            NO_ROUTE,
            NO_CONSUMERS,
            ACCESS_REFUSED,
            NOT_FOUND,
            RESOURCE_LOCKED,
            PRECONDITION_FAILED,
        ] {
            assert!(!is_hard_error(soft), "{soft}");
        }
        for hard in [CONNECTION_FORCED, INVALID_PATH, FRAME_ERROR, INTERNAL_ERROR] {
            assert!(is_hard_error(hard), "{hard}");
        }
        assert_eq!(PROTOCOL_HEADER, [b'A', b'M', b'Q', b'P', 0, 0, 9, 1]);
        assert_eq!(FRAME_OVERHEAD as usize, FRAME_HEADER_SIZE + 1);
    }
}
