//! Stand-in Asterisk servers with `transport = redis`, against real `redis-server`
//! processes on loopback: what replicates through Redis, what Redis holds, and how
//! the cluster survives Redis's faults.

mod netproxy;
mod redisd;
mod standin;

use std::time::Duration;

use netproxy::Relay;
use redisd::{wait_until, RedisServer, Sentinel};
use standin::{module_so, StandIn};

const SECRET: &str = "redis-test-secret-0123456789";

const PRESETS: &str = "
[blacklist]
type = family
mode = global
sync_interval = 500

[registrar]
type = family
mode = unique
sync_interval = 500
";

/// astdb_cluster.conf of node `node` over Redis: `general` adds option lines to
/// [general] (the URL among them), `extra` sections after the presets.
fn conf(node: u32, general: &str, extra: &str) -> String {
    format!(
        "[general]\ncluster_name = redis.cluster\ncluster_node = {node}\ncluster_secret = {SECRET}\n\
         transport = redis\n{general}\n{PRESETS}{extra}"
    )
}

fn node_with(name: &str, i: u32, general: &str) -> StandIn {
    StandIn::builder(&format!("{name}n{i}"))
        .eid(&format!("02:00:00:00:00:0{i}"))
        .conf_file("astdb_cluster.conf", &conf(i, general, ""))
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
}

fn node(name: &str, i: u32, url: &str) -> StandIn {
    node_with(name, i, &format!("redis_url = {url}"))
}

/// The family's hash in Redis.
fn items_key(family: &str) -> String {
    format!("astdbc:{{redis.cluster}}:h:g:{family}")
}

/// A status figure: the number before `label` on the Network line.
fn count_before(status: &str, label: &str) -> u64 {
    let at = status
        .find(label)
        .unwrap_or_else(|| panic!("no '{label}' in {status}"));
    status[..at]
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before '{label}' in {status}"))
}

fn compares(n: &StandIn) -> u64 {
    count_before(&n.cli("astdb cluster show status"), "full comparison")
}

fn resumed(n: &StandIn) -> u64 {
    count_before(&n.cli("astdb cluster show status"), "time(s)")
}

fn hlen(redis: &RedisServer, family: &str) -> usize {
    redis
        .cli(&["HLEN", &items_key(family)])
        .parse()
        .unwrap_or(0)
}

fn wait_value(n: &StandIn, family: &str, key: &str, want: Option<&str>) {
    let cmd = format!("database get {family} {key}");
    n.wait_for_cli(&cmd, Duration::from_secs(15), |out| match want {
        Some(v) => out.contains(&format!("Value: {v}")),
        None => out.contains("not found"),
    });
}

fn wait_connected(nodes: &[&StandIn]) {
    for n in nodes {
        n.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
            s.contains(") connected")
        });
    }
}

#[test]
fn over_redis_a_write_and_its_delete_reach_every_node_and_redis_holds_no_readable_value() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let nodes: Vec<StandIn> = (1..=3).map(|i| node("r0", i, &url)).collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_connected(&refs);
    nodes[0].cli("dialplan set DB(blacklist/5551234)=telemarketer-secret");
    wait_value(
        &nodes[1],
        "blacklist",
        "5551234",
        Some("telemarketer-secret"),
    );
    wait_value(
        &nodes[2],
        "blacklist",
        "5551234",
        Some("telemarketer-secret"),
    );
    // The change is an event on the receivers, as over the mesh.
    let events = nodes[1].events();
    let change = events
        .split("\n\n")
        .find(|e| e.contains("Event: AstDBClusterKeyChange") && e.contains("Key: 5551234"))
        .unwrap_or_else(|| panic!("no key change event: {events}"));
    assert!(
        change.contains("Source: peer") && change.contains("OriginNode: 1"),
        "{change}"
    );
    let dump = redis.cli(&["HGETALL", "astdbc:{redis.cluster}:h:g:blacklist"]);
    assert!(dump.contains("5551234"), "the key is there: {dump}");
    assert!(
        !dump.contains("telemarketer"),
        "the value is sealed: {dump}"
    );
    nodes[2].cli("database del blacklist 5551234");
    wait_value(&nodes[0], "blacklist", "5551234", None);
    wait_value(&nodes[1], "blacklist", "5551234", None);
    // Each node's copy of a unique family lands under its EID on the others.
    nodes[1].cli("database put registrar 2001 sip:2001@10.0.0.2");
    wait_value(
        &nodes[0],
        "02:00:00:00:00:02/registrar",
        "2001",
        Some("sip:2001@10.0.0.2"),
    );
    nodes[0].wait_for_cli("astdb cluster show nodes", Duration::from_secs(10), |s| {
        s.contains("2 nodes seen in Redis")
    });
}

