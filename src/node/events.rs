//! What the loop tells consumers: a change to a shared family, peers coming and going,
//! catch-ups. The module publishes each [`Event`] as a Stasis message on Asterisk's
//! system topic (AMI clients get it as an AMI event); the simulator records them.
//!
//! A batch of more than `event_batch_limit` changes to one family (a catch-up, a bulk
//! import), or any batch of a family with `key_events = no`, gives one
//! [`Event::ChangeSummary`] instead of an event per key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::eid::Eid;
use crate::engine::family::astdb_family;
use crate::engine::{CatchUpEnd, ChangeCount, Changed, Mode, Source};

/// Where the loop's events go.
pub trait EventSink: Send {
    fn publish(&mut self, event: Event);
}

/// A sink that drops everything (events turned off).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn publish(&mut self, _event: Event) {}
}

/// Which Stasis message type carries an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClass {
    /// Key changes and their summaries.
    Change,
    /// Peers, catch-ups and families shared or unshared.
    Node,
}

/// One event, with the fields its AMI form and its JSON carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    KeyChange {
        /// The AstDB family the key lives in (`<EID>/family` for another node's copy).
        family: String,
        key: String,
        value: Option<String>,
        mode: Mode,
        shared_family: String,
        source: Source,
        /// The node it came from (a peer source).
        from_node: Option<u32>,
        origin_node: Option<u32>,
        origin_eid: Eid,
        version_time: u64,
        version_counter: u16,
    },
    ChangeSummary {
        shared_family: String,
        mode: Mode,
        source: Source,
        from_node: Option<u32>,
        puts: u64,
        deletes: u64,
        /// The family's key events are off (else the batch was large).
        key_events_off: bool,
    },
    PeerUp {
        node: u32,
        eid: Eid,
        protocol: Option<u8>,
    },
    PeerDown {
        node: Option<u32>,
        eid: Eid,
    },
    PeerRefused {
        /// "node 3", or the address before the peer said who it is.
        peer: String,
        node: Option<u32>,
        cause: String,
        detail: String,
    },
    CatchupStart {
        shared_family: String,
        node: u32,
        eid: Eid,
    },
    CatchupEnd {
        shared_family: String,
        node: u32,
        eid: Eid,
        received: u64,
        deleted: u64,
        duration_ms: u64,
        ended: CatchUpEnd,
    },
    FamilyShared {
        family: String,
        mode: Mode,
    },
    FamilyUnshared {
        family: String,
    },
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Dialplan => "dialplan",
        Source::Local => "local",
        Source::Peer(_) => "peer",
    }
}

