//! UDP GSO/GRO and mmsg batches over 127.0.0.1 (no root needed).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use tapestry_sys::udp::{self, RecvMeta, Transmit};

fn pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
    let any = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    let tx = udp::bind(any, false, 1 << 20).unwrap();
    let rx = udp::bind(any, false, 4 << 20).unwrap();
    let SocketAddr::V4(dst) = rx.local_addr().unwrap() else {
        unreachable!()
    };
    (tx, rx, dst)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Receives until `want` buffers arrived or a second passed.
fn recv_all(rx: &UdpSocket, bufs: &mut [Vec<u8>], want: usize) -> Vec<RecvMeta> {
    let mut out = Vec::new();
    let mut meta = [RecvMeta::default(); udp::MAX_BATCH];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while out.len() < want && std::time::Instant::now() < deadline {
        match udp::recv_batch(rx, &mut bufs[out.len()..], &mut meta) {
            Ok(n) => out.extend_from_slice(&meta[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    out
}

#[test]
fn probe_reports_gso_and_gro() {
    let p = udp::probe_udp_offloads();
    eprintln!("UDP offloads: {p:?}");
    assert!(p.gso && p.gro, "{p:?}: Linux >= 5.0 has both");
    // The reported limit is one the kernel takes: a GSO send of that many segments leaves as
    // that many datagrams (a limit above the kernel's UDP_MAX_SEGMENTS fails with EINVAL).
    let n = p.max_gso_segments;
    assert!(n > 1, "{p:?}");
    let (tx, rx, dst) = pair();
    let data = pattern(n * 100);
    assert_eq!(udp::send_gso(&tx, dst, &data, 100).unwrap(), data.len());
    let mut bufs = vec![vec![0u8; 2048]; n];
    let got = recv_all(&rx, &mut bufs, n);
    assert_eq!(got.len(), n, "{n} segments sent in one GSO send");
    assert!(got.iter().all(|m| m.len == 100), "{got:?}");
}

#[test]
fn gso_send_arrives_as_segments_without_gro() {
    let (tx, rx, dst) = pair();
    let data = pattern(10 * 1000 + 500);
    assert_eq!(udp::send_gso(&tx, dst, &data, 1000).unwrap(), data.len());
    let mut bufs = vec![vec![0u8; 2048]; 16];
    let got = recv_all(&rx, &mut bufs, 11);
    assert_eq!(got.len(), 11, "{got:?}");
    for (i, m) in got.iter().enumerate() {
        let want = if i == 10 { 500 } else { 1000 };
        assert_eq!(m.len, want);
        assert_eq!(m.segment_size, want, "no GRO: one datagram per buffer");
        assert_eq!(m.src, tx.local_addr().unwrap().to_string().parse().unwrap());
        assert_eq!(&bufs[i][..m.len], &data[i * 1000..i * 1000 + want]);
    }
}

#[test]
fn gro_receive_coalesces_with_segment_size() {
    let (tx, rx, dst) = pair();
    udp::enable_gro(&rx).unwrap();
    let data = pattern(64 * 1000);
    assert_eq!(udp::send_gso(&tx, dst, &data, 1000).unwrap(), data.len());
    rx.set_nonblocking(false).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65536];
    let m = udp::recv_gro(&rx, &mut buf).unwrap();
    assert_eq!((m.len, m.segment_size, m.truncated), (64_000, 1000, false));
    assert_eq!(&buf[..m.len], &data[..]);

    // recv_batch reads the segment size too.
    udp::send_gso(&tx, dst, &data[..3000], 1000).unwrap();
    udp::send_gso(&tx, dst, &data[..1200], 600).unwrap();
    rx.set_nonblocking(true).unwrap();
    let mut bufs = vec![vec![0u8; 65536]; 4];
    let got = recv_all(&rx, &mut bufs, 2);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].len, got[0].segment_size), (3000, 1000));
    assert_eq!((got[1].len, got[1].segment_size), (1200, 600));
}

#[test]
fn gso_over_64_segments_is_refused() {
    let (tx, _rx, dst) = pair();
    let data = vec![0u8; 65 * 100];
    let e = udp::send_gso(&tx, dst, &data, 100).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("64 segments"), "{e}");
    assert_eq!(
        udp::send_gso(&tx, dst, &data, 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn mmsg_batches_round_trip() {
    let (tx, rx, dst) = pair();
    let payloads: Vec<Vec<u8>> = (0..40).map(|i| pattern(64 + i * 10)).collect();
    let gso = pattern(3 * 500);
    let mut msgs: Vec<Transmit<'_>> = payloads
        .iter()
        .map(|p| Transmit {
            dst,
            data: p,
            segment_size: None,
        })
        .collect();
    msgs.push(Transmit {
        dst,
        data: &gso,
        segment_size: Some(500),
    });
    assert_eq!(udp::send_batch(&tx, &msgs).unwrap(), 41);

    let mut bufs = vec![[0u8; 2048]; 64];
    let mut meta = [RecvMeta::default(); 64];
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut lens = Vec::new();
    while got < 43 && std::time::Instant::now() < deadline {
        match udp::recv_batch(&rx, &mut bufs[got..], &mut meta) {
            Ok(n) => {
                for i in 0..n {
                    lens.push(meta[i].len);
                    let want: &[u8] = if got + i < 40 {
                        &payloads[got + i]
                    } else {
                        &gso[(got + i - 40) * 500..][..500]
                    };
                    assert_eq!(&bufs[got + i][..meta[i].len], want);
                }
                got += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, 43, "40 plain + 3 GSO segments: {lens:?}");

    // Nothing left: a nonblocking socket says WouldBlock.
    assert_eq!(
        udp::recv_batch(&rx, &mut bufs, &mut meta)
            .unwrap_err()
            .kind(),
        ErrorKind::WouldBlock
    );
    // Empty batches are no-ops.
    assert_eq!(udp::send_batch(&tx, &[]).unwrap(), 0);
    assert_eq!(udp::recv_batch(&rx, &mut bufs[..0], &mut meta).unwrap(), 0);
}

#[test]
fn truncation_is_reported() {
    let (tx, rx, dst) = pair();
    tx.send_to(&pattern(1500), dst).unwrap();
    let mut bufs = vec![vec![0u8; 100]; 1];
    let got = recv_all(&rx, &mut bufs, 1);
    assert_eq!(got.len(), 1);
    assert!(got[0].truncated);
}
