//! The records a capture streams after its response line, little-endian:
//!
//! ```text
//! kind u8 (1 frame, 2 stats) | dir u8 (0 in, 1 out) | 0 u16 | len u32 | ts_ns or dropped u64
//! | src IPv4 [4] | dst IPv4 [4] | src port u16 | dst port u16 | len bytes of data
//! ```
//! A stats record (len 0) carries the frames the capture has dropped so far (a full queue); the
//! cell sends one at least every quarter second, which is also how it notices the client left.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::cell::tap::{Dir, Record};

pub const HEADER_LEN: usize = 28;
const KIND_FRAME: u8 = 1;
const KIND_STATS: u8 = 2;
/// The largest frame a record may carry (a 64 KiB super-frame and headers, with room to spare).
pub const MAX_DATA: usize = 256 << 10;

/// What the client reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// Frames dropped so far.
    Stats(u64),
}

/// A captured frame as the client sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub ts_ns: u64,
    pub dir: Dir,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub data: Vec<u8>,
}

fn header(
    kind: u8,
    dir: Dir,
    len: usize,
    value: u64,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1] = (dir == Dir::Out) as u8;
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&value.to_le_bytes());
    h[16..20].copy_from_slice(&src.ip().octets());
    h[20..24].copy_from_slice(&dst.ip().octets());
    h[24..26].copy_from_slice(&src.port().to_le_bytes());
    h[26..28].copy_from_slice(&dst.port().to_le_bytes());
    h
}

pub fn write_frame(w: &mut impl Write, r: &Record) -> io::Result<()> {
    let len = r.data.len().min(MAX_DATA);
    w.write_all(&header(KIND_FRAME, r.dir, len, r.ts_ns, r.src, r.dst))?;
    w.write_all(&r.data[..len])
}

pub fn write_stats(w: &mut impl Write, dropped: u64) -> io::Result<()> {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    w.write_all(&header(KIND_STATS, Dir::In, 0, dropped, any, any))
}

/// Reads the next record; `Ok(None)` at the end of the stream (between records).
pub fn read(r: &mut impl Read) -> io::Result<Option<Item>> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let len = u32::from_le_bytes(h[4..8].try_into().unwrap_or_default()) as usize;
    let value = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    match h[0] {
        KIND_STATS => Ok(Some(Item::Stats(value))),
        KIND_FRAME if len <= MAX_DATA => {
            let mut data = vec![0u8; len];
            r.read_exact(&mut data)?;
            let addr = |ip: &[u8], port: &[u8]| {
                SocketAddrV4::new(
                    Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
                    u16::from_le_bytes([port[0], port[1]]),
                )
            };
            Ok(Some(Item::Frame(Frame {
                ts_ns: value,
                dir: if h[1] == 1 { Dir::Out } else { Dir::In },
                src: addr(&h[16..20], &h[24..26]),
                dst: addr(&h[20..24], &h[26..28]),
                data,
            })))
        }
        KIND_FRAME => Err(bad(format!(
            "a capture record of {len} bytes (at most {MAX_DATA})"
        ))),
        k => Err(bad(format!("unknown capture record kind {k}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let r = Record {
            ts_ns: 1_700_000_000_123_456_789,
            dir: Dir::Out,
            src: "10.0.0.1:4789".parse().unwrap(),
            dst: "10.0.0.2:4790".parse().unwrap(),
            data: vec![1, 2, 3],
        };
        let mut b = vec![];
        write_frame(&mut b, &r).unwrap();
        write_stats(&mut b, 42).unwrap();
        assert_eq!(b.len(), 2 * HEADER_LEN + 3);
        let mut rd = &b[..];
        assert_eq!(
            read(&mut rd).unwrap(),
            Some(Item::Frame(Frame {
                ts_ns: r.ts_ns,
                dir: Dir::Out,
                src: r.src,
                dst: r.dst,
                data: vec![1, 2, 3]
            }))
        );
        assert_eq!(read(&mut rd).unwrap(), Some(Item::Stats(42)));
        assert_eq!(read(&mut rd).unwrap(), None);
        // Cut in the middle of a header, an unknown kind, a huge length.
        assert!(read(&mut &b[..10]).is_err());
        let mut k = b.clone();
        k[0] = 9;
        assert!(read(&mut &k[..])
            .unwrap_err()
            .to_string()
            .contains("kind 9"));
        k[0] = 1;
        k[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&mut &k[..]).is_err());
    }
}