impl Event {
    /// The AMI event name (also the JSON `type`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::KeyChange { .. } => "AstDBClusterKeyChange",
            Event::ChangeSummary { .. } => "AstDBClusterChangeSummary",
            Event::PeerUp { .. } => "AstDBClusterPeerUp",
            Event::PeerDown { .. } => "AstDBClusterPeerDown",
            Event::PeerRefused { .. } => "AstDBClusterPeerRefused",
            Event::CatchupStart { .. } => "AstDBClusterCatchupStart",
            Event::CatchupEnd { .. } => "AstDBClusterCatchupEnd",
            Event::FamilyShared { .. } => "AstDBClusterFamilyShared",
            Event::FamilyUnshared { .. } => "AstDBClusterFamilyUnshared",
        }
    }

    pub fn class(&self) -> EventClass {
        match self {
            Event::KeyChange { .. } | Event::ChangeSummary { .. } => EventClass::Change,
            _ => EventClass::Node,
        }
    }

    /// Every field: its AMI name, its JSON name and its value (null: not given).
    fn table(&self) -> Vec<Field> {
        let eid = |e: &Eid| Value::from(e.to_string());
        let text = |t: &str| Value::from(t);
        match self {
            Event::KeyChange {
                family,
                key,
                value,
                mode,
                shared_family,
                source,
                from_node,
                origin_node,
                origin_eid,
                version_time,
                version_counter,
            } => vec![
                ("Family", "family", text(family)),
                ("Key", "key", text(key)),
                ("Val", "val", value.as_deref().map_or(Value::Null, text)),
                (
                    "Operation",
                    "operation",
                    text(if value.is_some() { "put" } else { "delete" }),
                ),
                ("Mode", "mode", text(&mode.to_string())),
                ("SharedFamily", "shared_family", text(shared_family)),
                ("Source", "source", text(source_name(*source))),
                ("FromNode", "from_node", Value::from(*from_node)),
                ("OriginNode", "origin_node", Value::from(*origin_node)),
                ("OriginEID", "origin_eid", eid(origin_eid)),
                ("VersionTime", "version_time", Value::from(*version_time)),
                (
                    "VersionCounter",
                    "version_counter",
                    Value::from(*version_counter),
                ),
            ],
            Event::ChangeSummary {
                shared_family,
                mode,
                source,
                from_node,
                puts,
                deletes,
                key_events_off,
            } => vec![
                ("SharedFamily", "shared_family", text(shared_family)),
                ("Mode", "mode", text(&mode.to_string())),
                ("Source", "source", text(source_name(*source))),
                ("FromNode", "from_node", Value::from(*from_node)),
                ("Puts", "puts", Value::from(*puts)),
                ("Deletes", "deletes", Value::from(*deletes)),
                ("Changes", "changes", Value::from(puts + deletes)),
                (
                    "Reason",
                    "reason",
                    text(if *key_events_off {
                        "key_events_off"
                    } else {
                        "batch"
                    }),
                ),
            ],
            Event::PeerUp {
                node,
                eid: peer,
                protocol,
            } => vec![
                ("Node", "node", Value::from(*node)),
                ("EID", "peer_eid", eid(peer)),
                ("Protocol", "protocol", Value::from(*protocol)),
            ],
            Event::PeerDown { node, eid: peer } => vec![
                ("Node", "node", Value::from(*node)),
                ("EID", "peer_eid", eid(peer)),
            ],
            Event::PeerRefused {
                peer,
                node,
                cause,
                detail,
            } => vec![
                ("Peer", "peer", text(peer)),
                ("Node", "node", Value::from(*node)),
                ("Cause", "cause", text(cause)),
                ("Detail", "detail", text(detail)),
            ],
            Event::CatchupStart {
                shared_family,
                node,
                eid: peer,
            } => vec![
                ("SharedFamily", "shared_family", text(shared_family)),
                ("Node", "node", Value::from(*node)),
                ("EID", "peer_eid", eid(peer)),
            ],
            Event::CatchupEnd {
                shared_family,
                node,
                eid: peer,
                received,
                deleted,
                duration_ms,
                ended,
            } => vec![
                ("SharedFamily", "shared_family", text(shared_family)),
                ("Node", "node", Value::from(*node)),
                ("EID", "peer_eid", eid(peer)),
                ("Received", "received", Value::from(*received)),
                ("Deleted", "deleted", Value::from(*deleted)),
                ("DurationMs", "duration_ms", Value::from(*duration_ms)),
                ("Result", "result", text(ended.as_str())),
            ],
            Event::FamilyShared { family, mode } => vec![
                ("Family", "family", text(family)),
                ("Mode", "mode", text(&mode.to_string())),
            ],
            Event::FamilyUnshared { family } => vec![("Family", "family", text(family))],
        }
    }

    /// The AMI body: `Name: value` lines, each ended by CR LF.
    pub fn ami(&self) -> String {
        ami_of(&self.table())
    }

    /// The JSON form, naming this node (`eid`) as its sender.
    pub fn json(&self, eid: Eid) -> String {
        json_of(self.name(), eid, self.table())
    }
}

/// One field of an event: its AMI name, its JSON name and its value (null: not given).
type Field = (&'static str, &'static str, Value);

/// The AMI body of an event's fields (see [`ami_field`]); a field with no value (or an
/// empty one) is left out.
fn ami_of(table: &[Field]) -> String {
    let mut body = String::new();
    for (name, _, v) in table {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !text.is_empty() {
            ami_field(&mut body, name, &text);
        }
    }
    body
}

/// Appends one AMI field, `name: value` and CR LF. Line breaks inside the value (AstDB
/// allows them) become spaces: they would end the field.
pub fn ami_field(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "{name}: ");
    out.extend(
        value
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
    );
    out.push_str("\r\n");
}

