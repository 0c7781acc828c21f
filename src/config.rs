//! astdb_cluster.conf: parsed and validated as a whole. A file with any error is
//! refused entirely, every error naming the line, section, option and reason, so
//! the module can keep its last good configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::engine::family::{
    validate_family_name, Mode, Origin, SharedFamily, SharingPolicy, SyncMode,
};

pub const CONFIG_FILE: &str = "astdb_cluster.conf";
/// The port nodes listen on unless `bindport` says otherwise.
pub const DEFAULT_PORT: u16 = 5039;
/// A shorter shared secret is refused: it would be guessable.
pub const MIN_SECRET_LEN: usize = 16;
pub const SYNC_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
pub const NODE_NUMBERS: std::ops::RangeInclusive<u32> = 1..=65535;
/// `event_batch_limit` unless set, and what it may be.
pub const DEFAULT_EVENT_BATCH_LIMIT: usize = 100;
pub const EVENT_BATCH_LIMITS: std::ops::RangeInclusive<u64> = 1..=1_000_000;

/// One `[section]` as the config loader read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSection {
    pub name: String,
    pub vars: Vec<RawVar>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawVar {
    pub name: String,
    pub value: String,
    pub line: u32,
}

/// `[general]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct General {
    pub cluster_name: String,
    pub cluster_node: u32,
    /// None: the module runs but opens no network, and says why.
    pub cluster_secret: Option<String>,
    pub bindaddr: IpAddr,
    pub bindport: u16,
    /// Change and peer events (Stasis messages, AMI events) are published.
    pub events: bool,
    /// A batch of more changes than this to one family gives one summary event instead
    /// of one event per key.
    pub event_batch_limit: usize,
    /// What carries the changes: the built-in mesh, or Redis (then `redis` is set).
    pub transport: Transport,
    pub redis: Option<RedisSettings>,
}

/// `[general] transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Every node connects to every `type = node` section.
    #[default]
    Mesh,
    /// Every node keeps the shared families in one Redis (or Valkey) and reads the
    /// others' changes from it; the nodes find each other there.
    Redis,
    /// Every node sends its changes to each `type = node` section as SIP PUBLISH
    /// (`Event: asterisk-db`) through res_pjsip's outbound-publish objects, and hears
    /// theirs through its inbound-publication objects (res_astdb_cluster_pjsip.so).
    Pjsip,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Mesh => "mesh",
            Transport::Redis => "redis",
            Transport::Pjsip => "pjsip",
        })
    }
}

/// The `redis_*` options of `[general]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS). With sentinels,
    /// the host and port are the master's address until a sentinel names it.
    pub url: String,
    /// A PEM file of the CA(s) that signed the server's TLS certificate.
    pub ca_file: Option<String>,
    /// `host:port` of each Redis Sentinel; empty without Sentinel.
    pub sentinels: Vec<String>,
    /// The master's name as the sentinels know it.
    pub master: Option<String>,
    /// About how many changes the change stream keeps: a node away for fewer changes
    /// than this catches up by reading them, beyond that by comparing the families.
    pub stream_max: u64,
}

/// `redis_stream_max` unless set, and what it may be.
pub const DEFAULT_REDIS_STREAM_MAX: u64 = 1_000_000;
pub const REDIS_STREAM_MAX: std::ops::RangeInclusive<u64> = 1000..=100_000_000;

/// Checks a `redis_url` as the Redis client will read it.
fn redis_url(text: &str) -> Result<String, String> {
    let want = "want redis://[user:password@]host:port[/db] or rediss:// for TLS";
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        return Err(format!("'{text}' is not a Redis URL ({want})"));
    }
    match redis::parse_redis_url(text) {
        Some(url) if url.host_str().is_some_and(|h| !h.is_empty()) => {
            let db = url.path().trim_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(format!(
                    "'{text}': '{db}' is not a database number ({want})"
                ));
            }
            Ok(text.to_string())
        }
        _ => Err(format!("'{text}' is not a Redis URL ({want})")),
    }
}

/// A `type = node` section: one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    pub section: String,
    pub node: u32,
    pub host: String,
    pub port: u16,
    /// Over SIP PUBLISH: the pjsip.conf `type = outbound-publish` (with
    /// `event = asterisk-db`) that reaches this node; the mesh's `host` is then empty.
    pub outbound_publish: Option<String>,
}

