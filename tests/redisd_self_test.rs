//! Tests of the redisd harness itself, with real redis-server and Sentinel processes.

mod redisd;

use redisd::{wait_until, RedisServer, Sentinel};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

/// Generous: the machine running the tests may be busy with other test binaries.
const WAIT: Duration = Duration::from_secs(30);

/// Sends one command in RESP over plain TCP and returns the first reply line, or ""
/// if the server closed the connection: checks what the server enforces without
/// going through redis-cli's own handling of logins.
fn raw(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.trim_end().to_string()
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let info = server.cli(&["INFO", section]);
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
}

fn wait_link_up(replica: &RedisServer) {
    assert!(
        wait_until(WAIT, || info_field(
            replica,
            "replication",
            "master_link_status"
        )
        .as_deref()
            == Some("up")),
        "replica never linked up:\n{}",
        replica.cli(&["INFO", "replication"])
    );
}

#[test]
fn plain_server_answers_keeps_nothing_and_cleans_up() {
    let s = RedisServer::builder().start();
    let port = s.port();
    assert_eq!(s.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(s.addr(), format!("127.0.0.1:{port}"));
    assert!(s.ca_file().is_none());
    assert_eq!(raw(port, &["PING"]), "+PONG");
    assert_eq!(s.cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(s.cli(&["GET", "greeting"]), "hello world");
    assert_eq!(s.cli(&["CONFIG", "GET", "save"]), "save");
    assert_eq!(s.cli(&["CONFIG", "GET", "appendonly"]), "appendonly\nno");
    assert_eq!(s.cli(&["CONFIG", "GET", "bind"]), "bind\n127.0.0.1");
    let err = s.try_cli(&["NOSUCHCOMMAND"]).unwrap_err();
    assert!(err.contains("unknown command"), "{err}");
    let pid = s.pid().expect("running");
    assert_eq!(
        info_field(&s, "server", "process_id"),
        Some(pid.to_string())
    );
    assert!(
        s.log().contains("Ready to accept connections"),
        "{}",
        s.log()
    );
    let dir = s.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(s);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn password_is_required() {
    let s = RedisServer::builder().password("pa:ss@word").start();
    assert_eq!(
        s.url(),
        format!("redis://:pa%3Ass%40word@127.0.0.1:{}", s.port())
    );
    assert!(raw(s.port(), &["PING"]).starts_with("-NOAUTH"));
    assert!(raw(s.port(), &["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(raw(s.port(), &["AUTH", "pa:ss@word"]), "+OK");
    assert_eq!(s.cli(&["PING"]), "PONG");
    assert_eq!(s.password(), Some("pa:ss@word"));
}

#[test]
fn acl_user_logs_in_and_default_user_keeps_its_password() {
    let s = RedisServer::builder()
        .password("root-pw")
        .user("alice", "wonder land")
        .start();
    assert_eq!(
        s.url(),
        format!("redis://alice:wonder%20land@127.0.0.1:{}", s.port())
    );
    assert_eq!(s.cli(&["ACL", "WHOAMI"]), "alice");
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    assert!(raw(s.port(), &["PING"]).starts_with("-NOAUTH"));
    assert!(raw(s.port(), &["AUTH", "alice", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(raw(s.port(), &["AUTH", "alice", "wonder land"]), "+OK");
    assert_eq!(raw(s.port(), &["AUTH", "root-pw"]), "+OK");
}

#[test]
fn tls_server_serves_tls_only_with_a_certificate_for_loopback() {
    let s = RedisServer::builder().tls().password("pw").start();
    assert_eq!(s.url(), format!("rediss://:pw@127.0.0.1:{}", s.port()));
    let ca = s.ca_file().expect("TLS server has a CA file");
    assert!(std::fs::read_to_string(ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(s.cli(&["PING"]), "PONG");
    assert_eq!(s.cli(&["CONFIG", "GET", "port"]), "port\n0");
    assert_ne!(raw(s.port(), &["PING"]), "+PONG");
    // What a client library checks: the chain, and the name 127.0.0.1 / localhost.
    for check in [
        ["-verify_ip", "127.0.0.1"],
        ["-verify_hostname", "localhost"],
    ] {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &s.addr(),
                "-brief",
                "-verify_return_error",
            ])
            .arg("-CAfile")
            .arg(ca)
            .args(check)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client");
        assert!(
            out.status.success(),
            "openssl s_client {check:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn replica_follows_its_master_with_the_masters_password() {
    let master = RedisServer::builder().password("secret").start();
    let replica = RedisServer::builder().replicaof(&master).start();
    assert_eq!(replica.password(), Some("secret"));
    wait_link_up(&replica);
    master.cli(&["SET", "k", "v1"]);
    assert!(wait_until(WAIT, || replica.cli(&["GET", "k"]) == "v1"));
    assert_eq!(
        info_field(&replica, "replication", "role").as_deref(),
        Some("slave")
    );
}

#[test]
fn tls_replica_of_tls_master_with_acl_user() {
    let master = RedisServer::builder().tls().user("repl", "pw").start();
    let replica = RedisServer::builder().replicaof(&master).start();
    assert!(replica.is_tls());
    assert_eq!(replica.user(), Some("repl"));
    assert_eq!(
        std::fs::read(replica.ca_file().unwrap()).unwrap(),
        std::fs::read(master.ca_file().unwrap()).unwrap()
    );
    wait_link_up(&replica);
    master.cli(&["SET", "k", "over tls"]);
    assert!(wait_until(WAIT, || replica.cli(&["GET", "k"]) == "over tls"));
}

#[test]
fn stop_kill_and_restart_empty() {
    let mut s = RedisServer::builder().password("pw").start();
    let port = s.port();
    let first = s.pid().unwrap();
    s.cli(&["SET", "k", "v"]);
    s.restart_empty();
    assert_eq!(s.port(), port);
    assert_ne!(s.pid(), Some(first));
    assert_eq!(s.cli(&["DBSIZE"]), "0");

    s.kill();
    assert_eq!(s.pid(), None);
    assert!(!s.is_running());
    assert!(s.try_cli(&["PING"]).is_err());
    s.restart_empty();
    assert_eq!(s.port(), port);
    assert_eq!(s.cli(&["PING"]), "PONG");

    s.stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(s.log().contains("User requested shutdown"));
}

#[test]
fn restart_empty_waits_for_its_port_to_be_free_again() {
    let mut s = RedisServer::builder().start();
    let port = s.port();
    s.stop();
    // Someone else holds the port for a moment: redis fails to bind, and the
    // harness tries again on the same port until it can.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the port");
    let log = s.log_file();
    let release = thread::spawn(move || {
        let refused =
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Address already in use"));
        wait_until(Duration::from_secs(5), refused);
        drop(squatter);
    });
    s.restart_empty();
    release.join().unwrap();
    assert_eq!(s.port(), port);
    assert_eq!(s.cli(&["PING"]), "PONG");
    assert!(s.log().contains("Address already in use"), "{}", s.log());
}

#[test]
fn a_replica_restarted_empty_resyncs() {
    let master = RedisServer::builder().start();
    let mut replica = RedisServer::builder().replicaof(&master).start();
    master.cli(&["SET", "k", "v"]);
    assert!(wait_until(WAIT, || replica.cli(&["GET", "k"]) == "v"));
    replica.restart_empty();
    wait_link_up(&replica);
    assert!(wait_until(WAIT, || replica.cli(&["GET", "k"]) == "v"));
}

#[test]
fn servers_started_at_once_get_ports_of_their_own() {
    let handles: Vec<_> = (0..6)
        .map(|_| thread::spawn(|| RedisServer::builder().start()))
        .collect();
    let servers: Vec<RedisServer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ports: BTreeSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        assert_eq!(s.cli(&["PING"]), "PONG");
    }
}

#[test]
fn sentinels_fail_over_to_the_replica() {
    let mut master = RedisServer::builder().start();
    let replica = RedisServer::builder().replicaof(&master).start();
    wait_link_up(&replica);
    // A Sentinel learns replicas from the master's INFO, which it asks at once and
    // then every 10 s: start them once the master lists its replica.
    assert!(wait_until(WAIT, || info_field(
        &master,
        "replication",
        "connected_slaves"
    )
    .as_deref()
        == Some("1")));
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&master, "mymaster", 2))
        .collect();
    for s in &sentinels {
        assert_eq!(s.master_addr(), Some(master.addr()));
        assert!(
            s.wait_discovered(1, 2, WAIT),
            "sentinel {} did not find the replica and the others:\n{}",
            s.addr(),
            s.cli(&["SENTINEL", "MASTER", "mymaster"])
        );
    }
    master.kill();
    for s in &sentinels {
        assert!(
            s.wait_master(replica.port(), Duration::from_secs(60)),
            "sentinel {} still names {:?}\n{}",
            s.addr(),
            s.master_addr(),
            s.log()
        );
    }
    assert!(wait_until(WAIT, || info_field(
        &replica,
        "replication",
        "role"
    )
    .as_deref()
        == Some("master")));
}

#[test]
fn sentinel_logs_in_to_a_password_master_and_its_replica() {
    let master = RedisServer::builder().user("sentinel-user", "pw").start();
    let replica = RedisServer::builder().replicaof(&master).start();
    wait_link_up(&replica);
    assert!(wait_until(WAIT, || info_field(
        &master,
        "replication",
        "connected_slaves"
    )
    .as_deref()
        == Some("1")));
    let s = Sentinel::start(&master, "locked", 1);
    assert_eq!(s.addr(), format!("127.0.0.1:{}", s.port()));
    assert_eq!(s.master_name(), "locked");
    // Without the login, the Sentinel could not read INFO and would know no replica.
    assert!(
        s.wait_discovered(1, 0, WAIT),
        "{}",
        s.cli(&["SENTINEL", "MASTER", "locked"])
    );
    let flags = s.master_field("flags").unwrap();
    assert_eq!(flags, "master", "{flags}");
    assert_eq!(s.master_addr(), Some(master.addr()));
}

#[test]
fn wait_until_polls_until_true_or_gives_up() {
    let mut n = 0;
    assert!(wait_until(WAIT, || {
        n += 1;
        n == 3
    }));
    assert_eq!(n, 3);
    assert!(!wait_until(Duration::from_millis(100), || false));
}

#[test]
#[should_panic(expected = "Bad directive or wrong number of arguments")]
fn a_server_that_cannot_start_panics_with_what_it_said() {
    RedisServer::builder()
        .config("no-such-directive yes")
        .start();
}
