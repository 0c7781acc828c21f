//! AMI actions, mirroring the CLI: share and unshare a family, list the shared
//! families and the nodes, show the status, refresh, and show what is held for a key.
//! Their help is in the XML documentation (`manager show command AstDBClusterShare`).

use std::ffi::CStr;

use super::cli;
use super::with_runtime;
use crate::engine::family::Mode;

/// What an action reads of its request.
pub(crate) trait Request {
    /// The header's value, trimmed; empty when absent.
    fn header(&self, name: &str) -> String;
}

/// An action's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Error(String),
    Ack(String),
    /// `Response: Success` with these fields.
    Fields(Vec<(String, String)>),
    /// The list pattern of DBGetTree: an ack, one `event` per item, a `complete` event.
    List {
        message: String,
        event: &'static str,
        items: Vec<Vec<(String, String)>>,
        complete: &'static str,
    },
}

/// One registered action.
pub(crate) struct Action {
    pub name: &'static CStr,
    /// Write permission a manager user needs (manager.conf `write =`).
    pub authority: i32,
    pub run: fn(&dyn Request) -> Reply,
}

const SYSTEM: i32 = 1 << 0;
const REPORTING: i32 = 1 << 9;

pub(crate) static ACTIONS: [Action; 7] = [
    Action {
        name: c"AstDBClusterShare",
        authority: SYSTEM,
        run: share,
    },
    Action {
        name: c"AstDBClusterUnshare",
        authority: SYSTEM,
        run: unshare,
    },
    Action {
        name: c"AstDBClusterFamilies",
        authority: SYSTEM | REPORTING,
        run: families,
    },
    Action {
        name: c"AstDBClusterNodes",
        authority: SYSTEM | REPORTING,
        run: nodes,
    },
    Action {
        name: c"AstDBClusterStatus",
        authority: SYSTEM | REPORTING,
        run: status,
    },
    Action {
        name: c"AstDBClusterRefresh",
        authority: SYSTEM,
        run: refresh,
    },
    Action {
        name: c"AstDBClusterShowKey",
        authority: SYSTEM | REPORTING,
        run: show_key,
    },
];

/// A header that must be given: its value, or the error naming it.
fn required(req: &dyn Request, name: &str) -> Result<String, Reply> {
    match req.header(name) {
        v if v.is_empty() => Err(Reply::Error(format!("{name}: is required"))),
        v => Ok(v),
    }
}

/// An optional header: None when absent.
fn optional(req: &dyn Request, name: &str) -> Option<String> {
    Some(req.header(name)).filter(|v| !v.is_empty())
}

fn outcome(result: Result<String, String>) -> Reply {
    match result {
        Ok(message) => Reply::Ack(message),
        Err(why) => Reply::Error(why),
    }
}

/// A CLI column or line name as an AMI header: `Last change` -> `LastChange`.
pub(crate) fn ami_name(label: &str) -> String {
    if label == "Value" {
        return "Val".into();
    }
    label
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect()
}

fn named(header: &[&str], row: Vec<String>) -> Vec<(String, String)> {
    header.iter().map(|h| ami_name(h)).zip(row).collect()
}

fn lines(lines: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    lines.into_iter().map(|(k, v)| (ami_name(k), v)).collect()
}

