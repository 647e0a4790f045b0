//! The path of an HTTP request target, normalised the way weir both matches
//! and forwards it, so that a rule and the backend always see the same path
//! (RFC 3986 §6.2.2):
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, and every other percent-encoding is written in upper case
//!    (`%2e%2E` is `..`, `%7e` is `~`, `%c3%a9` becomes `%C3%A9`), and a
//!    byte above 0x7f sent as it is (raw UTF-8) is percent-encoded, so that
//!    `/café` and `/caf%C3%A9`, one path to a backend, are one to a rule;
//! 2. an encoded slash or backslash (`%2F`, `%5C`), and a backslash as sent
//!    (a separator to some backends), is refused or kept encoded as
//!    [`Slashes`] says: a backend that decodes it would see another path;
//! 3. runs of slashes become one (`//admin` is `/admin`);
//! 4. dot segments are resolved (`/a/./b/../c` is `/a/c`; `..` never climbs
//!    above the root), and one carrying parameters (`/..;x/`, `/.;/`) is
//!    refused: servlet containers drop the parameters and climb, weir would
//!    not.
//!
//! The query, when the caller passes one, is not touched. Pure: `&str` in, a
//! path out; allocation only when something changes.
//!
//! Rules and policies match the normal path as a servlet container reads
//! it ([`without_parameters`]): `/a;x=1/admin` and `/;x/admin` are
//! `/a/admin` and `/admin` to Tomcat, so they must be to a rule guarding
//! those. The backend still gets the parameters.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slashes {
    /// Refuse the request: the safe default.
    Reject,
    /// Keep them encoded (as `%2F`, `%5C`): they are not path separators to
    /// weir, and the backend must not decode them either.
    Keep,
}

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadPercent,
    /// `%2F`, `%5C` or `\`, refused by [`Slashes::Reject`].
    EncodedSlash,
    /// Does not start with `/` (origin form) or holds a byte a path may not.
    NotAPath,
    /// A dot segment with parameters (`..;x`): a segment weir keeps as a
    /// name and a servlet container reads as `..`.
    DotParameters,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::BadPercent => "a % not followed by two hex digits",
            PathError::EncodedSlash => "a backslash or an encoded slash (\\, %2F or %5C)",
            PathError::NotAPath => "not an absolute path",
            PathError::DotParameters => "a dot segment with parameters (such as ..;)",
        })
    }
}

/// The normalised form of `path` (no query). Borrowed when `path` is
/// normal already, which is the common case.
pub fn normalize(path: &str, slashes: Slashes) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.iter().any(|&c| c <= b' ' || c == 0x7f) {
        return Err(PathError::NotAPath);
    }
    if is_normal(b, slashes)? {
        // A `;` is rare; the scan for dot parameters runs only then.
        if b.contains(&b';') {
            check_dot_parameters(b)?;
        }
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(b, slashes)?;
    if decoded.contains(';') {
        check_dot_parameters(decoded.as_bytes())?;
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// A normal path (see [`normalize`]) with each segment's parameters (from a
/// `;` to the segment's end) dropped, and the empty segments that leaves
/// dropped too, as servlet containers read it: `/a;v=1/b` is `/a/b`,
/// `/;x/admin` is `/admin`, `/cart;jsessionid=1` is `/cart`. `None` when
/// the path has no `;` (nearly always): it is its own reading.
pub fn without_parameters(path: &str) -> Option<String> {
    if !path.contains(';') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        let name = seg.split(';').next().unwrap_or_default();
        if !name.is_empty() {
            out.push('/');
            out.push_str(name);
        }
    }
    // A trailing slash stays (`/a;x/` is `/a/`), and the root is `/`.
    if out.is_empty()
        || path.ends_with('/')
        || path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.starts_with(';'))
    {
        out.push('/');
    }
    Some(out)
}

