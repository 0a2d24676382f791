//! Attaching and detaching containers: a port device per container (a TAP, or a veth pair read
//! through AF_PACKET: `port_dev.rs`), configured over netlink, registered as a switch port.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
pub use tapestry_switch::tables::container_mac;
use tapestry_switch::PortId;
use tapestry_sys::netlink;

use super::api::{AttachRequest, Attachment, AttachmentKey, UpRequest};
use super::state::{allocate_ip, attachment_key, port_id_for, ContainerRecord};
use super::{Cell, GATEWAY};

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn validate(up: &UpRequest) -> Result<()> {
    if up.handle.is_empty() || up.handle.len() > 256 || up.handle.contains(['\n', '/']) {
        bail!(
            "handle {:?} is invalid: it must be 1-256 characters without '/' or newlines",
            up.handle
        );
    }
    if up.app_id.is_empty() || up.app_id.len() > 255 {
        bail!(
            "app {:?} is invalid: it must be 1-255 characters",
            up.app_id
        );
    }
    if up.ifname.is_empty()
        || up.ifname.len() > 15
        || up.ifname.contains(['/', ' ', ':'])
        || up.ifname == "lo"
    {
        bail!(
            "interface name {:?} is invalid: 1-15 characters, no '/', ':' or spaces, not lo",
            up.ifname
        );
    }
    if !up.netns.is_absolute() {
        bail!(
            "netns {:?} must be an absolute path to a network namespace",
            up.netns
        );
    }
    if !up.netns.exists() {
        bail!("netns {} does not exist", up.netns.display());
    }
    Ok(())
}

impl Cell {
    fn port_of(&self, ip: Ipv4Addr) -> PortId {
        PortId(port_id_for(self.config.subnet.network(), ip))
    }

    fn attachment(&self, rec: &ContainerRecord) -> Attachment {
        Attachment {
            handle: rec.handle.clone(),
            container_ip: rec.ip,
            gateway: GATEWAY,
            mac: mac_string(container_mac(rec.ip)),
            mtu: self.config.container_mtu(),
            ifname: rec.ifname.clone(),
            netns: rec.netns.clone(),
            dns_servers: vec![tapestry_switch::stack::DNS.to_string()],
            search_domains: vec![],
            port_mappings: rec.port_mappings.clone(),
            instance_identity: Some(self.identity_paths(rec)),
        }
    }