fn share(req: &dyn Request) -> Reply {
    let (family, mode) = match (required(req, "Family"), required(req, "Mode")) {
        (Ok(f), Ok(m)) => (f, m),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mode = match mode.parse::<Mode>() {
        Ok(mode) => mode,
        Err(why) => return Reply::Error(format!("Mode: {why}")),
    };
    outcome(with_runtime(|rt| rt.share(&family, mode)).and_then(|r| r))
}

fn unshare(req: &dyn Request) -> Reply {
    match required(req, "Family") {
        Ok(family) => outcome(with_runtime(|rt| rt.unshare(&family)).and_then(|r| r)),
        Err(e) => e,
    }
}

fn families(req: &dyn Request) -> Reply {
    let filter = optional(req, "Family");
    match cli::family_rows(filter.as_deref()) {
        Ok(rows) => Reply::List {
            message: "Shared families will follow".into(),
            event: "AstDBClusterFamily",
            items: rows
                .into_iter()
                .map(|r| named(&cli::FAMILY_HEADER, r))
                .collect(),
            complete: "AstDBClusterFamiliesComplete",
        },
        Err(why) => Reply::Error(why),
    }
}

fn nodes(req: &dyn Request) -> Reply {
    let filter = optional(req, "Node");
    match cli::node_rows(filter.as_deref()) {
        Ok((rows, _)) => Reply::List {
            message: "Nodes will follow".into(),
            event: "AstDBClusterNode",
            items: rows
                .into_iter()
                .map(|r| named(&cli::NODE_HEADER, r))
                .collect(),
            complete: "AstDBClusterNodesComplete",
        },
        Err(why) => Reply::Error(why),
    }
}

fn status(_req: &dyn Request) -> Reply {
    match cli::status_lines() {
        Ok(l) => Reply::Fields(lines(l)),
        Err(why) => Reply::Error(why),
    }
}

fn refresh(req: &dyn Request) -> Reply {
    outcome(cli::refresh(optional(req, "Family").as_deref()))
}

fn show_key(req: &dyn Request) -> Reply {
    let (family, key) = match (required(req, "Family"), required(req, "Key")) {
        (Ok(f), Ok(k)) => (f, k),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match cli::key_view(&family, &key) {
        Ok(view) => Reply::Fields(key_fields(&key, view)),
        Err(why) => Reply::Error(why),
    }
}

/// ShowKey's fields: one value each, as the events name them (`Val` absent when AstDB
/// has no such key).
fn key_fields(key: &str, view: cli::KeyView) -> Vec<(String, String)> {
    let info = view.info;
    let mut f: Vec<(&str, String)> =
        vec![("Family", info.astdb_family.clone()), ("Key", key.into())];
    if let Some(v) = view.value {
        f.push(("Val", v));
    }
    if let Some((shared, mode, _)) = &info.shared {
        f.push(("SharedFamily", shared.clone()));
        f.push(("Mode", mode.to_string()));
    }
    match &info.held {
        Some((v, node, tombstone)) => {
            f.push(("VersionTime", v.hlc.wall_ms().to_string()));
            f.push(("VersionCounter", v.hlc.counter().to_string()));
            f.push((
                "OriginNode",
                node.map_or_else(String::new, |n| n.to_string()),
            ));
            f.push(("OriginEID", v.origin.to_string()));
            f.push(("Tombstone", if *tombstone { "yes" } else { "no" }.into()));
        }
        None => f.push(("Tombstone", "no".into())),
    }
    if info
        .shared
        .as_ref()
        .is_some_and(|(_, m, _)| *m == Mode::Unique)
    {
        // "node=EID" of every copy held, deleted ones marked.
        let copies: Vec<String> = info
            .copies
            .iter()
            .map(|(eid, node, _, tombstone)| {
                format!(
                    "{}={eid}{}",
                    node.map_or_else(String::new, |n| n.to_string()),
                    if *tombstone { " (deleted)" } else { "" }
                )
            })
            .collect();
        f.push(("Copies", copies.join(",")));
    }
    f.into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Headers(Vec<(&'static str, &'static str)>);

    impl Request for Headers {
        fn header(&self, name: &str) -> String {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or_else(String::new, |(_, v)| v.to_string())
        }
    }

    #[test]
    fn cli_labels_become_ami_header_names() {
        assert_eq!(ami_name("Last change"), "LastChange");
        assert_eq!(ami_name("Bytes in/out"), "BytesInOut");
        assert_eq!(ami_name("Entity ID"), "EntityID");
        assert_eq!(ami_name("Value"), "Val");
    }

    #[test]
    fn a_missing_or_bad_field_is_named_in_the_error() {
        assert_eq!(
            share(&Headers(vec![("Mode", "global")])),
            Reply::Error("Family: is required".into())
        );
        assert_eq!(
            share(&Headers(vec![("Family", "f")])),
            Reply::Error("Mode: is required".into())
        );
        let Reply::Error(why) = share(&Headers(vec![("Family", "f"), ("Mode", "everywhere")]))
        else {
            panic!("a bad mode is an error");
        };
        assert!(why.starts_with("Mode: "), "{why}");
        assert_eq!(
            required(&Headers(vec![("Family", "f")]), "Key"),
            Err(Reply::Error("Key: is required".into()))
        );
    }

    #[test]
    fn every_action_is_named_for_the_module() {
        for a in &ACTIONS {
            assert!(a.name.to_str().unwrap().starts_with("AstDBCluster"));
        }
    }
}
