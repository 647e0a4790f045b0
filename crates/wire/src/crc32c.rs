//! CRC-32C (Castagnoli), as required by the PROXY v2 `PP2_TYPE_CRC32C` TLV.
//! Reflected polynomial 0x82F63B78, initial value and final XOR all ones.

const POLY: u32 = 0x82F6_3B78;

/// Byte-at-a-time lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A running checksum, so a header can be summed in pieces (the CRC field itself is
/// summed as zeros without copying the header).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32c(u32);

impl Crc32c {
    pub(crate) fn new() -> Self {
        Self(!0)
    }

    pub(crate) fn update(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            // The index is a u8, so it is always within the 256-entry table.
            self.0 = TABLE[usize::from((self.0 as u8) ^ b)] ^ (self.0 >> 8);
        }
        self
    }

    pub(crate) fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Crc32c;

    #[test]
    fn check_value() {
        // The standard check value for CRC-32C over "123456789".
        assert_eq!(Crc32c::new().update(b"123456789").finish(), 0xE306_9283);
    }

    #[test]
    fn pieces_equal_whole() {
        let whole = Crc32c::new().update(b"hello, world").finish();
        let pieces = Crc32c::new().update(b"hello").update(b", world").finish();
        assert_eq!(whole, pieces);
        assert_eq!(Crc32c::new().finish(), 0);
    }
}
