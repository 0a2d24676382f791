//! Micro-benchmark of the per-packet ingress decision (policy + connection tracking) against the
//! number of policies (issue 4): is its cost flat at 1k, 100k and 1M policies?
//!
//! One cell (10.255.1.0/24, 250 local ports with distinct tags, 64 remote cells) with N policies
//! spread over many source and destination tags, tcp and udp, single ports and port ranges; half
//! of them name a local port's tag. Three cases, on pre-generated keys that differ from lookup
//! to lookup:
//! - `new-allowed`: a new flow a policy admits: two conntrack misses, the policy lookup and a
//!   conntrack insert (a fresh table per repetition, the cell's default capacity, no eviction);
//! - `new-denied`: a new flow no policy admits: two conntrack misses and the policy lookup
//!   (half of them find the tag pair and protocol but no range covering the port);
//! - `established`: a packet of a flow admitted before: a conntrack miss (reply direction) and a
//!   hit, which updates the entry; the policy index is not consulted.
//!
//! The connection table of the last two holds `--established` flows (default 96,000), admitted
//! through the pipeline before timing. Every packet carries the same `now`, so nothing expires.
//!
//! Paths:
//! - `decide`: the decision of `switch/src/pipeline/decide.rs` alone (`Ctx::ingress` for an
//!   unfragmented TCP/UDP packet, through `Switch::decide_ingress`), with the snapshot load and
//!   the conntrack pin per packet as `Switch` does. At start-up its verdicts are checked against
//!   the full pipeline's on the same packets.
//! - `pipeline`: the real per-packet entry point `Switch::from_underlay` on pre-built
//!   VXLAN-GBP frames (copied into the `PacketBuf` per packet): decap, header checks, the
//!   ingress decision above, counters and the MAC/TTL rewrite.
//! - `policy-only` (new-allowed and new-denied keys only): `Snapshot::policy_allows` alone on the
//!   same keys, to separate the policy index's cost from the connection table's.
//!
//! Modes:
//!   policy-lookup [--sizes 1000,100000,1000000] [--reps 5] [--lookups 1000000] [--new-flows 200000]
//!                 [--established 96000] [--seed S]
//!       times every (size, path, case), interleaved, and prints one tab-separated line each:
//!       `time N path case median_ns min_ns max_ns reps`.
//!   policy-lookup --count --size N [--k1 50000] [--k2 200000] [--established 96000]
//!       for instruction counting under `valgrind --tool=callgrind --dump-before=*interval_mark*`:
//!       runs every (path, case) K1 then K2 times, between calls of `interval_mark`, and prints
//!       `count N path case K1 K2 dump1 dump2`: the callgrind dump numbers holding the two runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use tapestry_bench::percentile;
use tapestry_switch::pipeline::flow::Flow;
use tapestry_switch::{Conntrack, DropReason, PacketBuf, Proto, Switch, Verdict};

mod world;

use world::{Template, World, CT_CAPACITY, L4_OFF, SPORT_ALLOWED, SPORT_DENIED, TEMPLATES};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Decide,
    Pipeline,
    /// `Snapshot::policy_allows` alone, on the same keys (no conntrack, no snapshot load).
    PolicyOnly,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    NewAllowed,
    NewDenied,
    Established,
}

/// Every (path, case) measured, with its name in the output.
const RUNS: [(Path, Case, &str, &str); 8] = [
    (Path::Decide, Case::NewAllowed, "decide", "new-allowed"),
    (Path::Decide, Case::NewDenied, "decide", "new-denied"),
    (Path::Decide, Case::Established, "decide", "established"),
    (Path::Pipeline, Case::NewAllowed, "pipeline", "new-allowed"),
    (Path::Pipeline, Case::NewDenied, "pipeline", "new-denied"),
    (Path::Pipeline, Case::Established, "pipeline", "established"),
    (
        Path::PolicyOnly,
        Case::NewAllowed,
        "policy-only",
        "new-allowed",
    ),
    (
        Path::PolicyOnly,
        Case::NewDenied,
        "policy-only",
        "new-denied",
    ),
];

