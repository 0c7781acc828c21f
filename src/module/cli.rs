//! CLI commands: `database shared ...` and `astdb cluster show ...`.

use std::ffi::CStr;
use std::fmt::Write as _;

use super::{now_ms, published, with_runtime};
use crate::config::Transport;
use crate::engine::family::Mode;
use crate::node::inbox::Command as LoopCommand;
use crate::node::link::PeerState;
use crate::node::unix_ms;

/// One registered command.
pub(crate) struct Command {
    pub command: &'static CStr,
    pub summary: &'static CStr,
    pub usage: &'static CStr,
}

/// What a handler tells Asterisk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success = 0,
    ShowUsage = 1,
    Failure = 2,
}

const PUT: usize = 0;
const DELETE: usize = 1;
const SHOW: usize = 2;
const REFRESH: usize = 3;
const NODES: usize = 4;
const STATUS: usize = 5;
const SHOW_KEY: usize = 6;

pub(crate) static COMMANDS: [Command; 7] = [
    Command {
        command: c"database shared put",
        summary: c"Share an AstDB family with the cluster",
        usage: c"Usage: database shared put {global|unique} <family>\n       Shares <family> and its whole subtree. global: one key space on every\n       server. unique: each server's keys are copied to the others under\n       /<EID>/<family>. Existing keys are not changed.\n",
    },
    Command {
        command: c"database shared delete",
        summary: c"Stop sharing an AstDB family",
        usage: c"Usage: database shared delete <family>\n       Stops sharing <family>. Its keys stay in AstDB.\n",
    },
    Command {
        command: c"database shared show",
        summary: c"Show shared AstDB families",
        usage: c"Usage: database shared show [<family>]\n       Lists the shared families with their mode, origin (preset or\n       dialplan), policy, sync mode and interval, key count and last change.\n",
    },
    Command {
        command: c"database shared refresh",
        summary: c"Re-read shared families and sync them with the peers",
        usage: c"Usage: database shared refresh [<family>]\n       Reads <family> (or every shared family) again now and offers\n       everything to the peers.\n",
    },
    Command {
        command: c"astdb cluster show nodes",
        summary: c"Show the cluster's nodes",
        usage: c"Usage: astdb cluster show nodes [<node>|<EID>]\n       Lists each peer: node number, address, EID, state, last seen, lag,\n       traffic and the protocol version in use.\n",
    },
    Command {
        command: c"astdb cluster show status",
        summary: c"Show this node's cluster status",
        usage: c"Usage: astdb cluster show status\n       Shows this node's EID, cluster, network state and counters.\n",
    },
    Command {
        command: c"database shared show key",
        summary: c"Show how one key of a shared family is held",
        usage: c"Usage: database shared show key <family> <key>\n       Shows the key's value, its version and when it was made, the node\n       that made it, whether a tombstone is held for it and, for a unique\n       family, which nodes' copies of it this server holds. <family> is the\n       AstDB family (<EID>/<family> for another server's copy).\n",
    },
];

/// Collects a handler's output and writes it to the CLI in one piece.
pub(crate) struct Output {
    fd: i32,
    buf: String,
}

impl Output {
    pub fn new(fd: i32) -> Self {
        Output {
            fd,
            buf: String::new(),
        }
    }

    pub fn line(&mut self, text: &str) {
        self.buf.push_str(text);
        self.buf.push('\n');
    }

    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            crate::asterisk::cli_write(self.fd, &self.buf);
            self.buf.clear();
        }
    }
}

/// Formats rows as left-aligned columns, two spaces apart, like Asterisk's tables.
fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        line.trim_end().to_string()
    };
    let mut out = vec![render(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| render(r.iter().map(String::as_str).collect())),
    );
    out
}

/// Local time as `YYYY-MM-DD HH:MM:SS`.
fn local_time(unix_ms: u64) -> String {
    crate::asterisk::local_time(unix_ms)
}