/// True when nothing would change; checks the percent-encodings on the way.
fn is_normal(b: &[u8], slashes: Slashes) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    let mut prev = 0u8;
    let mut segment_start = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (h, l) = match (b.get(i + 1), b.get(i + 2)) {
                    (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        (h, l)
                    }
                    _ => return Err(PathError::BadPercent),
                };
                let v = hex(h) << 4 | hex(l);
                if is_unreserved(v) || h.is_ascii_lowercase() || l.is_ascii_lowercase() {
                    normal = false;
                }
                if (v == b'/' || v == b'\\') && slashes == Slashes::Reject {
                    return Err(PathError::EncodedSlash);
                }
                i += 3;
                prev = b'%';
                continue;
            }
            // A backslash is a separator to some backends (IIS, and any
            // that "fix" Windows paths): treated as an encoded one.
            b'\\' => {
                if slashes == Slashes::Reject {
                    return Err(PathError::EncodedSlash);
                }
                normal = false;
            }
            b'/' => {
                if prev == b'/' {
                    normal = false;
                }
                let seg = &b[segment_start..i];
                if seg == b"." || seg == b".." {
                    normal = false;
                }
                segment_start = i + 1;
            }
            0x80.. => normal = false,
            _ => {}
        }
        prev = c;
        i += 1;
    }
    let last = &b[segment_start..];
    if last == b"." || last == b".." {
        normal = false;
    }
    Ok(normal)
}