/// The real ingress decision (`Switch::decide_ingress`, i.e. `Ctx::ingress` of
/// switch/src/pipeline/decide.rs) for the template's flow with source port `sport`.
fn ingress_decision(
    sw: &mut Switch,
    t: &Template,
    sport: u16,
    now: Instant,
) -> Result<(), DropReason> {
    let flow = Flow { sport, ..t.flow };
    sw.decide_ingress(t.dst.id, t.src_tag, &flow, &[], now)
}

/// One packet through `Switch::from_underlay`: the template copied into the buffer (as a
/// receive would), its source port set.
fn pipeline_packet(
    sw: &mut Switch,
    buf: &mut PacketBuf,
    t: &Template,
    sport: u16,
    now: Instant,
) -> Verdict {
    buf.read_space()[..t.len].copy_from_slice(&t.frame[..t.len]);
    buf.set_len(t.len);
    buf.data_mut()[L4_OFF..L4_OFF + 2].copy_from_slice(&sport.to_be_bytes());
    sw.from_underlay(t.underlay, buf, now)
}

/// Runs `one` on `count` packets and returns how many it admitted. Packet i uses template
/// i % len with source port `sport0 + i / len`, the quotient wrapping at `wrap` (0: never), so
/// consecutive lookups use different keys and a new-flow run never repeats a flow.
#[inline(never)]
pub(crate) fn for_packets(
    set: &[Template],
    count: usize,
    sport0: u16,
    wrap: u16,
    mut one: impl FnMut(&Template, u16) -> bool,
) -> usize {
    let (mut i, mut hi, mut ok) = (0usize, 0u16, 0usize);
    for _ in 0..count {
        ok += black_box(one(black_box(&set[i]), sport0 + hi)) as usize;
        i += 1;
        if i == set.len() {
            i = 0;
            hi += 1;
            if hi == wrap {
                hi = 0;
            }
        }
    }
    ok
}

/// `count` lookups of one case on one path; new-allowed gets a fresh connection table (made
/// before, dropped after). Returns the nanoseconds taken.
fn run_case(
    w: &World,
    path: Path,
    case: Case,
    count: usize,
    mark: &mut dyn FnMut(),
) -> Result<u64> {
    let (set, sport0, wrap, expect) = match case {
        Case::NewAllowed => (&w.allowed, SPORT_ALLOWED, 0, count),
        Case::NewDenied => (&w.denied, SPORT_DENIED, 64, 0),
        Case::Established => (&w.established, SPORT_ALLOWED, w.est_sports, count),
    };
    let ct = match (path, case) {
        (Path::Decide | Path::Pipeline, Case::NewAllowed) => Arc::new(Conntrack::new(CT_CAPACITY)),
        _ => w.est_ct.clone(),
    };
    let mut sw = w.switch(&ct);
    let mut buf = PacketBuf::new();
    let now = w.now;
    mark();
    let t0 = Instant::now();
    let ok = match path {
        Path::Decide => for_packets(set, count, sport0, wrap, |t, sport| {
            ingress_decision(&mut sw, t, sport, now).is_ok()
        }),
        Path::Pipeline => for_packets(set, count, sport0, wrap, |t, sport| {
            let v = pipeline_packet(&mut sw, &mut buf, t, sport, now);
            matches!(v, Verdict::ToPort(_))
        }),
        Path::PolicyOnly => {
            let snap = w.tables.load_full();
            for_packets(set, count, sport0, wrap, |t, _| {
                let proto = Proto::from_ip_proto(t.flow.proto).expect("tcp or udp");
                snap.policy_allows(t.src_tag, t.dst.tag, proto, t.flow.dport)
            })
        }
    };
    let ns = t0.elapsed().as_nanos() as u64;
    mark();
    ensure!(
        ok == expect,
        "{path:?} {case:?}: {ok} of {count} admitted, expected {expect}"
    );
    Ok(ns)
}

/// Callgrind dumps its counters before each call (`--dump-before=*interval_mark*`).
#[inline(never)]
fn interval_mark(n: u64) -> u64 {
    black_box(n + 1)
}

