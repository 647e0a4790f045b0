//! A header value with variables, as an operator writes it in
//! `request_headers` and `response_headers`: `${name}` stands for a fact of
//! the request (`X-Real-IP = "${client_ip}"`), `$$` for one `$`, and any
//! other `$` for itself, so fixed values such as a JSON `Report-To` read as
//! they are written.
//!
//! [`parse`] turns the text into [`Piece`]s once, at load; filling them in
//! per request is the caller's.

use std::fmt;

/// A fact of the request (or of its answer) a header value can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address, the PROXY protocol's when there was one.
    ClientIp,
    /// The client's port, likewise.
    ClientPort,
    /// The address the client connected to (the PROXY protocol's
    /// destination when there was one).
    ServerIp,
    /// Its port, likewise.
    ServerPort,
    /// The request's `X-Request-Id` (kept from a trusted source, else weir's).
    RequestId,
    /// The host the client asked for, as it came (`:authority` or `Host`).
    Host,
    /// `http` or `https`: how the client reached weir.
    Scheme,
    /// The request's method.
    Method,
    /// `HTTP/1.1` or `HTTP/2` (or `HTTP/1.0`): the client's protocol.
    Protocol,
    /// The names of the listener, the route and the matched rule.
    Listener,
    Route,
    Rule,
    /// The name of the backend that answered: only in an answer's headers.
    Backend,
}

impl Var {
    /// Every variable, by the name written between `${` and `}`.
    pub const ALL: [(&'static str, Var); 13] = [
        ("client_ip", Var::ClientIp),
        ("client_port", Var::ClientPort),
        ("server_ip", Var::ServerIp),
        ("server_port", Var::ServerPort),
        ("request_id", Var::RequestId),
        ("host", Var::Host),
        ("scheme", Var::Scheme),
        ("method", Var::Method),
        ("protocol", Var::Protocol),
        ("listener", Var::Listener),
        ("route", Var::Route),
        ("rule", Var::Rule),
        ("backend", Var::Backend),
    ];

    /// The name written between `${` and `}`.
    pub fn name(self) -> &'static str {
        Var::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("", |(n, _)| n)
    }

    fn by_name(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// A run of fixed text, or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// Why a value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `${` at this byte offset has no `}`.
    Unclosed(usize),
    /// `${name}` names no variable.
    Unknown(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unclosed(at) => {
                write!(
                    f,
                    "the `${{` at byte {at} has no closing `}}` (write `$$` for a `$`)"
                )
            }
            TemplateError::Unknown(name) => {
                let known: Vec<&str> = Var::ALL.iter().map(|(n, _)| *n).collect();
                write!(
                    f,
                    "`${{{name}}}` is not a variable (known: {}; write `$$` for a `$`)",
                    known.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for TemplateError {}

/// The pieces of `text`, adjacent text joined: none for an empty value,
/// one `Text` for a value without variables.
pub fn parse(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            literal.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(TemplateError::Unclosed(text.len() - rest.len() + i));
            };
            let name = &inner[..end];
            let var = Var::by_name(name).ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(var));
            rest = &inner[end + 1..];
        } else {
            literal.push('$');
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

/// `pieces` written back as text that [`parse`] reads as them.
pub fn render(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(&t.replace('$', "$$")),
            Piece::Var(v) => {
                out.push_str("${");
                out.push_str(v.name());
                out.push('}');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_text_and_dollars() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("fixed"), Ok(vec![Piece::Text("fixed".into())]));
        assert_eq!(parse("${client_ip}"), Ok(vec![Piece::Var(Var::ClientIp)]));
        assert_eq!(
            parse("for=${client_ip}:${client_port}; id=${request_id}"),
            Ok(vec![
                Piece::Text("for=".into()),
                Piece::Var(Var::ClientIp),
                Piece::Text(":".into()),
                Piece::Var(Var::ClientPort),
                Piece::Text("; id=".into()),
                Piece::Var(Var::RequestId),
            ])
        );
        // `$$` is one `$`; a lone `$` is itself; braces alone are text.
        assert_eq!(
            parse("$$5 and $x {\"group\":\"a\"} $$${host}$"),
            Ok(vec![
                Piece::Text("$5 and $x {\"group\":\"a\"} $".into()),
                Piece::Var(Var::Host),
                Piece::Text("$".into()),
            ])
        );
        assert_eq!(parse("$${host}"), Ok(vec![Piece::Text("${host}".into())]));
        // Every variable reads back by its name.
        for (name, var) in Var::ALL {
            assert_eq!(parse(&format!("${{{name}}}")), Ok(vec![Piece::Var(var)]));
            assert_eq!(var.name(), name);
        }
    }

    #[test]
    fn unknown_and_unclosed_variables_are_errors() {
        assert_eq!(
            parse("a ${nope} b"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(parse("${}"), Err(TemplateError::Unknown(String::new())));
        assert_eq!(parse("ab${host"), Err(TemplateError::Unclosed(2)));
        assert_eq!(parse("$$${"), Err(TemplateError::Unclosed(2)));
        let message = parse("${Host}")
            .expect_err("names are lower-case")
            .to_string();
        assert!(message.contains("`${Host}` is not a variable"), "{message}");
        assert!(message.contains("client_ip"), "{message}");
    }

    #[test]
    fn render_reads_back_as_the_same_pieces() {
        for text in [
            "",
            "a$b",
            "$$",
            "x${route}y${rule}$$",
            "${backend}${method}",
        ] {
            let pieces = parse(text).expect("valid");
            assert_eq!(parse(&render(&pieces)), Ok(pieces), "{text}");
        }
        for (name, var) in Var::ALL {
            assert_eq!(var.name(), name);
            assert_eq!(parse(&format!("${{{name}}}")), Ok(vec![Piece::Var(var)]));
        }
    }
}
