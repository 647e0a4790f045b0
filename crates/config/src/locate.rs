//! Where a key path is in the file: the line and column of a key (or of the
//! deepest part of the path that exists), found in the TOML document's spans,
//! so that every problem can say where it is, as HAProxy and nginx do.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::line_col;

/// One step of a key path: a key, or an index into an array.
#[derive(Debug, PartialEq, Eq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// `pools[1].health.expect_status` -> pools, 1, health, expect_status.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            if let Ok(i) = inner[..end].parse() {
                out.push(Step::Index(i));
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

/// The 1-based line and column of `path` in `text`: of its last key when the
/// whole path exists, else of the deepest part that does. `None` when the
/// text does not parse or nothing of the path is in it.
pub(crate) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse_recoverable(text).0;
    let mut at: Option<usize> = None;
    let mut table = Some(root.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for step in steps(path) {
        let found = match step {
            Step::Key(k) => table
                .and_then(|t| t.iter().find(|(key, _)| key.get_ref() == k))
                .map(|(key, value)| (key.span().start, value)),
            // An element of an array of tables starts at its header.
            Step::Index(i) => array
                .and_then(|a| a.get(i))
                .map(|value| (value.span().start, value)),
        };
        let Some((start, value)) = found else { break };
        at = Some(start);
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    at.map(|offset| line_col(text, offset))
}

/// The key path of the last key (or array element) that starts at or before
/// byte `offset`, as validation names paths (`pools[0].backends[1].weight`),
/// and whether it is a table. Table values span only their header, so the
/// last start before the offset is the key the offset is in.
pub(crate) fn path_at(text: &str, offset: usize) -> Option<(String, bool)> {
    let root = DeTable::parse_recoverable(text).0;
    let mut entries = Vec::new();
    collect(root.get_ref(), "", &mut entries);
    entries
        .into_iter()
        .filter(|(start, _, _)| *start <= offset)
        .max_by_key(|(start, _, _)| *start)
        .map(|(_, path, table)| (path, table))
}

/// Every key and array element under `table`: (start, path, is a table).
fn collect(table: &DeTable<'_>, prefix: &str, out: &mut Vec<(usize, String, bool)>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        match value.get_ref() {
            DeValue::Table(t) => {
                out.push((key.span().start, path.clone(), true));
                collect(t, &path, out);
            }
            DeValue::Array(a) => {
                out.push((key.span().start, path.clone(), false));
                for (i, element) in a.iter().enumerate() {
                    let element_path = format!("{path}[{i}]");
                    if let DeValue::Table(t) = element.get_ref() {
                        out.push((element.span().start, element_path.clone(), true));
                        collect(t, &element_path, out);
                    }
                }
            }
            _ => out.push((key.span().start, path, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[admin]\nhttp = \"x\"\n\n[[pools]]\nname = \"a\"\n\n[[pools]]\nname = \"b\"\n  [pools.health]\n  type = \"http\"\n  expect_status = \"2xz\"\n  [[pools.backends]]\n  address = \"1\"\n  [[pools.backends]]\n  address = \"2\"\n";

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            steps("pools[1].health.expect_status"),
            [
                Step::Key("pools"),
                Step::Index(1),
                Step::Key("health"),
                Step::Key("expect_status")
            ]
        );
        assert_eq!(
            steps("listeners[0].bind[2]"),
            [
                Step::Key("listeners"),
                Step::Index(0),
                Step::Key("bind"),
                Step::Index(2)
            ]
        );
    }

    #[test]
    fn keys_are_found_on_their_lines() {
        assert_eq!(locate(TEXT, "admin.http"), Some((2, 1)));
        assert_eq!(locate(TEXT, "pools[1].name"), Some((8, 1)));
        assert_eq!(locate(TEXT, "pools[1].health.expect_status"), Some((11, 3)));
        assert_eq!(locate(TEXT, "pools[1].backends[1].address"), Some((15, 3)));
        // A missing key: the deepest part that exists.
        assert_eq!(locate(TEXT, "pools[0].backends"), locate(TEXT, "pools[0]"));
        assert_eq!(locate(TEXT, "pools[0]").map(|(line, _)| line), Some(4));
        assert_eq!(locate(TEXT, "nothing.here"), None);
        assert_eq!(locate("not = [toml", "not"), Some((1, 1)));
    }

    #[test]
    fn offsets_map_back_to_paths() {
        let at = |needle: &str| path_at(TEXT, TEXT.find(needle).unwrap_or_default());
        assert_eq!(
            at("2xz"),
            Some(("pools[1].health.expect_status".to_owned(), false))
        );
        assert_eq!(
            at("\"2\""),
            Some(("pools[1].backends[1].address".to_owned(), false))
        );
        assert_eq!(at("  type"), Some(("pools[1].health".to_owned(), true)));
    }
}
