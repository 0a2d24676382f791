//! `tapestry cell`: one process per host. It leases a subnet from the control plane, follows the
//! change feed, runs the userspace dataplane over TAP devices and the underlay UDP socket, and
//! serves the local API that attaches containers.

pub mod access;
pub mod api;
mod attach;
pub mod capture;
mod check;
mod dataplane;
/// The capture tap in the dataplane driver (`tapestry capture`).
pub use dataplane::capture as tap;
mod dns;
mod egress;
pub mod identity;
pub(crate) mod metrics;
mod net_in;
pub mod observe;
mod port_dev;
pub mod state;
mod status;
mod sync;
pub mod view;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tapestry_switch::{Conntrack, Counters, Tables};

use self::state::{Containers, StateDir};

/// Default overlay network, as Cloud Foundry's.
pub const DEFAULT_OVERLAY: &str = "10.255.0.0/16";
/// The gateway every container routes through (as Silk).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// VXLAN-GBP adds 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const ENCAP_OVERHEAD: u32 = 50;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CellArgs {
    #[command(subcommand)]
    command: Option<CellCommand>,
    /// Internal (mutual TLS) API of the control plane, e.g. https://10.0.0.10:4003.
    #[arg(long)]
    control: Option<String>,
    /// This cell's credentials folder (ca.pem, cert.pem, key.pem) from `tapestry control
    /// cell-credentials --underlay-ip IP` (or the shared `cell-credentials`, if allowed).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// This host's underlay address: the VXLAN socket binds IP:vtep-port.
    #[arg(long)]
    underlay_ip: Option<Ipv4Addr>,
    /// Where the cell keeps its state and its socket (cell.sock).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A group (name or gid) whose members may use cell.sock besides root and the cell's user:
    /// the socket becomes 0660 and the state dir 0710, both that group's. Without it, 0600.
    #[arg(long)]
    socket_group: Option<String>,
    /// UDP port of the VXLAN tunnel endpoint (the same on every cell).
    #[arg(long, default_value_t = 4789)]
    vtep_port: u16,
    /// MTU of the underlay; containers get this minus 50.
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,
    /// The overlay network the control plane hands subnets out of.
    #[arg(long, default_value = DEFAULT_OVERLAY)]
    overlay_network: ipnet::Ipv4Net,
    /// Turn off TAP and UDP offloads (TSO, GSO, GRO).
    #[arg(long)]
    no_offload: bool,
    /// After the last packet, the dataplane keeps polling (yielding the CPU between polls) for
    /// this many microseconds before it sleeps: a reply arriving meanwhile skips a thread
    /// wake-up. 0 turns it off.
    #[arg(long, default_value_t = 200)]
    busy_poll_us: u64,
    /// Nice value of the dataplane threads (-20..19). Below 0 it is scheduled ahead of ordinary
    /// processes, as the kernel's own packet processing (softirq) is; that needs CAP_SYS_NICE,
    /// without it the thread keeps the normal priority. 0 (the default) leaves it alone.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    dataplane_nice: i32,
    /// Most connections tracked at once; new flows beyond it are refused and counted.
    #[arg(long, default_value_t = 262_144)]
    conntrack_max: usize,
    /// Dataplane worker threads, each with its own queue of every TAP and its own socket of
    /// the VTEP (SO_REUSEPORT); a flow stays on one worker. 0 (the default): one per CPU.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Most containers attached at once; one more is refused with an error, so a full cell
    /// fails at attach time instead of running the host out of kernel memory. The default is
    /// a full /24.
    #[arg(long, default_value_t = 254)]
    max_containers: usize,
    /// Length of each container TAP's per-queue ring (txqueuelen): frames the container's
    /// stack has sent and the switch has not read yet. The TAP has no qdisc (`noqueue`), so
    /// this ring is the only queue; it costs 8 bytes an entry per queue, in kernel memory.
    #[arg(long, default_value_t = DEFAULT_TAP_TXQUEUELEN)]
    tap_txqueuelen: u32,
    /// Destinations no application security group can open (CF's deny_networks), as a comma
    /// list of CIDRs; "" for none. The cell's own gateway services 169.254.0.1 and
    /// 169.254.0.2 are never covered.
    #[arg(long, value_name = "CIDR,...", default_value = DEFAULT_DENY_NETWORKS)]
    deny_networks: String,
    /// Net-in: the address the cell listens on for containers' mapped host ports (CNI
    /// portMappings, `container up --net-in`). Default: --underlay-ip; 0.0.0.0 for every
    /// address of the host.
    #[arg(long, value_name = "IP")]
    net_in_address: Option<Ipv4Addr>,
    /// Domains the cell's DNS responder (169.254.0.2) answers from internal routes, as a comma
    /// list; an unknown name under one is NXDOMAIN. Other names are forwarded upstream.
    #[arg(long, value_name = "DOMAIN,...", default_value = dns::DEFAULT_INTERNAL_DOMAINS)]
    internal_domains: String,
    /// Upstream resolvers for names outside the internal domains, as a comma list of IP or
    /// IP:PORT. Default: the IPv4 nameservers of /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT],...")]
    dns_upstream: Option<String>,
    /// Lifetime (seconds, 10-86400) to ask for instance identity certificates; the control
    /// plane's default (24 h) otherwise. They are renewed at two thirds of it. For tests.
    #[arg(long, hide = true, value_name = "SECS")]
    instance_cert_lifetime: Option<u64>,
    /// How containers get their interface: `tap` (a TAP device in the container's namespace,
    /// through /dev/net/tun) or `packet` (a veth pair whose host end the cell reads through
    /// AF_PACKET with the virtio-net header, for hosts or user namespaces where /dev/net/tun
    /// cannot be opened). Default: tap where /dev/net/tun opens, packet otherwise.
    #[arg(long, value_name = "tap|packet")]
    port_kind: Option<tapestry_sys::port::PortKind>,
    /// Start with the container-to-container flow log on (STATE_DIR/flows.log); switch it at
    /// run time with `tapestry cell flow-log on|off`.
    #[arg(long)]
    flow_log: bool,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics: per-port packets and
    /// bytes, drops by reason, connections tracked, per-policy hits, feed version lag.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Link-local, which holds cloud metadata services (169.254.169.254).
