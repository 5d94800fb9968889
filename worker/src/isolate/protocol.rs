//! The pipe protocol between a worker and its trial process: length-delimited protobuf frames,
//! [`ToChild`] on the child's standard input, [`FromChild`] on its standard output.

use std::io::{Read, Write};

use convsweep_proto::pb;
use prost::Message;

/// Parent to child: the lease first, then the agent's signal whenever it changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ToChild {
    /// The trial to run (first frame only).
    #[prost(message, optional, tag = "1")]
    pub lease: Option<pb::TrialLease>,
    /// A [`Signal`] as its number.
    #[prost(uint32, tag = "2")]
    pub signal: u32,
    /// When the worker got the lease, microseconds since the Unix epoch (first frame only): the
    /// child's start-up counts from there, its own process start included.
    #[prost(uint64, tag = "3")]
    pub leased_unix_micros: u64,
}

/// Child to parent: progress, an epoch, or the end of the run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FromChild {
    /// The trainer's progress count ([`TrialControl::progress`]).
    #[prost(uint64, tag = "1")]
    pub progress: u64,
    /// A finished epoch.
    #[prost(message, optional, tag = "2")]
    pub epoch: Option<pb::EpochMetrics>,
    /// The outcome to report (only its `outcome` is set).
    #[prost(message, optional, tag = "3")]
    pub outcome: Option<pb::CompleteRequest>,
    /// Stopped on request: report nothing.
    #[prost(bool, tag = "4")]
    pub stopped: bool,
}

/// Largest frame accepted (an epoch's metrics or a result with its evaluations are far smaller).
const MAX_FRAME: usize = 64 << 20;

/// Writes `msg` as one length-delimited frame and flushes.
pub fn write_frame(out: &mut impl Write, msg: &impl Message) -> std::io::Result<()> {
    out.write_all(&msg.encode_length_delimited_to_vec())?;
    out.flush()
}

/// Reads one length-delimited frame; `Ok(None)` at a clean end of the stream.
pub fn read_frame<M: Message + Default>(input: &mut impl Read) -> std::io::Result<Option<M>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8];
        match input.read_exact(&mut byte) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && i == 0 => return Ok(None),
            Err(e) => return Err(e),
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes (at most {MAX_FRAME})"),
                ));
            }
            let mut buf = vec![0; len];
            input.read_exact(&mut buf)?;
            return M::decode(&buf[..])
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a frame length of more than 10 bytes",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut buf = Vec::new();
        let msg = FromChild {
            progress: 7,
            stopped: true,
            ..Default::default()
        };
        write_frame(&mut buf, &msg).unwrap();
        write_frame(&mut buf, &msg).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), Some(msg.clone()));
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), Some(msg));
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), None);
        // A truncated frame, an oversized length, an endless varint.
        let mut cut = &buf[..buf.len() / 2 - 1];
        assert!(read_frame::<FromChild>(&mut cut).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(
            read_frame::<FromChild>(&mut &huge[..])
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        let endless = [0x80u8; 11];
        assert!(read_frame::<FromChild>(&mut &endless[..]).is_err());
    }
}
