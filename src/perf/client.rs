//! A small async AMQP 0-9-1 client on warren's codec, for the load generator: connect,
//! synchronous setup calls, then pipelined publishing and consuming on the raw halves.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::proto::constants::PROTOCOL_HEADER;
use crate::proto::frame::{Frame, FrameDecoder, encode_method};
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

/// Where and how to connect: `amqp://user:pass@host:port/vhost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
}

impl AmqpUri {
    /// Parses an `amqp://` URI; missing parts default to guest/guest@localhost:5672/.
    pub fn parse(uri: &str) -> Result<AmqpUri, String> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("not an amqp:// URI: {uri}"))?;
        let (authority, vhost) = match rest.split_once('/') {
            Some((a, v)) => (a, Some(v)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port in {uri}"))?,
            ),
            _ => (hostport.to_string(), 5672),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let vhost = match vhost {
            None | Some("") => "/".to_string(),
            Some(v) => percent_decode(v)?,
        };
        Ok(AmqpUri {
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host
            },
            port,
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad escape in {s}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {s}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {s}"))
}

/// An open AMQP connection used for setup calls before it is split for streaming.
pub struct Conn {
    stream: TcpStream,
    reader: FrameReader,
    /// The negotiated frame_max.
    pub frame_max: u32,
}

/// Decodes frames from a socket read half (or a whole stream during setup).
pub struct FrameReader {
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FrameReader {
    fn new() -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(256 * 1024),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
        }
    }

    /// The next buffered frame, if a whole one is buffered.
    pub fn next_buffered(&mut self) -> io::Result<Option<Frame>> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Reads more bytes; false at end of stream.
    pub async fn fill(&mut self, rd: &mut (impl AsyncReadExt + Unpin)) -> io::Result<bool> {
        self.buf.reserve(128 * 1024);
        Ok(rd.read_buf(&mut self.buf).await? > 0)
    }

    /// The next frame, reading as needed.
    pub async fn next(&mut self, rd: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Frame> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(f);
            }
            if !self.fill(rd).await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "broker closed the connection",
                ));
            }
        }
    }
}

/// The connection.start-ok of `warren perf`: its client properties, and a PLAIN login as
/// the URI's user.
fn start_ok(uri: &AmqpUri) -> Method {
    let caps: FieldTable = [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
    ]
    .into_iter()
    .map(|c| (c.to_string(), FieldValue::Bool(true)))
    .collect();
    let props: FieldTable = [
        (
            "product".to_string(),
            FieldValue::LongStr(Bytes::from_static(b"warren perf")),
        ),
        ("capabilities".to_string(), FieldValue::Table(caps)),
    ]
    .into_iter()
    .collect();
    let mut response = vec![0u8];
    response.extend_from_slice(uri.user.as_bytes());
    response.push(0);
    response.extend_from_slice(uri.password.as_bytes());
    Method::ConnectionStartOk(ConnectionStartOk {
        client_properties: props,
        mechanism: "PLAIN".into(),
        response: Bytes::from(response),
        locale: "en_US".into(),
    })
}

/// The error a channel or connection close from the broker ends a client task with.
pub fn close_error(method: &Method) -> Option<io::Error> {
    let (what, code, text) = match method {
        Method::ChannelClose(c) => ("channel", c.reply_code, &c.reply_text),
        Method::ConnectionClose(c) => ("connection", c.reply_code, &c.reply_text),
        _ => return None,
    };
    Some(io::Error::other(format!("{what} closed: {code} {text}")))
}

fn unexpected(what: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("unexpected reply from the broker: {what:?}"))
}

impl Conn {
    /// Connects and logs in, with heartbeats off.
    pub async fn open(uri: &AmqpUri) -> io::Result<Conn> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(),
            frame_max: 131_072,
        };
        conn.stream.write_all(&PROTOCOL_HEADER).await?;
        match conn.next_method().await? {
            (_, Method::ConnectionStart(_)) => {}
            other => return Err(unexpected(other)),
        }
        conn.send(0, start_ok(uri)).await?;
        conn.tune().await?;
        conn.send(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: uri.vhost.clone(),
                ..Default::default()
            }),
        )
        .await?;
        match conn.next_method().await? {
            (_, Method::ConnectionOpenOk(_)) => Ok(conn),
            other => Err(unexpected(other)),
        }
    }

    /// Takes the broker's connection.tune (0 meaning no limit of its own), with heartbeats
    /// off.
    async fn tune(&mut self) -> io::Result<()> {
        let tune = match self.next_method().await? {
            (_, Method::ConnectionTune(t)) => t,
            other => return Err(unexpected(other)),
        };
        self.frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max
        };
        let channel_max = if tune.channel_max == 0 {
            2047
        } else {
            tune.channel_max
        };
        self.send(
            0,
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max,
                frame_max: self.frame_max,
                heartbeat: 0,
            }),
        )
        .await
    }

    /// Sends one method.
    pub async fn send(&mut self, channel: u16, method: Method) -> io::Result<()> {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.stream.write_all(&out).await
    }

    async fn next_method(&mut self) -> io::Result<(u16, Method)> {
        loop {
            match self.reader.next(&mut self.stream).await? {
                Frame::Method { channel, method } => return Ok((channel, method)),
                Frame::Heartbeat { .. } => continue,
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Sends a synchronous method and returns the broker's answer; a close is an error.
    pub async fn call(&mut self, channel: u16, method: Method) -> io::Result<Method> {
        self.send(channel, method).await?;
        let (_, answer) = self.next_method().await?;
        match close_error(&answer) {
            Some(e) => Err(e),
            None => Ok(answer),
        }
    }

    /// Opens a channel.
    pub async fn open_channel(&mut self, channel: u16) -> io::Result<()> {
        self.call(channel, Method::ChannelOpen(ChannelOpen::default()))
            .await
            .map(|_| ())
    }

    /// Splits into the halves used for streaming, keeping any bytes already buffered.
    pub fn split(self) -> (OwnedReadHalf, FrameReader, OwnedWriteHalf) {
        let (rd, wr) = self.stream.into_split();
        (rd, self.reader, wr)
    }

    /// Closes politely.
    pub async fn close(mut self) -> io::Result<()> {
        self.send(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            }),
        )
        .await?;
        let _ = self.next_method().await;
        Ok(())
    }
}

/// Reads a delivery's body length and first eight bytes without copying the body.
pub fn body_prefix(payload: &Bytes) -> Option<u64> {
    let mut b = payload.clone();
    (b.remaining() >= 8).then(|| b.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = AmqpUri::parse("amqp://bob:s%40cret@example.com:5673/%2f").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("bob", "s@cret"));
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("example.com", 5673, "/")
        );
        let d = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!(
            (d.user.as_str(), d.port, d.vhost.as_str()),
            ("guest", 5672, "/")
        );
        let v = AmqpUri::parse("amqp://[::1]:5000/prod").unwrap();
        assert_eq!(
            (v.host.as_str(), v.port, v.vhost.as_str()),
            ("::1", 5000, "prod")
        );
        assert!(AmqpUri::parse("http://x").is_err());
    }
}
