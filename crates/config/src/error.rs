//! Configuration errors: a list of problems, each naming where it is: its key
//! path, and its line and column in the file when the key is in the file.

use std::fmt;

/// One mistake in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the model: a key path such as `pools[1].backends[0].weight`;
    /// `TOML` for a syntax error outside any key, or the file name for a file
    /// that cannot be read.
    pub path: String,
    /// What is wrong, readable on its own (it never repeats `path`).
    pub message: String,
    /// Where in the file (1-based line and column), when known.
    pub line: Option<(usize, usize)>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was rejected: every problem found, in file order where
/// possible. Displays as one line per problem, compiler style:
/// `weir.toml:12:3: pools[1].health.expect_status: "2xz" is not a status ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(self))]
pub struct ConfigError {
    /// In the order found; never empty.
    pub problems: Vec<Problem>,
    /// The file, when the config was read from one.
    pub file: Option<String>,
}

impl ConfigError {
    pub fn new(problems: Vec<Problem>) -> Self {
        Self {
            problems,
            file: None,
        }
    }

    pub(crate) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(vec![Problem::new(path, message)])
    }
}

struct Lines<'a>(&'a ConfigError);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match (&self.0.file, problem.line) {
                (Some(file), Some((line, column))) => write!(f, "{file}:{line}:{column}: ")?,
                (None, Some((line, column))) => write!(f, "line {line}, column {column}: ")?,
                (Some(file), None) if *file != problem.path => write!(f, "{file}: ")?,
                _ => {}
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
        let mut err = ConfigError::new(vec![
            Problem::new("a.b", "bad"),
            Problem {
                line: Some((3, 7)),
                ..Problem::new("c[0]", "worse")
            },
        ]);
        assert_eq!(err.to_string(), "a.b: bad\nline 3, column 7: c[0]: worse");
        err.file = Some("weir.toml".into());
        assert_eq!(
            err.to_string(),
            "weir.toml: a.b: bad\nweir.toml:3:7: c[0]: worse"
        );
    }
}
