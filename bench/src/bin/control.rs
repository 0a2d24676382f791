//! Control-plane benchmark: policy creates/s, list latency with 100k policies, and feed latency
//! from a policy create to its arrival at N subscribed simulated cells.
//!
//! `cargo run --release -p tapestry-bench --bin control-bench -- [--database URL] [--cells 100] [--policies 100000] [--list-rounds 100]`
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tapestry_bench::percentile;
use tapestry_policy::client::InternalClient;
use tapestry_policy::ControlConfig;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn pol(src: &str, dst: &str) -> serde_json::Value {
    json!({"source":{"id":src},"destination":{"id":dst,"protocol":"tcp","ports":{"start":8080,"end":8080}}})
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let cells: usize = arg("--cells")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let total: usize = arg("--policies")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let list_rounds: usize = arg("--list-rounds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let database = arg("--database");
    let dir = tempfile::tempdir()?;
    let mut cfg = ControlConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.internal_listen = "127.0.0.1:0".parse()?;
    cfg.database = database.clone();
    cfg.max_policies_per_source = 1000;
    // The simulated cells share one certificate.
    cfg.allow_shared_cell_cert = true;
    let ctl = tapestry_policy::start(cfg)
        .await
        .context("starting the control plane")?;
    let base = format!(
        "http://{}/networking/v1/external/policies",
        ctl.external_addr
    );
    let http = reqwest::Client::new();
    let token = ctl.admin_token.clone();
    println!(
        "control plane: database {}",
        database.as_deref().unwrap_or("sqlite (data dir)")
    );

    // 1. Policy creates per second: one policy per request, 16 concurrent clients.
    let n = 4000;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let body = json!({"policies":[pol(&format!("c{}", i % 400), &format!("cd{i}"))]});
                let r = http
                    .post(&base)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "create: {}", r.status());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("policy creates: {n} requests (1 policy each, 16 concurrent) in {secs:.2} s = {:.0} creates/s", n as f64 / secs);

    // 2. Feed latency: N cells long-poll; a policy create is timed until each cell has it.
    let creds = ctl.credentials_dir.clone();
    let ibase = format!("https://{}", ctl.internal_addr);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut ready = Vec::new();
    for c in 0..cells {
        let client = InternalClient::new(&ibase, &creds)?;
        let tx = tx.clone();
        let (rtx, rrx) = tokio::sync::oneshot::channel::<()>();
        ready.push(rrx);
        tokio::spawn(async move {
            let cell = std::net::Ipv4Addr::new(10, 0, (c / 250) as u8, (c % 250 + 1) as u8);
            let mut since = None;
            let mut rtx = Some(rtx);
            loop {
                let Ok(r) = client.feed(cell, since, Duration::from_secs(30)).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let now = Instant::now();
                for ch in &r.changes {
                    if let Some(d) = ch.value["destination"]["id"].as_str() {
                        let _ = tx.send((d.to_string(), now));
                    }
                }
                since = Some(r.version);
                if let Some(r) = rtx.take() {
                    let _ = r.send(());
                }
            }
        });
    }
    for r in ready {
        r.await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // all cells parked in a long-poll
    let rounds = 50;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut lat = Vec::with_capacity(rounds * cells);
    for i in 0..rounds {
        let d = format!("feed{i}");
        let t0 = Instant::now();
        sent.insert(d.clone(), t0);
        let r = http
            .post(&base)
            .bearer_auth(&token)
            .json(&json!({"policies":[pol("feedsrc", &d)]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "create: {}", r.status());
        let mut got = 0;
        while got < cells {
            let (dst, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("a cell did not receive the change within 10 s")?
                .context("channel closed")?;
            if let Some(t0) = sent.get(&dst) {
                if dst == d {
                    got += 1;
                }
                lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "feed latency (POST sent -> change received, {cells} cells x {rounds} changes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        percentile(&lat, 100.0)
    );

    // 3. Bulk load to `total` policies (1000 per request), then time the list.
    let have = n + rounds;
    let mut i = 0;
    let t = Instant::now();
    while have + i < total {
        let k = (total - have - i).min(1000);
        let batch: Vec<_> = (i..i + k)
            .map(|j| pol(&format!("b{}", j / 500), &format!("bd{}", j % 500)))
            .collect();
        let r = http
            .post(&base)
            .bearer_auth(&token)
            .json(&json!({ "policies": batch }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 200,
            "bulk create: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        i += k;
    }
    println!(
        "bulk load: {i} policies in batches of 1000 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Cold: a change was just committed (a create and a delete of another policy), so the
    // server has to bring its list up to date first. Warm: nothing changed since the last list.
    // Filtered: `?source_id=` of one source with 500 policies, right after a change too.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut filtered = Vec::new();
    let mut size = 0;
    let mut filtered_count = 0;
    let listed = have + i + 1;
    let get = |url: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let t = Instant::now();
            let r = http.get(url).bearer_auth(&token).send().await?;
            anyhow::ensure!(r.status() == 200, "list: {}", r.status());
            let body = r.bytes().await?;
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64() * 1000.0, body))
        }
    };
    for k in 0..list_rounds {
        for path in ["", "/delete"] {
            let body = json!({"policies":[pol("listsrc", &format!("l{k}"))]});
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "create/delete: {}", r.status());
        }
        let (ms, body) = get(base.clone()).await?;
        cold.push(ms);
        size = body.len();
        let (ms, _) = get(base.clone()).await?;
        warm.push(ms);
        if k % 2 == 0 {
            let (ms, body) = get(format!("{base}?source_id=b{}", k % 190)).await?;
            filtered.push(ms);
            filtered_count = serde_json::from_slice::<serde_json::Value>(&body)?["total_policies"]
                .as_u64()
                .unwrap_or(0);
        }
    }
    for l in [&mut cold, &mut warm, &mut filtered] {
        l.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "list {} policies ({:.1} MB JSON, time to last byte, {list_rounds} rounds): cold p50 {:.1} ms p99 {:.1} ms max {:.1} ms; warm p50 {:.1} ms p99 {:.1} ms",
        listed - 1,
        size as f64 / 1e6,
        percentile(&cold, 50.0),
        percentile(&cold, 99.0),
        percentile(&cold, 100.0),
        percentile(&warm, 50.0),
        percentile(&warm, 99.0)
    );
    println!(
        "list ?source_id= ({filtered_count} policies, after a change, {} rounds): p50 {:.1} ms p99 {:.1} ms",
        filtered.len(),
        percentile(&filtered, 50.0),
        percentile(&filtered, 99.0)
    );
    ctl.shutdown().await;
    Ok(())
}
