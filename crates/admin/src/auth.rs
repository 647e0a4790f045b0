//! The bearer token that guards the control API's mutations (`admin.token_file`).
//! A client sends it as `authorization: Bearer <token>` metadata.

use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataMap;

/// Why a call that needs the token was refused. Each is a label value of
/// `weir_admin_auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer ...` metadata.
    #[error("this weir needs a token for changes: set WEIR_TOKEN")]
    Missing,
    /// A bearer token that is not the configured one.
    #[error("the token is wrong")]
    Wrong,
}

impl AuthError {
    pub const ALL: [AuthError; 2] = [Self::Missing, Self::Wrong];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Wrong => "wrong_token",
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> tonic::Status {
        tonic::Status::unauthenticated(e.to_string())
    }
}

/// Checks the bearer token of a call against `expected`; `None` means no token
/// is configured and every call passes.
pub fn check(metadata: &MetadataMap, expected: Option<&str>) -> Result<(), AuthError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let sent = metadata
        .get("authorization")
        .and_then(|v| bearer(v.as_bytes()))
        .ok_or(AuthError::Missing)?;
    // `ct_eq` on slices of different lengths is false without looking at the
    // bytes, so a timing difference tells at most the token's length.
    if bool::from(sent.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// The token of a `Bearer <token>` value (the scheme is case-insensitive, as
/// HTTP auth schemes are); `None` for another scheme or an empty token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (scheme.eq_ignore_ascii_case(SCHEME) && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("ascii value"));
        m
    }

    #[test]
    fn no_configured_token_lets_everything_through() {
        assert_eq!(check(&MetadataMap::new(), None), Ok(()));
        assert_eq!(check(&with_auth("Bearer anything"), None), Ok(()));
    }

    #[test]
    fn missing_token() {
        let expected = Some("s3cret");
        assert_eq!(
            check(&MetadataMap::new(), expected),
            Err(AuthError::Missing)
        );
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Basic s3cret",
            "Bearers3cret",
        ] {
            assert_eq!(
                check(&with_auth(value), expected),
                Err(AuthError::Missing),
                "{value:?}"
            );
        }
    }

    #[test]
    fn wrong_token() {
        let expected = Some("s3cret");
        // Same length, different length (shorter, longer, a prefix).
        for value in [
            "Bearer s3creT",
            "Bearer s3cre",
            "Bearer s3cret!",
            "Bearer s",
        ] {
            assert_eq!(
                check(&with_auth(value), expected),
                Err(AuthError::Wrong),
                "{value:?}"
            );
        }
    }

    #[test]
    fn right_token_with_either_case_of_the_scheme() {
        let expected = Some("s3cret");
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret ",
        ] {
            assert_eq!(check(&with_auth(value), expected), Ok(()), "{value:?}");
        }
    }

    #[test]
    fn errors_become_unauthenticated_statuses() {
        assert_eq!(AuthError::Missing.as_str(), "missing_token");
        assert_eq!(AuthError::Wrong.as_str(), "wrong_token");
        let s = tonic::Status::from(AuthError::Missing);
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            s.message(),
            "this weir needs a token for changes: set WEIR_TOKEN"
        );
        let s = tonic::Status::from(AuthError::Wrong);
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(s.message(), "the token is wrong");
    }
}
