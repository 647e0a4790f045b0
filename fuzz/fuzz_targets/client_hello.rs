//! Any bytes: `client_hello::peek` must not panic, and a ClientHello it accepts must be
//! consistent with the bytes it says it used.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::client_hello::{self as tls, Peek};

fuzz_target!(|data: &[u8]| {
    match tls::peek(data) {
        Ok(Peek::Complete(hello)) => {
            assert!(hello.wire_len > 0 && hello.wire_len <= data.len());
            // The bytes up to wire_len alone give the same answer...
            assert_eq!(
                tls::peek(&data[..hello.wire_len]),
                Ok(Peek::Complete(hello.clone()))
            );
            // ...and one byte fewer is not enough.
            assert!(matches!(
                tls::peek(&data[..hello.wire_len - 1]),
                Ok(Peek::Incomplete { .. })
            ));
            if let Some(sni) = &hello.sni {
                assert!(!sni.is_empty() && sni.len() <= 253);
                assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
                assert!(!sni.ends_with('.'));
            }
            assert!(hello.alpn.iter().all(|p| !p.is_empty()));
        }
        Ok(Peek::NotTls) => {
            assert!(data.first() != Some(&0x16) || data.get(1) != Some(&0x03));
        }
        Ok(Peek::Incomplete { needed }) => {
            assert!(needed.is_some_and(|n| n.get() <= tls::MAX_HELLO_LEN + 5 + 5));
        }
        Err(_) => {}
    }
});
