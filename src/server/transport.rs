//! What a connection task reads from and writes to: a TCP socket, or TLS over one. The
//! connection task ([`super::conn`]) is generic over it, so plain and TLS connections
//! share every line of protocol driving; only splitting the stream and dropping it with a
//! reset differ.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected byte stream a connection task can drive.
pub trait Transport: Send + 'static {
    /// The half read from.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The half written to.
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Splits the stream, so that reading and writing wait side by side.
    fn split(self) -> (Self::Read, Self::Write);

    /// Drops the connection with a reset instead of a FIN: the kernel would otherwise keep
    /// the unsent bytes (and the socket) for a peer that does not read them, for minutes.
    fn reset(rd: Self::Read, wr: Self::Write);
}

#[cfg(not(madsim))]
impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn reset(rd: Self::Read, wr: Self::Write) {
        linger_zero(wr.as_ref());
        drop(rd);
    }
}

/// madsim's stream has no owned halves; a dropped simulated socket is gone at once.
#[cfg(madsim)]
impl Transport for TcpStream {
    type Read = tokio::io::ReadHalf<TcpStream>;
    type Write = tokio::io::WriteHalf<TcpStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn reset(_: Self::Read, _: Self::Write) {}
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn reset(rd: Self::Read, wr: Self::Write) {
        // The halves come from one `split` in the connection task, so they rejoin.
        if rd.is_pair_of(&wr) {
            let stream = rd.unsplit(wr);
            #[cfg(not(madsim))]
            linger_zero(stream.get_ref().0);
            drop(stream);
        }
    }
}

#[cfg(not(madsim))]
fn linger_zero(socket: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(socket, Some(std::time::Duration::ZERO));
}
