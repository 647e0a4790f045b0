#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

// ---- a small ClientHello builder ----

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn vec8(body: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(body.len()).unwrap()];
    out.extend_from_slice(body);
    out
}

fn vec16(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u16(&mut out, u16::try_from(body.len()).unwrap());
    out.extend_from_slice(body);
    out
}

/// A ClientHello described field by field; `message()` gives the handshake message
/// (4-byte header included) and `records()` wraps it in TLS records.
#[derive(Debug, Clone)]
struct Hello {
    legacy_version: u16,
    session_id: Vec<u8>,
    suites: Vec<u16>,
    compression: Vec<u8>,
    /// `None`: no extensions block at all (a pre-TLS-1.2 shape).
    extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Default for Hello {
    /// Shaped like a current browser's: TLS 1.3 with GREASE, a post-quantum key
    /// share (about 1.2 KB) and padding, so the message is well over 1.5 KB.
    fn default() -> Self {
        let mut hello = Self {
            legacy_version: 0x0303,
            session_id: vec![0xaa; 32],
            suites: vec![0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f],
            compression: vec![0],
            extensions: Some(Vec::new()),
        };
        hello.ext(0x0a0a, vec![]);
        hello.ext(EXT_SERVER_NAME, sni_ext(b"www.example.com"));
        hello.ext(EXT_ALPN, alpn_ext(&[b"h2", b"http/1.1"]));
        hello.ext(
            EXT_SUPPORTED_VERSIONS,
            vec8(&[0x1a, 0x1a, 0x03, 0x04, 0x03, 0x03]),
        );
        hello.ext(51, key_share_ext(1216));
        hello.ext(21, vec![0; 300]);
        hello
    }
}

impl Hello {
    fn ext(&mut self, kind: u16, data: Vec<u8>) -> &mut Self {
        self.extensions.get_or_insert_default().push((kind, data));
        self
    }

    fn without(&mut self, kind: u16) -> &mut Self {
        if let Some(exts) = &mut self.extensions {
            exts.retain(|(k, _)| *k != kind);
        }
        self
    }

    fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_u16(&mut body, self.legacy_version);
        body.extend_from_slice(&[0x42; 32]);
        body.extend_from_slice(&vec8(&self.session_id));
        let suites: Vec<u8> = self.suites.iter().flat_map(|s| s.to_be_bytes()).collect();
        body.extend_from_slice(&vec16(&suites));
        body.extend_from_slice(&vec8(&self.compression));
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (kind, data) in exts {
                put_u16(&mut block, *kind);
                block.extend_from_slice(&vec16(data));
            }
            body.extend_from_slice(&vec16(&block));
        }
        body
    }

    fn message(&self) -> Vec<u8> {
        handshake(HANDSHAKE_CLIENT_HELLO, &self.body())
    }

    fn record(&self) -> Vec<u8> {
        records(&self.message(), &[])
    }
}

fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut msg = vec![kind, len[1], len[2], len[3]];
    msg.extend_from_slice(body);
    msg
}

/// Wraps `msg` in handshake records whose payloads have the given sizes; the rest
/// of the message goes in one last record.
fn records(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = msg;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes.next().map_or(rest.len(), |&n| n.min(rest.len()));
        let (frag, tail) = rest.split_at(n);
        out.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, 0x01]);
        out.extend_from_slice(&vec16(frag));
        rest = tail;
    }
    out
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&vec16(name));
    vec16(&entry)
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
    vec16(&list)
}

/// A hybrid post-quantum share of `pq_len` bytes plus an X25519 one.
fn key_share_ext(pq_len: usize) -> Vec<u8> {
    let mut shares = Vec::new();
    put_u16(&mut shares, 0x11ec);
    shares.extend_from_slice(&vec16(&vec![0x77; pq_len]));
    put_u16(&mut shares, 0x001d);
    shares.extend_from_slice(&vec16(&[0x55; 32]));
    vec16(&shares)
}

