//! How a backend or a pool got where it is: every change of health, admin
//! state, weight or active tier is a [`Transition`] or a [`TierChange`] with a
//! time and a [`Cause`], kept in bounded histories and written to the state
//! file.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::{AdminState, Health};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Health {
        from: Health,
        to: Health,
    },
    Admin {
        from: AdminState,
        to: AdminState,
    },
    /// Operator weight override (None = the configured weight).
    Weight {
        from: Option<u32>,
        to: Option<u32>,
    },
    /// Outlier detection ejected the backend (`to`), or its ejection ended.
    Outlier {
        from: bool,
        to: bool,
    },
    /// What DNS says of a discovered backend: "absent", "tier 0 weight 10",
    /// "draining", "removed".
    Discovery {
        from: String,
        to: String,
    },
    /// An operator added or removed the backend at runtime: "absent",
    /// "10.0.0.5:5432 tier 0 weight 1", "draining", "removed".
    Runtime {
        from: String,
        to: String,
    },
}

impl Change {
    /// `(kind, from, to)` as text, the form the API and the state file use.
    /// A cleared weight override reads "configured".
    pub fn parts(&self) -> (&'static str, String, String) {
        let weight = |w: &Option<u32>| w.map_or_else(|| "configured".to_owned(), |w| w.to_string());
        match self {
            Self::Health { from, to } => {
                ("health", from.as_str().to_owned(), to.as_str().to_owned())
            }
            Self::Admin { from, to } => ("admin", from.as_str().to_owned(), to.as_str().to_owned()),
            Self::Weight { from, to } => ("weight", weight(from), weight(to)),
            Self::Outlier { from, to } => {
                let word = |e: &bool| if *e { "ejected" } else { "in" }.to_owned();
                ("outlier", word(from), word(to))
            }
            Self::Discovery { from, to } => ("discovery", from.clone(), to.clone()),
            Self::Runtime { from, to } => ("runtime", from.clone(), to.clone()),
        }
    }

    /// The inverse of [`Change::parts`]; `None` for text it never produces.
    pub fn from_parts(kind: &str, from: &str, to: &str) -> Option<Change> {
        let weight = |w: &str| -> Option<Option<u32>> {
            if w == "configured" {
                Some(None)
            } else {
                w.parse().ok().map(Some)
            }
        };
        Some(match kind {
            "health" => Change::Health {
                from: Health::parse(from)?,
                to: Health::parse(to)?,
            },
            "admin" => Change::Admin {
                from: AdminState::parse(from)?,
                to: AdminState::parse(to)?,
            },
            "weight" => Change::Weight {
                from: weight(from)?,
                to: weight(to)?,
            },
            "outlier" => {
                let word = |w: &str| match w {
                    "ejected" => Some(true),
                    "in" => Some(false),
                    _ => None,
                };
                Change::Outlier {
                    from: word(from)?,
                    to: word(to)?,
                }
            }
            "discovery" => Change::Discovery {
                from: from.to_owned(),
                to: to.to_owned(),
            },
            "runtime" => Change::Runtime {
                from: from.to_owned(),
                to: to.to_owned(),
            },
            _ => return None,
        })
    }
}

/// Why it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// An active probe; the text says what it saw ("http status 503",
    /// "connect refused", "timeout after 1s", "http status 200").
    Probe(String),
    /// A failed connect of a client connection ("connect refused").
    Passive(String),
    /// An operator action.
    Operator,
    /// A config reload; the text says what changed.
    Reload(String),
    /// DNS (a pool's `discover`); the text names the query.
    Discovery(String),
}

impl Cause {
    /// The inverse of its `Display` form (as the state file keeps it).
    pub fn parse(text: &str) -> Cause {
        if text == "operator" {
            return Cause::Operator;
        }
        for (prefix, make) in [
            ("probe: ", Cause::Probe as fn(String) -> Cause),
            ("traffic: ", Cause::Passive),
            ("reload: ", Cause::Reload),
            ("discovery: ", Cause::Discovery),
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                return make(rest.to_owned());
            }
        }
        // Text from a newer weir: keep it, as the closest kind.
        Cause::Reload(text.to_owned())
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Probe(r) => write!(f, "probe: {r}"),
            Self::Passive(r) => write!(f, "traffic: {r}"),
            Self::Operator => f.write_str("operator"),
            Self::Reload(r) => write!(f, "reload: {r}"),
            Self::Discovery(q) => write!(f, "discovery: {q}"),
        }
    }
}

/// One entry of a backend's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: SystemTime,
    pub change: Change,
    pub cause: Cause,
}

/// Transitions kept per backend unless `state.history` says otherwise.
pub const HISTORY: usize = 64;

/// A change of a pool's active tier (`None`: no tier can serve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChange {
    pub at: SystemTime,
    pub from: Option<u32>,
    pub to: Option<u32>,
    /// What made it change, in words: the backend transition that did it
    /// ("pg-a: health up -> down (probe: connect refused)"), or the start.
    pub cause: String,
}

impl TierChange {
    /// A tier as text: its number, or `none`.
    pub fn tier_text(tier: Option<u32>) -> String {
        tier.map_or_else(|| "none".to_owned(), |t| t.to_string())
    }

    /// The inverse of [`TierChange::tier_text`]; `None` for other text.
    pub fn parse_tier(text: &str) -> Option<Option<u32>> {
        if text == "none" {
            Some(None)
        } else {
            text.parse().ok().map(Some)
        }
    }
}

/// Appends to a history bounded to `cap` entries, dropping the oldest ones,
/// and returns the new entry.
pub fn record(
    history: &mut VecDeque<Transition>,
    cap: usize,
    change: Change,
    cause: Cause,
) -> Transition {
    while history.len() >= cap.max(1) {
        history.pop_front();
    }
    let t = Transition {
        at: SystemTime::now(),
        change,
        cause,
    };
    history.push_back(t.clone());
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health::*;

    #[test]
    fn change_text_round_trips() {
        for c in [
            Change::Health {
                from: Unknown,
                to: Down,
            },
            Change::Admin {
                from: AdminState::Enabled,
                to: AdminState::Disabled,
            },
            Change::Weight {
                from: None,
                to: Some(7),
            },
            Change::Weight {
                from: Some(3),
                to: None,
            },
        ] {
            let (kind, from, to) = c.parts();
            assert_eq!(Change::from_parts(kind, &from, &to), Some(c));
        }
        assert_eq!(Change::from_parts("health", "up", "sideways"), None);
        assert_eq!(Change::from_parts("tier", "0", "1"), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut h = VecDeque::new();
        for i in 0..(HISTORY as u32 + 5) {
            record(
                &mut h,
                HISTORY,
                Change::Weight {
                    from: None,
                    to: Some(i),
                },
                Cause::Operator,
            );
        }
        assert_eq!(h.len(), HISTORY);
        assert_eq!(
            h.front().map(|t| &t.change),
            Some(&Change::Weight {
                from: None,
                to: Some(5)
            })
        );
    }
}
