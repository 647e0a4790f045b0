//! Sticky sessions (a pool's `sticky = { cookie = ... }`): a request whose
//! cookie names a backend of the pool goes to it while the pool could pick
//! it; an answer from another backend (a new client, or one whose backend
//! went away) sets the cookie to the backend that answered.
//!
//! The cookie carries a backend's token (a hash of its name, see
//! `core::pool::Backend::token`), so that every instance of weir with the
//! same backends reads it the same way, restarts and reloads included.

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};
use weir_core::pool::Pool;

/// The cookie of one pool, its attributes written out once.
#[derive(Debug)]
pub(crate) struct StickyCookie {
    name: Box<str>,
    /// `; Path=/; HttpOnly; SameSite=Lax` and the rest, without `Secure`.
    attributes: Box<str>,
    /// `Some(secure)` as configured; `None`: when the client came over HTTPS.
    secure: Option<bool>,
}

impl StickyCookie {
    pub(crate) fn new(s: &weir_config::Sticky) -> StickyCookie {
        use std::fmt::Write as _;
        let mut attributes = format!("; Path={}", s.path);
        if let Some(d) = &s.domain {
            let _ = write!(attributes, "; Domain={d}");
        }
        if let Some(age) = s.max_age {
            let _ = write!(attributes, "; Max-Age={}", age.as_secs());
        }
        if s.http_only {
            attributes.push_str("; HttpOnly");
        }
        let _ = write!(attributes, "; SameSite={}", s.same_site.as_str());
        StickyCookie {
            name: s.cookie.as_str().into(),
            attributes: attributes.into(),
            secure: s.secure,
        }
    }

    /// The cookie's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the request carries the cookie, whatever its value.
    pub(crate) fn carried(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(COOKIE)
            .iter()
            .any(|v| weir_wire::cookie::find(v.as_bytes(), self.name.as_bytes()).is_some())
    }

    /// The backend of `pool` the request's cookie names, if any (whether
    /// it can take the request is the pool's to say).
    pub(crate) fn named(&self, headers: &HeaderMap, pool: &Pool) -> Option<usize> {
        // HTTP/2 clients may send one `cookie` field per cookie.
        let token = headers.get_all(COOKIE).iter().find_map(|v| {
            weir_wire::cookie::find(v.as_bytes(), self.name.as_bytes())
                .and_then(weir_wire::cookie::parse_token)
        })?;
        pool.backends.iter().position(|b| b.token == token)
    }

    /// The `Set-Cookie` value sending the client back to `backend`.
    pub(crate) fn set_cookie(&self, backend: u64, https: bool) -> Option<HeaderValue> {
        let token = weir_wire::cookie::token(backend);
        let secure = if self.secure.unwrap_or(https) {
            "; Secure"
        } else {
            ""
        };
        let mut v = Vec::with_capacity(self.name.len() + 17 + self.attributes.len() + 8);
        v.extend_from_slice(self.name.as_bytes());
        v.push(b'=');
        v.extend_from_slice(&token);
        v.extend_from_slice(self.attributes.as_bytes());
        v.extend_from_slice(secure.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sticky() -> weir_config::Sticky {
        weir_config::Sticky {
            cookie: "srv".into(),
            max_age: None,
            path: "/".into(),
            domain: None,
            secure: None,
            http_only: true,
            same_site: weir_config::SameSite::Lax,
        }
    }

    #[test]
    fn the_cookie_carries_the_token_and_its_attributes() {
        let c = StickyCookie::new(&sticky());
        assert_eq!(
            c.set_cookie(0xab, false).expect("a value"),
            "srv=00000000000000ab; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            c.set_cookie(0xab, true).expect("a value"),
            "srv=00000000000000ab; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        let c = StickyCookie::new(&weir_config::Sticky {
            max_age: Some(Duration::from_secs(3600)),
            path: "/app".into(),
            domain: Some("example.com".into()),
            secure: Some(false),
            http_only: false,
            same_site: weir_config::SameSite::Strict,
            ..sticky()
        });
        assert_eq!(
            c.set_cookie(u64::MAX, true).expect("a value"),
            "srv=ffffffffffffffff; Path=/app; Domain=example.com; Max-Age=3600; SameSite=Strict"
        );
    }
}