#[test]
fn a_node_started_while_every_other_node_is_down_receives_the_families_from_redis() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let mut a = node("r1", 1, &url);
    wait_connected(&[&a]);
    a.cli("database bulkput blacklist num 200 listed");
    a.cli("database put blacklist gone soon");
    assert!(wait_until(Duration::from_secs(15), || hlen(
        &redis,
        "blacklist"
    ) == 201));
    a.cli("database del blacklist gone");
    a.wait_for_cli("astdb cluster show status", Duration::from_secs(10), |_| {
        redis
            .cli(&["HGET", &items_key("blacklist"), "gone"])
            .as_bytes()
            .get(28)
            == Some(&b'1')
    });
    a.stop();
    let b = node("r1", 2, &url);
    wait_value(&b, "blacklist", "num199", Some("listed"));
    wait_value(&b, "blacklist", "num0", Some("listed"));
    wait_value(&b, "blacklist", "gone", None);
    b.wait_for_cli("database show blacklist", Duration::from_secs(15), |s| {
        s.contains("200 results found")
    });
    // The deletion of a key b never had is no fault worth a warning.
    assert!(!b.log().contains("does not exist"), "{}", b.log());
}

#[test]
fn a_node_that_was_away_reads_what_changed_from_the_stream_instead_of_comparing_in_full() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let a = node("r2", 1, &url);
    let mut b = node("r2", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database bulkput blacklist num 500 listed");
    wait_value(&b, "blacklist", "num499", Some("listed"));
    // Let b save where it stands, then stop it cleanly.
    std::thread::sleep(Duration::from_secs(1));
    b.stop();
    a.cli("database put blacklist while-away yes");
    a.cli("database del blacklist num7");
    b.restart();
    wait_connected(&[&b]);
    wait_value(&b, "blacklist", "while-away", Some("yes"));
    wait_value(&b, "blacklist", "num7", None);
    wait_value(&b, "blacklist", "num8", Some("listed"));
    assert_eq!(resumed(&b), 1, "b resumed the stream where it stopped");
    assert_eq!(compares(&b), 0, "and compared nothing in full");
}

#[test]
fn a_node_away_longer_than_the_stream_keeps_compares_in_full_and_catches_up() {
    let redis = RedisServer::builder().start();
    let general = format!("redis_url = {}\nredis_stream_max = 1000", redis.url());
    let a = node_with("r3", 1, &general);
    let mut b = node_with("r3", 2, &general);
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist old value");
    wait_value(&b, "blacklist", "old", Some("value"));
    std::thread::sleep(Duration::from_secs(1));
    b.stop();
    a.cli("database bulkput blacklist num 5000 listed");
    a.cli("database del blacklist old");
    assert!(wait_until(Duration::from_secs(20), || hlen(
        &redis,
        "blacklist"
    ) == 5001));
    let len: usize = redis
        .cli(&["XLEN", "astdbc:{redis.cluster}:log"])
        .parse()
        .unwrap();
    assert!(len < 5000, "the stream was trimmed ({len} entries)");
    b.restart();
    wait_value(&b, "blacklist", "num4999", Some("listed"));
    wait_value(&b, "blacklist", "old", None);
    assert!(compares(&b) >= 1);
    b.wait_for_cli("database show blacklist", Duration::from_secs(15), |s| {
        s.contains("5000 results found")
    });
}