impl PeerNode {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub general: General,
    pub nodes: Vec<PeerNode>,
    /// `type = family` sections, shared as soon as the module loads.
    pub presets: Vec<SharedFamily>,
}

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: u32,
    pub section: String,
    pub option: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CONFIG_FILE}")?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        write!(f, ", [{}]", self.section)?;
        if let Some(option) = &self.option {
            write!(f, " {option}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Collects errors while walking a section.
struct Section<'a> {
    raw: &'a RawSection,
    errors: &'a mut Vec<ConfigError>,
    values: BTreeMap<&'a str, &'a RawVar>,
}

impl<'a> Section<'a> {
    fn new(raw: &'a RawSection, allowed: &[&str], errors: &'a mut Vec<ConfigError>) -> Self {
        let mut values: BTreeMap<&str, &RawVar> = BTreeMap::new();
        for var in &raw.vars {
            if !allowed.contains(&var.name.as_str()) {
                errors.push(ConfigError {
                    line: var.line,
                    section: raw.name.clone(),
                    option: Some(var.name.clone()),
                    reason: format!(
                        "unknown option (this section takes: {})",
                        allowed.join(", ")
                    ),
                });
            } else if let Some(first) = values.get(var.name.as_str()) {
                errors.push(ConfigError {
                    line: var.line,
                    section: raw.name.clone(),
                    option: Some(var.name.clone()),
                    reason: format!("given twice (first on line {})", first.line),
                });
            } else {
                values.insert(&var.name, var);
            }
        }
        Section {
            raw,
            errors,
            values,
        }
    }

    fn fail(&mut self, option: Option<&str>, reason: String) {
        let line = option
            .and_then(|o| self.values.get(o))
            .map_or(0, |v| v.line);
        self.errors.push(ConfigError {
            line,
            section: self.raw.name.clone(),
            option: option.map(str::to_string),
            reason,
        });
    }

    fn text(&self, option: &str) -> Option<&'a str> {
        self.values.get(option).map(|v| v.value.trim())
    }

    fn required(&mut self, option: &str) -> Option<&'a str> {
        match self.text(option) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                self.fail(Some(option), "is required".into());
                None
            }
        }
    }

    /// Parses `option` with `parse`, whose error text is the reason.
    fn parsed<T>(
        &mut self,
        option: &str,
        default: Option<T>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.text(option) {
            None => {
                if default.is_none() {
                    self.fail(Some(option), "is required".into());
                }
                default
            }
            Some(text) => match parse(text) {
                Ok(v) => Some(v),
                Err(reason) => {
                    self.fail(Some(option), reason);
                    None
                }
            },
        }
    }
}

fn number_in<T: TryFrom<u64> + Copy + fmt::Display>(
    text: &str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<T, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "'{text}' is not {what} ({} to {})",
                range.start(),
                range.end()
            )
        })
}

/// A yes/no option, as Asterisk's `ast_true`/`ast_false` spell it.
fn yes_no(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" | "y" | "t" | "1" | "on" => Ok(true),
        "no" | "false" | "n" | "f" | "0" | "off" => Ok(false),
        _ => Err(format!("'{text}' is not yes or no")),
    }
}

fn node_number(text: &str) -> Result<u32, String> {
    number_in(
        text,
        *NODE_NUMBERS.start() as u64..=*NODE_NUMBERS.end() as u64,
        "a node number",
    )
}

