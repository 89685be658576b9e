//! The assembly of `basic.publish` content on a channel: the publish method, its content
//! header, then body frames up to the size the header declared, bounded per message and
//! across the connection's channels together. A content method only a server sends is
//! followed to its content header, then refused, as RabbitMQ refuses it.

use std::sync::Arc;

use bytes::Bytes;

use super::Connection;
use super::ConnectionError;
use crate::proto::body::BodyParts;
use crate::proto::command::{Command, Message};
use crate::proto::constants::*;
use crate::proto::frame::ContentHeader;
use crate::proto::method::*;

/// Content being assembled on a channel.
#[derive(Debug)]
pub(super) enum Assembly {
    Idle,
    AwaitingHeader(BasicPublish),
    /// A content-carrying method that only a server sends (`basic.deliver`,
    /// `basic.return`, `basic.get-ok`, by its method id): like RabbitMQ, warren reads its
    /// content header before refusing it as an unimplemented method (503).
    AwaitingRefusedHeader(u16),
    /// The message is made when its header arrives (the properties move once, into it),
    /// and takes its body when the last body frame does.
    AwaitingBody {
        message: Arc<Message>,
        mandatory: bool,
        immediate: bool,
        body_size: u64,
        body: BodyParts,
    },
}

#[derive(Debug)]
pub(super) enum ChannelState {
    Open(Assembly),
    /// The client sent `channel.close`; the broker's `close-ok` frees the number.
    ClosingByClient,
    /// This layer found a channel error and asked the broker to close the channel; frames
    /// are dropped until the broker's `channel.close` goes out.
    ErrorPending,
    /// The server sent `channel.close`; frames are dropped until the client's `close-ok`.
    ClosingByServer,
}

impl Connection {
    pub(super) fn handle_header(
        &mut self,
        channel: u16,
        header: ContentHeader,
    ) -> Result<(), ConnectionError> {
        let max = self.config.max_message_bytes;
        let Some(state) = self.channels.get_mut(&channel) else {
            return Err(unexpected_non_method());
        };
        let (publish, method_id) = match state {
            ChannelState::Open(Assembly::AwaitingHeader(publish)) => {
                (Some(publish), BasicPublish::METHOD_ID)
            }
            ChannelState::Open(Assembly::AwaitingRefusedHeader(method_id)) => (None, *method_id),
            ChannelState::Open(Assembly::AwaitingBody { .. }) => {
                return Err(publish_error(
                    "expected content body, got non content body frame instead",
                ));
            }
            ChannelState::Open(Assembly::Idle) => return Err(unexpected_non_method()),
            ChannelState::ClosingByClient
            | ChannelState::ClosingByServer
            | ChannelState::ErrorPending => return Ok(()),
        };
        // RabbitMQ takes a header with a weight other than 0 for another kind of frame.
        if header.weight != 0 {
            return Err(content_error(method_id, HEADER_EXPECTED));
        }
        if header.class_id != CLASS_BASIC {
            return Err(content_error(
                method_id,
                &format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
            ));
        }
        let Some(publish) = publish else {
            return Err(ConnectionError {
                class_id: CLASS_BASIC,
                method_id,
                ..ConnectionError::new(COMMAND_INVALID, "unimplemented method")
            });
        };
        if header.body_size > max {
            // Refuse the message on its channel; its body frames are dropped while the
            // close is pending.
            *state = ChannelState::ErrorPending;
            self.commands.push_back(Command::ChannelError {
                channel,
                close: ChannelClose {
                    reply_code: PRECONDITION_FAILED,
                    reply_text: format!(
                        "PRECONDITION_FAILED - message size {} is larger than configured max size {}",
                        header.body_size, max
                    ),
                    class_id: CLASS_BASIC,
                    method_id: BasicPublish::METHOD_ID,
                },
            });
            return Ok(());
        }
        let BasicPublish {
            exchange,
            routing_key,
            mandatory,
            immediate,
            ..
        } = std::mem::take(publish);
        let message = Arc::new(Message {
            exchange,
            routing_key,
            properties: header.properties,
            body: Bytes::new(),
        });
        if header.body_size == 0 {
            *state = ChannelState::Open(Assembly::Idle);
            self.publish(channel, mandatory, immediate, message);
        } else {
            *state = ChannelState::Open(Assembly::AwaitingBody {
                message,
                mandatory,
                immediate,
                body_size: header.body_size,
                body: BodyParts::Empty,
            });
        }
        Ok(())
    }

