//! "Did you mean": the closest of the accepted words to a misspelt one.

/// The candidate closest to `word` by edit distance, if it is close enough to
/// be a likely typo (at most one edit per three letters, at least one), else
/// one that `word` (three letters or more) begins, as an abbreviation.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let limit = (word.chars().count() / 3).max(1);
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
        .or_else(|| {
            (word.len() >= 3)
                .then(|| candidates.iter().find(|c| c.starts_with(&lower)).copied())
                .flatten()
        })
}

/// Levenshtein distance over characters, ASCII case folded.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let swap = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + swap).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word() {
        let keys = ["address", "name", "weight", "tier", "health", "check_port"];
        assert_eq!(closest("wieght", keys), Some("weight"));
        assert_eq!(closest("adress", keys), Some("address"));
        assert_eq!(closest("Tier", keys), Some("tier"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(
            closest("round_robbin", ["round_robin", "least_conn", "first"]),
            Some("round_robin")
        );
        assert_eq!(closest("x", ["y", "zz"]), Some("y"));
        assert_eq!(
            closest("inter", ["type", "interval", "fast_interval"]),
            Some("interval")
        );
        assert_eq!(closest("in", ["interval"]), None);
    }

    #[test]
    fn distances() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}