fn port(text: &str) -> Result<u16, String> {
    number_in(text, 1..=65535, "a port")
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn host_and_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("'{text}' is not a host, host:port or [IPv6]:port");
    let (host, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if text.parse::<IpAddr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let valid_name = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !valid_name {
        return Err(bad());
    }
    let port = match port_text {
        Some(p) => port(p)?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

const GENERAL_OPTIONS: &[&str] = &[
    "cluster_name",
    "cluster_node",
    "cluster_secret",
    "bindaddr",
    "bindport",
    "events",
    "event_batch_limit",
    "transport",
    "redis_url",
    "redis_ca_file",
    "redis_sentinels",
    "redis_master",
    "redis_stream_max",
];
const NODE_OPTIONS: &[&str] = &["type", "node", "host", "outbound_publish"];
const FAMILY_OPTIONS: &[&str] = &[
    "type",
    "mode",
    "sharing_policy",
    "sharing_nodes",
    "sync_interval",
    "sync_mode",
    "key_events",
];

fn parse_general(raw: &RawSection, errors: &mut Vec<ConfigError>) -> Option<General> {
    let mut s = Section::new(raw, GENERAL_OPTIONS, errors);
    let cluster_name = s.required("cluster_name").map(str::to_string);
    if let Some(name) = &cluster_name {
        if name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            s.fail(
                Some("cluster_name"),
                format!("'{name}' must be at most 64 characters with no spaces"),
            );
        }
    }
    let cluster_node = s.parsed("cluster_node", None, node_number);
    let cluster_secret = match s.text("cluster_secret") {
        None | Some("") => None,
        Some(secret) if secret.len() < MIN_SECRET_LEN => {
            s.fail(
                Some("cluster_secret"),
                format!(
                    "is {} characters; use at least {MIN_SECRET_LEN}",
                    secret.len()
                ),
            );
            None
        }
        Some(secret) => Some(secret.to_string()),
    };
    let bindaddr = s.parsed(
        "bindaddr",
        Some("0.0.0.0".parse().expect("literal address")),
        |t| {
            t.parse::<IpAddr>()
                .map_err(|_| format!("'{t}' is not an IP address"))
        },
    );
    let bindport = s.parsed("bindport", Some(DEFAULT_PORT), port);
    let events = s.parsed("events", Some(true), yes_no);
    let event_batch_limit = s.parsed("event_batch_limit", Some(DEFAULT_EVENT_BATCH_LIMIT), |t| {
        number_in(t, EVENT_BATCH_LIMITS, "a number of changes")
    });
    let transport = s.parsed("transport", Some(Transport::Mesh), |t| {
        match t.to_ascii_lowercase().as_str() {
            "mesh" => Ok(Transport::Mesh),
            "redis" => Ok(Transport::Redis),
            "pjsip" => Ok(Transport::Pjsip),
            _ => Err(format!(
                "'{t}' is not a transport (want mesh, redis or pjsip)"
            )),
        }
    });
    let redis = parse_redis(&mut s, transport == Some(Transport::Redis));
    Some(General {
        transport: transport?,
        redis: redis?,
        cluster_name: cluster_name?,
        cluster_node: cluster_node?,
        cluster_secret,
        bindaddr: bindaddr?,
        bindport: bindport?,
        events: events?,
        event_batch_limit: event_batch_limit?,
    })
}

/// The `redis_*` options: required and checked with `transport = redis`, refused
/// without it (they would do nothing). `Some(None)` when not used.
fn parse_redis(s: &mut Section, used: bool) -> Option<Option<RedisSettings>> {
    const OPTIONS: [&str; 5] = [
        "redis_url",
        "redis_ca_file",
        "redis_sentinels",
        "redis_master",
        "redis_stream_max",
    ];
    if !used {
        let mut ok = true;
        for option in OPTIONS {
            if s.text(option).is_some() {
                s.fail(
                    Some(option),
                    "is for transport = redis (this file uses the mesh)".into(),
                );
                ok = false;
            }
        }
        return ok.then_some(None);
    }
    let url = s.parsed("redis_url", None, redis_url);
    let ca_file = match s.text("redis_ca_file") {
        None | Some("") => Some(None),
        Some(path)
            if !url
                .as_deref()
                .unwrap_or("rediss://")
                .starts_with("rediss://") =>
        {
            s.fail(
                Some("redis_ca_file"),
                format!("'{path}' is for TLS: redis_url must start with rediss://"),
            );
            None
        }
        Some(path) => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Some(Some(path.to_string())),
            _ => {
                s.fail(
                    Some("redis_ca_file"),
                    format!("'{path}' is not a readable file"),
                );
                None
            }
        },
    };
    let sentinels = match s.text("redis_sentinels") {
        None | Some("") => Some(Vec::new()),
        Some(list) => {
            let mut out = Vec::new();
            let mut bad = None;
            for part in list.split(',').map(str::trim) {
                match host_and_port(part, 26379) {
                    Ok((host, port)) if host.contains(':') => out.push(format!("[{host}]:{port}")),
                    Ok((host, port)) => out.push(format!("{host}:{port}")),
                    Err(_) => bad = Some(part.to_string()),
                }
            }
            match bad {
                Some(part) => {
                    s.fail(
                        Some("redis_sentinels"),
                        format!("'{part}' is not host[:port] (want a list like 10.0.0.5:26379, 10.0.0.6)"),
                    );
                    None
                }
                None => Some(out),
            }
        }
    };
    let master = match (s.text("redis_master"), sentinels.as_deref()) {
        (Some(name), _) if !name.is_empty() => {
            if sentinels.as_ref().is_some_and(Vec::is_empty) {
                s.fail(
                    Some("redis_master"),
                    "needs redis_sentinels (the sentinels that know it)".into(),
                );
                None
            } else {
                Some(Some(name.to_string()))
            }
        }
        (_, Some([_, ..])) => {
            s.fail(
                Some("redis_master"),
                "is required with redis_sentinels (the master's name as the sentinels know it)"
                    .into(),
            );
            None
        }
        _ => Some(None),
    };
    let stream_max = s.parsed("redis_stream_max", Some(DEFAULT_REDIS_STREAM_MAX), |t| {
        number_in(t, REDIS_STREAM_MAX, "a number of changes")
    });
    Some(Some(RedisSettings {
        url: url?,
        ca_file: ca_file?,
        sentinels: sentinels?,
        master: master?,
        stream_max: stream_max?,
    }))
}

fn parse_node(
    raw: &RawSection,
    default_port: u16,
    transport: Option<Transport>,
    errors: &mut Vec<ConfigError>,
) -> Option<PeerNode> {
    let mut s = Section::new(raw, NODE_OPTIONS, errors);
    let node = s.parsed("node", None, node_number);
    if transport == Some(Transport::Pjsip) {
        if s.text("host").is_some() {
            s.fail(
                Some("host"),
                "is for the mesh; with transport = pjsip name the pjsip.conf outbound-publish that reaches the node (outbound_publish = ...)".into(),
            );
        }
        let publish = s.required("outbound_publish").map(str::to_string);
        if let Some(name) = &publish {
            if name.is_empty()
                || name.len() > 64
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                s.fail(
                    Some("outbound_publish"),
                    format!("'{name}' is not a pjsip.conf section name"),
                );
            }
        }
        return Some(PeerNode {
            section: raw.name.clone(),
            node: node?,
            host: String::new(),
            port: 0,
            outbound_publish: Some(publish?),
        });
    }
    if s.text("outbound_publish").is_some() {
        s.fail(
            Some("outbound_publish"),
            "only applies with transport = pjsip".into(),
        );
    }
    let host = s.parsed("host", None, |t| host_and_port(t, default_port));
    let (host, port) = host?;
    Some(PeerNode {
        section: raw.name.clone(),
        node: node?,
        host,
        port,
        outbound_publish: None,
    })
}

