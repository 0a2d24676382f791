use clap::{Parser, Subcommand};

use tapestry::{cell, cli, container, control, demo, lab};

/// Tapestry: container-to-container overlay networking with a userspace VXLAN-GBP dataplane.
#[derive(Parser)]
#[command(name = "tapestry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (policy server, leases, feed), or manage its tokens.
    Control(Box<control::ControlArgs>),
    /// Manage container-to-container policies.
    Policy(cli::PolicyArgs),
    /// Manage application security groups.
    Asg(cli::AsgArgs),
    /// Delete apps (their policies, routes and tag).
    App(cli::AppArgs),
    /// Manage internal routes (`*.apps.internal`).
    Route(cli::RouteArgs),
    /// Inspect subnet leases.
    Lease(cli::LeaseArgs),
    /// Run a cell switch, or show its status.
    Cell(cell::CellArgs),
    /// Attach or detach a container (Garden external networker style).
    Container(container::ContainerArgs),
    /// Build a small overlay in network namespaces and show policy at work. Without root it
    /// runs in an unprivileged sandbox (see `tapestry sandbox`).
    Demo(demo::DemoArgs),
    /// Run a command as root of a new user + network + mount namespace, with no privilege on
    /// the host: a whole overlay (`ip netns`, cells, containers on veth pairs read through
    /// AF_PACKET) fits inside, e.g. `tapestry sandbox -- cargo test`.
    Sandbox(demo::sandbox::SandboxArgs),
    /// Start N cells and M containers in this process, unprivileged, and report the time
    /// until every container is reachable by its allowed peers and the memory used.
    Lab(lab::LabArgs),
    /// Show what a running cell's pipeline does with one packet, stage by stage (a dry run:
    /// nothing is sent, connection tracking is not changed).
    Trace(cell::observe::TraceArgs),
    /// Capture a container's frames or the underlay's VXLAN-GBP datagrams live, through the
    /// running cell: a line per packet, or pcapng (-w) for Wireshark and tshark.
    Capture(cell::capture::CaptureArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAPESTRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // A user namespace must be entered while the process still has one thread.
    let sandboxed = match &cli.command {
        Command::Demo(_) if !demo::sandbox::privileged() => demo::sandbox::enter("tapestry demo"),
        Command::Sandbox(_) => demo::sandbox::enter("tapestry sandbox"),
        _ => Ok(()),
    };
    if let Err(e) = sandboxed {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Control(a) => control::run(*a),
        Command::Policy(a) => cli::run_policy(a),
        Command::Asg(a) => cli::run_asg(a),
        Command::App(a) => cli::run_app(a),
        Command::Route(a) => cli::run_route(a),
        Command::Lease(a) => cli::run_lease(a),
        Command::Cell(a) => cell::run(a),
        Command::Container(a) => container::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Sandbox(a) => demo::sandbox::run(a),
        Command::Lab(a) => lab::run(a),
        Command::Trace(a) => cell::observe::run_trace(a),
        Command::Capture(a) => cell::capture::run_capture(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
