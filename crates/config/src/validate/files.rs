//! Files a config names (CA bundles, certificates, keys, the token): read at
//! load, so that a wrong path fails the load or the reload, not a connection.

use std::path::{Path, PathBuf};

use super::Checker;

impl Checker {
    /// A readable file holding a PEM block whose label contains `marker`; `what`
    /// ends the message when it does not.
    pub(super) fn pem_file(
        &mut self,
        path: &str,
        value: &str,
        marker: &str,
        what: &str,
    ) -> PathBuf {
        let file = PathBuf::from(value);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let begin = format!("-----BEGIN {marker}");
                // Keys come as "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY".
                let found = contains(&bytes, begin.as_bytes())
                    || (marker == "PRIVATE KEY" && contains(&bytes, b" PRIVATE KEY-----"));
                if !found {
                    self.push(path, format!("{value:?} {what}"));
                }
            }
            Err(e) => {
                let hint = relative_hint(&file);
                self.push(path, format!("cannot read {value:?}: {e}{hint}"));
            }
        }
        file
    }

    /// A PEM CA bundle: read now, so that a wrong path fails the load (or the
    /// reload) rather than every probe or connection.
    pub(super) fn ca_file(&mut self, path: &str, ca: &str) -> PathBuf {
        if ca.is_empty() {
            self.push(path, "must not be empty");
            return PathBuf::new();
        }
        self.pem_file(
            path,
            ca,
            "CERTIFICATE",
            "holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line); `ca` takes a \
             PEM bundle of CA certificates",
        )
    }
}

/// Non-empty or not, only printable ASCII other than space: what can go
/// into a request line or a header unescaped.
pub(super) fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// For an error about a relative file path: where it was looked for.
pub(super) fn relative_hint(file: &Path) -> String {
    if file.is_absolute() {
        return String::new();
    }
    match std::env::current_dir() {
        Ok(dir) => format!(
            "; a relative path is relative to weir's working directory ({})",
            dir.display()
        ),
        Err(_) => "; a relative path is relative to weir's working directory".to_owned(),
    }
}