struct Args {
    sizes: Vec<usize>,
    reps: usize,
    lookups: usize,
    new_flows: usize,
    count: bool,
    k1: usize,
    k2: usize,
    seed: u64,
    established: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![1_000, 100_000, 1_000_000],
        reps: 5,
        lookups: 1_000_000,
        new_flows: 200_000,
        count: false,
        k1: 50_000,
        k2: 200_000,
        seed: 0x7a9e_57e1,
        established: 96_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--count" {
            a.count = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("see the doc comment of bench/src/bin/policy_lookup/");
            std::process::exit(0);
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = |s: &str| -> Result<usize> {
            s.replace('_', "")
                .parse()
                .with_context(|| format!("{flag}: not a number: {s}"))
        };
        match flag.as_str() {
            "--sizes" | "--size" => a.sizes = v.split(',').map(num).collect::<Result<_>>()?,
            "--reps" => a.reps = num(&v)?,
            "--lookups" => a.lookups = num(&v)?,
            "--new-flows" => a.new_flows = num(&v)?,
            "--k1" => a.k1 = num(&v)?,
            "--k2" => a.k2 = num(&v)?,
            "--seed" => a.seed = num(&v)? as u64,
            "--established" => a.established = num(&v)?,
            _ => bail!("unknown argument {flag}"),
        }
    }
    ensure!(
        a.reps > 0 && a.sizes.iter().all(|&n| n > 0),
        "--reps and sizes must be > 0"
    );
    ensure!(a.k1 < a.k2, "--k1 must be below --k2");
    ensure!(
        a.established / TEMPLATES * TEMPLATES == a.established
            && (1..=CT_CAPACITY / TEMPLATES).contains(&(a.established / TEMPLATES)),
        "--established must be a multiple of {TEMPLATES} up to {CT_CAPACITY}"
    );
    ensure!(
        a.new_flows.max(a.k2) <= CT_CAPACITY,
        "new flows per run must fit the connection table ({CT_CAPACITY})"
    );
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let mut worlds = Vec::new();
    for &n in &a.sizes {
        let t0 = Instant::now();
        let w = World::build(n, a.seed, (a.established / TEMPLATES) as u16)?;
        eprintln!(
            "N={n}: {} (src tag, dst tag, proto) keys, built and checked in {:.1} s",
            w.keys,
            t0.elapsed().as_secs_f64()
        );
        worlds.push(w);
    }
    if a.count {
        // Dump k (1-based) holds what ran between marks k-1 and k.
        let mut marks = 0u64;
        for w in &worlds {
            for (path, case, pname, cname) in RUNS {
                let mut mark = || marks = interval_mark(marks);
                run_case(w, path, case, a.k1, &mut mark)?;
                run_case(w, path, case, a.k2, &mut mark)?;
                let (d1, d2) = (marks - 2, marks);
                println!(
                    "count\t{}\t{pname}\t{cname}\t{}\t{}\t{d1}\t{d2}",
                    w.n, a.k1, a.k2
                );
            }
        }
        return Ok(());
    }
    let mut samples = vec![Vec::new(); worlds.len() * RUNS.len()];
    for _ in 0..a.reps {
        for (wi, w) in worlds.iter().enumerate() {
            for (ri, &(path, case, _, _)) in RUNS.iter().enumerate() {
                let count = match (path, case) {
                    (Path::Decide | Path::Pipeline, Case::NewAllowed) => a.new_flows,
                    _ => a.lookups,
                };
                let ns = run_case(w, path, case, count, &mut || ())?;
                samples[wi * RUNS.len() + ri].push(ns as f64 / count as f64);
            }
        }
    }
    for (wi, w) in worlds.iter().enumerate() {
        for (ri, (_, _, pname, cname)) in RUNS.iter().enumerate() {
            let s = &mut samples[wi * RUNS.len() + ri];
            s.sort_by(f64::total_cmp);
            println!(
                "time\t{}\t{pname}\t{cname}\t{:.1}\t{:.1}\t{:.1}\t{}",
                w.n,
                percentile(s, 50.0),
                s[0],
                s[s.len() - 1],
                s.len()
            );
        }
    }
    Ok(())
}