#[test]
fn concurrent_writers_of_one_key_through_redis_end_with_the_same_value_everywhere() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let nodes: Vec<StandIn> = (1..=3).map(|i| node("r4", i, &url)).collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_connected(&refs);
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate().take(2) {
            s.spawn(move || {
                for round in 0..20 {
                    n.cli(&format!("dialplan set DB(blacklist/race)=n{i}r{round}"));
                }
            });
        }
    });
    let value = |n: &StandIn| {
        n.cli("database get blacklist race")
            .lines()
            .find_map(|l| l.strip_prefix("Value: ").map(str::to_string))
    };
    assert!(
        wait_until(Duration::from_secs(15), || {
            let v: Vec<Option<String>> = nodes.iter().map(value).collect();
            v[0].is_some() && v.iter().all(|x| *x == v[0])
        }),
        "values differ: {:?}",
        nodes.iter().map(value).collect::<Vec<_>>()
    );
    let v = value(&nodes[0]).unwrap();
    assert!(
        v.ends_with("r19"),
        "the last write of one of the writers wins: {v}"
    );
}

#[test]
fn with_redis_down_at_load_the_module_loads_astdb_works_and_it_connects_when_redis_appears() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = node("r5", 1, &url);
    let b = node("r5", 2, &url);
    assert!(a
        .cli("module show like astdb")
        .contains("res_astdb_cluster.so"));
    a.cli("database put blacklist early bird");
    wait_value(&a, "blacklist", "early", Some("bird"));
    let status = a.cli("astdb cluster show status");
    assert!(status.contains("not connected"), "{status}");
    assert!(a.wait_for_log("cannot reach Redis", Duration::from_secs(5)));
    let redis = RedisServer::builder().start();
    let _relay = Relay::start(port, redis.port());
    wait_connected(&[&a, &b]);
    wait_value(&b, "blacklist", "early", Some("bird"));
    assert!(a.wait_for_log("connected to Redis", Duration::from_secs(5)));
}

#[test]
fn redis_restarted_empty_gets_the_shared_families_back_from_the_nodes() {
    let mut redis = RedisServer::builder().start();
    let url = redis.url();
    let a = node("r6", 1, &url);
    let b = node("r6", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database bulkput blacklist num 100 listed");
    b.cli("database put registrar 200 sip:200@b");
    wait_value(&a, "02:00:00:00:00:02/registrar", "200", Some("sip:200@b"));
    assert!(wait_until(Duration::from_secs(10), || hlen(
        &redis,
        "blacklist"
    ) == 100));
    redis.restart_empty();
    assert!(
        wait_until(Duration::from_secs(30), || hlen(&redis, "blacklist") == 100),
        "the nodes put the family back"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        redis.cli(&["HLEN", "astdbc:{redis.cluster}:h:u:registrar"]) == "1"
    }));
    a.cli("database put blacklist after restart");
    wait_value(&b, "blacklist", "after", Some("restart"));
}

#[test]
fn a_node_cut_off_from_redis_while_both_sides_write_converges_when_healed() {
    let redis = RedisServer::builder().start();
    let relay_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::start(relay_port, redis.port());
    let a = node("r7", 1, &format!("redis://127.0.0.1:{relay_port}"));
    let b = node("r7", 2, &redis.url());
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist both here");
    a.cli("database put blacklist doomed x");
    wait_value(&b, "blacklist", "doomed", Some("x"));
    relay.cut();
    a.cli("database put blacklist from-a during-split");
    a.cli("database del blacklist doomed");
    b.cli("database put blacklist from-b during-split");
    b.cli("database put blacklist both b-wins");
    wait_value(&b, "blacklist", "from-b", Some("during-split"));
    std::thread::sleep(Duration::from_secs(3));
    relay.heal();
    for n in [&a, &b] {
        wait_value(n, "blacklist", "from-a", Some("during-split"));
        wait_value(n, "blacklist", "from-b", Some("during-split"));
        wait_value(n, "blacklist", "doomed", None);
        wait_value(n, "blacklist", "both", Some("b-wins"));
    }
}

#[test]
fn a_sentinel_failover_is_followed_and_writes_go_on() {
    let master = RedisServer::builder().start();
    let mut master = master;
    let replica = RedisServer::builder().replicaof(&master).start();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&master, "astdb", 2))
        .collect();
    for s in &sentinels {
        assert!(s.wait_discovered(1, 2, Duration::from_secs(20)));
    }
    let list: Vec<String> = sentinels.iter().map(Sentinel::addr).collect();
    let general = format!(
        "redis_url = {}\nredis_sentinels = {}\nredis_master = astdb",
        master.url(),
        list.join(", ")
    );
    let a = node_with("r8", 1, &general);
    let b = node_with("r8", 2, &general);
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist before failover");
    wait_value(&b, "blacklist", "before", Some("failover"));
    master.kill();
    assert!(sentinels[0].wait_master(replica.port(), Duration::from_secs(30)));
    a.cli("database put blacklist after failover");
    wait_value(&b, "blacklist", "after", Some("failover"));
    let status = a.cli("astdb cluster show status");
    assert!(status.contains(&format!(":{}", replica.port())), "{status}");
}

