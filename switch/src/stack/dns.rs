//! The DNS responder at 169.254.0.2: names under the internal domains (`apps.internal` by
//! default) answered from the control plane's internal routes and running instances, with
//! bosh-dns-adapter's semantics; every other name forwarded upstream by the stack.
//!
//! - `APP-HOST.apps.internal`: an A record for every running instance of the route's app,
//!   shuffled; `N.APP-HOST.apps.internal`: instance index N only;
//! - TTL 0; names match case-insensitively; the answer keeps the question's spelling;
//! - a name that exists, asked for another type: NOERROR with no data;
//! - an unknown name under an internal domain (or a route with no running instance): NXDOMAIN;
//! - over UDP, an answer larger than 512 bytes (or the client's EDNS size) is sent truncated
//!   (TC, no records), for the client to ask again over TCP.
//!
//! Messages are parsed and built with hickory-proto. Pure: bytes in, bytes out.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::tables::FxHashMap;

/// The default internal domain, as CF's.
pub const DEFAULT_INTERNAL_DOMAIN: &str = "apps.internal";
/// The largest UDP answer without EDNS (RFC 1035).
pub const UDP_LIMIT: usize = 512;
/// The largest UDP answer we send with EDNS, whatever the client offers.
pub const EDNS_LIMIT: u16 = 4096;

/// The internal names a cell answers: host (lower case, no trailing dot) -> (instance index,
/// address) of every running instance.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    domains: Vec<String>,
    hosts: FxHashMap<String, Vec<(u32, Ipv4Addr)>>,
}

/// Lowercase, without the trailing dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsTable {
    /// `domains`: the internal domains; `names`: each internal host name with its instances.
    pub fn new<'a>(
        domains: impl IntoIterator<Item = &'a str>,
        names: impl IntoIterator<Item = (String, Vec<(u32, Ipv4Addr)>)>,
    ) -> DnsTable {
        let mut hosts: FxHashMap<String, Vec<(u32, Ipv4Addr)>> = FxHashMap::default();
        for (name, mut instances) in names {
            instances.sort();
            instances.dedup();
            hosts.entry(normal(&name)).or_default().extend(instances);
        }
        DnsTable {
            domains: domains
                .into_iter()
                .map(normal)
                .filter(|d| !d.is_empty())
                .collect(),
            hosts,
        }
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn name_count(&self) -> usize {
        self.hosts.len()
    }

    fn is_internal(&self, name: &str) -> bool {
        self.domains.iter().any(|d| {
            name == d
                || name
                    .strip_suffix(d.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
    }

    /// The addresses of `name` (normalized), or `None` when it does not exist.
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        if let Some(list) = self.hosts.get(name) {
            return (!list.is_empty()).then(|| list.iter().map(|(_, ip)| *ip).collect());
        }
        let (index, host) = name.split_once('.')?;
        let index: u32 = index.parse().ok()?;
        let ips: Vec<Ipv4Addr> = self
            .hosts
            .get(host)?
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, ip)| *ip)
            .collect();
        (!ips.is_empty()).then_some(ips)
    }
}

/// How the query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: forward the query upstream and relay the answer.
    Forward,
    /// Not a DNS query at all (too short for a header): drop it.
    Drop,
}

/// Answers one query. `seed` shuffles the records.
pub fn answer(table: &DnsTable, query: &[u8], transport: Transport, seed: u64) -> Answer {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            return match query.get(..2) {
                Some(id) if query.len() >= 12 => {
                    let id = u16::from_be_bytes([id[0], id[1]]);
                    encode(&Message::error_msg(
                        id,
                        OpCode::Query,
                        ResponseCode::FormErr,
                    ))
                }
                _ => Answer::Drop,
            }
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    let [q] = msg.queries.as_slice() else {
        return Answer::Forward;
    };
    let name = normal(&q.name().to_ascii());
    if msg.metadata.op_code != OpCode::Query || !table.is_internal(&name) {
        return Answer::Forward;
    }
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    let limit = match (&msg.edns, transport) {
        (_, Transport::Tcp) => usize::MAX,
        (Some(e), Transport::Udp) => (e.max_payload().clamp(UDP_LIMIT as u16, EDNS_LIMIT)) as usize,
        (None, Transport::Udp) => UDP_LIMIT,
    };
    if msg.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_LIMIT);
        resp.set_edns(e);
    }
    match table.lookup(&name) {
        None => resp.metadata.response_code = ResponseCode::NXDomain,
        Some(mut ips) => {
            if matches!(q.query_type(), RecordType::A | RecordType::ANY)
                && matches!(q.query_class(), DNSClass::IN | DNSClass::ANY)
            {
                shuffle(&mut ips, seed);
                for ip in ips {
                    let mut r = Record::from_rdata(q.name().clone(), 0, RData::A(A(ip)));
                    r.dns_class = DNSClass::IN;
                    resp.add_answer(r);
                }
            }
        }
    }
    match resp.to_vec() {
        Ok(b) if b.len() <= limit => Answer::Reply(b),
        Ok(_) => encode(&resp.truncate()),
        Err(_) => encode(&Message::error_msg(
            msg.metadata.id,
            OpCode::Query,
            ResponseCode::ServFail,
        )),
    }
}

/// SERVFAIL for a forwarded query that got no answer (upstream down or silent).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut resp = Message::error_msg(msg.metadata.id, OpCode::Query, ResponseCode::ServFail);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(msg.queries.iter().cloned());
    resp.to_vec().ok()
}

fn encode(m: &Message) -> Answer {
    m.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// Fisher-Yates with a xorshift generator seeded by `seed`.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
