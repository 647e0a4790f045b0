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
    pub(crate) fn apply(&self, path: &str) -> String {
        let mut rest = path;
        if let Some(strip) = &self.strip
            && let Some(after) = path.strip_prefix(strip.as_str())
            && (after.is_empty() || after.starts_with('/') || strip.ends_with('/'))
        {
            rest = after;
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
}
