//! The `grpc-timeout` request header of the gRPC protocol over HTTP/2: the
//! time the client gives a call, as at most eight ASCII digits and a unit
//! (`H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u`
//! microseconds, `n` nanoseconds), e.g. `250m`.

use std::time::Duration;

/// Most digits the protocol allows.
const MAX_DIGITS: usize = 8;

/// The duration a `grpc-timeout` value gives, or `None` when it is not one
/// (empty, more than eight digits, a sign, a space, an unknown unit).
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Eight digits fit in a u64 with room to spare.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_unit() {
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse(b"30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse(b"00000007n"), Some(Duration::from_nanos(7)));
        assert_eq!(
            parse(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn what_is_not_a_timeout() {
        for bad in [
            &b""[..],
            b"m",
            b"5",
            b"123456789m",
            b"-5m",
            b"+5m",
            b" 5m",
            b"5 m",
            b"5ms",
            b"5s",
            b"5h",
            b"5\xffm",
            b"\xd9\xa3m",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn digits_and_a_unit_read_back(n in 0u64..100_000_000, unit in prop::sample::select(&b"HMSmun"[..])) {
            let text = format!("{n}{}", unit as char);
            let got = parse(text.as_bytes()).expect("a timeout");
            let nanos: u128 = match unit {
                b'H' => u128::from(n) * 3_600_000_000_000,
                b'M' => u128::from(n) * 60_000_000_000,
                b'S' => u128::from(n) * 1_000_000_000,
                b'm' => u128::from(n) * 1_000_000,
                b'u' => u128::from(n) * 1_000,
                _ => u128::from(n),
            };
            prop_assert_eq!(got.as_nanos(), nanos);
        }

        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse(&bytes);
        }
    }
}
