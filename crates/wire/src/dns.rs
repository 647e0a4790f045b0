//! A DNS query and the parts of its answer a health check needs (the `dns`
//! check of a pool): the encoding and decoding are hickory-proto's; what is
//! ours is what counts as the answer to *this* query.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// Why bytes are not the answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{0:?} is not a domain name")]
    Name(String),
    #[error("the query cannot be encoded: {0}")]
    Encode(String),
    #[error("not a DNS message: {0}")]
    Decode(String),
    #[error("a query, not an answer")]
    NotAnswer,
    #[error("the answer is to another query (id {got}, expected {want})")]
    OtherId { got: u16, want: u16 },
    #[error("the answer is to another question")]
    OtherQuestion,
}

/// What a health check reads of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The response code (RFC 1035 4.1.1; extended codes need EDNS and are
    /// not read): 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN...
    pub rcode: u16,
    /// Records in the answer section.
    pub records: u16,
    /// The TC bit: the answer did not fit.
    pub truncated: bool,
}

/// A recursive query for `name` (absolute or not) of type `qtype` (a
/// record type number: 1 A, 28 AAAA...), with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let name = Name::from_ascii(name).map_err(|_| DnsError::Name(name.to_owned()))?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::from(qtype)));
    m.to_vec().map_err(|e| DnsError::Encode(e.to_string()))
}

/// Reads `bytes` as the answer to the query `id` for `name` and `qtype`.
pub fn answer(bytes: &[u8], id: u16, name: &str, qtype: u16) -> Result<Answer, DnsError> {
    let m = Message::from_vec(bytes).map_err(|e| DnsError::Decode(e.to_string()))?;
    if m.metadata.message_type != MessageType::Response {
        return Err(DnsError::NotAnswer);
    }
    if m.metadata.id != id {
        return Err(DnsError::OtherId {
            got: m.metadata.id,
            want: id,
        });
    }
    let mut want = Name::from_ascii(name).map_err(|_| DnsError::Name(name.to_owned()))?;
    want.set_fqdn(true);
    // A server may leave the question out of an error answer (FORMERR);
    // one it gives must be ours (names compare without case).
    if let Some(q) = m.queries.first() {
        let mut got = q.name().clone();
        got.set_fqdn(true);
        if got != want || u16::from(q.query_type()) != qtype {
            return Err(DnsError::OtherQuestion);
        }
    }
    Ok(Answer {
        rcode: u16::from(m.metadata.response_code),
        records: u16::try_from(m.answers.len()).unwrap_or(u16::MAX),
        truncated: m.metadata.truncation,
    })
}

/// The record types a check may ask for, by name.
pub const RECORD_TYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
];

/// The response codes a check may expect, by name.
pub const RCODES: &[(&str, u16)] = &[
    ("NOERROR", 0),
    ("FORMERR", 1),
    ("SERVFAIL", 2),
    ("NXDOMAIN", 3),
    ("NOTIMP", 4),
    ("REFUSED", 5),
];

/// The name of response code `rcode`, or its number.
pub fn rcode_name(rcode: u16) -> String {
    RCODES
        .iter()
        .find(|(_, c)| *c == rcode)
        .map_or_else(|| rcode.to_string(), |(n, _)| (*n).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` built by hand: the header with `flags`, the question
    /// copied, `answers` records claimed (and none given when 0).
    fn reply(q: &[u8], flags: u16) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2..4].copy_from_slice(&flags.to_be_bytes());
        r
    }

    #[test]
    fn a_query_and_its_answer() {
        let q = query(0x1234, "health.example.", 1).expect("query");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(q[2] & 0x01, 0x01, "recursion desired");
        // QR=1, RD, RA, rcode 0.
        let a = answer(&reply(&q, 0x8180), 0x1234, "health.example.", 1).expect("answer");
        assert_eq!(
            a,
            Answer {
                rcode: 0,
                records: 0,
                truncated: false
            }
        );
        let a = answer(&reply(&q, 0x8183), 0x1234, "HEALTH.example", 1).expect("nxdomain");
        assert_eq!((a.rcode, rcode_name(a.rcode)), (3, "NXDOMAIN".to_owned()));
        let a = answer(&reply(&q, 0x8380), 0x1234, "health.example.", 1).expect("tc");
        assert!(a.truncated);
    }

    #[test]
    fn what_is_not_our_answer_is_refused() {
        let q = query(7, "a.example.", 28).expect("query");
        assert_eq!(answer(&q, 7, "a.example.", 28), Err(DnsError::NotAnswer));
        assert!(matches!(
            answer(&reply(&q, 0x8180), 8, "a.example.", 28),
            Err(DnsError::OtherId { got: 7, want: 8 })
        ));
        assert_eq!(
            answer(&reply(&q, 0x8180), 7, "b.example.", 28),
            Err(DnsError::OtherQuestion)
        );
        assert_eq!(
            answer(&reply(&q, 0x8180), 7, "a.example.", 1),
            Err(DnsError::OtherQuestion)
        );
        for cut in 0..q.len() {
            assert!(answer(&reply(&q, 0x8180)[..cut], 7, "a.example.", 28).is_err());
        }
        assert!(matches!(query(1, "a..b", 1), Err(DnsError::Name(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_an_answer_or_an_error(bytes: Vec<u8>, id: u16) {
            let _ = answer(&bytes, id, "a.example.", 1);
        }
    }
}
