//! Any bytes: `proxy::parse` must not panic, and what it accepts must be
//! self-consistent and survive a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::proxy::{self, Command, Detect, Family, ProxyParse, Version};

fuzz_target!(|data: &[u8]| {
    let detected = proxy::detect(data);
    match proxy::parse(data) {
        Ok(ProxyParse::Complete {
            header,
            consumed_len,
        }) => {
            assert!(consumed_len <= data.len());
            assert!(matches!(detected, Detect::V1 | Detect::V2));
            match header.version {
                Version::V1 => assert!(consumed_len <= proxy::V1_MAX_LEN),
                Version::V2 => assert!(consumed_len <= proxy::V2_MAX_LEN),
            }
            // The header's own bytes parse to the same header (what follows is payload)...
            let own = &data[..consumed_len];
            assert_eq!(
                proxy::parse(own),
                Ok(ProxyParse::Complete {
                    header: header.clone(),
                    consumed_len,
                })
            );
            // ...and one byte fewer is a prefix still waiting for its end.
            assert!(matches!(
                proxy::parse(&own[..consumed_len - 1]),
                Ok(ProxyParse::Incomplete { .. })
            ));

            let mut out = Vec::new();
            header
                .encode(&mut out)
                .expect("a parsed header fits the encoder's bounds");
            let Ok(ProxyParse::Complete {
                header: again,
                consumed_len: again_len,
            }) = proxy::parse(&out)
            else {
                panic!("re-encoded header does not parse: {header:?}");
            };
            assert_eq!(again_len, out.len());
            match header.version {
                // v1 text has several spellings of one IPv6 address: compare values.
                Version::V1 => assert_eq!(again, header),
                Version::V2 => {
                    // LOCAL and AF_UNIX address blocks are not kept by the parser,
                    // so only the rest is comparable; otherwise the bytes are equal.
                    let kept = header.family != Family::Unix
                        && (header.command == Command::Proxy || header.family == Family::Unspec);
                    if kept {
                        assert_eq!(out.as_slice(), own);
                    } else {
                        assert_eq!(again.command, header.command);
                        assert_eq!(again.addresses, None);
                        assert_eq!(again.tlvs.len(), header.tlvs.len());
                    }
                }
            }
        }
        Ok(ProxyParse::Incomplete { needed }) => {
            assert_ne!(detected, Detect::NotProxy);
            if let Some(n) = needed {
                assert!(n.get() <= proxy::V2_MAX_LEN);
            }
        }
        Err(_) => {}
    }
});
