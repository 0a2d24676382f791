//! Test tooling: a userspace hop that reorders and drops underlay frames, for the fault tests.
//!
//! `tc netem` would do this in the kernel, but it needs `sch_netem` (CONFIG_NET_SCH_NETEM), and
//! queueing frames to userspace through nftables needs CONFIG_NFT_QUEUE; the CI kernel has
//! neither. So two links that would otherwise be bridged are joined by [`ReorderHop`]: one
//! thread per direction reads each frame from one link through an AF_PACKET socket and writes it
//! to the other, and [`Reorder`] (no I/O) decides, frame by frame, to pass it at once, hold it
//! back until 1 to 3 later frames have passed, or drop it.
//!
//! The links must carry whole frames with complete checksums (turn offloads off on the devices
//! that transmit into them: `tapestry_sys::ethtool::disable_offloads_in_netns`); a frame that
//! does not fit the outgoing link is counted in [`HopCounts::send_errors`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tapestry_sys::packet::PacketPort;

use super::overlay::in_netns;
use super::testbed::{sh, Testbed};
use tapestry_sys::ethtool::disable_offloads_in_netns;

/// The most frames held back at once (in each direction).
pub const MAX_HELD: usize = 4;

/// What happened to a frame given to [`Reorder::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sent at once (emitted before any held frame released after it).
    Passed,
    /// Held back: emitted after the next 1 to 3 frames that pass.
    Held,
    /// Never sent.
    Dropped,
}

struct Held {
    frame: Vec<u8>,
    /// Frames still to pass before this one goes.
    after: u8,
}

/// Decides the fate of each frame of one direction: of every 1000, about `hold_per_mille` are
/// held back and `drop_per_mille` dropped, chosen by a seeded xorshift generator (the same seed,
/// the same choices).
pub struct Reorder {
    state: u64,
    hold_per_mille: u32,
    drop_per_mille: u32,
    held: Vec<Held>,
    /// Buffers of frames already released, reused for the next held ones.
    spare: Vec<Vec<u8>>,
}

impl Reorder {
    pub fn new(seed: u64, hold_per_mille: u32, drop_per_mille: u32) -> Reorder {
        Reorder {
            state: seed | 1,
            hold_per_mille,
            drop_per_mille,
            held: Vec::with_capacity(MAX_HELD),
            spare: Vec::with_capacity(MAX_HELD),
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Decides about `frame`, just read, and emits the frames to send now, in order: `frame`
    /// itself if it passes, then each held frame whose turn has come.
    pub fn push(&mut self, frame: &[u8], emit: &mut dyn FnMut(&[u8])) -> Verdict {
        let roll = (self.next() % 1000) as u32;
        if roll < self.drop_per_mille {
            return Verdict::Dropped;
        }
        if roll < self.drop_per_mille + self.hold_per_mille && self.held.len() < MAX_HELD {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(frame);
            let after = 1 + (self.next() % 3) as u8;
            self.held.push(Held { frame: buf, after });
            return Verdict::Held;
        }
        emit(frame);
        let mut i = 0;
        while i < self.held.len() {
            self.held[i].after -= 1;
            if self.held[i].after == 0 {
                let h = self.held.remove(i);
                emit(&h.frame);
                self.spare.push(h.frame);
            } else {
                i += 1;
            }
        }
        Verdict::Passed
    }

    /// Emits every held frame, oldest first (nothing else arrived for a while).
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        for h in self.held.drain(..) {
            emit(&h.frame);
            self.spare.push(h.frame);
        }
    }

    /// Frames held back now.
    pub fn holding(&self) -> usize {
        self.held.len()
    }
}

/// What a [`ReorderHop`] did, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCounts {
    /// Frames read.
    pub frames: u64,
    /// Frames held back and sent after later ones.
    pub delayed: u64,
    /// Frames dropped on purpose.
    pub dropped: u64,
    /// Frames the outgoing link refused (too big, or another error).
    pub send_errors: u64,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    send_errors: AtomicU64,
}

/// How long a read waits before held frames are flushed (and the stop flag looked at).
const IDLE: Duration = Duration::from_millis(5);

