//! A rule's `strip_prefix` and `add_prefix`: the path the backend gets.
//! Pure: the normalised path in, the new one out.

/// A rule's path rewrite, ready to apply.
#[derive(Debug, Default)]
pub(crate) struct PathRewrite {
    strip: Option<String>,
    add: Option<String>,
}

impl PathRewrite {
    /// `None` when the rule rewrites nothing.
    pub(crate) fn new(strip: Option<&str>, add: Option<&str>) -> Option<PathRewrite> {
        (strip.is_some() || add.is_some()).then(|| PathRewrite {
            strip: strip.map(str::to_owned),
            add: add.map(str::to_owned),
        })
    }

    /// The path the backend gets for `path` (normalised, without its
    /// query). `strip` is taken off only where it ends a segment (`/api`
    /// from `/api` and `/api/x`, not from `/apix`), leaving at least `/`;
    /// `add` goes in front, with one slash between.
    ///
    /// A path with parameters (`/api;v=1/x`) was matched without them
    /// (`weir_wire::path::without_parameters`), so `strip` is taken off it
    /// segment by segment, parameters and all: `/x` is what is left.
    pub(crate) fn apply(&self, path: &str) -> String {
        let mut rest = path;
        if let Some(strip) = &self.strip {
            let after = if path.contains(';') {
                strip_segments(path, strip)
            } else {
                path.strip_prefix(strip.as_str()).filter(|after| {
                    after.is_empty() || after.starts_with('/') || strip.ends_with('/')
                })
            };
            if let Some(after) = after {
                rest = after;
            }
        }
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let add = self.add.as_deref().unwrap_or("");
        let add = add.strip_suffix('/').unwrap_or(add);
        let mut out = String::with_capacity(add.len() + rest.len() + 1);
        out.push_str(add);
        out.push('/');
        out.push_str(rest);
        out
    }
}

/// What is left of `path` once the segments of `strip` are taken off it,
/// reading each segment of `path` by its name before any `;`, and passing
/// over empty names (`/;x/api` matched as `/api`). `None` when `strip`
/// is not there. A `strip` that ends with `/` needs more after it.
fn strip_segments<'a>(path: &'a str, strip: &str) -> Option<&'a str> {
    let mut pos = 0;
    for want in strip.split('/').filter(|s| !s.is_empty()) {
        loop {
            let seg = path.get(pos..)?.strip_prefix('/')?;
            let end = pos + 1 + seg.find('/').unwrap_or(seg.len());
            let name = seg[..end - pos - 1].split(';').next().unwrap_or_default();
            pos = end;
            if name.is_empty() {
                continue;
            }
            if name != want {
                return None;
            }
            break;
        }
    }
    let rest = &path[pos..];
    (!strip.ends_with('/') || strip == "/" || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped_at_segment_ends_and_added() {
        let strip = PathRewrite::new(Some("/api"), None).expect("a rewrite");
        assert_eq!(strip.apply("/api/users"), "/users");
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/api/"), "/");
        assert_eq!(strip.apply("/apix"), "/apix", "not at a segment's end");
        assert_eq!(strip.apply("/other"), "/other");
        let slash = PathRewrite::new(Some("/api/"), None).expect("a rewrite");
        assert_eq!(slash.apply("/api/users"), "/users");
        assert_eq!(slash.apply("/api"), "/api");
        let both = PathRewrite::new(Some("/api"), Some("/v2")).expect("a rewrite");
        assert_eq!(both.apply("/api/users"), "/v2/users");
        assert_eq!(both.apply("/api"), "/v2/");
        let add = PathRewrite::new(None, Some("/v2/")).expect("a rewrite");
        assert_eq!(add.apply("/users"), "/v2/users");
        assert_eq!(add.apply("/"), "/v2/");
        assert!(PathRewrite::new(None, None).is_none());
    }

    #[test]
    fn prefixes_are_stripped_from_paths_with_parameters() {
        let strip = PathRewrite::new(Some("/api"), None).expect("a rewrite");
        assert_eq!(strip.apply("/api;v=1/users"), "/users");
        assert_eq!(strip.apply("/;x/api/users;id=2"), "/users;id=2");
        assert_eq!(strip.apply("/api;jsessionid=1"), "/");
        assert_eq!(strip.apply("/apix;v=1/users"), "/apix;v=1/users");
        assert_eq!(strip.apply("/other;v=1"), "/other;v=1");
        let deep = PathRewrite::new(Some("/api/v1"), Some("/v2")).expect("a rewrite");
        assert_eq!(deep.apply("/api;a/v1;b/x"), "/v2/x");
        assert_eq!(deep.apply("/api;a/v2/x"), "/v2/api;a/v2/x");
        let slash = PathRewrite::new(Some("/api/"), None).expect("a rewrite");
        assert_eq!(slash.apply("/api;v=1/users"), "/users");
        assert_eq!(slash.apply("/api;v=1"), "/api;v=1");
        let root = PathRewrite::new(Some("/"), None).expect("a rewrite");
        assert_eq!(root.apply("/a;x/b"), "/a;x/b");
    }

    proptest::proptest! {
        /// Without parameters the segment walk and the plain strip agree
        /// (up to the slash that `apply` takes off either way).
        #[test]
        fn the_segment_walk_agrees_with_the_plain_strip(
            path in "(/[a-c]{0,2}){1,4}",
            strip in "(/[a-c]{1,2}){1,2}/?",
        ) {
            let plain = path.strip_prefix(strip.as_str()).filter(|after| {
                after.is_empty() || after.starts_with('/') || strip.ends_with('/')
            });
            // The walk passes over empty segments; compare only paths without them.
            proptest::prop_assume!(!path.contains("//"));
            let walked = strip_segments(&path, &strip).map(|r| r.trim_start_matches('/'));
            proptest::prop_assert_eq!(walked, plain.map(|r| r.trim_start_matches('/')));
        }
    }
}
