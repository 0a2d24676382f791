//! Subnet leases (Silk controller semantics).
use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use super::feed::record;
use super::{now_secs, Tx, Val};
use crate::error::StoreError;
use crate::model::{hardware_addr, Kind, Lease, LeaseKind, Op};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub network: Ipv4Net,
    pub prefix: u8,
    pub expiry_secs: i64,
}

impl LeaseSettings {
    /// Number of subnets of `prefix` in the network.
    pub fn count(&self) -> u64 {
        1u64 << (self.prefix - self.network.prefix_len())
    }
    pub(super) fn nth(&self, i: u64) -> Option<Ipv4Net> {
        let base = u32::from(self.network.network()) as u64;
        let size = 1u64 << (32 - self.prefix);
        let addr = base + i * size;
        Ipv4Net::new(Ipv4Addr::from(u32::try_from(addr).ok()?), self.prefix).ok()
    }
}

fn row_to_lease(r: &[Val]) -> Result<Lease, StoreError> {
    let underlay_ip: Ipv4Addr = r[0]
        .t()?
        .parse()
        .map_err(|_| StoreError::Db("stored underlay ip is invalid".into()))?;
    let overlay_subnet: Ipv4Net = r[1]
        .t()?
        .parse()
        .map_err(|_| StoreError::Db("stored subnet is invalid".into()))?;
    let kind = if r[3].t()? == "static" {
        LeaseKind::Static
    } else {
        LeaseKind::Tapestry
    };
    Ok(Lease {
        underlay_ip,
        overlay_hardware_addr: hardware_addr(&overlay_subnet),
        overlay_subnet,
        expires_at: r[2].opt_i()?,
        kind,
    })
}

fn kind_str(k: LeaseKind) -> &'static str {
    match k {
        LeaseKind::Static => "static",
        LeaseKind::Tapestry => "tapestry",
    }
}

pub fn list_leases(tx: &mut dyn Tx) -> Result<Vec<Lease>, StoreError> {
    let rows = tx.query(
        "SELECT underlay_ip, subnet, expires_at, kind FROM leases ORDER BY underlay_ip",
        &[],
    )?;
    rows.iter().map(|r| row_to_lease(r)).collect()
}

pub(super) fn by_ip(tx: &mut dyn Tx, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
    let rows = tx.query(
        "SELECT underlay_ip, subnet, expires_at, kind FROM leases WHERE underlay_ip = $1",
        &[ip.to_string().into()],
    )?;
    rows.first().map(|r| row_to_lease(r)).transpose()
}

pub(super) fn by_subnet(tx: &mut dyn Tx, subnet: &Ipv4Net) -> Result<Option<Lease>, StoreError> {
    let rows = tx.query(
        "SELECT underlay_ip, subnet, expires_at, kind FROM leases WHERE subnet = $1",
        &[subnet.to_string().into()],
    )?;
    rows.first().map(|r| row_to_lease(r)).transpose()
}

pub(super) fn insert(tx: &mut dyn Tx, l: &Lease) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO leases (underlay_ip, subnet, expires_at, kind) VALUES ($1, $2, $3, $4)",
        &[
            l.underlay_ip.to_string().into(),
            l.overlay_subnet.to_string().into(),
            l.expires_at.into(),
            kind_str(l.kind).into(),
        ],
    )?;
    record(tx, Op::Put, Kind::Lease, l)?;
    Ok(())
}

fn delete(tx: &mut dyn Tx, l: &Lease) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM leases WHERE underlay_ip = $1",
        &[l.underlay_ip.to_string().into()],
    )?;
    record(tx, Op::Delete, Kind::Lease, l)?;
    Ok(())
}

pub(super) fn set_expiry(
    tx: &mut dyn Tx,
    mut l: Lease,
    expires_at: i64,
) -> Result<Lease, StoreError> {
    tx.exec(
        "UPDATE leases SET expires_at = $1 WHERE underlay_ip = $2",
        &[Val::I(expires_at), l.underlay_ip.to_string().into()],
    )?;
    l.expires_at = Some(expires_at);
    // Expiry changes are not published: cells route on the subnet, not the deadline.
    Ok(l)
}