fn parse_family(raw: &RawSection, errors: &mut Vec<ConfigError>) -> Option<SharedFamily> {
    let mut s = Section::new(raw, FAMILY_OPTIONS, errors);
    if let Err(reason) = validate_family_name(&raw.name) {
        s.fail(None, format!("cannot be shared: {reason}"));
    }
    let mode = s.parsed("mode", Some(Mode::Global), |t| t.parse());
    let policy_word = s.parsed("sharing_policy", Some("broadcast"), |t| {
        match t.to_ascii_lowercase().as_str() {
            "broadcast" => Ok("broadcast"),
            "multicast" => Ok("multicast"),
            _ => Err(format!(
                "'{t}' is not a sharing policy (want broadcast or multicast)"
            )),
        }
    });
    let nodes = s.text("sharing_nodes").map(|list| {
        list.split(',')
            .map(|n| node_number(n.trim()))
            .collect::<Result<BTreeSet<u32>, String>>()
    });
    let policy = match (policy_word, nodes) {
        (Some("multicast"), None) => {
            s.fail(
                Some("sharing_policy"),
                "multicast needs sharing_nodes (a list like 2,3,4)".into(),
            );
            None
        }
        (Some("multicast"), Some(Ok(nodes))) => Some(SharingPolicy::Multicast(nodes)),
        (Some(_), Some(Err(reason))) => {
            s.fail(Some("sharing_nodes"), reason);
            None
        }
        (Some("broadcast"), Some(Ok(_))) => {
            s.fail(
                Some("sharing_nodes"),
                "only applies with sharing_policy = multicast".into(),
            );
            None
        }
        (Some(_), _) => Some(SharingPolicy::Broadcast),
        (None, _) => None,
    };
    let sync_interval_ms = s.parsed(
        "sync_interval",
        Some(crate::engine::family::DEFAULT_SYNC_INTERVAL_MS),
        |t| number_in(t, SYNC_INTERVAL_MS, "an interval in milliseconds"),
    );
    let sync_mode = s.parsed("sync_mode", Some(SyncMode::Rw), |t| t.parse());
    let key_events = s.parsed("key_events", Some(true), yes_no);
    Some(SharedFamily {
        name: raw.name.clone(),
        mode: mode?,
        policy: policy?,
        sync_interval_ms: sync_interval_ms?,
        sync_mode: sync_mode?,
        origin: Origin::Preset,
        key_events: key_events?,
    })
}