pub const DEFAULT_DENY_NETWORKS: &str = "169.254.0.0/16";

/// Parses `--deny-networks`: comma-separated CIDRs (`a.b.c.d/len`), blank for none. The error
/// names the entry that is not a CIDR.
pub fn parse_deny_networks(s: &str) -> Result<Vec<ipnet::Ipv4Net>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::Ipv4Net>().map_err(|_| {
                anyhow::anyhow!(
                    "--deny-networks: {p:?} is not an IPv4 CIDR (write it as a.b.c.d/len, e.g. 169.254.0.0/16)"
                )
            })
        })
        .collect()
}

/// txqueuelen of container TAPs, by measurement (BENCHMARKS.md, "Kernel memory"): with the
/// `noqueue` root this is only the TAP's own ring, 8 bytes an entry per queue.
pub const DEFAULT_TAP_TXQUEUELEN: u32 = 1000;

#[derive(clap::Subcommand, Debug)]
enum CellCommand {
    /// Show a running cell's lease, ports, policies in force and counters.
    Status {
        #[arg(long)]
        state_dir: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Switch a running cell's flow log (STATE_DIR/flows.log: one JSON line per new
    /// container-to-container flow admitted or denied, rate-limited) on or off.
    FlowLog {
        #[arg(value_enum)]
        state: OnOff,
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

/// Settings fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct CellConfig {
    pub underlay_ip: Ipv4Addr,
    pub vtep_port: u16,
    pub underlay_mtu: u32,
    pub overlay_network: ipnet::Ipv4Net,
    pub subnet: ipnet::Ipv4Net,
    pub offload: bool,
    /// Refuse an attach beyond this many containers.
    pub max_containers: usize,
    /// txqueuelen of every container TAP.
    pub tap_txqueuelen: u32,
    /// Destinations no ASG can open.
    pub deny_networks: Vec<ipnet::Ipv4Net>,
    /// Where the cell listens for net-in (mapped host ports).
    pub net_in_address: Ipv4Addr,
    /// Domains answered from internal routes (`--internal-domains`).
    pub internal_domains: Vec<String>,
    /// Where other DNS queries go (`--dns-upstream`, else /etc/resolv.conf).
    pub dns_upstreams: Vec<SocketAddrV4>,
    /// TAP or veth + AF_PACKET container ports (`--port-kind`).
    pub port_kind: tapestry_sys::port::PortKind,
}

impl CellConfig {
    /// A cell at `underlay_ip` holding `subnet`, every other setting at the default of
    /// `tapestry cell` (for tests and tools that build tables without a running cell).
    pub fn with_defaults(underlay_ip: Ipv4Addr, subnet: ipnet::Ipv4Net) -> CellConfig {
        CellConfig {
            underlay_ip,
            vtep_port: 4789,
            underlay_mtu: 1500,
            overlay_network: DEFAULT_OVERLAY
                .parse()
                .expect("the default overlay is a CIDR"),
            subnet,
            offload: true,
            max_containers: 254,
            tap_txqueuelen: DEFAULT_TAP_TXQUEUELEN,
            deny_networks: parse_deny_networks(DEFAULT_DENY_NETWORKS)
                .expect("the default deny-networks parse"),
            net_in_address: underlay_ip,
            internal_domains: vec![dns::DEFAULT_INTERNAL_DOMAINS.to_string()],
            dns_upstreams: vec![],
            port_kind: tapestry_sys::port::PortKind::Tap,
        }
    }

    pub fn container_mtu(&self) -> u32 {
        self.underlay_mtu - ENCAP_OVERHEAD
    }
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// The running cell, shared by the API threads, the control sync and the dataplane handle.
pub struct Cell {
    pub config: CellConfig,
    pub state: StateDir,
    pub tables: Arc<Tables>,
    pub conntrack: Arc<Conntrack>,
    pub counters: Arc<Counters>,
    dataplane: dataplane::DataplaneHandle,
    /// The container-to-container flow log's switch.
    flow_log: dataplane::flow_log::FlowLog,
    /// Instance identity credentials: the registry the 61443 terminator reads, renewal.
    pub identity: identity::Identity,
    inner: Mutex<Inner>,
    /// Wakes the task that reports this cell's instances to the control plane.
    instances_dirty: tokio::sync::Notify,
}

struct Inner {
    containers: Containers,
    view: view::CellView,
    /// Each attachment's TAP queues (one per worker, or one), by attachment key.
    taps: std::collections::HashMap<String, Vec<Arc<tapestry_sys::port::PortDev>>>,
    control: sync::ControlStatus,
    /// Attachments whose net-in mappings could not be bound at start (see
    /// [`Cell::restore_net_in`]): reserved, not in force.
    net_in_suspended: std::collections::BTreeSet<String>,
    /// Where the search for the next free net-in host port starts.
    net_in_cursor: u16,
}

pub fn run(args: CellArgs) -> Result<()> {
    match args.command {
        Some(CellCommand::Status { state_dir, json }) => return status::print(&state_dir, json),
        Some(CellCommand::FlowLog { state, state_dir }) => {
            return observe::run_flow_log(&state_dir, state == OnOff::On)
        }
        None => {}
    }
    let (Some(control), Some(credentials), Some(underlay_ip), Some(state_dir)) = (
        args.control.clone(),
        args.credentials.clone(),
        args.underlay_ip,
        args.state_dir.clone(),
    ) else {
        bail!("tapestry cell needs --control, --credentials, --underlay-ip and --state-dir");
    };
    if args.underlay_mtu < 576 + ENCAP_OVERHEAD || args.underlay_mtu > 65535 {
        bail!(
            "--underlay-mtu {} is out of range: it must be between {} and 65535",
            args.underlay_mtu,
            576 + ENCAP_OVERHEAD
        );
    }
    if !(-20..=19).contains(&args.dataplane_nice) {
        bail!(
            "--dataplane-nice {} is out of range: it must be between -20 and 19",
            args.dataplane_nice
        );
    }
    if args.workers > tapestry_sys::udp::MAX_WORKERS {
        bail!(
            "--workers {} is too many: at most {}",
            args.workers,
            tapestry_sys::udp::MAX_WORKERS
        );
    }
    if args.max_containers == 0 || args.max_containers > 65_534 {
        bail!(
            "--max-containers {} is out of range: it must be between 1 and 65534",
            args.max_containers
        );
    }
    if args.tap_txqueuelen == 0 || args.tap_txqueuelen > 100_000 {
        bail!(
            "--tap-txqueuelen {} is out of range: it must be between 1 and 100000",
            args.tap_txqueuelen
        );
    }
    let deny_networks = parse_deny_networks(&args.deny_networks)?;
    let internal_domains = dns::parse_internal_domains(&args.internal_domains)?;
    let dns_upstreams = match &args.dns_upstream {
        Some(s) => dns::parse_upstreams(s)?,
        None => dns::resolv_conf_upstreams(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    };
    if dns_upstreams.is_empty() {
        tracing::warn!("no upstream DNS resolver (--dns-upstream, /etc/resolv.conf): names outside {internal_domains:?} get SERVFAIL");
    }
    if let Some(s) = args
        .instance_cert_lifetime
        .filter(|s| !(10..=86_400).contains(s))
    {
        bail!(
            "--instance-cert-lifetime {s} is out of range: it must be between 10 and 86400 seconds"
        );
    }
    if underlay_ip.is_unspecified() || underlay_ip.is_broadcast() || underlay_ip.is_multicast() {
        bail!("--underlay-ip {underlay_ip} is not a unicast address of this host");
    }
    let net_in_address = args.net_in_address.unwrap_or(underlay_ip);
    let port_kind = match args.port_kind {
        Some(k) => k,
        None => {
            let k = tapestry_sys::port::PortKind::detect();
            if k == tapestry_sys::port::PortKind::Packet {
                tracing::info!("/dev/net/tun cannot be opened: containers get veth pairs read through AF_PACKET (--port-kind packet)");
            }
            k
        }
    };
    if net_in_address.is_broadcast() || net_in_address.is_multicast() {
        bail!(
            "--net-in-address {net_in_address} is not a unicast address of this host (or 0.0.0.0)"
        );
    }
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        if !credentials.join(f).is_file() {
            bail!(
                "--credentials {}: {f} is missing (pass the control plane's cell-credentials folder)",
                credentials.display()
            );
        }
    }
    let access = access::Access::with_group(args.socket_group.as_deref())?;
    let state = StateDir::open(&state_dir)?;
    // The VTEP address first: a cell that cannot have it must fail before it takes a lease.
    let workers = match args.workers {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(tapestry_sys::udp::MAX_WORKERS),
        n => n,
    };
    let udp = tapestry_sys::udp::bind_workers(
        SocketAddrV4::new(underlay_ip, args.vtep_port),
        workers,
        8 << 20,
    )
    .with_context(|| format!("binding the VTEP socket {underlay_ip}:{}", args.vtep_port))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("cell-control")
        .build()
        .context("starting the control runtime")?;
    rt.block_on(async move {
        let client = sync::connect(&control, &credentials)?;
        let lease = sync::obtain_lease(&client, &state, underlay_ip).await?;
        let subnet: ipnet::Ipv4Net = lease.subnet;
        let config = CellConfig {
            underlay_ip,
            vtep_port: args.vtep_port,
            underlay_mtu: args.underlay_mtu,
            overlay_network: args.overlay_network,
            subnet,
            offload: !args.no_offload,
            max_containers: args.max_containers,
            tap_txqueuelen: args.tap_txqueuelen,
            deny_networks,
            net_in_address,
            internal_domains,
            dns_upstreams,
            port_kind,
        };
        let view = view::CellView::load(&state)?;
        let containers: Containers = state
            .load::<Containers>("containers.json")?
            .unwrap_or_default()
            .rekeyed();
        let tables = Arc::new(Tables::new(view::build_snapshot(
            &config,
            &view,
            &containers,
        )?));
        let conntrack = Arc::new(Conntrack::new(args.conntrack_max));
        // Instance identity credentials by container IP: what the 61443 terminator serves.
        let credentials = Arc::new(identity::CredentialRegistry::default());
        let counters = Arc::new(Counters::new());
        let flow_log = dataplane::flow_log::FlowLog::start(
            &state.path("flows.log"),
            tables.clone(),
            args.flow_log,
        )?;
        let dp = dataplane::start(
            udp,
            dataplane::Options {
                offload: config.offload,
                busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
                nice: args.dataplane_nice,
            },
            dataplane::stack::StackOptions {
                egress_ip: config.underlay_ip,
                net_in_address: config.net_in_address,
                mtu: (config.underlay_mtu - ENCAP_OVERHEAD) as usize,
                state_dir: state_dir.clone(),
                busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
                dns_upstreams: config.dns_upstreams.clone(),
                credentials: credentials.clone(),
            },
            tables.clone(),
            conntrack.clone(),
            counters.clone(),
            flow_log.clone(),
        )?;
        let cell = Arc::new(Cell {
            config,
            state,
            tables,
            conntrack,
            counters,
            dataplane: dp,
            flow_log,
            identity: identity::Identity::new(
                credentials,
                client.clone(),
                args.instance_cert_lifetime
                    .map(std::time::Duration::from_secs),
                tokio::runtime::Handle::current(),
            ),
            inner: Mutex::new(Inner {
                containers,
                view,
                taps: Default::default(),
                control: sync::ControlStatus::default(),
                net_in_suspended: Default::default(),
                net_in_cursor: *api::NET_IN_RANGE.start(),
            }),
            instances_dirty: tokio::sync::Notify::new(),
        });
        cell.reattach_all();
        cell.load_identities();
        cell.finish_pending_dels();
        if let Some(addr) = args.metrics_listen {
            let c = cell.clone();
            metrics::serve(addr, Arc::new(move || c.metrics_text())).await?;
        }
        api::serve_with(&cell.state.socket_path(), cell.clone(), access)?;
        tracing::info!(
            "cell {} serving subnet {} on {}:{}; local API at {}",
            underlay_ip,
            cell.config.subnet,
            underlay_ip,
            cell.config.vtep_port,
            cell.state.socket_path().display()
        );
        sync::run(cell, client, lease).await
    })
}

impl Cell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the dataplane's control side down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the switch's tables from the containers and the feed view and swaps them in.
    fn publish(&self, inner: &Inner) -> Result<()> {
        let snap = view::build_snapshot(&self.config, &inner.view, &inner.containers)?;
        self.tables.store(snap);
        Ok(())
    }
}

impl api::Handler for Cell {
    fn handle(&self, req: api::Request) -> Result<serde_json::Value> {
        match req {
            api::Request::Up(up) => Ok(serde_json::to_value(self.up(api::AttachRequest {
                up,
                lifecycle: api::Lifecycle::Running,
                network: None,
                ip: None,
                port_mappings: vec![],
                app_port: None,
                tls_client_auth: false,
            })?)?),
            api::Request::Attach(a) => Ok(serde_json::to_value(self.up(a)?)?),
            api::Request::Down { handle } => {
                self.down(&handle)?;
                Ok(serde_json::json!({}))
            }
            api::Request::Check { handle } => {
                self.check(&handle, None)?;
                Ok(serde_json::json!({}))
            }
            api::Request::Detach { handle, ifname } => {
                self.detach(&handle, &ifname)?;
                Ok(serde_json::json!({}))
            }
            api::Request::CheckAttachment {
                handle,
                ifname,
                netns,
                ip,
            } => {
                self.check_attachment(&handle, &ifname, netns.as_deref(), ip)?;
                Ok(serde_json::json!({}))
            }
            api::Request::Status => Ok(self.status()),
            api::Request::Gc { network, valid } => self.gc(&network, &valid),
            api::Request::Trace { expr } => self.trace(&expr),
            api::Request::FlowLog { on } => Ok(self.set_flow_log(on)),
            api::Request::Capture { .. } => {
                bail!("a capture streams: it is answered by open_capture")
            }
        }
    }

    fn open_capture(&self, req: api::Request) -> Result<(serde_json::Value, tap::Registration)> {
        self.start_capture(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_networks_parse_and_name_a_bad_entry() {
        let n = parse_deny_networks(DEFAULT_DENY_NETWORKS).unwrap();
        assert_eq!(n, vec!["169.254.0.0/16".parse::<ipnet::Ipv4Net>().unwrap()]);
        let n = parse_deny_networks(" 10.0.0.0/8, 100.64.0.0/10 ,").unwrap();
        assert_eq!(n.len(), 2);
        assert!(parse_deny_networks("").unwrap().is_empty());
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1",
            "10.0.0/8",
            "fd00::/8",
            "metadata",
        ] {
            let e = parse_deny_networks(&format!("169.254.0.0/16,{bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--deny-networks") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