fn complete(buf: &[u8]) -> ClientHello<'_> {
    match peek(buf) {
        Ok(Peek::Complete(hello)) => hello,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

fn alpn_list(hello: &ClientHello<'_>) -> Vec<Vec<u8>> {
    hello.alpn.iter().map(<[u8]>::to_vec).collect()
}

fn assert_default_hello(hello: &ClientHello<'_>, wire_len: usize) {
    assert_eq!(hello.sni.as_deref(), Some("www.example.com"));
    assert_eq!(alpn_list(hello), [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(hello.legacy_version, 0x0303);
    assert_eq!(hello.max_version, 0x0304);
    assert_eq!(hello.wire_len, wire_len);
}

/// Every strict prefix is Incomplete, with a hint that never overshoots.
fn assert_prefixes_incomplete(full: &[u8], upto: usize) {
    for cut in 0..upto {
        match peek(&full[..cut]) {
            Ok(Peek::Incomplete { needed }) => {
                let needed = needed.map_or(1, NonZeroUsize::get);
                assert!(needed <= upto - cut, "cut {cut}: hint {needed} overshoots");
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

// ---- the happy paths ----

#[test]
fn single_record_is_parsed_in_place() {
    let buf = Hello::default().record();
    assert!(
        buf.len() > 1500,
        "the test hello should be large: {}",
        buf.len()
    );
    let hello = complete(&buf);
    assert_default_hello(&hello, buf.len());
    // Nothing was copied: both views borrow the input.
    assert!(matches!(hello.sni, Some(Cow::Borrowed(_))));
    assert!(matches!(hello.alpn.0, Cow::Borrowed(_)));
    assert!(hello.alpn.contains(b"h2"));
    assert!(!hello.alpn.contains(b"h3"));
    assert_eq!(format!("{:?}", hello.alpn), r#"["h2", "http/1.1"]"#);
}

#[test]
fn every_truncation_of_one_record_is_incomplete() {
    let buf = Hello::default().record();
    assert_prefixes_incomplete(&buf, buf.len());
    // Once the lengths are known the hint is exact.
    let cut = 20;
    assert_eq!(
        peek(&buf[..cut]),
        Ok(Peek::Incomplete {
            needed: NonZeroUsize::new(buf.len() - cut)
        })
    );
}

#[test]
fn split_across_two_records_at_every_position() {
    let msg = Hello::default().message();
    for at in 1..msg.len() {
        let buf = records(&msg, &[at]);
        let hello = complete(&buf);
        assert_default_hello(&hello, buf.len());
        if at % 97 == 0 || at < 6 {
            assert_prefixes_incomplete(&buf, buf.len());
        }
    }
}

#[test]
fn split_across_three_records() {
    let msg = Hello::default().message();
    for a in (1..msg.len()).step_by(7) {
        for b in (1..msg.len() - a).step_by(31) {
            let buf = records(&msg, &[a, b]);
            assert_default_hello(&complete(&buf), buf.len());
        }
    }
    // The handshake header itself split 1+1+2 over three records.
    let buf = records(&msg, &[1, 1, 2]);
    assert_default_hello(&complete(&buf), buf.len());
    assert_prefixes_incomplete(&buf, buf.len());
}

#[test]
fn one_byte_records() {
    let msg = Hello::default().message();
    let buf = records(&msg, &vec![1; msg.len()]);
    assert_eq!(buf.len(), msg.len() * 6);
    assert_default_hello(&complete(&buf), buf.len());
}

#[test]
fn bytes_after_the_hello_are_not_needed() {
    // Early data or a next record after the hello: wire_len marks where it ended.
    let mut buf = Hello::default().record();
    let end = buf.len();
    buf.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3]);
    assert_default_hello(&complete(&buf), end);

    // The hello ends inside a record whose tail has not all arrived.
    let msg = Hello::default().message();
    let mut buf = vec![CONTENT_HANDSHAKE, 0x03, 0x01];
    put_u16(&mut buf, u16::try_from(msg.len() + 100).unwrap());
    buf.extend_from_slice(&msg);
    let end = buf.len();
    buf.extend_from_slice(&[0xee; 10]);
    assert_default_hello(&complete(&buf), end);
}

#[test]
fn hello_without_extensions() {
    let mut h = Hello {
        legacy_version: 0x0301,
        extensions: None,
        ..Hello::default()
    };
    let buf = h.record();
    let hello = complete(&buf);
    assert_eq!((hello.sni, hello.alpn.is_empty()), (None, true));
    assert_eq!((hello.legacy_version, hello.max_version), (0x0301, 0x0301));

    // An empty extensions block is allowed too.
    h.extensions = Some(Vec::new());
    assert_eq!(complete(&h.record()).sni, None);
}

#[test]
fn supported_versions_skip_grease() {
    let mut h = Hello::default();
    h.without(EXT_SUPPORTED_VERSIONS)
        .ext(EXT_SUPPORTED_VERSIONS, vec8(&[0x3a, 0x3a, 0x03, 0x03]));
    assert_eq!(complete(&h.record()).max_version, 0x0303);
    let mut h = Hello::default();
    h.without(EXT_SUPPORTED_VERSIONS)
        .ext(EXT_SUPPORTED_VERSIONS, vec8(&[0xfa, 0xfa]));
    assert_eq!(complete(&h.record()).max_version, 0x0303);
}

#[test]
fn largest_hello_fits_one_record() {
    let mut h = Hello::default();
    let msg_len = h.message().len();
    h.without(21)
        .ext(21, vec![0; 300 + MAX_HELLO_LEN - msg_len]);
    let msg = h.message();
    assert_eq!(msg.len(), MAX_HELLO_LEN);
    let buf = records(&msg, &[]);
    assert_default_hello(&complete(&buf), buf.len());
    // And one byte more is refused from the handshake header alone.
    h.without(21)
        .ext(21, vec![0; 301 + MAX_HELLO_LEN - msg_len]);
    let buf = records(&h.message(), &[10]);
    assert_eq!(peek(&buf[..15]), Err(TlsError::TooLarge(MAX_HELLO_LEN + 1)));
}

// ---- SNI ----

fn sni_of(name: &[u8]) -> Result<Option<String>, TlsError> {
    let mut h = Hello::default();
    h.without(EXT_SERVER_NAME)
        .ext(EXT_SERVER_NAME, sni_ext(name));
    let buf = h.record();
    match peek(&buf)? {
        Peek::Complete(hello) => Ok(hello.sni.map(Cow::into_owned)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sni_is_validated_and_lower_cased() {
    let ok = |name: &[u8], want: &str| assert_eq!(sni_of(name), Ok(Some(want.to_owned())));
    ok(b"example.com", "example.com");
    ok(b"WWW.Example.COM", "www.example.com");
    ok(b"example.com.", "example.com");
    ok(b"localhost", "localhost");
    ok(
        b"_acme-challenge.x-1.example",
        "_acme-challenge.x-1.example",
    );
    ok(b"123.example", "123.example");
    let label63 = "a".repeat(63);
    ok(label63.as_bytes(), &label63);
    let name253 = [label63.as_str(); 4].join(".")[..253].to_owned();
    ok(name253.as_bytes(), &name253);

    // IP literals are not names: treated as no SNI.
    assert_eq!(sni_of(b"192.0.2.1"), Ok(None));
    assert_eq!(sni_of(b"2001:db8::1"), Ok(None));

    let label64 = "a".repeat(64);
    let name254 = format!("{name253}a");
    for bad in [
        &b""[..],
        b".",
        b"..",
        b"a..b",
        b".a",
        b"-a.com",
        b"a-.com",
        b"a b.com",
        b"a/b",
        b"a.com..",
        b"caf\xc3\xa9.fr",
        b"\xff",
        label64.as_bytes(),
        name254.as_bytes(),
        b"exa\0mple.com",
    ] {
        assert_eq!(
            sni_of(bad),
            Err(TlsError::InvalidSni),
            "{}",
            bad.escape_ascii()
        );
    }
}

#[test]
fn sni_uppercase_copies_only_the_name() {
    let mut h = Hello::default();
    h.without(EXT_SERVER_NAME)
        .ext(EXT_SERVER_NAME, sni_ext(b"Example.ORG"));
    let buf = h.record();
    let hello = complete(&buf);
    assert!(matches!(hello.sni, Some(Cow::Owned(_))));
    assert_eq!(hello.sni.as_deref(), Some("example.org"));
}

#[test]
fn sni_skips_unknown_name_types() {
    let mut list = vec![7];
    list.extend_from_slice(&vec16(b"opaque"));
    list.push(0);
    list.extend_from_slice(&vec16(b"host.example"));
    let mut h = Hello::default();
    h.without(EXT_SERVER_NAME)
        .ext(EXT_SERVER_NAME, vec16(&list));
    assert_eq!(complete(&h.record()).sni.as_deref(), Some("host.example"));

    let mut h = Hello::default();
    h.without(EXT_SERVER_NAME)
        .ext(EXT_SERVER_NAME, vec16(&[&[7u8][..], &vec16(b"x")].concat()));
    assert_eq!(complete(&h.record()).sni, None);
}

// ---- not TLS, and errors ----

#[test]
fn not_tls_is_decided_from_two_bytes() {
    assert_eq!(peek(b"G"), Ok(Peek::NotTls));
    assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Ok(Peek::NotTls));
    assert_eq!(peek(b"PROXY TCP4"), Ok(Peek::NotTls));
    assert_eq!(peek(&[0x16, 0x02]), Ok(Peek::NotTls));
    assert_eq!(
        peek(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
        Ok(Peek::NotTls),
        "SSLv2 hello"
    );
    assert_eq!(peek(&[0x17, 0x03, 0x03]), Ok(Peek::NotTls));
    assert!(matches!(peek(b""), Ok(Peek::Incomplete { .. })));
    assert!(matches!(peek(&[0x16]), Ok(Peek::Incomplete { .. })));
    assert!(matches!(peek(&[0x16, 0x03]), Ok(Peek::Incomplete { .. })));
}

#[test]
fn record_layer_errors() {
    let msg = Hello::default().message();
    let two = records(&msg, &[100]);
    let second = 5 + 100;

    let mut bad = two.clone();
    bad[second] = 0x17;
    assert_eq!(
        peek(&bad[..second + 1]),
        Err(TlsError::UnexpectedRecordType(0x17))
    );
    let mut bad = two;
    bad[second + 1] = 0x02;
    assert_eq!(
        peek(&bad[..second + 3]),
        Err(TlsError::RecordVersion(0x0201))
    );

    assert_eq!(
        peek(&[0x16, 0x03, 0x01, 0x00, 0x00]),
        Err(TlsError::EmptyRecord)
    );
    assert_eq!(
        peek(&[0x16, 0x03, 0x01, 0x40, 0x01]),
        Err(TlsError::RecordTooLong(16385))
    );
    // An empty continuation record.
    let mut bad = records(&msg, &[100]);
    bad.splice(second..second, [0x16, 0x03, 0x01, 0x00, 0x00]);
    assert_eq!(peek(&bad), Err(TlsError::EmptyRecord));
}

#[test]
fn handshake_layer_errors() {
    // A ServerHello, or any other first message, is not a ClientHello.
    assert_eq!(
        peek(&records(&handshake(2, &[0; 40]), &[])[..6]),
        Err(TlsError::NotClientHello(2))
    );
    // Too large, told by the length alone, even split over records.
    let big = [0x01, 0x00, 0x40, 0x00];
    assert_eq!(
        peek(&records(&big, &[2])),
        Err(TlsError::TooLarge(16384 + 4))
    );
    assert_eq!(
        peek(&records(&[0x01, 0xff, 0xff, 0xff], &[])),
        Err(TlsError::TooLarge(0xff_ffff + 4))
    );
}

#[test]
fn malformed_bodies() {
    let malformed = |h: &Hello| match peek(&h.record()) {
        Err(TlsError::Malformed(_)) => {}
        other => panic!("{other:?} for {h:?}"),
    };
    malformed(&Hello {
        session_id: vec![0; 33],
        ..Hello::default()
    });
    malformed(&Hello {
        suites: vec![],
        ..Hello::default()
    });
    malformed(&Hello {
        compression: vec![],
        ..Hello::default()
    });
    // An odd cipher_suites length.
    let mut body = Hello::default().body();
    body[2 + 32 + 33 + 1] += 1;
    assert!(matches!(
        peek(&records(&handshake(1, &body), &[])),
        Err(TlsError::Malformed(_))
    ));
    // Bodies cut short at every length (the message length says so).
    let body = Hello::default().body();
    let bare = Hello {
        extensions: None,
        ..Hello::default()
    }
    .body()
    .len();
    for cut in (0..body.len()).step_by(3).filter(|&c| c != bare) {
        let buf = records(&handshake(1, &body[..cut]), &[]);
        let got = peek(&buf);
        assert!(matches!(got, Err(TlsError::Malformed(_))), "{cut}: {got:?}");
    }
    // Bytes after the extensions block.
    let mut body = Hello::default().body();
    body.push(0);
    assert_eq!(
        peek(&records(&handshake(1, &body), &[])),
        Err(TlsError::Malformed("bytes after extensions"))
    );
    // Extension contents that are wrong.
    for (kind, data) in [
        (EXT_SERVER_NAME, vec16(&[])),
        (EXT_SERVER_NAME, [sni_ext(b"a.com"), vec![0]].concat()),
        (EXT_SERVER_NAME, vec16(&[0, 0, 5, b'a'])),
        (EXT_ALPN, vec16(&[])),
        (EXT_ALPN, vec16(&[0])),
        (EXT_ALPN, vec16(&[3, b'h', b'2'])),
        (EXT_SUPPORTED_VERSIONS, vec8(&[])),
        (EXT_SUPPORTED_VERSIONS, vec8(&[3, 4, 3])),
    ] {
        let mut h = Hello::default();
        h.without(kind).ext(kind, data);
        malformed(&h);
    }
    let two_hosts = [&[0u8][..], &vec16(b"a.com"), &[0], &vec16(b"b.com")].concat();
    let mut h = Hello::default();
    h.without(EXT_SERVER_NAME)
        .ext(EXT_SERVER_NAME, vec16(&two_hosts));
    assert_eq!(
        peek(&h.record()),
        Err(TlsError::Malformed("two host_name entries"))
    );
}

#[test]
fn duplicate_extensions_we_route_on_are_refused() {
    for kind in [EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS] {
        let mut h = Hello::default();
        let first = h
            .extensions
            .as_ref()
            .and_then(|e| e.iter().find(|(k, _)| *k == kind))
            .unwrap()
            .1
            .clone();
        h.ext(kind, first);
        assert_eq!(peek(&h.record()), Err(TlsError::DuplicateExtension(kind)));
    }
    // Others are the backend's business.
    let mut h = Hello::default();
    h.ext(21, vec![]);
    assert!(matches!(peek(&h.record()), Ok(Peek::Complete(_))));
}

// ---- properties ----

fn dns_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9])?"
}

fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(dns_label(), 1..5).prop_map(|labels| format!("{}.test", labels.join(".")))
}

fn protocols() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..20), 0..5)
}

proptest! {
    #[test]
    fn built_hellos_survive_any_record_split(
        name in prop::option::of(host_name()),
        alpn in protocols(),
        key_share in 0usize..2000,
        sizes in prop::collection::vec(1usize..600, 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut h = Hello::default();
        h.without(EXT_SERVER_NAME).without(EXT_ALPN).without(51);
        if let Some(name) = &name {
            h.ext(EXT_SERVER_NAME, sni_ext(name.as_bytes()));
        }
        if !alpn.is_empty() {
            let refs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
            h.ext(EXT_ALPN, alpn_ext(&refs));
        }
        h.ext(51, key_share_ext(key_share));
        let mut buf = records(&h.message(), &sizes);
        let end = buf.len();
        buf.extend_from_slice(&tail);
        let hello = complete(&buf);
        let want = name.map(|n| n.to_ascii_lowercase());
        prop_assert_eq!(hello.sni.as_deref(), want.as_deref());
        prop_assert_eq!(alpn_list(&hello), alpn);
        prop_assert_eq!(hello.wire_len, end);
        check_invariants(&buf);
    }

    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
        check_invariants(&buf);
    }

    #[test]
    fn random_records_never_panic(
        frags in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..4),
        hello_first in any::<bool>(),
    ) {
        // Valid record framing around random payloads gets past the record layer.
        let mut buf = Vec::new();
        for (i, frag) in frags.iter().enumerate() {
            buf.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, 0x03]);
            let mut payload = frag.clone();
            if i == 0 && hello_first {
                payload.splice(0..0, [1, 0, 0, u8::try_from(frag.len() % 256).unwrap()]);
            }
            buf.extend_from_slice(&vec16(&payload));
        }
        check_invariants(&buf);
    }

    #[test]
    fn mutated_hellos_never_panic(
        sizes in prop::collection::vec(1usize..800, 0..3),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = records(&Hello::default().message(), &sizes);
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        check_invariants(&buf);
        check_invariants(&buf[..cut.index(buf.len())]);
    }
}

/// What the fuzz target checks, run here on proptest's inputs too.
fn check_invariants(buf: &[u8]) {
    match peek(buf) {
        Ok(Peek::Complete(hello)) => {
            assert!(hello.wire_len <= buf.len());
            assert_eq!(
                peek(&buf[..hello.wire_len]),
                Ok(Peek::Complete(hello.clone()))
            );
            assert!(matches!(
                peek(&buf[..hello.wire_len - 1]),
                Ok(Peek::Incomplete { .. })
            ));
            if let Some(sni) = &hello.sni {
                assert!(!sni.is_empty() && sni.len() <= 253);
                assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
            }
            assert!(hello.alpn.iter().all(|p| !p.is_empty()));
        }
        Ok(Peek::NotTls) => {
            assert!(buf.first() != Some(&CONTENT_HANDSHAKE) || buf.get(1) != Some(&3));
        }
        Ok(Peek::Incomplete { needed }) => {
            assert!(needed.is_some_and(|n| n.get() <= MAX_HELLO_LEN + 5 + RECORD_HEADER_LEN));
        }
        Err(_) => {}
    }
}
