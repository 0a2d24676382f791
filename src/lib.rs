//! The `tapestry` binary's wiring: CLI commands and the daemons built from the
//! library crates (`tapestry-policy`, `tapestry-switch`, `tapestry-sys`).

pub mod cell;
pub mod cli;
pub mod cni;
pub mod container;
pub mod control;
pub mod demo;
pub mod lab;