/// Validates the whole file; any error refuses all of it.
pub fn parse(sections: &[RawSection]) -> Result<ClusterConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let general_raw: Vec<&RawSection> = sections.iter().filter(|s| s.name == "general").collect();
    let general = match general_raw.as_slice() {
        [] => {
            errors.push(ConfigError {
                line: 0,
                section: "general".into(),
                option: None,
                reason: "is missing (it names the cluster and this node)".into(),
            });
            None
        }
        [one, rest @ ..] => {
            for dup in rest {
                errors.push(ConfigError {
                    line: dup.vars.first().map_or(0, |v| v.line),
                    section: dup.name.clone(),
                    option: None,
                    reason: "appears twice".into(),
                });
            }
            parse_general(one, &mut errors)
        }
    };
    let default_port = general.as_ref().map_or(DEFAULT_PORT, |g| g.bindport);
    let transport = general.as_ref().map(|g| g.transport);

    let mut nodes: Vec<PeerNode> = Vec::new();
    let mut presets: Vec<SharedFamily> = Vec::new();
    for raw in sections.iter().filter(|s| s.name != "general") {
        let kind = raw.vars.iter().find(|v| v.name == "type");
        match kind.map(|v| v.value.trim().to_ascii_lowercase()) {
            Some(k) if k == "node" => {
                if let Some(node) = parse_node(raw, default_port, transport, &mut errors) {
                    nodes.push(node);
                }
            }
            Some(k) if k == "family" => {
                if presets.iter().any(|f| f.name == raw.name) {
                    errors.push(ConfigError {
                        line: kind.map_or(0, |v| v.line),
                        section: raw.name.clone(),
                        option: None,
                        reason: "family appears twice".into(),
                    });
                } else if let Some(family) = parse_family(raw, &mut errors) {
                    presets.push(family);
                }
            }
            other => errors.push(ConfigError {
                line: kind.map_or(raw.vars.first().map_or(0, |v| v.line), |v| v.line),
                section: raw.name.clone(),
                option: Some("type".into()),
                reason: match other {
                    None => "is required (node or family)".into(),
                    Some(k) => format!("'{k}' is not a section type (want node or family)"),
                },
            }),
        }
    }

    if let Some(general) = &general {
        let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
        for node in &nodes {
            let clash = if node.node == general.cluster_node {
                Some("[general] cluster_node (this server)")
            } else {
                seen.get(&node.node).copied()
            };
            if let Some(other) = clash {
                errors.push(ConfigError {
                    line: 0,
                    section: node.section.clone(),
                    option: Some("node".into()),
                    reason: format!("number {} is already used by {other}", node.node),
                });
            }
            seen.entry(node.node).or_insert(&node.section);
        }
        // Over Redis the nodes find each other there: any node number may be named.
        for family in presets
            .iter()
            .filter(|_| general.transport != Transport::Redis)
        {
            if let SharingPolicy::Multicast(list) = &family.policy {
                for n in list {
                    if *n != general.cluster_node && !seen.contains_key(n) {
                        errors.push(ConfigError {
                            line: 0,
                            section: family.name.clone(),
                            option: Some("sharing_nodes".into()),
                            reason: format!(
                                "node {n} is neither this server nor a type = node section"
                            ),
                        });
                    }
                }
            }
        }
    }

    match general {
        Some(general) if errors.is_empty() => Ok(ClusterConfig {
            general,
            nodes,
            presets,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds sections from `[name]` lines and `key = value` lines, numbering lines from 1.
    fn sections(text: &str) -> Vec<RawSection> {
        let mut out: Vec<RawSection> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                out.push(RawSection {
                    name: name.into(),
                    vars: vec![],
                });
            } else if let Some((k, v)) = line.split_once('=') {
                out.last_mut().unwrap().vars.push(RawVar {
                    name: k.trim().into(),
                    value: v.trim().into(),
                    line: i as u32 + 1,
                });
            }
        }
        out
    }

    const GOOD: &str = "[general]
cluster_name = cluster.voip
cluster_node = 1
cluster_secret = some.super.secret.key
bindaddr = 0.0.0.0
bindport = 5039
[node2]
type = node
node = 2
host = 10.0.0.2:5039
[node3]
type = node
node = 3
host = 10.0.0.3
[blacklist]
type = family
mode = global
sharing_policy = broadcast
sync_interval = 5000
sync_mode = rw
[queue_state]
type = family
mode = global
sharing_policy = multicast
sharing_nodes = 2,3
sync_interval = 500
sync_mode = ro";

    fn errors_of(text: &str) -> Vec<String> {
        parse(&sections(text))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn event_options_default_on_and_bad_values_are_named() {
        let cfg = parse(&sections(GOOD)).unwrap();
        assert!(cfg.general.events);
        assert_eq!(cfg.general.event_batch_limit, DEFAULT_EVENT_BATCH_LIMIT);
        assert!(cfg.presets.iter().all(|f| f.key_events));

        let quiet = GOOD
            .replace(
                "bindport = 5039",
                "bindport = 5039\nevents = no\nevent_batch_limit = 5",
            )
            .replace("sync_mode = rw", "sync_mode = rw\nkey_events = off");
        let cfg = parse(&sections(&quiet)).unwrap();
        assert!(!cfg.general.events);
        assert_eq!(cfg.general.event_batch_limit, 5);
        let blacklist = cfg.presets.iter().find(|f| f.name == "blacklist").unwrap();
        assert!(!blacklist.key_events);

        let bad = GOOD
            .replace(
                "bindport = 5039",
                "bindport = 5039\nevents = sometimes\nevent_batch_limit = 0",
            )
            .replace("sync_mode = rw", "sync_mode = rw\nkey_events = maybe");
        assert_eq!(
            errors_of(&bad),
            [
                "astdb_cluster.conf line 7, [general] events: 'sometimes' is not yes or no",
                "astdb_cluster.conf line 8, [general] event_batch_limit: '0' is not a number of changes (1 to 1000000)",
                "astdb_cluster.conf line 23, [blacklist] key_events: 'maybe' is not yes or no",
            ]
        );
    }

    #[test]
    fn the_documented_example_file_is_accepted() {
        let cfg = parse(&sections(GOOD)).unwrap();
        assert_eq!(cfg.general.cluster_node, 1);
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.nodes[1].port, DEFAULT_PORT);
        assert_eq!(cfg.nodes[0].address(), "10.0.0.2:5039");
        let queue = cfg
            .presets
            .iter()
            .find(|f| f.name == "queue_state")
            .unwrap();
        assert_eq!(queue.policy, SharingPolicy::Multicast([2, 3].into()));
        assert_eq!(queue.sync_mode, SyncMode::Ro);
        assert_eq!(queue.sync_interval_ms, 500);
        assert_eq!(queue.origin, Origin::Preset);
    }

    #[test]
    fn a_bad_value_is_reported_with_line_section_option_and_reason() {
        let text = GOOD.replace("sync_interval = 5000", "sync_interval = fast");
        let errs = errors_of(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "astdb_cluster.conf line 19, [blacklist] sync_interval: 'fast' is not an interval"
            ),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn every_error_in_the_file_is_reported_not_just_the_first() {
        let text = GOOD
            .replace(
                "mode = global\nsharing_policy = broadcast",
                "mode = sideways\nsharing_policy = broadcast",
            )
            .replace("bindport = 5039", "bindport = 99999")
            .replace("host = 10.0.0.3", "host = 10.0.0.3\ncolour = blue");
        let errs = errors_of(&text).join("\n");
        assert!(
            errs.contains("[general] bindport: '99999' is not a port"),
            "{errs}"
        );
        assert!(
            errs.contains("[blacklist] mode: 'sideways' is not a sharing mode"),
            "{errs}"
        );
        assert!(errs.contains("[node3] colour: unknown option"), "{errs}");
    }

    const REDIS: &str = "[general]
cluster_name = fleet
cluster_node = 7
cluster_secret = some.super.secret.key
transport = redis
redis_url = redis://astdb:pw@10.0.0.5:6380/2
[blacklist]
type = family
mode = global
sharing_policy = multicast
sharing_nodes = 7,12,40
";

    #[test]
    fn redis_transport_needs_no_node_sections_and_lets_sharing_nodes_name_any_node() {
        let cfg = parse(&sections(REDIS)).unwrap();
        assert_eq!(cfg.general.transport, Transport::Redis);
        let r = cfg.general.redis.as_ref().unwrap();
        assert_eq!(r.url, "redis://astdb:pw@10.0.0.5:6380/2");
        assert_eq!(r.url_shown(), "redis://astdb:***@10.0.0.5:6380/2");
        assert_eq!(r.stream_max, DEFAULT_REDIS_STREAM_MAX);
        assert!(r.sentinels.is_empty() && r.master.is_none());
        assert!(cfg.nodes.is_empty());
        assert_eq!(
            parse(&sections(GOOD)).unwrap().general.transport,
            Transport::Mesh
        );
    }

    #[test]
    fn pjsip_nodes_name_their_outbound_publish_instead_of_a_host() {
        let sip = GOOD
            .replace("bindport = 5039", "bindport = 5039\ntransport = pjsip")
            .replace("host = 10.0.0.2:5039", "outbound_publish = astdb-node2")
            .replace("host = 10.0.0.3", "outbound_publish = astdb-node3");
        let cfg = parse(&sections(&sip)).unwrap();
        assert_eq!(cfg.general.transport, Transport::Pjsip);
        assert_eq!(
            cfg.nodes
                .iter()
                .map(|n| (n.node, n.outbound_publish.as_deref()))
                .collect::<Vec<_>>(),
            vec![(2, Some("astdb-node2")), (3, Some("astdb-node3"))]
        );
        let errs = errors_of(&sip.replace("outbound_publish = astdb-node3", "host = 10.0.0.3"));
        assert!(
            errs.iter()
                .any(|e| e.contains("[node3] host: is for the mesh")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("[node3] outbound_publish: is required")),
            "{errs:?}"
        );
        let errs =
            errors_of(&GOOD.replace("host = 10.0.0.3", "host = 10.0.0.3\noutbound_publish = x"));
        assert!(
            errs.iter().any(
                |e| e.contains("[node3] outbound_publish: only applies with transport = pjsip")
            ),
            "{errs:?}"
        );
        // Over SIP the multicast list must name configured nodes, as on the mesh.
        let errs = errors_of(&sip.replace("sharing_nodes = 2,3", "sharing_nodes = 2,9"));
        assert!(
            errs.iter().any(|e| e.contains("node 9 is neither")),
            "{errs:?}"
        );
    }

    #[test]
    fn redis_options_that_are_wrong_or_missing_are_named() {
        let bad = |from: &str, to: &str| errors_of(&REDIS.replace(from, to));
        let has = |errs: Vec<String>, want: &str| {
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "want '{want}' in {errs:?}"
            );
        };
        has(
            bad("transport = redis", "transport = pigeon"),
            "transport: 'pigeon' is not a transport (want mesh, redis or pjsip)",
        );
        has(
            bad("redis_url = redis://astdb:pw@10.0.0.5:6380/2\n", ""),
            "redis_url: is required",
        );
        has(
            bad("redis://astdb:pw@10.0.0.5:6380/2", "http://10.0.0.5"),
            "redis_url: 'http://10.0.0.5' is not a Redis URL",
        );
        has(bad("6380/2", "6380/two"), "'two' is not a database number");
        has(
            bad(
                "transport = redis",
                "transport = redis\nredis_ca_file = /etc/hosts",
            ),
            "redis_ca_file: '/etc/hosts' is for TLS: redis_url must start with rediss://",
        );
        has(
            bad(
                "redis_url = redis://astdb",
                "redis_ca_file = /no/such.pem\nredis_url = rediss://astdb",
            ),
            "redis_ca_file: '/no/such.pem' is not a readable file",
        );
        has(
            bad(
                "transport = redis",
                "transport = redis\nredis_sentinels = 10.0.0.8:26379",
            ),
            "redis_master: is required with redis_sentinels",
        );
        has(
            bad(
                "transport = redis",
                "transport = redis\nredis_master = mymaster",
            ),
            "redis_master: needs redis_sentinels",
        );
        has(
            bad(
                "transport = redis",
                "transport = redis\nredis_sentinels = 10.0.0.8:26379, bad host\nredis_master = m",
            ),
            "redis_sentinels: 'bad host' is not host[:port]",
        );
        has(
            bad(
                "transport = redis",
                "transport = redis\nredis_stream_max = 10",
            ),
            "redis_stream_max: '10' is not a number of changes (1000 to 100000000)",
        );
        // Redis options with the mesh would do nothing: refused, named.
        let errs = errors_of(&GOOD.replace(
            "bindport = 5039",
            "bindport = 5039\nredis_url = redis://10.0.0.5",
        ));
        has(
            errs,
            "redis_url: is for transport = redis (this file uses the mesh)",
        );
        let ok = parse(&sections(&REDIS.replace(
            "transport = redis",
            "transport = redis\nredis_sentinels = 10.0.0.8, [fd00::9]:26380\nredis_master = astdb",
        )))
        .unwrap();
        let r = ok.general.redis.unwrap();
        assert_eq!(r.sentinels, vec!["10.0.0.8:26379", "[fd00::9]:26380"]);
        assert_eq!(r.master.as_deref(), Some("astdb"));
    }

    #[test]
    fn missing_general_or_node_number_is_refused() {
        assert!(errors_of("[node2]\ntype = node\nnode = 2\nhost = a")[0]
            .contains("[general]: is missing"));
        let errs = errors_of(&GOOD.replace("cluster_node = 1\n", ""));
        assert!(
            errs.iter().any(|e| e.contains("cluster_node: is required")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_short_secret_is_refused_and_no_secret_means_no_network() {
        let errs = errors_of(&GOOD.replace("some.super.secret.key", "short"));
        assert!(
            errs[0].contains("cluster_secret: is 5 characters; use at least 16"),
            "{errs:?}"
        );
        let cfg = parse(&sections(
            &GOOD.replace("cluster_secret = some.super.secret.key\n", ""),
        ))
        .unwrap();
        assert_eq!(cfg.general.cluster_secret, None);
    }

    #[test]
    fn node_numbers_must_be_unique_and_not_this_servers() {
        let errs = errors_of(&GOOD.replace("node = 3", "node = 2"));
        assert!(
            errs.iter()
                .any(|e| e.contains("[node3] node: number 2 is already used by node2")),
            "{errs:?}"
        );
        let errs = errors_of(&GOOD.replace("node = 3", "node = 1"));
        assert!(
            errs.iter()
                .any(|e| e.contains("already used by [general] cluster_node")),
            "{errs:?}"
        );
    }

    #[test]
    fn multicast_needs_known_nodes() {
        let errs = errors_of(&GOOD.replace("sharing_nodes = 2,3", "sharing_nodes = 2,7"));
        assert!(
            errs.iter()
                .any(|e| e.contains("node 7 is neither this server")),
            "{errs:?}"
        );
        let errs = errors_of(&GOOD.replace("sharing_nodes = 2,3\n", ""));
        assert!(
            errs.iter()
                .any(|e| e.contains("multicast needs sharing_nodes")),
            "{errs:?}"
        );
    }

    #[test]
    fn sections_without_a_known_type_are_refused() {
        let errs = errors_of(&format!("{GOOD}\n[mystery]\nfoo = bar"));
        assert!(
            errs.iter()
                .any(|e| e.contains("[mystery] type: is required")),
            "{errs:?}"
        );
        let errs = errors_of(&format!("{GOOD}\n[mystery]\ntype = database"));
        assert!(
            errs.iter()
                .any(|e| e.contains("'database' is not a section type")),
            "{errs:?}"
        );
    }

    #[test]
    fn hosts_accept_names_ipv4_and_ipv6_with_or_without_port() {
        assert_eq!(
            host_and_port("pbx2.example.net:6000", 1).unwrap(),
            ("pbx2.example.net".into(), 6000)
        );
        assert_eq!(
            host_and_port("[::1]:6000", 1).unwrap(),
            ("::1".into(), 6000)
        );
        assert_eq!(host_and_port("::1", 7).unwrap(), ("::1".into(), 7));
        assert!(host_and_port("bad host", 1).is_err());
        assert!(host_and_port("h:0", 1).is_err());
    }

    #[test]
    fn a_family_preset_with_an_unusable_name_is_refused() {
        let errs = errors_of(&format!("{GOOD}\n[02:00:00:00:00:01]\ntype = family"));
        assert!(
            errs.iter().any(|e| e.contains("cannot be shared")),
            "{errs:?}"
        );
    }
}