/// Gives the cell its existing lease (renewed) or a free subnet, skipping the first one of the
/// network (reserved, as Silk). When none is free the oldest expired lease is reclaimed.
pub fn acquire(tx: &mut dyn Tx, s: &LeaseSettings, ip: Ipv4Addr) -> Result<Lease, StoreError> {
    let now = now_secs();
    if let Some(l) = by_ip(tx, ip)? {
        if l.kind == LeaseKind::Static {
            return Ok(l);
        }
        return set_expiry(tx, l, now + s.expiry_secs);
    }
    let taken: HashSet<String> = tx
        .query("SELECT subnet FROM leases", &[])?
        .iter()
        .map(|r| r[0].t().map(str::to_string))
        .collect::<Result<_, _>>()?;
    let count = s.count();
    let mut chosen = None;
    if count > 1 && (taken.len() as u64) < count - 1 {
        let mut rng = rand::thread_rng();
        for _ in 0..64 {
            let i = rng.gen_range(1..count);
            if let Some(n) = s.nth(i) {
                if !taken.contains(&n.to_string()) {
                    chosen = Some(n);
                    break;
                }
            }
        }
        if chosen.is_none() {
            let start = rng.gen_range(1..count);
            for k in 0..count - 1 {
                let i = 1 + (start - 1 + k) % (count - 1);
                if let Some(n) = s.nth(i) {
                    if !taken.contains(&n.to_string()) {
                        chosen = Some(n);
                        break;
                    }
                }
            }
        }
    }
    let subnet = match chosen {
        Some(n) => n,
        None => {
            let rows = tx.query(
                "SELECT underlay_ip, subnet, expires_at, kind FROM leases \
                 WHERE kind = 'tapestry' AND expires_at < $1 ORDER BY expires_at LIMIT 1",
                &[Val::I(now)],
            )?;
            let Some(old) = rows.first().map(|r| row_to_lease(r)).transpose()? else {
                return Err(StoreError::NoLease);
            };
            delete(tx, &old)?;
            old.overlay_subnet
        }
    };
    let l = Lease {
        underlay_ip: ip,
        overlay_subnet: subnet,
        overlay_hardware_addr: hardware_addr(&subnet),
        expires_at: Some(now + s.expiry_secs),
        kind: LeaseKind::Tapestry,
    };
    insert(tx, &l)?;
    Ok(l)
}

/// Renews the cell's lease: 404 when gone, 409 when the subnet is not the cell's any more.
pub fn renew(tx: &mut dyn Tx, s: &LeaseSettings, want: &Lease) -> Result<Lease, StoreError> {
    match by_ip(tx, want.underlay_ip)? {
        None => {
            if let Some(other) = by_subnet(tx, &want.overlay_subnet)? {
                return Err(StoreError::Conflict(format!(
                    "subnet {} is leased to {}",
                    want.overlay_subnet, other.underlay_ip
                )));
            }
            Err(StoreError::NotFound(format!(
                "no lease for {}",
                want.underlay_ip
            )))
        }
        Some(l) if l.overlay_subnet != want.overlay_subnet => Err(StoreError::Conflict(format!(
            "{} holds subnet {}, not {}",
            l.underlay_ip, l.overlay_subnet, want.overlay_subnet
        ))),
        Some(l) if l.kind == LeaseKind::Static => Ok(l),
        Some(l) => set_expiry(tx, l, now_secs() + s.expiry_secs),
    }
}

/// Releases the cell's lease (no error when it has none).
pub fn release(tx: &mut dyn Tx, ip: Ipv4Addr) -> Result<(), StoreError> {
    if let Some(l) = by_ip(tx, ip)? {
        delete(tx, &l)?;
    }
    Ok(())
}

/// Registers a cell that is not a Tapestry cell (a kernel Silk VTEP) with a fixed subnet.
pub fn register_static(
    tx: &mut dyn Tx,
    s: &LeaseSettings,
    ip: Ipv4Addr,
    subnet: Ipv4Net,
) -> Result<Lease, StoreError> {
    if subnet.prefix_len() != s.prefix {
        return Err(StoreError::Invalid(format!(
            "overlay_subnet: {subnet} must be a /{} (the subnet prefix)",
            s.prefix
        )));
    }
    if subnet.trunc() != subnet {
        return Err(StoreError::Invalid(format!(
            "overlay_subnet: {subnet} is not a network address (did you mean {}?)",
            subnet.trunc()
        )));
    }
    if !s.network.contains(&subnet) {
        return Err(StoreError::Invalid(format!(
            "overlay_subnet: {subnet} is not inside the overlay network {}",
            s.network
        )));
    }
    if let Some(other) = by_subnet(tx, &subnet)? {
        if other.underlay_ip == ip && other.kind == LeaseKind::Static {
            return Ok(other);
        }
        return Err(StoreError::Conflict(format!(
            "overlay_subnet: {subnet} is already leased to {}",
            other.underlay_ip
        )));
    }
    if let Some(l) = by_ip(tx, ip)? {
        return Err(StoreError::Conflict(format!(
            "underlay_ip: {ip} already holds subnet {}",
            l.overlay_subnet
        )));
    }
    let l = Lease {
        underlay_ip: ip,
        overlay_subnet: subnet,
        overlay_hardware_addr: hardware_addr(&subnet),
        expires_at: None,
        kind: LeaseKind::Static,
    };
    insert(tx, &l)?;
    Ok(l)
}
