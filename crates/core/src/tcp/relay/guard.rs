//! Refusing a PROXY protocol header from a client that may not send one.

/// Watches the first bytes of a direction for a PROXY protocol signature,
/// across as many reads as it takes to decide (at most 12 bytes).
#[derive(Debug, Default)]
pub(super) struct ProxyGuard {
    prefix: [u8; 12],
    len: u8,
}

impl ProxyGuard {
    /// `Some(true)`: a PROXY header starts here; `Some(false)`: it cannot any
    /// more; `None`: undecided yet.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        let len = usize::from(self.len);
        let take = (self.prefix.len() - len).min(bytes.len());
        self.prefix[len..len + take].copy_from_slice(&bytes[..take]);
        let len = len + take;
        // At most 12.
        self.len = len as u8;
        match weir_wire::proxy::detect(&self.prefix[..len]) {
            weir_wire::proxy::Detect::V1 | weir_wire::proxy::Detect::V2 => Some(true),
            weir_wire::proxy::Detect::NotProxy => Some(false),
            weir_wire::proxy::Detect::NeedMore => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in(chunks: &[&[u8]]) -> Vec<Option<bool>> {
        let mut g = ProxyGuard::default();
        chunks.iter().map(|c| g.feed(c)).collect()
    }

    #[test]
    fn decides_across_reads() {
        assert_eq!(feed_in(&[b"PRO", b"XY TCP4 "]), [None, Some(true)]);
        assert_eq!(feed_in(&[b"\r\n\r\n", b"\0\r\nQUIT\n"]), [None, Some(true)]);
        assert_eq!(feed_in(&[b"GET / HTTP/1.1\r\n"]), [Some(false)]);
        assert_eq!(feed_in(&[b"P", b"OST"]), [None, Some(false)]);
        // More than 12 bytes in one read: only the first 12 are looked at.
        assert_eq!(feed_in(&[&[0u8; 64]]), [Some(false)]);
    }
}