#[test]
fn over_tls_with_an_acl_user_changes_replicate() {
    let redis = RedisServer::builder()
        .tls()
        .user("astdb", "pw-0123")
        .start();
    let general = format!(
        "redis_url = {}\nredis_ca_file = {}",
        redis.url(),
        redis.ca_file().unwrap().display()
    );
    let a = node_with("r9", 1, &general);
    let b = node_with("r9", 2, &general);
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist over tls");
    wait_value(&b, "blacklist", "over", Some("tls"));
    assert!(a.cli("astdb cluster show status").contains("(TLS)"));
}

#[test]
fn records_forged_or_moved_without_the_secret_are_refused_counted_and_not_applied() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let a = node("ra", 1, &url);
    let b = node("ra", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist real one");
    wait_value(&b, "blacklist", "real", Some("one"));
    let log = "astdbc:{redis.cluster}:log";
    // Made up: laid out like a record, sealed with nothing.
    let fake = format!(
        "{:016x}{}0|3|*|{}",
        u64::MAX >> 8,
        "020000000009",
        "x".repeat(60)
    );
    redis.cli(&[
        "XADD",
        log,
        "*",
        "f",
        "blacklist",
        "m",
        "g",
        "i",
        "forged",
        "r",
        &fake,
    ]);
    // Moved: a real record put under another key.
    let real = redis.cli(&["--no-raw", "HGET", &items_key("blacklist"), "real"]);
    assert!(!real.is_empty());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -p {} --raw HGET '{}' real | head -c -1 | redis-cli -p {} -x XADD '{log}' '*' f blacklist m g i moved r",
            redis.port(),
            items_key("blacklist"),
            redis.port()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    b.wait_for_cli("astdb cluster show status", Duration::from_secs(10), |s| {
        s.contains("record does not open with cluster_secret: 2")
    });
    assert!(b.wait_for_log("does not open with cluster_secret", Duration::from_secs(5)));
    wait_value(&b, "blacklist", "forged", None);
    wait_value(&b, "blacklist", "moved", None);
    // A later real change still arrives.
    a.cli("database put blacklist still works");
    wait_value(&b, "blacklist", "still", Some("works"));
}

const POLICY_FAMILIES: &str = "
[queue_state]
type = family
mode = global
sharing_policy = multicast
sharing_nodes = 1,2,3
sync_interval = 200

[settings]
type = family
mode = global
sync_interval = 200
";

