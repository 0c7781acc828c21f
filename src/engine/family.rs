//! Shared families: which AstDB families are replicated, and how.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::eid::{looks_like_eid, Eid};

/// How a family's key space is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One key space across the cluster.
    Global,
    /// Each server keeps its own; copies of the others live under `/<EID>/family`.
    Unique,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Global => "global",
            Mode::Unique => "unique",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "global" => Ok(Mode::Global),
            "unique" => Ok(Mode::Unique),
            _ => Err(format!(
                "'{s}' is not a sharing mode (want global or unique)"
            )),
        }
    }
}

/// Which nodes exchange a family.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SharingPolicy {
    /// Every node of the cluster.
    #[default]
    Broadcast,
    /// Only the listed node numbers.
    Multicast(BTreeSet<u32>),
}

impl SharingPolicy {
    /// Whether the node numbered `node` takes part in this family.
    pub(crate) fn includes(&self, node: u32) -> bool {
        match self {
            SharingPolicy::Broadcast => true,
            SharingPolicy::Multicast(nodes) => nodes.contains(&node),
        }
    }
}

impl fmt::Display for SharingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharingPolicy::Broadcast => f.write_str("broadcast"),
            SharingPolicy::Multicast(nodes) => {
                let list: Vec<String> = nodes.iter().map(u32::to_string).collect();
                write!(f, "multicast({})", list.join(","))
            }
        }
    }
}

/// Whether this node may publish changes to a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Reads and writes.
    #[default]
    Rw,
    /// Receives only: a listener or hot backup.
    Ro,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Rw => "rw",
            SyncMode::Ro => "ro",
        })
    }
}

impl FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rw" => Ok(SyncMode::Rw),
            "ro" => Ok(SyncMode::Ro),
            _ => Err(format!("'{s}' is not a sync mode (want rw or ro)")),
        }
    }
}

/// Who asked for a family to be shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `type = family` section of astdb_cluster.conf.
    Preset,
    /// DB_SHARED() in the dialplan or `database shared put` on the CLI.
    Dialplan,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Preset => "preset",
            Origin::Dialplan => "dialplan",
        })
    }
}

impl FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "preset" => Ok(Origin::Preset),
            "dialplan" => Ok(Origin::Dialplan),
            _ => Err(format!("'{s}' is not a family origin")),
        }
    }
}

/// Default `sync_interval` in milliseconds for families shared without a preset.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 5000;

/// The longest family name accepted; AstDB keys are short in practice.
pub(crate) const MAX_FAMILY_LEN: usize = 255;

/// A family marked shared, with its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFamily {
    pub name: String,
    pub mode: Mode,
    pub policy: SharingPolicy,
    pub sync_interval_ms: u64,
    pub sync_mode: SyncMode,
    pub origin: Origin,
    /// An event per changed key (else only summary events).
    pub key_events: bool,
}

impl SharedFamily {
    /// A family shared from the dialplan or CLI: broadcast, read-write, default interval.
    pub fn from_dialplan(name: &str, mode: Mode) -> Self {
        SharedFamily {
            name: name.to_string(),
            mode,
            policy: SharingPolicy::Broadcast,
            sync_interval_ms: DEFAULT_SYNC_INTERVAL_MS,
            sync_mode: SyncMode::Rw,
            origin: Origin::Dialplan,
            key_events: true,
        }
    }
}

/// The AstDB family that holds `owner`'s items of shared family `family` on node `local`:
/// the family itself for a global family or this node's own unique items, and
/// `<EID>/family` for another node's copies.
pub fn astdb_family(family: &str, owner: Option<Eid>, local: Eid) -> String {
    match owner {
        Some(owner) if owner != local => format!("{owner}/{family}"),
        _ => family.to_string(),
    }
}

/// Checks that `name` can be a shared family: the reason names what is wrong.
/// The leading `/`-separated parts of an AstDB family, shortest first, each with what
/// lies below it: `a/b/c` gives (`a`, `b/c`), (`a/b`, `c`), (`a/b/c`, ``); slashes at
/// either end are ignored. A shared family covers an AstDB family when its name is one
/// of these parts (the longest such, when shared families nest).
pub fn leading_parts(astdb_family: &str) -> impl Iterator<Item = (&str, &str)> {
    let path = astdb_family.trim_matches('/');
    path.match_indices('/')
        .map(|(i, _)| i)
        .chain(std::iter::once(path.len()))
        .map(move |i| (&path[..i], path.get(i + 1..).unwrap_or("")))
}

pub fn validate_family_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("family name is empty".into());
    }
    if name.len() > MAX_FAMILY_LEN {
        return Err(format!("family name is longer than {MAX_FAMILY_LEN} bytes"));
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(format!(
            "family '{name}' has an empty path segment (no leading, trailing or double '/')"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("family '{name}' contains the character {c:?}"));
    }
    if name.split('/').next().is_some_and(looks_like_eid) {
        return Err(format!("family '{name}' starts with an entity ID; that space holds other servers' unique copies"));
    }
    Ok(())
}

/// The set of shared families on this node.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    families: BTreeMap<String, SharedFamily>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares a family (or replaces its settings); returns what it replaced.
    pub fn share(&mut self, family: SharedFamily) -> Option<SharedFamily> {
        self.families.insert(family.name.clone(), family)
    }

    /// Stops sharing `name`; the data stays.
    pub fn unshare(&mut self, name: &str) -> Option<SharedFamily> {
        self.families.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&SharedFamily> {
        self.families.get(name)
    }

    /// The families, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &SharedFamily> {
        self.families.values()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// The shared family that covers the AstDB family `astdb_family`: the longest shared
    /// name equal to it or to one of its leading `/`-separated parts.
    pub fn covering(&self, astdb_family: &str) -> Option<&SharedFamily> {
        leading_parts(astdb_family)
            .filter_map(|(part, _)| self.families.get(part))
            .last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_a_family_covers_its_whole_subtree() {
        let mut reg = Registry::new();
        reg.share(SharedFamily::from_dialplan("foo", Mode::Global));
        assert_eq!(reg.covering("foo").unwrap().name, "foo");
        assert_eq!(reg.covering("foo/sub/deeper").unwrap().name, "foo");
        assert!(reg.covering("foobar").is_none());
        assert!(reg.covering("bar/foo").is_none());
    }

    #[test]
    fn the_most_specific_shared_family_wins() {
        let mut reg = Registry::new();
        reg.share(SharedFamily::from_dialplan("foo", Mode::Global));
        reg.share(SharedFamily::from_dialplan("foo/sub", Mode::Unique));
        assert_eq!(reg.covering("foo/sub/x").unwrap().mode, Mode::Unique);
        assert_eq!(reg.covering("foo/other").unwrap().mode, Mode::Global);
    }

    #[test]
    fn bad_family_names_are_refused_with_a_reason() {
        assert!(validate_family_name("blacklist").is_ok());
        assert!(validate_family_name("queue/state").is_ok());
        for bad in [
            "",
            "/foo",
            "foo/",
            "a//b",
            "has space",
            "02:00:00:00:00:01/foo",
        ] {
            assert!(validate_family_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_family_name(&"x".repeat(300)).is_err());
    }

    #[test]
    fn modes_parse_case_insensitively_and_print_in_lower_case() {
        assert_eq!("GLOBAL".parse::<Mode>().unwrap(), Mode::Global);
        assert_eq!(Mode::Unique.to_string(), "unique");
        assert!("sideways".parse::<Mode>().unwrap_err().contains("sideways"));
    }
}