    /// A requested address must be a host address of this cell's subnet (not the network
    /// address, which is the VTEP, nor the broadcast address) that no attachment holds.
    fn check_requested_ip(&self, ip: Ipv4Addr, inner: &super::Inner) -> Result<()> {
        let subnet = self.config.subnet;
        if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
            bail!(
                "requested address {ip} is not a host address of this cell's subnet {subnet} \
                 (its network and broadcast addresses are reserved)"
            );
        }
        if let Some(holder) = inner.containers.containers.values().find(|c| c.ip == ip) {
            bail!(
                "requested address {ip} is taken by container {} ({})",
                holder.handle,
                holder.ifname
            );
        }
        Ok(())
    }

    pub fn up(&self, req: AttachRequest) -> Result<Attachment> {
        let AttachRequest {
            up,
            lifecycle,
            network,
            ip: wanted,
            port_mappings,
            app_port,
            tls_client_auth,
        } = req;
        if app_port == Some(0) || app_port == Some(tapestry_switch::stack::tls::TLS_PORT) {
            bail!("app_port {}: must be a port from 1 to 65535 other than 61443 (the TLS terminator's)", app_port.unwrap_or(0));
        }
        validate(&up)?;
        let mut inner = self.lock();
        // One container, one netns: its other attachments must be in the same one.
        if let Some(other) = inner
            .containers
            .of_handle(&up.handle)
            .find(|r| r.netns != up.netns)
        {
            bail!(
                "handle {} is already attached to {} as {}, not {}",
                up.handle,
                other.netns.display(),
                other.ifname,
                up.netns.display()
            );
        }
        let key = attachment_key(&up.handle, &up.ifname);
        if let Some(rec) = inner.containers.containers.get(&key) {
            if rec.lifecycle != lifecycle {
                bail!(
                    "handle {} is already attached with lifecycle {}, not {}",
                    up.handle,
                    rec.lifecycle.as_str(),
                    lifecycle.as_str()
                );
            }
            if let Some(w) = wanted.filter(|w| *w != rec.ip) {
                bail!(
                    "handle {} is already attached as {} with address {}, not the requested {w}",
                    up.handle,
                    up.ifname,
                    rec.ip
                );
            }
            if !super::net_in::same_mappings(&port_mappings, &rec.port_mappings) {
                bail!(
                    "handle {} is already attached as {} with port mappings [{}], not the requested [{}]",
                    up.handle,
                    up.ifname,
                    super::net_in::list(&rec.port_mappings),
                    super::net_in::list(&port_mappings)
                );
            }
            return Ok(self.attachment(rec));
        }
        if let Some(w) = wanted {
            self.check_requested_ip(w, &inner)?;
        }
        // Never touch an interface this call did not create: another container's, or anything
        // else the namespace already has under that name.
        if netlink::link_exists(&up.netns, &up.ifname)
            .with_context(|| format!("looking for {} in {}", up.ifname, up.netns.display()))?
        {
            bail!(
                "netns {} already has an interface named {}; refusing to attach handle {} over it \
                 (nothing was changed)",
                up.netns.display(),
                up.ifname,
                up.handle
            );
        }
        let attached = inner.containers.containers.len();
        if attached >= self.config.max_containers {
            bail!(
                "cell is full: {attached} containers are attached and --max-containers is {}; \
                 detach one or restart the cell with a larger --max-containers",
                self.config.max_containers
            );
        }
        let used = inner.containers.containers.values().map(|c| c.ip);
        let Some(ip) = wanted.or_else(|| {
            allocate_ip(
                self.config.subnet.network(),
                self.config.subnet.prefix_len(),
                used,
            )
        }) else {
            bail!(
                "no free address left in this cell's subnet {}",
                self.config.subnet
            );
        };
        let (port_mappings, net_in_cursor) =
            super::net_in::assign(&port_mappings, &inner.containers, inner.net_in_cursor)?;
        let rec = ContainerRecord {
            handle: up.handle.clone(),
            app_id: up.app_id,
            space_id: up.space_id,
            org_id: up.org_id,
            instance_index: up.instance_index,
            ip,
            netns: up.netns,
            ifname: up.ifname,
            lifecycle,
            network,
            port_mappings,
            app_port,
            tls_client_auth,
        };
        // Host ports first: a port another process holds fails the attach before anything
        // else is made. On any later failure they are released again.
        let net_in = !rec.port_mappings.is_empty();
        if net_in {
            self.apply_net_in(&inner, Some(&rec), None)
                .with_context(|| {
                    format!(
                        "mapping host ports [{}] for handle {} (nothing was changed)",
                        super::net_in::list(&rec.port_mappings),
                        rec.handle
                    )
                })?;
        }
        let undo = |inner: &super::Inner| {
            let _ = tapestry_sys::tap::delete_in_netns(&rec.netns, &rec.ifname);
            if net_in {
                if let Err(e) = self.apply_net_in(inner, None, None) {
                    tracing::error!(handle = %rec.handle, "releasing the host ports of a failed attach: {e:#}");
                }
            }
        };
        let tap = match self.plumb(&rec) {
            Ok(t) => t,
            Err(e) => {
                undo(&inner);
                return Err(e);
            }
        };
        inner.containers.containers.insert(key.clone(), rec.clone());
        if let Err(e) = self.state.store("containers.json", &inner.containers) {
            inner.containers.containers.remove(&key);
            undo(&inner);
            return Err(e);
        }
        inner.net_in_cursor = net_in_cursor;
        // Stale connections of an earlier container with this address must not carry over.
        self.conntrack.remove_ip(rec.ip);
        self.publish(&inner)?;
        self.dataplane.add_port(self.port_of(rec.ip), &tap);
        inner.taps.insert(key, tap);
        self.instances_dirty.notify_one();
        tracing::info!(handle = %rec.handle, ifname = %rec.ifname, app = %rec.app_id, ip = %rec.ip,
            lifecycle = rec.lifecycle.as_str(), net_in = %super::net_in::list(&rec.port_mappings), "container up");
        drop(inner);
        self.identity_at_attach(&rec);
        Ok(self.attachment(&rec))
    }

    /// Detaches every attachment of `handle` (idempotent).
    pub fn down(&self, handle: &str) -> Result<()> {
        let keys: Vec<String> = self
            .lock()
            .containers
            .of_handle(handle)
            .map(ContainerRecord::key)
            .collect();
        for key in keys {
            self.remove(&key)?;
        }
        Ok(())
    }

    /// Detaches the attachment of `handle` named `ifname` (idempotent).
    pub fn detach(&self, handle: &str, ifname: &str) -> Result<()> {
        self.remove(&attachment_key(handle, ifname))
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut inner = self.lock();
        let Some(rec) = inner.containers.containers.get(key).cloned() else {
            return Ok(());
        };
        // Host ports first: a listener must never outlive its container (the address may go
        // to another one). On an error nothing changed and the detach can be retried.
        if !rec.port_mappings.is_empty() {
            self.apply_net_in(&inner, None, Some(key))
                .with_context(|| format!("releasing the host ports of {key}"))?;
        }
        self.dataplane.remove_port(self.port_of(rec.ip));
        inner.taps.remove(key);
        tapestry_sys::tap::delete_in_netns(&rec.netns, &rec.ifname)
            .with_context(|| format!("deleting {} in {}", rec.ifname, rec.netns.display()))?;
        inner.containers.containers.remove(key);
        inner.net_in_suspended.remove(key);
        // The namespace's routes to the gateway and its default route went through the last
        // attachment made there (each ADD replaces them), maybe this one: another attachment in
        // the same netns takes them back.
        if let Some(other) = inner
            .containers
            .containers
            .values()
            .find(|r| r.netns == rec.netns)
        {
            if let Err(e) = self.configure_iface(other) {
                tracing::error!(handle = %rec.handle, ifname = %other.ifname,
                    "restoring the routes after detaching {}: {e:#}", rec.ifname);
            }
        }
        self.forget_identity(&rec);
        self.state.store("containers.json", &inner.containers)?;
        self.conntrack.remove_ip(rec.ip);
        self.publish(&inner)?;
        self.instances_dirty.notify_one();
        tracing::info!(handle = %rec.handle, ifname = %rec.ifname, ip = %rec.ip, "container down");
        Ok(())
    }

    /// Finishes the CNI DELs recorded while the cell was down (see [`super::api::PendingDel`]):
    /// each is detached and its file removed; one that fails stays for the next start.
    pub fn finish_pending_dels(&self) {
        let socket = self.state.socket_path();
        for (path, del) in super::api::pending_dels(&socket) {
            let done = del.and_then(|d| {
                if d.ifname.is_empty() {
                    self.down(&d.handle)
                } else {
                    self.detach(&d.handle, &d.ifname)
                }
                .map(|()| d)
            });
            match done {
                Ok(d) => {
                    tracing::info!(handle = %d.handle, ifname = %d.ifname, "finished a DEL recorded while the cell was down");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::error!("removing {}: {e}", path.display());
                    }
                }
                Err(e) => tracing::error!("pending DEL {}: {e:#}", path.display()),
            }
        }
    }

    /// CNI GC: detaches every container attached through CNI network `network` whose (handle,
    /// ifname) is not in `valid`, going on past failures and reporting them all at the end.
    pub fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Result<serde_json::Value> {
        let stale: Vec<String> = {
            let inner = self.lock();
            inner
                .containers
                .containers
                .values()
                .filter(|rec| rec.network.as_deref() == Some(network))
                .filter(|rec| {
                    !valid
                        .iter()
                        .any(|k| k.container_id == rec.handle && k.ifname == rec.ifname)
                })
                .map(ContainerRecord::key)
                .collect()
        };
        let mut released = vec![];
        let mut errors = vec![];
        for key in stale {
            match self.remove(&key) {
                Ok(()) => released.push(key),
                Err(e) => errors.push(format!("{key}: {e:#}")),
            }
        }
        tracing::info!(network, released = released.len(), "CNI GC");
        if !errors.is_empty() {
            bail!(
                "GC released {} attachment(s) but failed on {}: {}",
                released.len(),
                errors.len(),
                errors.join("; ")
            );
        }
        Ok(serde_json::json!({ "released": released }))
    }

    /// After a restart: re-open every persistent TAP, so containers keep their interfaces and
    /// addresses and traffic resumes. Containers whose namespace is gone are forgotten.
    pub fn reattach_all(&self) {
        let mut inner = self.lock();
        let records: Vec<ContainerRecord> = inner.containers.containers.values().cloned().collect();
        let mut changed = false;
        for rec in records {
            if !rec.netns.exists() {
                tracing::warn!(handle = %rec.handle, "netns {} is gone; forgetting the container", rec.netns.display());
                inner.containers.containers.remove(&rec.key());
                changed = true;
                continue;
            }
            if !self.config.subnet.contains(&rec.ip) {
                tracing::error!(handle = %rec.handle, ip = %rec.ip, subnet = %self.config.subnet,
                    "container address is outside this cell's lease; leaving it detached");
                continue;
            }
            match self.plumb(&rec) {
                Ok(tap) => {
                    self.dataplane.add_port(self.port_of(rec.ip), &tap);
                    inner.taps.insert(rec.key(), tap);
                    tracing::info!(handle = %rec.handle, ip = %rec.ip, "container re-attached");
                }
                Err(e) => tracing::error!(handle = %rec.handle, "re-attaching: {e:#}"),
            }
        }
        if changed {
            if let Err(e) = self.state.store("containers.json", &inner.containers) {
                tracing::error!("saving containers: {e:#}");
            }
        }
        self.restore_net_in(&mut inner);
        if let Err(e) = self.publish(&inner) {
            tracing::error!("publishing tables: {e:#}");
        }
        self.instances_dirty.notify_one();
    }
}
