//! AMQP frames on the wire: a cancel-safe, buffered reader that checks each frame's size
//! from its 7-byte header before the payload is read, and the frames the sidecar writes
//! itself (channel and connection closes).

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{AmqpError, protocol, reply};

/// AMQP 0-9-1's protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

pub(super) const FRAME_END: u8 = 0xCE;

/// Largest frame accepted before `tune` has negotiated one (RabbitMQ's default frame_max).
pub(super) const INITIAL_FRAME_MAX: u32 = 128 * 1024;

/// One frame: its parsed form and its original bytes.
pub(super) struct Frame {
    pub(super) parsed: AMQPFrame,
    pub(super) raw: Vec<u8>,
}

/// Bytes asked of the socket per read, and gathered per write.
pub(super) const IO_BUFFER: usize = 64 * 1024;

/// The frames of one socket, read through a buffer. One read brings every frame that has
/// arrived (a publish is three frames; the profile showed three system calls per frame
/// when each frame was read field by field), and reading is cancel-safe: a frame half
/// read when a `select!` takes another branch stays in the buffer for the next call.
pub(super) struct FrameReader<R> {
    pub(super) inner: R,
    pub(super) buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(IO_BUFFER),
        }
    }

    /// Whether a whole frame is already buffered: the writer need not flush before the
    /// next frame is handled, so frames that arrived together leave together.
    pub(super) fn has_frame(&self) -> bool {
        self.buf.len() >= 7
            && self.buf.len()
                >= u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize
                    + 8
    }

    /// The next frame, refusing one larger than `frame_max` before its payload is read.
    /// `Ok(None)` on a clean end of stream between frames.
    pub(super) async fn next(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        loop {
            if let Some(frame) = self.take(frame_max)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(IO_BUFFER);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
        }
    }

    /// A whole frame from the buffer, if there is one.
    pub(super) fn take(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        if !matches!(kind, 1..=4 | 8) {
            return Err(protocol(
                reply::FRAME_ERROR,
                format!("FRAME_ERROR - unknown frame type {kind}"),
            ));
        }
        if self.buf.len() < 7 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
        // frame_max counts the whole frame: 7 bytes of header and the end octet.
        if frame_max != 0 && size.saturating_add(8) > frame_max {
            return Err(protocol(
                reply::FRAME_ERROR,
                format!("FRAME_ERROR - frame of {size} bytes exceeds frame_max {frame_max}"),
            ));
        }
        let total = size as usize + 8;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let raw = self.buf.split_to(total).to_vec();
        if raw[total - 1] != FRAME_END {
            return Err(protocol(
                reply::FRAME_ERROR,
                "FRAME_ERROR - frame does not end with 0xCE",
            ));
        }
        match parse_frame(&raw[..]) {
            Ok((_, parsed)) => Ok(Some(Frame { parsed, raw })),
            Err(_) => Err(protocol(
                reply::SYNTAX_ERROR,
                "SYNTAX_ERROR - a frame could not be decoded",
            )),
        }
    }
}

pub(super) fn encode(frame: &AMQPFrame) -> Vec<u8> {
    match gen_frame(frame)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(e) => {
            // Only frames built here are encoded; they are small and well-formed.
            tracing::error!(error = ?e, "encoding an AMQP frame failed");
            Vec::new()
        }
    }
}

pub(super) fn channel_close(
    ch: u16,
    code: u16,
    text: &str,
    class_id: u16,
    method_id: u16,
) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: code,
            reply_text: ShortString::from(text),
            class_id,
            method_id,
        })),
    ))
}

pub(super) fn channel_close_ok(ch: u16) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
}

pub(super) fn connection_close(code: u16, text: &str) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: ShortString::from(text.chars().take(250).collect::<String>()),
            class_id: 0,
            method_id: 0,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn frames_read_together_are_buffered_and_a_cancelled_read_loses_nothing() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(rx);
        let close = channel_close(1, 403, "ACCESS_REFUSED", 60, 40);
        let heartbeat = encode(&AMQPFrame::Heartbeat);
        // Half a frame, then a read that gives up (as a select! taking another branch).
        tx.write_all(&close[..5]).await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), reader.next(INITIAL_FRAME_MAX)).await;
        assert!(gave_up.is_err(), "no whole frame yet");
        // The rest, and a second frame in the same write.
        let mut rest = close[5..].to_vec();
        rest.extend_from_slice(&heartbeat);
        tx.write_all(&rest).await.unwrap();
        let first = reader.next(INITIAL_FRAME_MAX).await.unwrap().unwrap();
        assert_eq!(
            first.raw, close,
            "the bytes read before the cancel were kept"
        );
        assert!(reader.has_frame(), "the heartbeat came in the same read");
        let second = reader.next(INITIAL_FRAME_MAX).await.unwrap().unwrap();
        assert!(matches!(second.parsed, AMQPFrame::Heartbeat));
        assert!(!reader.has_frame());
        // A clean end between frames is None; in the middle of one, an error.
        tx.write_all(&heartbeat[..3]).await.unwrap();
        drop(tx);
        assert!(reader.next(INITIAL_FRAME_MAX).await.is_err());
    }
}