fn ago(since_ms: u64) -> String {
    let secs = now_ms().saturating_sub(since_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub(crate) fn exec(idx: usize, argv: &[String], out: &mut Output) -> Outcome {
    let words = COMMANDS
        .get(idx)
        .map_or(0, |c| c.command.to_bytes().split(|b| *b == b' ').count());
    let args: Vec<&str> = argv.iter().skip(words).map(String::as_str).collect();
    let result = match (idx, args.as_slice()) {
        (PUT, [mode, family]) => match mode.parse::<Mode>() {
            Ok(mode) => with_runtime(|rt| rt.share(family, mode)).and_then(|r| r),
            Err(why) => Err(why),
        },
        (DELETE, [family]) => with_runtime(|rt| rt.unshare(family)).and_then(|r| r),
        (SHOW, [] | [_]) => show_families(args.first().copied(), out),
        (REFRESH, [] | [_]) => refresh(args.first().copied()),
        (NODES, [] | [_]) => show_nodes(args.first().copied(), out),
        (STATUS, []) => show_status(out),
        (SHOW_KEY, [family, key]) => key_lines(family, key).map(|lines| {
            aligned(out, lines);
            String::new()
        }),
        _ => return Outcome::ShowUsage,
    };
    match result {
        Ok(message) => {
            if !message.is_empty() {
                out.line(&message);
            }
            Outcome::Success
        }
        Err(why) => {
            out.line(&format!("Error: {why}"));
            Outcome::Failure
        }
    }
}

/// The shared families matching `filter`, by name.
fn family_names(filter: Option<&str>) -> Result<Vec<String>, String> {
    with_runtime(|rt| {
        rt.registry
            .iter()
            .filter(|f| filter.is_none_or(|name| f.name == name))
            .map(|f| f.name.clone())
            .collect()
    })
}

/// The columns of `database shared show`.
pub(crate) const FAMILY_HEADER: [&str; 8] = [
    "Family",
    "Mode",
    "Origin",
    "Policy",
    "Sync",
    "Interval",
    "Keys",
    "Last change",
];

fn show_families(filter: Option<&str>, out: &mut Output) -> Result<String, String> {
    let rows = family_rows(filter)?;
    for line in table(&FAMILY_HEADER, &rows) {
        out.line(&line);
    }
    Ok(format!(
        "{} shared famil{}.",
        rows.len(),
        if rows.len() == 1 { "y" } else { "ies" }
    ))
}

/// The shared families matching `filter`, as [`FAMILY_HEADER`] rows.
pub(crate) fn family_rows(filter: Option<&str>) -> Result<Vec<Vec<String>>, String> {
    // Key counts are read from AstDB now; the last change is the engine's.
    let counts: Vec<(String, usize)> = family_names(filter)?
        .into_iter()
        .map(|name| {
            let n = crate::asterisk::db::read_tree(&name).rows().count();
            (name, n)
        })
        .collect();
    let status = published();
    let rows = with_runtime(|rt| {
        rt.registry
            .iter()
            .filter(|f| filter.is_none_or(|name| f.name == name))
            .map(|f| {
                let keys = counts
                    .iter()
                    .find(|(n, _)| *n == f.name)
                    .map_or(0, |(_, k)| *k);
                let last = status.node.last_change_ms.get(&f.name).copied().flatten();
                vec![
                    f.name.clone(),
                    f.mode.to_string(),
                    f.origin.to_string(),
                    f.policy.to_string(),
                    f.sync_mode.to_string(),
                    format!("{}ms", f.sync_interval_ms),
                    keys.to_string(),
                    last.map_or_else(|| "none seen".into(), local_time),
                ]
            })
            .collect::<Vec<_>>()
    })?;
    if let Some(name) = filter {
        if rows.is_empty() {
            return Err(format!("family '{name}' is not shared"));
        }
    }
    Ok(rows)
}

pub(crate) fn refresh(filter: Option<&str>) -> Result<String, String> {
    let names = family_names(filter)?;
    if let (Some(name), true) = (filter, names.is_empty()) {
        return Err(format!("family '{name}' is not shared"));
    }
    with_runtime(|rt| rt.inbox.push_command(LoopCommand::Refresh(names.clone())))?;
    Ok(format!(
        "Reading {} famil{} now and syncing {} with the peers.",
        names.len(),
        if names.len() == 1 { "y" } else { "ies" },
        if names.len() == 1 { "it" } else { "them" }
    ))
}

/// The columns of `astdb cluster show nodes`.
pub(crate) const NODE_HEADER: [&str; 10] = [
    "Node",
    "Name",
    "Address",
    "EID",
    "State",
    "Last seen",
    "Lag",
    "Bytes in/out",
    "Frames in/out",
    "Protocol",
];

fn show_nodes(filter: Option<&str>, out: &mut Output) -> Result<String, String> {
    let (rows, rejects) = node_rows(filter)?;
    for line in table(&NODE_HEADER, &rows) {
        out.line(&line);
    }
    let transport = with_runtime(|rt| rt.config.general.transport)?;
    let redis = transport == Transport::Redis;
    if !rejects.is_empty() {
        let what = if transport != Transport::Mesh {
            "Refused"
        } else {
            "Refused connections"
        };
        out.line(&format!("{what}: {}", rejects.join(", ")));
    }
    if transport != Transport::Mesh {
        out.line(&format!("Link: {}", published().node.link.state));
    }
    Ok(format!(
        "{} node{} {}.",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if redis { "seen in Redis" } else { "configured" }
    ))
}

/// The configured nodes matching `filter` (number or name), as [`NODE_HEADER`] rows,
/// and the refused connections by cause.
pub(crate) fn node_rows(filter: Option<&str>) -> Result<(Vec<Vec<String>>, Vec<String>), String> {
    let status = published();
    let link = &status.node.link;
    let (rows, rejects) = with_runtime(|rt| {
        // Over Redis the nodes are those seen in its node table.
        let seen: Vec<crate::config::PeerNode> = link
            .peers
            .iter()
            .map(|p| crate::config::PeerNode {
                section: format!("node{}", p.node),
                node: p.node,
                host: "via Redis".into(),
                port: 0,
                outbound_publish: None,
            })
            .collect();
        let listed = match rt.config.general.transport {
            Transport::Mesh | Transport::Pjsip => &rt.config.nodes,
            Transport::Redis => &seen,
        };
        let rows = listed
            .iter()
            .filter(|n| filter.is_none_or(|f| f == n.node.to_string() || f == n.section))
            .map(|n| {
                let peer = link.peers.iter().find(|p| p.node == n.node);
                let state = match peer.map(|p| p.state) {
                    Some(PeerState::Up) => "up",
                    Some(PeerState::Connecting) => "connecting",
                    Some(PeerState::Down) | None => "down",
                };
                vec![
                    n.node.to_string(),
                    n.section.clone(),
                    if let Some(publish) = &n.outbound_publish {
                        format!("PUBLISH via {publish}")
                    } else if n.port == 0 {
                        n.host.clone()
                    } else {
                        n.address()
                    },
                    peer.and_then(|p| p.eid)
                        .map_or_else(|| "unknown".into(), |e| e.to_string()),
                    state.to_string(),
                    peer.and_then(|p| p.last_seen)
                        .map_or_else(|| "never".into(), |t| ago(unix_ms(t))),
                    peer.and_then(|p| p.rtt).map_or_else(
                        || "-".into(),
                        |d| format!("{:.1}ms", d.as_secs_f64() * 1000.0),
                    ),
                    peer.map_or_else(
                        || "0 / 0".into(),
                        |p| format!("{} / {}", p.bytes_in, p.bytes_out),
                    ),
                    peer.map_or_else(
                        || "0 / 0".into(),
                        |p| format!("{} / {}", p.frames_in, p.frames_out),
                    ),
                    peer.and_then(|p| p.protocol)
                        .map_or_else(|| "-".into(), |v| v.to_string()),
                ]
            })
            .collect::<Vec<_>>();
        let rejects: Vec<String> = link
            .refusals
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(cause, n)| format!("{cause}: {n}"))
            .collect();
        (rows, rejects)
    })?;
    if let (Some(f), true) = (filter, rows.is_empty()) {
        return Err(format!("no configured node matches '{f}'"));
    }
    Ok((rows, rejects))
}

fn show_status(out: &mut Output) -> Result<String, String> {
    aligned(out, status_lines()?);
    Ok(String::new())
}

/// `Name: value` lines, the values aligned.
fn aligned(out: &mut Output, lines: Vec<(&'static str, String)>) {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in lines {
        out.line(&format!("{:<width$} {v}", format!("{k}:")));
    }
}

/// How long `database shared show key` waits for the module's thread.
const INSPECT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the loop holds for one AstDB key, and its value in AstDB.
pub(crate) struct KeyView {
    pub info: crate::node::KeyInfo,
    pub value: Option<String>,
}

/// Asks the loop what it holds for AstDB family `family`, key `key`.
pub(crate) fn key_view(family: &str, key: &str) -> Result<KeyView, String> {
    let family = family.trim_matches('/');
    if family.is_empty() || key.is_empty() {
        return Err("a family and a key are needed".into());
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    with_runtime(|rt| {
        rt.inbox.push_command(LoopCommand::Inspect {
            family: family.to_string(),
            key: key.to_string(),
            reply: tx,
        })
    })?;
    let info = rx.recv_timeout(INSPECT_WAIT).map_err(|_| {
        "the replication loop did not answer within 3 s (busy with a large read or catch-up); try again".to_string()
    })?;
    if info.shared.is_none() {
        return Err(format!("family '{family}' is not shared"));
    }
    let value = crate::asterisk::db::get(&info.astdb_family, key);
    Ok(KeyView { info, value })
}

fn node_name(node: Option<u32>, eid: crate::eid::Eid) -> String {
    match node {
        Some(n) => format!("node {n} ({eid})"),
        None => format!("unknown node ({eid})"),
    }
}

/// What `database shared show key` shows of AstDB family `family`, key `key`.
pub(crate) fn key_lines(family: &str, key: &str) -> Result<Vec<(&'static str, String)>, String> {
    let KeyView { info, value } = key_view(family, key)?;
    let Some((shared, mode, _)) = &info.shared else {
        return Err(format!("family '{family}' is not shared"));
    };
    let version = |v: &crate::engine::Version| {
        let wall = v.hlc.wall_ms();
        if wall == 0 {
            "0 (found in AstDB before it was shared)".to_string()
        } else {
            format!("{} ({})", v.hlc, local_time(wall))
        }
    };
    let mut lines = vec![
        ("Family", info.astdb_family.clone()),
        ("Key", key.to_string()),
        ("Value", value.unwrap_or_else(|| "(not in AstDB)".into())),
        ("Shared family", shared.clone()),
        ("Mode", mode.to_string()),
    ];
    match &info.held {
        Some((v, node, tombstone)) => {
            lines.push(("Version", version(v)));
            lines.push(("Origin", node_name(*node, v.origin)));
            lines.push((
                "Tombstone",
                if *tombstone {
                    "yes (deleted; remembered until every peer has the delete)".into()
                } else {
                    "no".into()
                },
            ));
        }
        None => {
            lines.push(("Version", "none held (not yet read or received)".into()));
            lines.push(("Tombstone", "no".into()));
        }
    }
    if *mode == Mode::Unique {
        let copies: Vec<String> = info
            .copies
            .iter()
            .map(|(eid, node, v, tombstone)| {
                format!(
                    "{} {}{}",
                    node_name(*node, *eid),
                    v.hlc,
                    if *tombstone { " (deleted)" } else { "" }
                )
            })
            .collect();
        lines.push((
            "Copies held",
            if copies.is_empty() {
                "none".into()
            } else {
                copies.join("; ")
            },
        ));
    }
    Ok(lines)
}

/// What `astdb cluster show status` shows, line by line.
pub(crate) fn status_lines() -> Result<Vec<(&'static str, String)>, String> {
    let status = published();
    let (node, link) = (&status.node, &status.node.link);
    let lines = with_runtime(|rt| {
        let g = &rt.config.general;
        let c = &node.counters;
        let capture = match (status.capture.db_write, status.capture.db_delete) {
            (true, true) => "DB() and DB_DELETE() seen at once; other writers when AstDB commits (families of up to 10,000 keys) or at each family's read",
            (true, false) => "DB() seen at once; DB_DELETE() and other writers when AstDB commits (families of up to 10,000 keys) or at each family's read",
            (false, true) => "DB_DELETE() seen at once; DB() and other writers when AstDB commits (families of up to 10,000 keys) or at each family's read",
            (false, false) => "func_db not loaded: dialplan writes are seen with the other writers, when AstDB commits (families of up to 10,000 keys) or at each family's read",
        };
        let dropped = c.dropped_unshared
            + c.dropped_mode
            + c.dropped_policy
            + c.dropped_skew
            + c.dropped_stale
            + c.dropped_unknown_peer
            + c.dropped_invalid;
        let up = link
            .peers
            .iter()
            .filter(|p| p.state == PeerState::Up)
            .count();
        let (network, peers) = match g.transport {
            Transport::Mesh | Transport::Pjsip => (
                format!("{}; {up} of {} peers up", link.state, rt.config.nodes.len()),
                ("Peers configured", rt.config.nodes.len().to_string()),
            ),
            Transport::Redis => (
                format!("{}; {up} other node(s) up", link.state),
                ("Nodes seen in Redis", link.peers.len().to_string()),
            ),
        };
        let refused: u64 = link.refusals.iter().map(|(_, n)| n).sum();
        vec![
            ("Entity ID", rt.eid.to_string()),
            ("Cluster", g.cluster_name.clone()),
            ("Node", g.cluster_node.to_string()),
            ("Network", network),
peers,
            ("Shared families", rt.registry.len().to_string()),
            ("Capture", capture.to_string()),
            ("Dialplan writes seen", node.dialplan_writes.to_string()),
            (
                "Family reads",
                format!(
                    "{} ({} more skipped: AstDB unchanged)",
                    node.family_reads, node.reads_skipped
                ),
            ),
            (
                "Reads in pieces",
                format!(
                    "{} times ({} found something new)",
                    node.reads_in_pieces.0, node.reads_in_pieces.1
                ),
            ),
            ("Local changes", c.local_changes.to_string()),
            ("Changes sent / received", format!("{} / {}", c.sent_changes, c.received_changes)),
            ("Remote changes applied", c.applied.to_string()),
            (
                "Remote changes dropped",
                format!(
                    "{dropped} (unshared {}, other mode {}, policy {}, clock skew {}, stale {}, unknown peer {}, invalid {})",
                    c.dropped_unshared, c.dropped_mode, c.dropped_policy, c.dropped_skew,
                    c.dropped_stale, c.dropped_unknown_peer, c.dropped_invalid
                ),
            ),
            ("Tombstones", c.tombstones.to_string()),
            ("Sends not delivered", link.send_errors.to_string()),
            ("Undecodable messages", link.undecodable.to_string()),
            (
                "Refused",
                if refused == 0 {
                    "0".to_string()
                } else {
                    let causes: Vec<String> = link
                        .refusals
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(c, n)| format!("{c}: {n}"))
                        .collect();
                    format!("{refused} ({})", causes.join(", "))
                },
            ),
            ("Metadata file", rt.metadata_path().display().to_string()),
            (
                "Replica log",
                format!("{} ({} bytes)", node.log.0, node.log.1),
            ),
            (
                "Loaded",
                format!("{} ({})", local_time(rt.loaded_at_ms), ago(rt.loaded_at_ms)),
            ),
            ("Config loaded", local_time(rt.config_loaded_at_ms)),
            ("Built with headers", crate::asterisk::headers()),
        ]
    })?;
    Ok(lines)
}

/// Completion candidates for the word at `pos` (0-based over the whole line).
pub(crate) fn complete(idx: usize, line: &str, word: &str, pos: usize) -> Vec<String> {
    let Some(command) = COMMANDS.get(idx) else {
        return Vec::new();
    };
    let arg = pos.checked_sub(command.command.to_bytes().split(|b| *b == b' ').count());
    let families = || {
        with_runtime(|rt| {
            rt.registry
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    let candidates: Vec<String> = match (idx, arg) {
        (PUT, Some(0)) => vec!["global".into(), "unique".into()],
        (DELETE | SHOW | REFRESH | SHOW_KEY, Some(0)) => families(),
        (SHOW_KEY, Some(1)) => line
            .split_whitespace()
            .nth(pos - 1)
            .map(|family| {
                crate::asterisk::db::read_tree(family)
                    .rows()
                    .take(1000)
                    .map(|(k, _)| k.into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        (NODES, Some(0)) => with_runtime(|rt| {
            rt.config
                .nodes
                .iter()
                .flat_map(|n| [n.node.to_string(), n.section.clone()])
                .collect::<Vec<_>>()
        })
        .unwrap_or_default(),
        _ => Vec::new(),
    };
    candidates
        .into_iter()
        .filter(|c| c.starts_with(word))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let lines = table(
            &["Family", "Mode"],
            &[
                vec!["blacklist".into(), "global".into()],
                vec!["q".into(), "unique".into()],
            ],
        );
        assert_eq!(
            lines,
            vec!["Family     Mode", "blacklist  global", "q          unique"]
        );
    }

    #[test]
    fn every_command_has_a_usage_that_starts_with_its_own_words() {
        for c in &COMMANDS {
            let command = c.command.to_str().unwrap();
            assert!(
                c.usage
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("Usage: {command}")),
                "{command}"
            );
        }
    }
}
