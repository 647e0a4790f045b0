//! Configuration errors: a list of problems, each naming where it is.

use std::fmt;

/// One mistake in a configuration.
///
/// `path` is a key path such as `pools[1].backends[0].weight`; for a TOML
/// syntax error it is the position (`line 3, column 7`) and for a file that
/// cannot be read it is the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a key path, a `line L, column C` position or a file name.
    pub path: String,
    /// What is wrong, readable on its own (it never repeats `path`).
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was rejected: every problem found, in file order where
/// possible. Displays as one `path: message` line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.problems))]
pub struct ConfigError {
    /// In the order found; never empty.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem::new(path, message)],
        }
    }
}

struct Lines<'a>(&'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset into `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Clamp and back off to a char boundary so a bogus span cannot panic.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(text, 11), (2, 5));
        assert_eq!(line_col(text, 9999), (3, 1));
        // Inside a multi-byte char: backs off instead of panicking.
        assert_eq!(line_col(text, 8), (2, 2));
    }

    #[test]
    fn display_is_one_line_per_problem() {
        let err = ConfigError {
            problems: vec![Problem::new("a.b", "bad"), Problem::new("c[0]", "worse")],
        };
        assert_eq!(err.to_string(), "a.b: bad\nc[0]: worse");
    }
}