/// The JSON form of event `name`'s fields (every field, null when not given), with the
/// event as `type` and its sender as `eid`.
fn json_of(name: &str, eid: Eid, table: Vec<Field>) -> String {
    let mut map = serde_json::Map::new();
    map.insert("type".into(), Value::from(name));
    map.insert("eid".into(), Value::from(eid.to_string()));
    for (_, key, v) in table {
        map.insert(key.into(), v);
    }
    Value::Object(map).to_string()
}

/// How the loop turns a batch's changes into events.
#[derive(Clone, Copy, Debug)]
pub struct EventPolicy {
    pub enabled: bool,
    pub batch_limit: usize,
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            enabled: true,
            batch_limit: crate::config::DEFAULT_EVENT_BATCH_LIMIT,
        }
    }
}

/// The events for one executed batch's `changes`: per (family, source), an event per
/// key, or one summary when there are more than `limit`, some were only `counted` (the
/// engine counts a message of more than `limit` changes) or the family's key events are
/// off (`key_events` says, by shared family). `node_of` names an EID's node and
/// `local` is this node (whose own copies of a unique family live under the plain
/// family name).
pub fn change_events(
    changes: Vec<Changed>,
    counted: Vec<ChangeCount>,
    limit: usize,
    key_events: &dyn Fn(&str) -> bool,
    node_of: &dyn Fn(Eid) -> Option<u32>,
    local: Eid,
) -> Vec<Event> {
    let mut counts: BTreeMap<(&str, Source), (u64, u64)> = BTreeMap::new();
    for c in &changes {
        let e = counts.entry((&c.family, c.source)).or_default();
        if c.value.is_some() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for c in &counted {
        let e = counts.entry((&c.family, c.source)).or_default();
        e.0 += c.puts;
        e.1 += c.deletes;
    }
    let mut events = Vec::new();
    let mut summarised: Vec<(String, Source)> = Vec::new();
    for (&(family, source), &(puts, deletes)) in &counts {
        let off = !key_events(family);
        let some_counted = counted
            .iter()
            .any(|c| &*c.family == family && c.source == source);
        if off || some_counted || (puts + deletes) as usize > limit {
            let mode = changes
                .iter()
                .find(|c| &*c.family == family)
                .map(|c| c.mode)
                .or_else(|| {
                    counted
                        .iter()
                        .find(|c| &*c.family == family)
                        .map(|c| c.mode)
                })
                .unwrap_or(Mode::Global);
            events.push(Event::ChangeSummary {
                shared_family: family.to_string(),
                mode,
                source,
                from_node: peer_node(source, node_of),
                puts,
                deletes,
                key_events_off: off,
            });
            summarised.push((family.to_string(), source));
        }
    }
    if summarised.len() == counts.len() {
        return events;
    }
    drop(counts);
    for c in changes {
        if summarised
            .iter()
            .any(|(f, s)| **f == *c.family && *s == c.source)
        {
            continue;
        }
        let family = astdb_family(&c.family, c.owner, local);
        events.push(Event::KeyChange {
            family,
            key: c.key.to_string(),
            value: c.value.map(|v| v.to_string()),
            mode: c.mode,
            shared_family: c.family.to_string(),
            source: c.source,
            from_node: peer_node(c.source, node_of),
            origin_node: node_of(c.version.origin),
            origin_eid: c.version.origin,
            version_time: c.version.hlc.wall_ms(),
            version_counter: c.version.hlc.counter(),
        });
    }
    events
}

fn peer_node(source: Source, node_of: &dyn Fn(Eid) -> Option<u32>) -> Option<u32> {
    match source {
        Source::Peer(eid) => node_of(eid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Hlc, Version};
    use std::sync::Arc;

    fn eid(n: u8) -> Eid {
        Eid([2, 0, 0, 0, 0, n])
    }

    fn change(family: &str, key: &str, value: Option<&str>, source: Source) -> Changed {
        Changed {
            family: Arc::from(family),
            mode: Mode::Global,
            owner: None,
            key: Arc::from(key),
            value: value.map(Arc::from),
            version: Version::new(Hlc::from_parts(1_700_000_000_000, 3), eid(1)),
            source,
        }
    }

    fn node_of(e: Eid) -> Option<u32> {
        Some(u32::from(e.0[5]))
    }

    #[test]
    fn a_small_batch_gives_an_event_per_key_with_amis_astdb_naming() {
        let events = change_events(
            vec![
                change("blacklist", "5551234", Some("spam"), Source::Peer(eid(1))),
                change("blacklist", "5550000", None, Source::Peer(eid(1))),
            ],
            Vec::new(),
            100,
            &|_| true,
            &node_of,
            eid(2),
        );
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].ami(),
            "Family: blacklist\r\nKey: 5551234\r\nVal: spam\r\nOperation: put\r\nMode: global\r\n\
             SharedFamily: blacklist\r\nSource: peer\r\nFromNode: 1\r\nOriginNode: 1\r\n\
             OriginEID: 02:00:00:00:00:01\r\nVersionTime: 1700000000000\r\nVersionCounter: 3\r\n"
        );
        assert!(!events[1].ami().contains("Val:"), "a delete has no value");
        assert!(events[1].ami().contains("Operation: delete"));
        let json: Value = serde_json::from_str(&events[1].json(eid(2))).unwrap();
        assert_eq!(json["type"], "AstDBClusterKeyChange");
        assert_eq!(json["val"], Value::Null);
        assert_eq!(json["eid"], "02:00:00:00:00:02");
        assert_eq!(json["version_counter"], 3);
        assert_eq!(json["version_time"], 1_700_000_000_000u64);
    }

    #[test]
    fn a_batch_over_the_limit_or_with_key_events_off_gives_one_summary() {
        let many: Vec<Changed> = (0..5)
            .map(|i| change("big", &i.to_string(), Some("v"), Source::Local))
            .chain([change("quiet", "k", None, Source::Dialplan)])
            .chain([change("small", "k", Some("v"), Source::Dialplan)])
            .collect();
        let counted = vec![ChangeCount {
            family: "catchup".into(),
            mode: Mode::Unique,
            source: Source::Peer(eid(1)),
            puts: 2,
            deletes: 1,
        }];
        let events = change_events(many, counted, 4, &|f| f != "quiet", &node_of, eid(2));
        let names: Vec<&str> = events.iter().map(Event::name).collect();
        assert_eq!(
            names,
            [
                "AstDBClusterChangeSummary",
                "AstDBClusterChangeSummary",
                "AstDBClusterChangeSummary",
                "AstDBClusterKeyChange"
            ]
        );
        assert!(events[0]
            .ami()
            .contains("Puts: 5\r\nDeletes: 0\r\nChanges: 5\r\nReason: batch"));
        // A large message's changes, only counted by the engine: a summary even though
        // there are fewer than the limit of them.
        assert!(events[1]
            .ami()
            .contains("SharedFamily: catchup\r\nMode: unique\r\n"));
        assert!(events[1]
            .ami()
            .contains("Puts: 2\r\nDeletes: 1\r\nChanges: 3\r\nReason: batch"));
        assert!(events[2].ami().contains("SharedFamily: quiet\r\n"));
        assert!(events[2].ami().contains("Reason: key_events_off"));
    }

    #[test]
    fn another_nodes_unique_copy_is_named_under_its_eid() {
        let mut c = change("queues", "agent1", Some("busy"), Source::Peer(eid(1)));
        c.mode = Mode::Unique;
        c.owner = Some(eid(1));
        let mut own = c.clone();
        own.owner = Some(eid(2));
        own.source = Source::Dialplan;
        let events = change_events(vec![c, own], Vec::new(), 100, &|_| true, &node_of, eid(2));
        assert!(events[0]
            .ami()
            .starts_with("Family: 02:00:00:00:00:01/queues\r\nKey: agent1\r\n"));
        assert!(events[1].ami().starts_with("Family: queues\r\n"));
    }

    #[test]
    fn a_line_break_in_a_value_cannot_end_the_ami_field() {
        let events = change_events(
            vec![change("f", "k", Some("a\r\nEvent: Fake"), Source::Local)],
            Vec::new(),
            100,
            &|_| true,
            &node_of,
            eid(2),
        );
        assert!(events[0].ami().contains("Val: a  Event: Fake\r\n"));
    }
}
