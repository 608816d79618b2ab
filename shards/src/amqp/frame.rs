//! Framing (spec part 2.3): protocol headers and the 8-byte frame header, and
//! splitting a read buffer into frames without copying their bodies.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::CodecError;
use super::performative::{Performative, SaslFrame};

/// The protocol header a peer sends first: "AMQP" then protocol id and version.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// The SASL security layer header.
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// The spec's lower bound for max-frame-size.
pub const MIN_MAX_FRAME_SIZE: u32 = 512;

/// Frame types.
pub const FRAME_AMQP: u8 = 0;
pub const FRAME_SASL: u8 = 1;

/// Why bytes from a peer are not an acceptable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {size} exceeds the negotiated max-frame-size {max}")]
    TooLarge { size: u32, max: u32 },
    #[error("frame size {0} is smaller than the 8-byte frame header")]
    TooSmall(u32),
    #[error("data offset {0} is below the minimum of 2 (words)")]
    BadDataOffset(u8),
    #[error("unexpected frame type {0}")]
    BadType(u8),
    #[error("malformed frame body: {0}")]
    Codec(#[from] CodecError),
    #[error("unexpected performative: {0}")]
    Unexpected(&'static str),
}

/// One AMQP frame: its channel, the decoded performative, and for transfers the
/// payload bytes that follow it (a slice of the read buffer).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub channel: u16,
    /// `None` for an empty frame (a heartbeat).
    pub body: Option<Performative>,
    pub payload: Bytes,
}

/// A raw frame split off the read buffer, not yet decoded.
pub struct RawFrame {
    pub frame_type: u8,
    pub channel: u16,
    /// The frame body after the extended header.
    pub body: Bytes,
}

/// Splits one complete frame off the front of `buf`, or returns `None` when more
/// bytes are needed. The body is frozen out of the buffer without copying.
pub fn split_frame(
    buf: &mut BytesMut,
    max_frame_size: u32,
) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 8 {
        return Err(FrameError::TooSmall(size));
    }
    if size > max_frame_size {
        return Err(FrameError::TooLarge {
            size,
            max: max_frame_size,
        });
    }
    let doff = buf[4];
    if doff < 2 || u32::from(doff) * 4 > size {
        return Err(FrameError::BadDataOffset(doff));
    }
    if buf.len() < size as usize {
        // Capped: a peer's 8-byte promise of a huge frame must not allocate it up front.
        buf.reserve((size as usize - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let frame_type = buf[5];
    let channel = u16::from_be_bytes([buf[6], buf[7]]);
    let mut frame = buf.split_to(size as usize);
    frame.advance(usize::from(doff) * 4);
    Ok(Some(RawFrame {
        frame_type,
        channel,
        body: frame.freeze(),
    }))
}

/// Decodes an AMQP frame body (performative plus payload).
pub fn decode_amqp(raw: RawFrame) -> Result<Frame, FrameError> {
    if raw.frame_type != FRAME_AMQP {
        return Err(FrameError::BadType(raw.frame_type));
    }
    if raw.body.is_empty() {
        return Ok(Frame {
            channel: raw.channel,
            body: None,
            payload: Bytes::new(),
        });
    }
    let (perf, payload) = Performative::decode(raw.body)?;
    Ok(Frame {
        channel: raw.channel,
        body: Some(perf),
        payload,
    })
}

/// Decodes a SASL frame body.
pub fn decode_sasl(raw: RawFrame) -> Result<SaslFrame, FrameError> {
    if raw.frame_type != FRAME_SASL {
        return Err(FrameError::BadType(raw.frame_type));
    }
    Ok(SaslFrame::decode(raw.body)?)
}

/// Starts a frame in `out`; returns its start for [`end_frame`].
pub fn begin_frame(out: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(2);
    out.put_u8(frame_type);
    out.put_u16(channel);
    start
}

/// Patches the size of a frame begun with [`begin_frame`].
pub fn end_frame(out: &mut BytesMut, start: usize) {
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// An empty frame: the heartbeat that keeps an idle connection alive.
pub fn write_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
}

/// Writes one performative as a complete frame.
pub fn write_frame(out: &mut BytesMut, channel: u16, perf: &Performative) {
    let start = begin_frame(out, FRAME_AMQP, channel);
    perf.encode(out);
    end_frame(out, start);
}

/// Writes one SASL frame.
pub fn write_sasl_frame(out: &mut BytesMut, frame: &SaslFrame) {
    let start = begin_frame(out, FRAME_SASL, 0);
    frame.encode(out);
    end_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::performative::{Close, Performative};

    #[test]
    fn frames_split_only_when_complete() {
        let mut out = BytesMut::new();
        write_frame(&mut out, 3, &Performative::Close(Close { error: None }));
        let full = out.clone();
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert!(split_frame(&mut partial, 512).expect("ok").is_none());
        let mut whole = full.clone();
        let raw = split_frame(&mut whole, 512).expect("ok").expect("frame");
        assert_eq!(raw.channel, 3);
        assert!(whole.is_empty());
        let frame = decode_amqp(raw).expect("decodes");
        assert!(matches!(frame.body, Some(Performative::Close(_))));
    }

    #[test]
    fn oversize_and_undersize_frames_are_refused() {
        let mut b = BytesMut::from(&[0u8, 0, 4, 0, 2, 0, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut b, 512),
            Err(FrameError::TooLarge {
                size: 1024,
                max: 512
            })
        ));
        let mut b = BytesMut::from(&[0u8, 0, 0, 4, 2, 0, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut b, 512),
            Err(FrameError::TooSmall(4))
        ));
        let mut b = BytesMut::from(&[0u8, 0, 0, 8, 1, 0, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut b, 512),
            Err(FrameError::BadDataOffset(1))
        ));
    }

    #[test]
    fn heartbeat_is_an_empty_frame() {
        let mut out = BytesMut::new();
        write_heartbeat(&mut out);
        let raw = split_frame(&mut out, 512).expect("ok").expect("frame");
        assert!(decode_amqp(raw).expect("decodes").body.is_none());
    }
}