/// Refuses a segment that is a dot segment once its parameters (from the
/// first `;`) are dropped. Run on the decoded path, so `%2e%2e;` is one too.
fn check_dot_parameters(path: &[u8]) -> Result<(), PathError> {
    for seg in path.split(|&c| c == b'/') {
        if let Some(semi) = seg.iter().position(|&c| c == b';')
            && matches!(&seg[..semi], b"." | b"..")
        {
            return Err(PathError::DotParameters);
        }
    }
    Ok(())
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved characters and upper-cases the other encodings.
fn decode_unreserved(b: &[u8], slashes: Slashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (h, l) = match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => (h, l),
                _ => return Err(PathError::BadPercent),
            };
            let v = hex(h) << 4 | hex(l);
            if (v == b'/' || v == b'\\') && slashes == Slashes::Reject {
                return Err(PathError::EncodedSlash);
            }
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 0xf)]));
            }
            i += 3;
        } else if b[i] >= 0x80 {
            // Raw UTF-8 (the parsers let it through): encoded as a client
            // that follows RFC 3986 would have sent it.
            out.push('%');
            out.push(char::from(HEX[usize::from(b[i] >> 4)]));
            out.push(char::from(HEX[usize::from(b[i] & 0xf)]));
            i += 1;
        } else {
            // The path is checked to be visible bytes.
            let start = i;
            while i < b.len() && b[i] != b'%' && b[i] != b'\\' && b[i] < 0x80 {
                i += 1;
            }
            out.push_str(std::str::from_utf8(&b[start..i]).map_err(|_| PathError::NotAPath)?);
            if b.get(i) == Some(&b'\\') {
                if slashes == Slashes::Reject {
                    return Err(PathError::EncodedSlash);
                }
                // Kept as an encoded backslash, never a separator.
                out.push_str("%5C");
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, with empty segments (runs of slashes) dropped too. The
/// result starts with `/` and keeps a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let n = parts.len();
    let mut trailing = false;
    for (i, seg) in parts.into_iter().enumerate() {
        let last = i + 1 == n;
        match seg {
            "" => trailing = last,
            "." => trailing = last,
            ".." => {
                segments.pop();
                trailing = last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p, Slashes::Reject).expect(p).into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a%20b",
            "/%C3%A9t%C3%A9",
            "/a.b/c..d/.e",
        ] {
            assert!(
                matches!(normalize(p, Slashes::Reject), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn the_tricks_become_the_path_they_mean() {
        let cases = [
            ("/a/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/x//admin//", "/x/admin/"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E%2e/admin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/.%2e/admin", "/admin"),
            ("/./admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("/../../..", "/"),
            ("/%61dmin", "/admin"),
            ("/%7euser", "/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input), want, "{input}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_or_kept() {
        for p in [
            "/admin%2Fsecret",
            "/a%2fb",
            "/a%5Cb",
            "/a%5cb",
            "/\\admin",
            "/a\\b",
        ] {
            assert_eq!(
                normalize(p, Slashes::Reject),
                Err(PathError::EncodedSlash),
                "{p}"
            );
        }
        assert_eq!(normalize("/a%2fb/../c", Slashes::Keep).expect("keep"), "/c");
        assert_eq!(normalize("/a%2fb", Slashes::Keep).expect("keep"), "/a%2Fb");
        // A backslash as sent: kept as an encoded one, never a separator.
        assert_eq!(
            normalize("/\\admin", Slashes::Keep).expect("keep"),
            "/%5Cadmin"
        );
        assert_eq!(
            normalize("/a\\..\\b", Slashes::Keep).expect("keep"),
            "/a%5C..%5Cb"
        );
    }

    #[test]
    fn raw_utf8_is_encoded_as_a_client_would_have() {
        assert_eq!(n("/café/x"), "/caf%C3%A9/x");
        assert_eq!(n("/caf%c3%a9/x"), n("/café/x"));
        assert_eq!(n("/é/../admin"), "/admin");
        assert_eq!(n("/%E7%AE%A1/ü"), "/%E7%AE%A1/%C3%BC");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in [
            "/public/..;/admin",
            "/..;x",
            "/a/.;/b",
            "/a/%2e%2e;jsessionid=1/b",
            "//..;/",
        ] {
            assert_eq!(
                normalize(p, Slashes::Reject),
                Err(PathError::DotParameters),
                "{p}"
            );
        }
        // Parameters on other segments, and a `;` that is encoded, are paths.
        assert_eq!(n("/a;x=1/b"), "/a;x=1/b");
        assert_eq!(n("/a/...;/b"), "/a/...;/b");
        assert_eq!(n("/a/..%3B/b"), "/a/..%3B/b");
    }

    #[test]
    fn rules_read_the_path_without_its_parameters() {
        let w = |p: &str| without_parameters(p).unwrap_or_else(|| p.to_owned());
        assert_eq!(w("/a/admin"), "/a/admin");
        assert_eq!(without_parameters("/a/admin"), None);
        assert_eq!(w("/a;x=1/admin"), "/a/admin");
        assert_eq!(w("/;x/admin"), "/admin");
        assert_eq!(w("/a/;x/b"), "/a/b");
        assert_eq!(w("/;x;y=2/;/admin;v=3"), "/admin");
        assert_eq!(w("/cart;jsessionid=1"), "/cart");
        assert_eq!(w("/a;x/"), "/a/");
        assert_eq!(w("/a/;x"), "/a/");
        assert_eq!(w("/;jsessionid=1"), "/");
        assert_eq!(w("/;"), "/");
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(normalize("/a%2", Slashes::Keep), Err(PathError::BadPercent));
        assert_eq!(
            normalize("/a%zz", Slashes::Keep),
            Err(PathError::BadPercent)
        );
        assert_eq!(normalize("/a%", Slashes::Keep), Err(PathError::BadPercent));
        assert_eq!(normalize("a/b", Slashes::Keep), Err(PathError::NotAPath));
        assert_eq!(normalize("", Slashes::Keep), Err(PathError::NotAPath));
        assert_eq!(normalize("/a b", Slashes::Keep), Err(PathError::NotAPath));
    }

    const PIECES: &[&str] = &[
        "/", "//", ".", "..", "%2e", "%2E", "a", "B", "%41", "%7e", "%2f", "%c3", "%A9", "-", "_",
        "~", "%", "%g1", "%5c", "\\", "é", ";", ".;", "%3b",
    ];

    proptest::proptest! {
        /// Normalising twice changes nothing, and the result never holds a
        /// dot segment or a run of slashes.
        #[test]
        fn normal_form_is_a_fixed_point(ix in proptest::collection::vec(0..PIECES.len(), 0..14)) {
            let p: String = std::iter::once("/").chain(ix.iter().map(|&i| PIECES[i])).collect();
            if let Ok(once) = normalize(&p, Slashes::Keep) {
                let twice = normalize(&once, Slashes::Keep).expect("a normal path stays valid");
                proptest::prop_assert_eq!(&once, &twice);
                proptest::prop_assert!(matches!(twice, Cow::Borrowed(_)));
                proptest::prop_assert!(!once.contains("//"));
                proptest::prop_assert!(once.split('/').all(|seg| seg != "." && seg != ".."));
                proptest::prop_assert!(once.starts_with('/'));
                // Read without parameters: still a path, with no run of
                // slashes, no parameter and no dot segment.
                if let Some(bare) = without_parameters(&once) {
                    proptest::prop_assert!(bare.starts_with('/'));
                    proptest::prop_assert!(!bare.contains("//") && !bare.contains(';'));
                    proptest::prop_assert!(bare.split('/').all(|seg| seg != "." && seg != ".."));
                }
                // Rejecting slashes only ever refuses more.
                if let Ok(strict) = normalize(&p, Slashes::Reject) {
                    proptest::prop_assert_eq!(strict, once);
                }
            }
        }

        /// Any string at all: an answer, never a panic.
        #[test]
        fn never_panics(p in "\\PC*") {
            let _ = normalize(&p, Slashes::Reject);
            let _ = normalize(&format!("/{p}"), Slashes::Keep);
        }
    }
}
