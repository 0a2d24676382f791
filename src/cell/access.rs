//! Who may use the cell's local API (`cell.sock`): root, the cell's own user, and, with
//! `tapestry cell --socket-group G`, members of group G. The socket's mode (0600, or 0660 owned
//! by G) keeps others from connecting; the peer's credentials (SO_PEERCRED) are checked again on
//! every connection, so a socket file left with a wider mode still lets nobody else in.
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The local API's access rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The group whose members may connect (besides root and the cell's user).
    pub group: Option<u32>,
}

impl Access {
    /// `--socket-group`: a group name (from /etc/group) or a numeric gid.
    pub fn with_group(spec: Option<&str>) -> Result<Access> {
        let Some(spec) = spec else {
            return Ok(Access::default());
        };
        let gid = match spec.parse::<u32>() {
            Ok(g) => g,
            Err(_) => group_id(
                spec,
                &std::fs::read_to_string("/etc/group").unwrap_or_default(),
            )
            .with_context(|| format!("--socket-group {spec}"))?,
        };
        Ok(Access { group: Some(gid) })
    }

    /// The socket file's mode: 0600, or 0660 when a group may connect.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Gives `path` (the socket) its mode and, with a group, that group; the state dir around it
    /// becomes 0710 with that group (members may reach the socket, not list or read the rest).
    pub fn apply(&self, socket: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(socket, None, Some(gid))
                .with_context(|| format!("giving {} to group {gid}", socket.display()))?;
            if let Some(dir) = socket.parent() {
                std::os::unix::fs::chown(dir, None, Some(gid))
                    .with_context(|| format!("giving {} to group {gid}", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
                    .with_context(|| format!("setting mode 0710 on {}", dir.display()))?;
            }
        }
        let mode = self.socket_mode();
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", socket.display()))
    }

    /// Whether a peer with these credentials may use the API; `owner` is the cell's uid.
    /// `groups` gives the peer's supplementary groups (asked only when needed).
    pub fn allows(
        &self,
        peer: tapestry_sys::process::PeerCred,
        owner: u32,
        groups: impl FnOnce() -> Vec<u32>,
    ) -> Result<()> {
        if peer.uid == 0 || peer.uid == owner {
            return Ok(());
        }
        if let Some(g) = self.group {
            if peer.gid == g || groups().contains(&g) {
                return Ok(());
            }
            bail!(
                "permission denied: uid {} (pid {}) is neither root, the cell's user (uid {owner}), nor in group {g} (--socket-group)",
                peer.uid,
                peer.pid
            );
        }
        bail!(
            "permission denied: uid {} (pid {}) is neither root nor the cell's user (uid {owner}); see tapestry cell --socket-group",
            peer.uid,
            peer.pid
        )
    }
}

/// The gid of group `name` in an /etc/group text.
fn group_id(name: &str, etc_group: &str) -> Result<u32> {
    for line in etc_group.lines() {
        let mut f = line.split(':');
        if f.next() == Some(name) {
            let gid = f.nth(1).unwrap_or("");
            return gid
                .parse()
                .with_context(|| format!("/etc/group has a bad gid '{gid}' for group {name}"));
        }
    }
    bail!("no group named '{name}' in /etc/group (give a name from /etc/group or a numeric gid)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapestry_sys::process::PeerCred;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { pid: 42, uid, gid }
    }

    #[test]
    fn root_and_owner_always_others_only_through_the_group() {
        let none = Access::default();
        assert!(none.allows(peer(0, 0), 1000, Vec::new).is_ok());
        assert!(none.allows(peer(1000, 1000), 1000, Vec::new).is_ok());
        let e = none
            .allows(peer(1001, 1001), 1000, || vec![50])
            .unwrap_err();
        assert!(e.to_string().contains("uid 1001"), "{e}");
        assert!(e.to_string().contains("--socket-group"), "{e}");

        let g = Access { group: Some(50) };
        assert!(g.allows(peer(1001, 50), 1000, Vec::new).is_ok());
        assert!(g.allows(peer(1001, 1001), 1000, || vec![7, 50]).is_ok());
        let e = g.allows(peer(1001, 1001), 1000, || vec![7]).unwrap_err();
        assert!(e.to_string().contains("group 50"), "{e}");
        assert_eq!(g.socket_mode(), 0o660);
        assert_eq!(none.socket_mode(), 0o600);
    }

    #[test]
    fn group_names_resolve_from_etc_group() {
        let etc = "root:x:0:\nvcap:x:1000:alice,bob\nbad:x:zz:\n";
        assert_eq!(group_id("vcap", etc).unwrap(), 1000);
        assert_eq!(group_id("root", etc).unwrap(), 0);
        assert!(group_id("nobody-here", etc)
            .unwrap_err()
            .to_string()
            .contains("no group named"));
        assert!(group_id("bad", etc)
            .unwrap_err()
            .to_string()
            .contains("bad gid"));
        assert_eq!(Access::with_group(Some("77")).unwrap().group, Some(77));
        assert_eq!(Access::with_group(None).unwrap().group, None);
    }
}
