//! Host lists as Slurm writes them, and host files.
//!
//! ```text
//!   node1,node2,node3          three hosts
//!   nid[001-004,007]           nid001 nid002 nid003 nid004 nid007 (width kept)
//!   a[1-2],b3                  a1 a2 b3
//!   rack[1-2]-n[1-2]           rack1-n1 rack1-n2 rack2-n1 rack2-n2
//! ```
//!
//! Commas inside brackets separate ranges; outside they separate hosts. A
//! range `lo-hi` counts up with the digits of `lo` (zero-padded when `lo`
//! has leading zeros, as Slurm does). Several bracket groups in one name
//! expand to every combination, leftmost varying slowest. Duplicates are
//! kept out: a host named twice is an error (a node cannot join a run twice).
//!
//! A host file holds one host list per line; `#` starts a comment; blank
//! lines are ignored.

use std::collections::HashSet;
use std::fmt;

/// The most hosts one expression may expand to (a typo such as
/// `n[1-100000000]` is an error, not a machine running out of memory).
pub const MAX_HOSTS: usize = 1 << 20;

/// Why a host list could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostlistError {
    /// Nothing but separators.
    Empty,
    /// A `[` without its `]`, or a `]` without its `[`.
    Unbalanced(String),
    /// A bracket group that is not a list of numbers and ranges.
    BadRange { expr: String, range: String },
    /// A range whose end is below its start.
    Backwards { expr: String, range: String },
    /// More than [`MAX_HOSTS`] hosts.
    TooMany(usize),
    /// A character that cannot be in a host name.
    BadChar { expr: String, ch: char },
    /// The same host twice.
    Duplicate(String),
    /// A host file line that is not one host list.
    BadLine { line: usize, text: String, why: String },
}

impl fmt::Display for HostlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostlistError::Empty => write!(f, "the host list names no host"),
            HostlistError::Unbalanced(e) => write!(f, "unbalanced brackets in host list {e:?}"),
            HostlistError::BadRange { expr, range } => {
                write!(f, "{range:?} in host list {expr:?} is not a number or a range such as 001-004")
            }
            HostlistError::Backwards { expr, range } => {
                write!(f, "range {range:?} in host list {expr:?} ends below its start")
            }
            HostlistError::TooMany(n) => write!(f, "host list expands to {n} hosts or more (at most {MAX_HOSTS})"),
            HostlistError::BadChar { expr, ch } => write!(f, "{ch:?} cannot be part of a host name (in {expr:?})"),
            HostlistError::Duplicate(h) => write!(f, "host {h:?} is named more than once"),
            HostlistError::BadLine { line, text, why } => write!(f, "host file line {line} ({text:?}): {why}"),
        }
    }
}

impl std::error::Error for HostlistError {}

fn host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')
}

/// Split `expr` at the commas that are outside brackets.
fn top_level_items(expr: &str) -> Result<Vec<&str>, HostlistError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in expr.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(HostlistError::Unbalanced(expr.to_owned())),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(HostlistError::Unbalanced(expr.to_owned())),
            ',' if depth == 0 => {
                items.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(HostlistError::Unbalanced(expr.to_owned()));
    }
    items.push(&expr[start..]);
    Ok(items.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect())
}

