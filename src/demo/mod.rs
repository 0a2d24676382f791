//! `tapestry demo`: the seed's scenario in network namespaces. A control plane, two cells, apps
//! A, B and C, policies A->B and A->C; real TCP connections show A->B allowed and B->C denied.

pub mod overlay;
pub mod reorder;
pub mod sandbox;
pub mod testbed;

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use self::overlay::{serve_tcp, tcp_exchange, wait_tcp, Overlay};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the overlay running until Ctrl-C instead of tearing it down at the end.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let bin = std::env::current_exe().context("finding the tapestry binary")?;
    let slot: Arc<Mutex<Option<Overlay>>> = Arc::new(Mutex::new(None));
    // Ctrl-C or SIGTERM: tear everything down, then exit.
    {
        let slot = slot.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
                    }
                });
                println!("\ninterrupted: cleaning up");
                if let Some(mut ov) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    ov.tb.cleanup();
                }
                std::process::exit(130);
            }
        });
    }
    let result = scenario(&bin, &slot, args.keep);
    if let Some(mut ov) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
        if result.is_err() {
            let dir = ov.tb.keep_dir();
            eprintln!("logs kept in {}", dir.display());
        }
        println!("cleaning up: stopping processes, deleting namespaces");
        ov.tb.cleanup();
    }
    result
}

fn with<T>(
    slot: &Arc<Mutex<Option<Overlay>>>,
    f: impl FnOnce(&mut Overlay) -> Result<T>,
) -> Result<T> {
    let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
    f(g.as_mut().context("the overlay is gone")?)
}

fn scenario(bin: &std::path::Path, slot: &Arc<Mutex<Option<Overlay>>>, keep: bool) -> Result<()> {
    println!("== Tapestry demo: an overlay in network namespaces (prefix tpdemo-)");
    println!("-- starting the control plane in tpdemo-ctl (198.18.0.10) and cells in tpdemo-cell1 (198.18.0.1), tpdemo-cell2 (198.18.0.2)");
    let ov = Overlay::start("tpdemo", bin, 2, &[])?;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ov);
    let (a, b, c) = with(slot, |ov| {
        let a = ov.add_container(0, "a", "app-A", "space-1")?;
        let b = ov.add_container(1, "b", "app-B", "space-1")?;
        let c = ov.add_container(0, "c", "app-C", "space-1")?;
        Ok((a, b, c))
    })?;
    println!(
        "-- containers: A {} on cell1, B {} on cell2, C {} on cell1",
        a.container_ip, b.container_ip, c.container_ip
    );
    let (na, nb, nc) = with(slot, |ov| {
        Ok((ov.tb.ns_path("a"), ov.tb.ns_path("b"), ov.tb.ns_path("c")))
    })?;
    serve_tcp(&nb, 8080, "hello from B")?;
    serve_tcp(&nc, 8080, "hello from C")?;
    let b_addr = SocketAddrV4::new(b.container_ip, 8080);
    let c_addr = SocketAddrV4::new(c.container_ip, 8080);
    let show = |what: &str, r: Result<String>| match r {
        Ok(reply) => println!("   {what}: ALLOWED, reply {:?}", reply.trim()),
        Err(_) => println!("   {what}: DENIED (no connection within 1 s)"),
    };
    println!("-- before any policy (default deny):");
    show(
        "A -> B:8080",
        tcp_exchange(&na, b_addr, Duration::from_secs(1)),
    );
    println!("-- creating policies A->B tcp 8080 and A->C tcp 8080 through the policy API");
    with(slot, |ov| {
        ov.allow("app-A", "app-B", "tcp", 8080, 8080)?;
        ov.allow("app-A", "app-C", "tcp", 8080, 8080)
    })?;
    let (reply, took) = wait_tcp(&na, b_addr, Duration::from_secs(10))?;
    println!(
        "   A -> B:8080 (cross-cell): ALLOWED after {:.1} ms, reply {:?}",
        took.as_secs_f64() * 1e3,
        reply.trim()
    );
    // Each cell applies the feed on its own; the same-cell policy lives on cell1.
    let (reply, took) = wait_tcp(&na, c_addr, Duration::from_secs(10))?;
    println!(
        "   A -> C:8080 (same cell): ALLOWED after {:.1} ms, reply {:?}",
        took.as_secs_f64() * 1e3,
        reply.trim()
    );
    show(
        "B -> C:8080 (no policy)",
        tcp_exchange(&nb, c_addr, Duration::from_secs(1)),
    );
    show(
        "B -> A:8080 (policies are one-way)",
        tcp_exchange(
            &nb,
            SocketAddrV4::new(a.container_ip, 8080),
            Duration::from_secs(1),
        ),
    );
    let status = with(slot, |ov| ov.cell_status(1))?;
    println!(
        "-- cell2: {} policies in force, drops: {}",
        status["policies_in_force"], status["drops"]
    );
    if keep {
        println!("-- overlay is up; press Ctrl-C to tear it down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}
