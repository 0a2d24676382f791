//! The answer logic against a table of cases.

use super::*;
use hickory_proto::op::Query;
use hickory_proto::rr::Name;

fn table() -> DnsTable {
    let ip = |d| Ipv4Addr::new(10, 255, 1, d);
    DnsTable::new(
        ["apps.internal", "corp.internal."],
        [
            (
                "web.apps.internal".to_string(),
                vec![(0, ip(2)), (1, ip(3)), (2, ip(4))],
            ),
            ("API.apps.internal".to_string(), vec![(0, ip(5))]),
            ("gone.apps.internal".to_string(), vec![]),
            ("db.corp.internal".to_string(), vec![(0, ip(9))]),
            // 60 instances: an answer over 512 bytes.
            (
                "big.apps.internal".to_string(),
                (0..60)
                    .map(|i| (i, Ipv4Addr::new(10, 255, 2, i as u8 + 1)))
                    .collect(),
            ),
        ],
    )
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn reply(a: Answer) -> Message {
    match a {
        Answer::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ips(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("not an A record: {other:?}"),
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_table_of_cases() {
    let t = table();
    let ip = |d| Ipv4Addr::new(10, 255, 1, d);
    // (name, type, rcode, addresses)
    let cases: Vec<(&str, RecordType, ResponseCode, Vec<Ipv4Addr>)> = vec![
        (
            "web.apps.internal.",
            RecordType::A,
            ResponseCode::NoError,
            vec![ip(2), ip(3), ip(4)],
        ),
        (
            "WeB.Apps.Internal.",
            RecordType::A,
            ResponseCode::NoError,
            vec![ip(2), ip(3), ip(4)],
        ),
        (
            "api.apps.internal.",
            RecordType::A,
            ResponseCode::NoError,
            vec![ip(5)],
        ),
        (
            "1.web.apps.internal.",
            RecordType::A,
            ResponseCode::NoError,
            vec![ip(3)],
        ),
        (
            "7.web.apps.internal.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
        ),
        (
            "web.apps.internal.",
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![],
        ),
        (
            "web.apps.internal.",
            RecordType::TXT,
            ResponseCode::NoError,
            vec![],
        ),
        (
            "nope.apps.internal.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
        ),
        (
            "gone.apps.internal.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
        ),
        (
            "apps.internal.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
        ),
        (
            "db.corp.internal.",
            RecordType::A,
            ResponseCode::NoError,
            vec![Ipv4Addr::new(10, 255, 1, 9)],
        ),
    ];
    for (name, ty, rcode, want) in cases {
        let m = reply(answer(&t, &query(name, ty, None), Transport::Udp, 7));
        assert_eq!(m.metadata.response_code, rcode, "{name} {ty}");
        assert_eq!(ips(&m), want, "{name} {ty}");
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            name,
            "the question's spelling is kept"
        );
        assert!(m.answers.iter().all(|r| r.ttl == 0), "TTL 0");
    }
}

#[test]
fn other_names_are_forwarded_and_garbage_is_refused() {
    let t = table();
    for name in ["example.com.", "internal.", "xapps.internal."] {
        assert_eq!(
            answer(&t, &query(name, RecordType::A, None), Transport::Udp, 1),
            Answer::Forward,
            "{name}"
        );
    }
    assert_eq!(answer(&t, &[1, 2, 3], Transport::Udp, 1), Answer::Drop);
    let mut junk = vec![0xab, 0xcd];
    junk.extend_from_slice(&[0xff; 20]);
    let m = reply(answer(&t, &junk, Transport::Udp, 1));
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xabcd, ResponseCode::FormErr)
    );
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let t = table();
    let udp = reply(answer(
        &t,
        &query("big.apps.internal.", RecordType::A, None),
        Transport::Udp,
        1,
    ));
    assert!(udp.metadata.truncation && udp.answers.is_empty());
    let tcp = reply(answer(
        &t,
        &query("big.apps.internal.", RecordType::A, None),
        Transport::Tcp,
        1,
    ));
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    // With EDNS and a 4096-byte buffer the whole answer fits in UDP.
    let edns = reply(answer(
        &t,
        &query("big.apps.internal.", RecordType::A, Some(4096)),
        Transport::Udp,
        1,
    ));
    assert_eq!(edns.answers.len(), 60);
    assert!(edns.edns.is_some());
}

#[test]
fn answers_are_shuffled() {
    let t = table();
    let orders: std::collections::HashSet<Vec<Ipv4Addr>> = (0..20)
        .map(|seed| {
            let m = reply(answer(
                &t,
                &query("web.apps.internal.", RecordType::A, None),
                Transport::Udp,
                seed,
            ));
            m.answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0,
                    _ => unreachable!(),
                })
                .collect()
        })
        .collect();
    assert!(orders.len() > 1, "always the same order");
}

#[test]
fn servfail_keeps_the_id_and_question() {
    let q = query("example.com.", RecordType::A, None);
    let m = Message::from_vec(&servfail(&q).unwrap()).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::ServFail)
    );
    assert_eq!(m.queries.len(), 1);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = answer(&table(), &b, Transport::Udp, 3);
        let _ = servfail(&b);
    }
}