/// The numbers one bracket group stands for, as strings of the right width.
fn expand_group(expr: &str, group: &str) -> Result<Vec<String>, HostlistError> {
    let mut out = Vec::new();
    for range in group.split(',').map(str::trim) {
        let bad = || HostlistError::BadRange { expr: expr.to_owned(), range: range.to_owned() };
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        if lo.is_empty() || hi.is_empty() || !lo.bytes().chain(hi.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (a, b): (u64, u64) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
        if b < a {
            return Err(HostlistError::Backwards { expr: expr.to_owned(), range: range.to_owned() });
        }
        if b - a >= MAX_HOSTS as u64 || out.len() as u64 + (b - a) >= MAX_HOSTS as u64 {
            return Err(HostlistError::TooMany(MAX_HOSTS));
        }
        let width = if lo.len() > 1 && lo.starts_with('0') { lo.len() } else { 0 };
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

/// Expand one host name with bracket groups into every combination.
fn expand_item(expr: &str, item: &str, out: &mut Vec<String>) -> Result<(), HostlistError> {
    let mut names = vec![String::new()];
    let mut rest = item;
    while !rest.is_empty() {
        let (lit, after) = match rest.find('[') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if let Some(ch) = lit.chars().find(|c| !host_char(*c)) {
            return Err(HostlistError::BadChar { expr: expr.to_owned(), ch });
        }
        for n in &mut names {
            n.push_str(lit);
        }
        let Some(after) = after else { break };
        let close = after.find(']').ok_or_else(|| HostlistError::Unbalanced(expr.to_owned()))?;
        let nums = expand_group(expr, &after[..close])?;
        if names.len().saturating_mul(nums.len()) + out.len() > MAX_HOSTS {
            return Err(HostlistError::TooMany(MAX_HOSTS));
        }
        names = names.iter().flat_map(|n| nums.iter().map(move |x| format!("{n}{x}"))).collect();
        rest = &after[close + 1..];
    }
    out.extend(names);
    Ok(())
}

/// Expand a host list expression into host names, in order.
pub fn expand(expr: &str) -> Result<Vec<String>, HostlistError> {
    let mut out = Vec::new();
    for item in top_level_items(expr)? {
        expand_item(expr, item, &mut out)?;
    }
    if out.is_empty() {
        return Err(HostlistError::Empty);
    }
    no_duplicates(&out)?;
    Ok(out)
}

fn no_duplicates(hosts: &[String]) -> Result<(), HostlistError> {
    let mut seen = HashSet::new();
    match hosts.iter().find(|h| !seen.insert(h.as_str())) {
        Some(h) => Err(HostlistError::Duplicate(h.clone())),
        None => Ok(()),
    }
}

/// Read a host file's text: one host list per line, `#` comments.
pub fn parse_hostfile(text: &str) -> Result<Vec<String>, HostlistError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().count() > 1 {
            return Err(HostlistError::BadLine {
                line: i + 1,
                text: raw.to_owned(),
                why: "expected one host or host list per line".into(),
            });
        }
        let hosts = expand(line).map_err(|e| HostlistError::BadLine {
            line: i + 1,
            text: raw.to_owned(),
            why: e.to_string(),
        })?;
        out.extend(hosts);
    }
    if out.is_empty() {
        return Err(HostlistError::Empty);
    }
    no_duplicates(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Vec<String> {
        expand(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_lists() {
        assert_eq!(ex("node1,node2,node3"), ["node1", "node2", "node3"]);
        assert_eq!(ex(" a , b "), ["a", "b"]);
        assert_eq!(ex("10.0.0.1,10.0.0.2"), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn slurm_ranges() {
        assert_eq!(ex("nid[001-004,007]"), ["nid001", "nid002", "nid003", "nid004", "nid007"]);
        assert_eq!(ex("a[1-2],b3"), ["a1", "a2", "b3"]);
        assert_eq!(ex("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(ex("n[09-11]"), ["n09", "n10", "n11"]);
        assert_eq!(ex("n[0]"), ["n0"]);
        assert_eq!(ex("rack[1-2]-n[1-2]"), ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]);
        assert_eq!(ex("x[1,3]y"), ["x1y", "x3y"]);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(expand(""), Err(HostlistError::Empty));
        assert_eq!(expand(" , ,"), Err(HostlistError::Empty));
        assert!(matches!(expand("n[1-3"), Err(HostlistError::Unbalanced(_))));
        assert!(matches!(expand("n1-3]"), Err(HostlistError::Unbalanced(_))));
        assert!(matches!(expand("n[[1]]"), Err(HostlistError::Unbalanced(_))));
        assert!(matches!(expand("n[a-b]"), Err(HostlistError::BadRange { .. })));
        assert!(matches!(expand("n[1-]"), Err(HostlistError::BadRange { .. })));
        assert!(matches!(expand("n[]"), Err(HostlistError::BadRange { .. })));
        assert!(matches!(expand("n[5-2]"), Err(HostlistError::Backwards { .. })));
        assert!(matches!(expand("n[1-100000000]"), Err(HostlistError::TooMany(_))));
        assert!(matches!(expand("a[1-2000]-b[1-2000]"), Err(HostlistError::TooMany(_))));
        assert!(matches!(expand("a b"), Err(HostlistError::BadChar { ch: ' ', .. })));
        assert!(matches!(expand("a/b"), Err(HostlistError::BadChar { ch: '/', .. })));
        assert_eq!(expand("a,b,a"), Err(HostlistError::Duplicate("a".into())));
        assert_eq!(expand("n[1-2],n2"), Err(HostlistError::Duplicate("n2".into())));
        let msg = expand("n[5-2]").unwrap_err().to_string();
        assert!(msg.contains("5-2") && msg.contains("below"), "{msg}");
    }

    #[test]
    fn hostfiles() {
        let text = "# the cluster\nnode1\n  node2   # second\n\nnid[003-004]\n";
        assert_eq!(parse_hostfile(text).unwrap(), ["node1", "node2", "nid003", "nid004"]);
        assert_eq!(parse_hostfile("# nothing\n\n"), Err(HostlistError::Empty));
        let e = parse_hostfile("a\nb c\n").unwrap_err();
        assert!(matches!(e, HostlistError::BadLine { line: 2, .. }), "{e:?}");
        let e = parse_hostfile("a\nn[2-1]\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert_eq!(parse_hostfile("a\na\n"), Err(HostlistError::Duplicate("a".into())));
    }

    proptest::proptest! {
        /// Writing hosts with ranges and reading them back gives the hosts.
        #[test]
        fn ranges_round_trip(prefix in "[a-z]{1,6}", lo in 0u32..500, n in 1u32..40, width in 0usize..5) {
            let hi = lo + n - 1;
            let expr = format!("{prefix}[{lo:0width$}-{hi}]");
            let want: Vec<String> = (lo..=hi).map(|i| {
                let w = if width > 1 && format!("{lo:0width$}").starts_with('0') { width } else { 0 };
                format!("{prefix}{i:0w$}")
            }).collect();
            proptest::prop_assert_eq!(expand(&expr).unwrap(), want);
        }

        /// No input makes the parser panic.
        #[test]
        fn never_panics(s in "[a-c0-9\\[\\],\\- ]{0,40}") {
            let _ = expand(&s);
            let _ = parse_hostfile(&s);
        }
    }
}
