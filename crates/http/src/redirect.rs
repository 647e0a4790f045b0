//! A rule's `redirect`: the request's own URL with the configured parts
//! replaced, sent back as `Location`. Pure: the parts in, the header out.

use http::{HeaderValue, StatusCode};

/// A rule's `redirect`, ready to answer with.
#[derive(Debug)]
pub(crate) struct Redirect {
    scheme: Option<&'static str>,
    host: Option<String>,
    port: Option<u16>,
    pub(crate) status: StatusCode,
}

impl Redirect {
    pub(crate) fn new(cfg: &weir_config::Redirect) -> Redirect {
        Redirect {
            scheme: match cfg.scheme.as_deref() {
                Some("https") => Some("https"),
                Some(_) => Some("http"),
                None => None,
            },
            host: cfg.host.clone(),
            port: cfg.port,
            status: StatusCode::from_u16(cfg.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
        }
    }

    /// Where a request that came over `proto` for `host` (its name or
    /// bracketed address, without the port) at `target` (path and query)
    /// is sent: `None` when it named no host and the redirect gives none.
    /// Without a configured port the URL has none: the scheme's own.
    pub(crate) fn location(
        &self,
        proto: &'static str,
        host: Option<&str>,
        target: &str,
    ) -> Option<HeaderValue> {
        let scheme = self.scheme.unwrap_or(proto);
        let host = self.host.as_deref().or(host).filter(|h| !h.is_empty())?;
        let mut url = String::with_capacity(scheme.len() + host.len() + target.len() + 10);
        url.push_str(scheme);
        url.push_str("://");
        url.push_str(host);
        if let Some(port) = self.port {
            let default = if scheme == "https" { 443 } else { 80 };
            if port != default {
                url.push(':');
                url.push_str(&port.to_string());
            }
        }
        url.push_str(if target.is_empty() { "/" } else { target });
        HeaderValue::from_str(&url).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect::new(&weir_config::Redirect {
            scheme: scheme.map(str::to_owned),
            host: host.map(str::to_owned),
            port,
            status: 308,
        })
    }

    #[test]
    fn the_request_url_with_the_configured_parts_replaced() {
        let at = |r: &Redirect, proto, host, target| {
            r.location(proto, host, target)
                .map(|v| v.to_str().expect("text").to_owned())
        };
        let https = redirect(Some("https"), None, None);
        assert_eq!(https.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            at(&https, "http", Some("app.example"), "/a/b?x=1&y").as_deref(),
            Some("https://app.example/a/b?x=1&y")
        );
        assert_eq!(
            at(&https, "http", Some("[::1]"), "").as_deref(),
            Some("https://[::1]/")
        );
        // No host asked for and none configured: nowhere to send it.
        assert_eq!(at(&https, "http", None, "/"), None);
        // A port that is the scheme's own is left out; another is written.
        let moved = redirect(None, Some("new.example"), Some(443));
        assert_eq!(
            at(&moved, "https", Some("old.example"), "/x").as_deref(),
            Some("https://new.example/x")
        );
        assert_eq!(
            at(&moved, "http", Some("old.example"), "/x").as_deref(),
            Some("http://new.example:443/x")
        );
        let port = redirect(Some("https"), None, Some(8443));
        assert_eq!(
            at(&port, "http", Some("app.example"), "/").as_deref(),
            Some("https://app.example:8443/")
        );
    }
}
