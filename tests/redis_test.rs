//! Stand-in Asterisk servers with `transport = redis`, against real `redis-server`
//! processes on loopback: what replicates through Redis, what Redis holds, and how
//! the cluster survives Redis's faults.

mod standin;

use std::time::Duration;

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

/// A throwaway redis-server on a free loopback port.
struct Redis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if r.cli(&["PING"]) == "PONG" {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conf(node: u32, url: &str, extra: &str) -> String {
    format!(
        "[general]\ncluster_name = redis.cluster\ncluster_node = {node}\ncluster_secret = {SECRET}\n\
         transport = redis\nredis_url = {url}\n{PRESETS}{extra}"
    )
}

fn node(name: &str, i: u32, url: &str) -> StandIn {
    StandIn::builder(&format!("{name}n{i}"))
        .eid(&format!("02:00:00:00:00:0{i}"))
        .conf_file("astdb_cluster.conf", &conf(i, url, ""))
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
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
            s.contains(" connected")
        });
    }
}

#[test]
fn over_redis_a_write_and_its_delete_reach_every_node_and_redis_holds_no_readable_value() {
    let redis = Redis::start();
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
    let nodes_out = nodes[0].cli("astdb cluster show nodes");
    assert!(nodes_out.contains("2 nodes seen in Redis"), "{nodes_out}");
}