#[test]
fn over_redis_multicast_reaches_exactly_its_nodes_read_only_never_publishes_and_db_shared_works() {
    let redis = RedisServer::builder().start();
    let nodes: Vec<StandIn> = (1..=4)
        .map(|i| {
            let families = if i == 4 {
                POLICY_FAMILIES.replace(
                    "[settings]\ntype = family\n",
                    "[settings]\ntype = family\nsync_mode = ro\n",
                )
            } else {
                POLICY_FAMILIES.to_string()
            };
            StandIn::builder(&format!("rbn{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file(
                    "astdb_cluster.conf",
                    &conf(i, &format!("redis_url = {}", redis.url()), &families),
                )
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_connected(&refs);
    let [n1, n2, n3, n4] = [&nodes[0], &nodes[1], &nodes[2], &nodes[3]];
    let absent = |n: &StandIn, f: &str, k: &str| {
        n.cli(&format!("database get {f} {k}"))
            .contains("not found")
    };

    n1.cli("dialplan set DB(queue_state/sales)=7");
    wait_value(n2, "queue_state", "sales", Some("7"));
    wait_value(n3, "queue_state", "sales", Some("7"));
    n4.cli("dialplan set DB(queue_state/from4)=x");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        absent(n4, "queue_state", "sales"),
        "node 4 is not a sharing node"
    );
    for n in [n1, n2, n3] {
        assert!(
            absent(n, "queue_state", "from4"),
            "node 4's writes are not accepted"
        );
    }

    n2.cli("dialplan set DB(settings/language)=en");
    wait_value(n4, "settings", "language", Some("en"));
    n4.cli("database put settings language fr");
    assert!(n4.wait_for_log("sync_mode=ro", Duration::from_secs(10)));
    wait_value(n4, "settings", "language", Some("en"));
    for n in [n1, n2, n3] {
        assert!(n
            .cli("database get settings language")
            .contains("Value: en"));
    }

    // A family shared from the dialplan at run time.
    n1.cli("dialplan set DB_SHARED(put,global)=runtime");
    n3.cli("dialplan set DB_SHARED(put,global)=runtime");
    n1.cli("dialplan set DB(runtime/k)=v");
    wait_value(n3, "runtime", "k", Some("v"));
}

#[test]
fn redis_forgets_a_tombstone_once_collected_but_never_an_item_written_again() {
    use res_astdb_cluster::config::RedisSettings;
    use res_astdb_cluster::engine::{Entry, Hlc, ItemId, Mode, SharingPolicy, Version};
    use res_astdb_cluster::node::redis::record::Sealer;
    use res_astdb_cluster::node::redis::server::{connect, Keys, Scripts};

    let redis = RedisServer::builder().start();
    let settings = RedisSettings {
        url: redis.url(),
        ca_file: None,
        sentinels: Vec::new(),
        master: None,
        stream_max: 1000,
    };
    let mut con = connect(&settings).unwrap().con;
    let keys = Keys::new("gc");
    let sealer = Sealer::new("gc", SECRET);
    let scripts = Scripts::default();
    let origin = "02:00:00:00:00:01".parse().unwrap();
    let put = |key: &str, ms: u64, value: Option<&str>, con: &mut redis::Connection| {
        let item = ItemId::global(key);
        let entry = Entry {
            version: Version::new(Hlc::from_parts(ms, 0), origin),
            value: value.map(Into::into),
        };
        let rec = sealer.seal(
            "fam",
            Mode::Global,
            &item,
            &entry,
            1,
            &SharingPolicy::Broadcast,
        );
        let replies: Vec<Vec<u8>> = scripts
            .merge
            .key(keys.items(Mode::Global, "fam"))
            .key(keys.tombstones(Mode::Global, "fam"))
            .key(keys.log())
            .arg(1000)
            .arg("fam")
            .arg("g")
            .arg(key)
            .arg(rec)
            .invoke(con)
            .unwrap();
        replies
    };
    put("dead", 1, Some("v"), &mut con);
    put("dead", 2, None, &mut con);
    put("back", 1, None, &mut con);
    // An older write loses and is answered with the record Redis keeps.
    let lost = put("dead", 1, Some("old"), &mut con);
    assert!(lost[0].starts_with(b"0000"), "the newer record comes back");
    assert_eq!(
        put("dead", 2, None, &mut con)[0],
        b"=",
        "the same one is held"
    );
    // Written again after its deletion: no longer a tombstone.
    put("back", 3, Some("alive"), &mut con);
    let tombs = keys.tombstones(Mode::Global, "fam");
    assert_eq!(redis.cli(&["ZCARD", &tombs]), "1");
    let collected: i64 = scripts
        .collect
        .key(keys.items(Mode::Global, "fam"))
        .key(&tombs)
        .arg(u64::MAX / 2)
        .arg(100)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(collected, 1);
    let items = keys.items(Mode::Global, "fam");
    assert_eq!(redis.cli(&["HEXISTS", &items, "dead"]), "0");
    assert_eq!(redis.cli(&["HEXISTS", &items, "back"]), "1");
    assert_eq!(redis.cli(&["ZCARD", &tombs]), "0");
}

#[test]
fn a_node_killed_with_sigkill_catches_up_from_redis_when_it_starts_again() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let a = node("rc", 1, &url);
    let mut b = node("rc", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database bulkput blacklist num 300 listed");
    wait_value(&b, "blacklist", "num299", Some("listed"));
    b.kill9();
    a.cli("database put blacklist after-crash yes");
    a.cli("database del blacklist num5");
    b.restart();
    wait_value(&b, "blacklist", "after-crash", Some("yes"));
    wait_value(&b, "blacklist", "num5", None);
    // After a crash the node does not trust what it knew: it compared in full.
    assert!(compares(&b) >= 1);
    b.wait_for_cli("database show blacklist", Duration::from_secs(15), |s| {
        s.contains("300 results found")
    });
}

#[test]
fn a_reload_moves_a_running_cluster_from_the_mesh_to_redis_and_a_bad_redis_option_changes_nothing()
{
    let redis = RedisServer::builder().start();
    let base = standin::port_base(9);
    let mesh = |i: u32| standin::cluster_conf("redis.cluster", SECRET, i, &[1, 2], base, PRESETS);
    let nodes: Vec<StandIn> = (1..=2)
        .map(|i| {
            StandIn::builder(&format!("rdn{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &mesh(i))
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect();
    let [a, b] = [&nodes[0], &nodes[1]];
    a.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
        s.contains("1 of 1 peers up")
    });
    a.cli("database put blacklist on mesh");
    wait_value(b, "blacklist", "on", Some("mesh"));
    // A typo in the new file: refused whole, named, the mesh goes on.
    a.write_conf(
        "astdb_cluster.conf",
        &conf(
            1,
            &format!("redis_url = {}\nredis_stream_max = lots", redis.url()),
            "",
        ),
    );
    a.cli("module reload res_astdb_cluster.so");
    assert!(a.wait_for_log(
        "redis_stream_max: 'lots' is not a number of changes",
        Duration::from_secs(5)
    ));
    a.cli("database put blacklist still mesh");
    wait_value(b, "blacklist", "still", Some("mesh"));
    for (i, n) in nodes.iter().enumerate() {
        n.write_conf(
            "astdb_cluster.conf",
            &conf(i as u32 + 1, &format!("redis_url = {}", redis.url()), ""),
        );
        n.cli("module reload res_astdb_cluster.so");
    }
    wait_connected(&[a, b]);
    a.cli("database put blacklist now redis");
    wait_value(b, "blacklist", "now", Some("redis"));
    assert!(wait_until(Duration::from_secs(10), || hlen(
        &redis,
        "blacklist"
    ) == 3));
}

/// A redis-server started by hand on `port`, keeping its snapshot in `dir`.
fn redis_in(dir: &std::path::Path, port: u16) -> std::process::Child {
    let child = std::process::Command::new(redisd::redis_server_bin())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            "snap.rdb",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ping = || {
        std::process::Command::new(redisd::redis_cli_bin())
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    };
    assert!(wait_until(Duration::from_secs(10), ping));
    child
}

#[test]
fn redis_back_from_an_older_snapshot_gets_the_changes_it_lost_from_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = redis_in(dir.path(), port);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(redisd::redis_cli_bin())
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let a = node("rs", 1, &url);
    let b = node("rs", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database put blacklist in-snapshot yes");
    wait_value(&b, "blacklist", "in-snapshot", Some("yes"));
    assert_eq!(cli(&["SAVE"]), "OK");
    a.cli("database put blacklist after-snapshot yes");
    wait_value(&b, "blacklist", "after-snapshot", Some("yes"));
    // Redis dies and comes back with the snapshot: the second change is gone there.
    let _ = server.kill();
    let _ = server.wait();
    server = redis_in(dir.path(), port);
    let items = items_key("blacklist");
    assert!(wait_until(Duration::from_secs(30), || {
        cli(&["HEXISTS", &items, "after-snapshot"]) == "1"
    }));
    assert!(a.wait_for_log(
        "Redis holds fewer changes than this node already saw",
        Duration::from_secs(5)
    ));
    a.cli("database put blacklist later yes");
    wait_value(&b, "blacklist", "later", Some("yes"));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_bulk_import_larger_than_what_waits_for_redis_reaches_every_node() {
    let redis = RedisServer::builder().start();
    let url = redis.url();
    let a = node("rq", 1, &url);
    let b = node("rq", 2, &url);
    wait_connected(&[&a, &b]);
    a.cli("database bulkput blacklist num 300000 listed");
    b.wait_for_cli(
        "database get blacklist num299999",
        Duration::from_secs(90),
        |s| s.contains("Value: listed"),
    );
    assert!(wait_until(Duration::from_secs(60), || hlen(
        &redis,
        "blacklist"
    ) == 300_000));
    b.wait_for_cli("database shared show", Duration::from_secs(60), |s| {
        s.contains("300000")
    });
}