    pub(super) fn handle_body(
        &mut self,
        channel: u16,
        payload: Bytes,
    ) -> Result<(), ConnectionError> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return Err(unexpected_non_method());
        };
        let (body_size, body) = match state {
            ChannelState::Open(Assembly::AwaitingBody {
                body_size, body, ..
            }) => (*body_size, body),
            ChannelState::Open(assembly @ Assembly::AwaitingHeader(_))
            | ChannelState::Open(assembly @ Assembly::AwaitingRefusedHeader(_)) => {
                return Err(assembly.header_expected());
            }
            ChannelState::Open(Assembly::Idle) => return Err(unexpected_non_method()),
            ChannelState::ClosingByClient
            | ChannelState::ClosingByServer
            | ChannelState::ErrorPending => return Ok(()),
        };
        let held = body.len();
        let have = held + payload.len() as u64;
        if have > body_size {
            return Err(ConnectionError::new(
                FRAME_ERROR,
                format!(
                    "content body on channel {channel} is longer than the {body_size} bytes its header declared"
                ),
            ));
        }
        let limit = self.config.max_message_bytes;
        if self.partial_body_bytes + payload.len() as u64 > limit {
            // Bodies in progress on all channels together stay within one message's
            // worth: a client cannot hold a partial message per channel.
            self.partial_body_bytes -= held;
            *state = ChannelState::ErrorPending;
            self.commands.push_back(Command::ChannelError {
                channel,
                close: ChannelClose {
                    reply_code: PRECONDITION_FAILED,
                    reply_text: format!(
                        "PRECONDITION_FAILED - message bodies in progress on this connection exceed {limit} bytes"
                    ),
                    class_id: CLASS_BASIC,
                    method_id: BasicPublish::METHOD_ID,
                },
            });
            return Ok(());
        }
        let complete = have == body_size;
        body.push(payload, complete);
        if complete {
            self.partial_body_bytes -= held;
            if let ChannelState::Open(Assembly::AwaitingBody {
                mut message,
                mandatory,
                immediate,
                body,
                ..
            }) = std::mem::replace(state, ChannelState::Open(Assembly::Idle))
            {
                // Unshared until it is handed on: the body goes in place.
                Arc::make_mut(&mut message).body = body.into_bytes();
                self.publish(channel, mandatory, immediate, message);
            }
        } else {
            self.partial_body_bytes += have - held;
        }
        debug_assert_eq!(self.partial_body_bytes, self.bodies_in_progress());
        Ok(())
    }

    /// Bytes of message bodies held by channels whose content is still arriving.
    pub(super) fn bodies_in_progress(&self) -> u64 {
        self.channels
            .values()
            .map(|state| match state {
                ChannelState::Open(Assembly::AwaitingBody { body, .. }) => body.len(),
                _ => 0,
            })
            .sum()
    }

    /// Sets a channel's state, forgetting the bytes of a body in progress that it drops.
    pub(super) fn replace_channel_state(&mut self, channel: u16, state: Option<ChannelState>) {
        let old = match state {
            Some(state) => self.channels.insert(channel, state),
            None => self.channels.remove(&channel),
        };
        if let Some(ChannelState::Open(Assembly::AwaitingBody { body, .. })) = old {
            self.partial_body_bytes -= body.len();
        }
    }

    pub(super) fn publish(
        &mut self,
        channel: u16,
        mandatory: bool,
        immediate: bool,
        message: Arc<Message>,
    ) {
        self.commands.push_back(Command::Publish {
            channel,
            mandatory,
            immediate,
            message,
        });
    }
}

const HEADER_EXPECTED: &str =
    "expected content header for class 60, got non content header frame instead";

impl Assembly {
    /// The error for a frame other than a content header while one is awaited (505,
    /// naming the method whose content it is, as RabbitMQ does).
    pub(super) fn header_expected(&self) -> ConnectionError {
        let method_id = match self {
            Assembly::AwaitingRefusedHeader(method_id) => *method_id,
            _ => BasicPublish::METHOD_ID,
        };
        content_error(method_id, HEADER_EXPECTED)
    }
}

/// A content frame out of place while a `basic.publish` awaits its content; RabbitMQ names
/// the publish as the failing method.
pub(super) fn publish_error(detail: &str) -> ConnectionError {
    content_error(BasicPublish::METHOD_ID, detail)
}

/// A content frame out of place while the content of basic method `method_id` is awaited.
fn content_error(method_id: u16, detail: &str) -> ConnectionError {
    ConnectionError {
        class_id: CLASS_BASIC,
        method_id,
        ..ConnectionError::new(UNEXPECTED_FRAME, detail)
    }
}

/// A content frame where a method was expected.
pub(super) fn unexpected_non_method() -> ConnectionError {
    ConnectionError::new(
        UNEXPECTED_FRAME,
        "expected method frame, got non method frame instead",
    )
}