/// Two links joined by forwarding threads that reorder and drop (see the module docs). Stops
/// when dropped.
pub struct ReorderHop {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl ReorderHop {
    /// Forwards every frame between links `a` and `b` of the namespace at `netns`, each way
    /// holding back `hold_per_mille` and dropping `drop_per_mille` of every 1000 frames. The
    /// links must not be connected otherwise (not bridged).
    pub fn start(
        netns: &Path,
        a: &str,
        b: &str,
        hold_per_mille: u32,
        drop_per_mille: u32,
    ) -> Result<ReorderHop> {
        let (na, nb) = (a.to_string(), b.to_string());
        let (pa, pb) = in_netns(netns, move || {
            let pa = PacketPort::open(&na, false, None)?;
            let pb = PacketPort::open(&nb, false, None)?;
            for p in [&pa, &pb] {
                p.set_read_timeout(Some(IDLE))?;
            }
            Ok((pa, pb))
        })
        .with_context(|| format!("opening packet sockets on {a} and {b}"))?;
        let (pa, pb) = (Arc::new(pa), Arc::new(pb));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for (seed, from, to) in [
            (0x5eed_0001_u64, pa.clone(), pb.clone()),
            (0x5eed_0002_u64, pb, pa),
        ] {
            let rule = Reorder::new(seed, hold_per_mille, drop_per_mille);
            let (stop, counters) = (stop.clone(), counters.clone());
            let name = format!("reorder {} -> {}", from.name(), to.name());
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || forward(&from, &to, rule, &stop, &counters))?,
            );
        }
        Ok(ReorderHop {
            stop,
            counters,
            threads,
        })
    }

    /// Puts a hop between host `host` of testbed `tb` and the underlay bridge: the host's bridge
    /// port leaves the bridge, a new veth pair `rh0`/`rh1` joins it (`rh0` on the bridge), and
    /// the hop forwards between `rh1` and the host's port. Offloads are turned off where frames
    /// enter the hop (`rh0`, and the host's `ul0`), so it sees whole frames with complete
    /// checksums. Everything lives in the testbed's namespaces, removed with them.
    pub fn splice(
        tb: &Testbed,
        host: &str,
        mtu: u32,
        hold_per_mille: u32,
        drop_per_mille: u32,
    ) -> Result<ReorderHop> {
        let port = tb
            .underlay_port(host)
            .with_context(|| format!("{host} is not a host on the underlay"))?
            .to_string();
        let ul = tb.ns_name("ul");
        let mtu = mtu.to_string();
        for args in [
            vec!["-n", &ul, "link", "set", &port, "nomaster"],
            vec![
                "-n", &ul, "link", "add", "rh0", "mtu", &mtu, "type", "veth", "peer", "name",
                "rh1", "mtu", &mtu,
            ],
            vec!["-n", &ul, "link", "set", "rh0", "master", "br0", "up"],
            vec!["-n", &ul, "link", "set", "rh1", "up"],
        ] {
            sh("ip", &args)?;
        }
        disable_offloads_in_netns(&tb.ns_path("ul"), "rh0")?;
        disable_offloads_in_netns(&tb.ns_path(host), "ul0")?;
        ReorderHop::start(
            &tb.ns_path("ul"),
            "rh1",
            &port,
            hold_per_mille,
            drop_per_mille,
        )
    }

    /// The counts so far.
    pub fn counts(&self) -> HopCounts {
        let c = &self.counters;
        HopCounts {
            frames: c.frames.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding (held frames are sent first) and returns the final counts.
    pub fn stop(mut self) -> HopCounts {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReorderHop {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One direction: `from` to `to` until `stop`.
fn forward(
    from: &PacketPort,
    to: &PacketPort,
    mut rule: Reorder,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut buf = vec![0u8; 65536];
    let mut send = |frame: &[u8]| {
        if to.write(frame).is_err() {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(n) => {
                counters.frames.fetch_add(1, Ordering::Relaxed);
                match rule.push(&buf[..n], &mut send) {
                    Verdict::Passed => {}
                    Verdict::Held => {
                        counters.delayed.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Dropped => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Quiet for a moment (or interrupted): nothing comes to pass the held frames.
            Err(_) => rule.flush(&mut send),
        }
    }
    rule.flush(&mut send);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` numbered frames through `r`; returns the order they came out in.
    fn run(r: &mut Reorder, n: u32) -> (Vec<u32>, Vec<Verdict>) {
        let mut out = Vec::new();
        let mut verdicts = Vec::new();
        for i in 0..n {
            let mut emit = |f: &[u8]| out.push(u32::from_be_bytes(f.try_into().unwrap()));
            verdicts.push(r.push(&i.to_be_bytes(), &mut emit));
        }
        r.flush(&mut |f: &[u8]| out.push(u32::from_be_bytes(f.try_into().unwrap())));
        (out, verdicts)
    }

    #[test]
    fn without_holding_or_dropping_frames_pass_in_order() {
        let (out, _) = run(&mut Reorder::new(7, 0, 0), 1000);
        assert_eq!(out, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn held_frames_come_out_once_after_one_to_three_later_frames() {
        let mut r = Reorder::new(7, 50, 0);
        let (out, verdicts) = run(&mut r, 5000);
        assert_eq!(r.holding(), 0);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..5000).collect::<Vec<_>>(), "each frame once");
        let held = verdicts.iter().filter(|v| **v == Verdict::Held).count();
        assert!(
            (150..350).contains(&held),
            "about 5% held back, got {held} of 5000"
        );
        let mut late = 0;
        for (pos, f) in out.iter().enumerate() {
            let later_before: Vec<u32> = out[..pos].iter().copied().filter(|g| g > f).collect();
            if verdicts[*f as usize] == Verdict::Held {
                assert!(!later_before.is_empty(), "held frame {f} went out in order");
                late += 1;
            }
            // Passed by at most 3 passing frames, and by frames held meanwhile.
            assert!(
                later_before.len() <= 3 + MAX_HELD,
                "frame {f} passed by {later_before:?}"
            );
        }
        assert_eq!(late, held);
    }

    #[test]
    fn dropped_frames_never_come_out() {
        let (out, verdicts) = run(&mut Reorder::new(9, 30, 20), 10_000);
        let dropped: Vec<u32> = (0..10_000)
            .filter(|i| verdicts[*i as usize] == Verdict::Dropped)
            .collect();
        assert!(
            (100..300).contains(&dropped.len()),
            "about 2% dropped, got {}",
            dropped.len()
        );
        assert_eq!(out.len() + dropped.len(), 10_000);
        assert!(dropped.iter().all(|d| !out.contains(d)));
    }
}
