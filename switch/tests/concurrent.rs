//! Several workers share one Tables, Conntrack and Counters while the control side keeps
//! swapping snapshots: no panics, no lost counts, conntrack within capacity.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use tapestry_switch::{PacketBuf, Proto, Switch, Verdict};

#[test]
fn workers_and_control_side_together() {
    let mut w = world_with(500);
    w.net.allow(1, 2, Proto::Udp, 1, 65535);
    let cell = &w.net.cells[0];
    let (tables, ct, counters) = (
        cell.tables.clone(),
        cell.conntrack.clone(),
        cell.counters.clone(),
    );
    let (a0, b0) = (w.a0, w.b0);
    let stop = Arc::new(AtomicBool::new(false));
    let per_worker = 20_000u32;
    let workers: Vec<_> = (0..3u32)
        .map(|wid| {
            let mut sw = Switch::new(tables.clone(), ct.clone(), counters.clone());
            let ct = ct.clone();
            std::thread::spawn(move || {
                let mut buf = PacketBuf::new();
                let now = Instant::now();
                let mut delivered = 0u32;
                for i in 0..per_worker {
                    let sport = (wid * per_worker + i) as u16;
                    let f = if i % 2 == 0 {
                        udp_frame(&a0, b0.ip(), sport, 53)
                    } else {
                        udp_frame(&b0, a0.ip(), 53, sport)
                    };
                    let from = if i % 2 == 0 { a0.port() } else { b0.port() };
                    let space = buf.read_space();
                    space[..f.len()].copy_from_slice(&f);
                    buf.set_len(f.len());
                    if let Verdict::ToPort(_) = sw.from_port(from, &mut buf, now) {
                        delivered += 1;
                    }
                    assert!(ct.len() <= 500);
                }
                delivered
            })
        })
        .collect();
    let control = {
        let stop = stop.clone();
        let cfg = cell.config;
        let ports = cell.ports.clone();
        let remotes = w.net.remotes_for(0);
        let policies = w.net.policies.clone();
        let tables = tables.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let snap = tapestry_switch::Snapshot::new(
                    cfg,
                    ports.clone(),
                    remotes.clone(),
                    policies.clone(),
                )
                .unwrap();
                tables.store(snap);
                n += 1;
            }
            n
        })
    };
    let delivered: u32 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let stores = control.join().unwrap();
    let s = counters.snapshot();
    let total = 3 * per_worker as u64;
    assert_eq!(s.totals.rx_packets, total);
    assert_eq!(s.totals.tx_packets + s.totals.drop_packets, total);
    assert_eq!(s.totals.tx_packets, delivered as u64);
    assert!(delivered > 0 && stores > 0);
    assert!(ct.len() <= 500);
}
