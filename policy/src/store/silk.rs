//! Silk controller semantics (silk-release `controller/leaser/lease_controller.go`), for the
//! `--silk-listen` API that stock silk-daemons use.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::leases::{by_ip, by_subnet, insert, set_expiry, LeaseSettings};
use super::{now_secs, Tx};
use crate::error::StoreError;
use crate::model::{hardware_addr, Lease, LeaseKind};

/// A renewal Silk refuses for good (its NonRetriableError): 409 `renew-subnet-lease: ...`.
#[derive(Debug)]
pub enum RenewError {
    Refused(String),
    Store(StoreError),
}

impl From<StoreError> for RenewError {
    fn from(e: StoreError) -> RenewError {
        RenewError::Store(e)
    }
}

/// A /32 from the reserved first subnet (Silk's `single_overlay_ip`), the lowest free address
/// after the subnet's base; the cell's existing lease when it has one.
pub fn acquire_single(
    tx: &mut dyn Tx,
    s: &LeaseSettings,
    ip: Ipv4Addr,
) -> Result<Lease, StoreError> {
    if let Some(l) = by_ip(tx, ip)? {
        if l.kind == LeaseKind::Static {
            return Ok(l);
        }
        return set_expiry(tx, l, now_secs() + s.expiry_secs);
    }
    let Some(block) = s.nth(0) else {
        return Err(StoreError::NoLease);
    };
    let base = u32::from(block.network());
    let last = u32::from(block.broadcast());
    for a in base.saturating_add(1)..last {
        let subnet =
            Ipv4Net::new(Ipv4Addr::from(a), 32).map_err(|e| StoreError::Db(e.to_string()))?;
        if by_subnet(tx, &subnet)?.is_none() {
            let l = Lease {
                underlay_ip: ip,
                overlay_subnet: subnet,
                overlay_hardware_addr: hardware_addr(&subnet),
                expires_at: Some(now_secs() + s.expiry_secs),
                kind: LeaseKind::Tapestry,
            };
            insert(tx, &l)?;
            return Ok(l);
        }
    }
    Err(StoreError::NoLease)
}

/// Silk's renew: the same lease is renewed; a lease the controller lacks is added back when
/// its subnet is free and inside the overlay network; any other lease for the cell is a
/// `lease mismatch`.
pub fn renew(
    tx: &mut dyn Tx,
    s: &LeaseSettings,
    underlay_ip: Ipv4Addr,
    subnet: Ipv4Net,
    hw: &str,
) -> Result<(), RenewError> {
    match by_ip(tx, underlay_ip)? {
        Some(l) => {
            if l.overlay_subnet != subnet || !l.overlay_hardware_addr.eq_ignore_ascii_case(hw) {
                return Err(RenewError::Refused("lease mismatch".into()));
            }
            if l.kind == LeaseKind::Tapestry {
                set_expiry(tx, l, now_secs() + s.expiry_secs)?;
            }
            Ok(())
        }
        None => {
            if let Some(other) = by_subnet(tx, &subnet)? {
                return Err(RenewError::Refused(format!(
                    "subnet {subnet} is leased to {}",
                    other.underlay_ip
                )));
            }
            let single = subnet.prefix_len() == 32 && s.nth(0).is_some_and(|b| b.contains(&subnet));
            if !(subnet.prefix_len() == s.prefix || single)
                || !s.network.contains(&subnet)
                || subnet.trunc() != subnet
            {
                return Err(RenewError::Refused(format!(
                    "subnet {subnet} is not a subnet of the overlay network {}",
                    s.network
                )));
            }
            insert(
                tx,
                &Lease {
                    underlay_ip,
                    overlay_subnet: subnet,
                    overlay_hardware_addr: hardware_addr(&subnet),
                    expires_at: Some(now_secs() + s.expiry_secs),
                    kind: LeaseKind::Tapestry,
                },
            )?;
            Ok(())
        }
    }
}
