//! Connection limits of both APIs: timeouts, caps, and the internal API answering through a
//! slowloris flood of the external one.
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Db, Harness};
use tapestry_policy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn small(max: usize, per_client: usize) -> Limits {
    Limits {
        max_connections: max,
        max_per_client: per_client,
        header_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(800),
    }
}

/// Waits (at most `bound`) for the server to close `s`; returns what it sent before closing.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the server kept the connection open past {bound:?}"
    );
    got
}

async fn get_health(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() {
    let h = Harness::new(Db::Sqlite, |c| c.external_limits = small(100, 50)).await;
    let addr = h.c().external_addr;

    // Headers that never finish.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(10)).await;

    // A body that never finishes: 408, then closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /networking/v1/external/policies HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"po")
        .await
        .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("did not arrive within"), "{got}");

    // A keep-alive connection left idle after its answer (the header timeout runs again).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_client_cap_are_closed_at_once() {
    let h = Harness::new(Db::Sqlite, |c| {
        c.external_limits = small(100, 5);
        c.external_limits.header_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = h.c().external_addr;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // Let the server admit the five before the sixth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = TcpStream::connect(addr).await.unwrap();
    let got = closed_within(&mut sixth, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    // A place frees when a connection closes.
    drop(held.pop());
    let mut answered = false;
    for _ in 0..50 {
        if get_health(addr)
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "a freed place was never reused");
    h.shutdown().await;
}

/// The slowloris: the external port flooded with half-sent requests, far beyond its
/// limits, while a cell uses the internal API (leases and the feed). The internal API keeps
/// answering; the external one answers again once the flood's connections time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_api_answers_through_a_slowloris_flood_of_the_external_one() {
    let h = Harness::new(Db::Sqlite, |c| {
        c.external_limits = small(64, 32);
        c.external_limits.header_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = h.c().external_addr;
    let cell = h.internal();
    let lease = cell
        .acquire_lease(Ipv4Addr::new(10, 0, 0, 1))
        .await
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            let mut opened = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Hold at most 400 sockets (the test's own descriptors), oldest replaced first.
                if held.len() >= 400 {
                    held.remove(0);
                }
                if let Ok(mut s) = TcpStream::connect(addr).await {
                    let _ = s
                        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: ")
                        .await;
                    held.push(s);
                    opened += 1;
                }
                if opened.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (opened, held)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    let mut since = None;
    for _ in 0..20 {
        let t = Instant::now();
        cell.renew_lease(&lease)
            .await
            .expect("renewing a lease during the flood");
        let leases = cell
            .list_leases()
            .await
            .expect("listing leases during the flood");
        assert_eq!(leases.len(), 1);
        let feed = cell
            .feed(Ipv4Addr::new(10, 0, 0, 1), since, Duration::ZERO)
            .await
            .expect("the feed during the flood");
        since = Some(feed.version);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, held) = flood.await.unwrap();
    eprintln!(
        "slowloris: {opened} connections opened; worst internal round (renew + list + feed) {worst:?}"
    );
    assert!(
        opened > 200,
        "the flood did not exceed the limits ({opened})"
    );

    // The flood's sockets stay open but send nothing: the header timeout frees their places.
    let mut answered = false;
    for _ in 0..100 {
        if get_health(addr)
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered,
        "the external API never answered again after the flood"
    );
    drop(held);
    h.shutdown().await;
}
