//! The AMQP 0-9-1 wire protocol: codec and connection state machine (no I/O).

mod body;
pub mod codec;
pub mod command;
pub mod connection;
pub mod constants;
pub mod frame;
pub mod method;
pub mod props;
pub mod shortstr;
pub mod table;
