//! Tests of the stand-in Asterisk's res_pjsip publish part (asterisk-stubs/src/pjsip.c):
//! PUBLISH requests carried as SIP text over loopback UDP between stand-ins, through the
//! test module `stub_sip` (asterisk-stubs/testmods/stub_sip.c), and the loader's
//! `requires`.

mod standin;

use standin::{port_base, testmod_so, StandIn};
use std::net::UdpSocket;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// pjsip.conf for a node called `own` on `own_port`, publishing to `peer` on `peer_port`
/// (outbound-publish `to-<peer>`) and accepting publications from endpoint `peer`
/// (and from `tester`) for its resource `own`.
fn pjsip_conf(own: &str, own_port: u16, peer: &str, peer_port: u16, expiration: u32) -> String {
    format!(
        "[transport-udp]\ntype=transport\nprotocol=udp\nbind=127.0.0.1:{own_port}\n\n\
         [{peer}]\ntype=endpoint\ncontext=default\n\n\
         [tester]\ntype=endpoint\n\n\
         [to-{peer}]\ntype=outbound-publish\nserver_uri=sip:{peer}@127.0.0.1:{peer_port}\n\
         from_uri=sip:{own}@127.0.0.1:{own_port}\nevent=asterisk-db\nexpiration={expiration}\n\n\
         [{own}]\ntype=inbound-publication\nevent_asterisk-db={own}-config\n\n\
         [refusing]\ntype=inbound-publication\nevent_asterisk-db=refuse\n\n\
         [only-peer]\ntype=inbound-publication\nendpoint={peer}\nevent_asterisk-db=x\n\n\
         [other-event]\ntype=inbound-publication\nevent_presence=x\n"
    )
}

fn node(name: &str, own: &str, own_port: u16, peer: &str, peer_port: u16) -> StandIn {
    StandIn::builder(name)
        .conf_file(
            "pjsip.conf",
            &pjsip_conf(own, own_port, peer, peer_port, 3600),
        )
        .module_as(testmod_so("stub_sip"), "stub_sip.so")
        .preload(&["stub_sip.so"])
        .start()
}

/// Two stand-ins, node1 and node2, publishing to each other; SIP logging on.
fn pair(slot: u16) -> (StandIn, StandIn, u16, u16) {
    let base = port_base(slot);
    let (p1, p2) = (base + 1, base + 2);
    let n1 = node("sip-node1", "node1", p1, "node2", p2);
    let n2 = node("sip-node2", "node2", p2, "node1", p1);
    for n in [&n1, &n2] {
        assert!(n
            .cli("pjsip set logger on")
            .contains("PJSIP Logging enabled"));
    }
    (n1, n2, p1, p2)
}

/// Sends one raw SIP request from a fresh UDP socket; returns the response text.
fn raw_request(port: u16, text: &str) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(text.as_bytes(), ("127.0.0.1", port)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).expect("a SIP response within 5 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn publish_text(
    port: u16,
    from_user: &str,
    resource: &str,
    event: Option<&str>,
    etag: Option<&str>,
    body: &str,
) -> String {
    let mut t = format!(
        "PUBLISH sip:{resource}@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKPjtest{}\r\n\
         From: <sip:{from_user}@127.0.0.1:9>;tag=abc\r\n\
         To: <sip:{resource}@127.0.0.1:{port}>\r\n\
         Call-ID: test-{}\r\nCSeq: 1 PUBLISH\r\n",
        rand_token(),
        rand_token()
    );
    if let Some(e) = event {
        t.push_str(&format!("Event: {e}\r\n"));
    }
    if let Some(e) = etag {
        t.push_str(&format!("SIP-If-Match: {e}\r\n"));
    }
    t.push_str(&format!(
        "Expires: 3600\r\nMax-Forwards: 70\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    t
}

fn rand_token() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", n ^ ((std::process::id() as u128) << 64))
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

/// The first SIP-ETag in `text` (a response, or a log of messages).
fn etag_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("SIP-ETag: "))
        .expect("a SIP-ETag in a response")
        .trim()
        .to_string()
}

/// A stand-in with stub_sip on `port`, for raw requests from the test.
fn receiver(slot: u16) -> (StandIn, u16) {
    let base = port_base(slot);
    let port = base + 1;
    let n = node("sip-raw", "node1", port, "node2", base + 2);
    (n, port)
}

#[test]
fn a_publish_carries_event_asterisk_db_and_its_json_body_to_the_other_stand_in() {
    let (n1, n2, _p1, p2) = pair(0);
    let out = n1.cli(r#"stubsip send to-node2 {"family":"cluster","key":"k1","value":"v1"}"#);
    assert!(out.contains("Queued"), "{out}");
    assert!(
        n2.wait_for_log(
            r#"stubsip received state=initialized resource=node2 config=node2-config len=44 body={"family":"cluster","key":"k1","value":"v1"}"#,
            WAIT
        ),
        "{}",
        n2.log()
    );
    assert!(n2
        .log()
        .contains("stubsip new_publication endpoint=node1 resource=node2 config=node2-config"));
    assert!(n1.wait_for_log("<--- Received SIP response", WAIT));
    let log = n1.log();
    assert!(
        log.contains("<--- Transmitting SIP request (")
            && log.contains(&format!("to UDP:127.0.0.1:{p2} --->")),
        "{log}"
    );
    for needle in [
        &format!("PUBLISH sip:node2@127.0.0.1:{p2} SIP/2.0") as &str,
        "Event: asterisk-db",
        "Content-Type: application/json",
        "Content-Length: 44",
        "CSeq: 1 PUBLISH",
        "SIP/2.0 200 OK",
        "SIP-ETag: ",
    ] {
        assert!(log.contains(needle), "sender log lacks {needle:?}:\n{log}");
    }
    assert!(n2.log().contains("<--- Received SIP request ("));
    assert!(n2.log().contains("<--- Transmitting SIP response ("));
    let mods = n1.cli("module show like pjsip");
    for m in [
        "res_pjsip.so",
        "res_pjsip_pubsub.so",
        "res_pjsip_outbound_publish.so",
    ] {
        assert!(mods.contains(m), "{mods}");
    }
    assert!(n1.log().contains("stubsip start_publishing to-node2"));
}

#[test]
fn the_second_publish_names_the_entity_tag_of_the_first() {
    let (n1, n2, _, _) = pair(1);
    n1.cli(r#"stubsip send to-node2 {"n":1}"#);
    n1.cli(r#"stubsip send to-node2 {"n":2}"#);
    assert!(
        n2.wait_for_log(r#"stubsip received state=active resource=node2 config=node2-config len=7 body={"n":2}"#, WAIT),
        "{}",
        n2.log()
    );
    let log = n1.log();
    let etag = etag_of(&log);
    assert!(log.contains(&format!("SIP-If-Match: {etag}")), "{log}");
    assert!(log.contains("CSeq: 2 PUBLISH"), "{log}");
    // One Call-ID for both requests.
    let call_ids: std::collections::BTreeSet<&str> =
        log.lines().filter(|l| l.starts_with("Call-ID: ")).collect();
    assert_eq!(call_ids.len(), 1, "{call_ids:?}");
}

#[test]
fn a_publish_for_a_resource_without_inbound_publication_gets_404() {
    let (n, port) = receiver(2);
    let r = raw_request(
        port,
        &publish_text(port, "tester", "nobody", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 404 Not Found", "{r}");
    // The event is not configured for that resource: 404 too.
    let r = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "other-event",
            Some("asterisk-db"),
            None,
            "{}",
        ),
    );
    assert_eq!(status_line(&r), "SIP/2.0 404 Not Found", "{r}");
    // The response copies the transaction's headers and tags To.
    assert!(
        r.contains("CSeq: 1 PUBLISH") && r.contains("Call-ID: test-"),
        "{r}"
    );
    assert!(
        r.contains("To: <sip:other-event@127.0.0.1:") && r.contains(";tag="),
        "{r}"
    );
    drop(n);
}

#[test]
fn one_from_an_unknown_endpoint_gets_403() {
    let (n, port) = receiver(3);
    let r = raw_request(
        port,
        &publish_text(port, "stranger", "node1", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 403 Forbidden", "{r}");
    assert!(
        n.wait_for_log(
            "Request 'PUBLISH' from '<sip:stranger@127.0.0.1:9>' failed for '127.0.0.1:",
            WAIT
        ),
        "{}",
        n.log()
    );
    assert!(n.log().contains("- No matching endpoint found"));
    // A resource bound to another endpoint: 403 as well.
    let r = raw_request(
        port,
        &publish_text(port, "tester", "only-peer", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 403 Forbidden", "{r}");
    // new_publication's own 403 is the response.
    let r = raw_request(
        port,
        &publish_text(port, "tester", "refusing", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 403 Forbidden", "{r}");
}

#[test]
fn an_unknown_entity_tag_gets_412() {
    let (_n, port) = receiver(4);
    let r = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            Some("987654"),
            "{}",
        ),
    );
    assert_eq!(
        status_line(&r),
        "SIP/2.0 412 Conditional Request Failed",
        "{r}"
    );
    // A known one works, and is replaced by a new one.
    let r = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            None,
            r#"{"a":1}"#,
        ),
    );
    assert_eq!(status_line(&r), "SIP/2.0 200 OK", "{r}");
    let etag = etag_of(&r);
    assert!(r.contains("Expires: 3600"), "{r}");
    let r2 = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            Some(&etag),
            r#"{"a":2}"#,
        ),
    );
    assert_eq!(status_line(&r2), "SIP/2.0 200 OK", "{r2}");
    let etag2 = etag_of(&r2);
    assert_ne!(etag, etag2);
    let r3 = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            Some(&etag),
            "{}",
        ),
    );
    assert_eq!(
        status_line(&r3),
        "SIP/2.0 412 Conditional Request Failed",
        "{r3}"
    );
}

#[test]
fn a_refused_initial_body_gets_500() {
    let (n, port) = receiver(5);
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", Some("asterisk-db"), None, "bad"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 500 Internal Server Error", "{r}");
    assert!(n.log().contains(
        "stubsip received state=initialized resource=node1 config=node1-config len=3 body=bad"
    ));
    // A refused update ends the publication: 200 with Expires: 0, and its tag is gone.
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", Some("asterisk-db"), None, "{}"),
    );
    let etag = etag_of(&r);
    let r = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            Some(&etag),
            "bad",
        ),
    );
    assert_eq!(status_line(&r), "SIP/2.0 200 OK", "{r}");
    assert!(r.contains("Expires: 0"), "{r}");
    let etag = etag_of(&r);
    let r = raw_request(
        port,
        &publish_text(
            port,
            "tester",
            "node1",
            Some("asterisk-db"),
            Some(&etag),
            "{}",
        ),
    );
    assert_eq!(
        status_line(&r),
        "SIP/2.0 412 Conditional Request Failed",
        "{r}"
    );
}

#[test]
fn no_handler_gets_489() {
    let (n, port) = receiver(6);
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", Some("presence"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 489 Bad Event", "{r}");
    assert!(n.wait_for_log(
        "No registered publish handler for event presence from tester",
        WAIT
    ));
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", None, None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 489 Bad Event", "{r}");
    // Other methods are not implemented.
    let r = raw_request(
        port,
        "OPTIONS sip:node1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKo1\r\n\
         From: <sip:tester@127.0.0.1>;tag=1\r\nTo: <sip:node1@127.0.0.1>\r\nCall-ID: o1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status_line(&r), "SIP/2.0 501 Not Implemented", "{r}");
    // After the module is unloaded, the event has no handler either; loading it again works.
    assert!(n
        .cli("module unload stub_sip.so")
        .contains("Unloaded stub_sip.so"));
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 489 Bad Event", "{r}");
    assert!(n
        .cli("module load stub_sip.so")
        .contains("Loaded stub_sip.so"));
    let r = raw_request(
        port,
        &publish_text(port, "tester", "node1", Some("asterisk-db"), None, "{}"),
    );
    assert_eq!(status_line(&r), "SIP/2.0 200 OK", "{r}");
    assert!(n
        .cli("module unload res_pjsip.so")
        .contains("cannot be unloaded"));
}

#[test]
fn a_module_requiring_res_pjsip_does_not_load_without_pjsip_conf() {
    let n = StandIn::builder("sip-absent")
        .module_as(testmod_so("stub_sip"), "stub_sip.so")
        .preload(&["stub_sip.so"])
        .start();
    assert!(
        n.log()
            .contains("stub_sip has one or more unknown dependencies."),
        "{}",
        n.log()
    );
    let mods = n.cli("module show");
    assert!(
        !mods.contains("stub_sip.so") && !mods.contains("res_pjsip"),
        "{mods}"
    );
    let out = n.cli("module load stub_sip.so");
    assert!(out.contains("Unable to load module stub_sip.so"), "{out}");
}

#[test]
fn the_required_module_cannot_be_unloaded_while_its_dependent_is_loaded() {
    // Listed before what it requires: start-up loads it after.
    let n = StandIn::builder("sip-requires")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .module_as(testmod_so("stub_needs_good"), "stub_needs_good.so")
        .preload(&["stub_needs_good.so", "stub_good.so"])
        .start();
    let mods = n.cli("module show like stub");
    assert!(
        mods.contains("stub_needs_good.so") && mods.contains("stub_good.so"),
        "{mods}"
    );
    let out = n.cli("module unload stub_good.so");
    assert!(
        out.contains("Soft unload failed, 'stub_good.so' has use count 1"),
        "{out}"
    );
    assert!(n
        .cli("module unload stub_needs_good.so")
        .contains("Unloaded stub_needs_good.so"));
    assert!(n
        .cli("module unload stub_good.so")
        .contains("Unloaded stub_good.so"));
    let out = n.cli("module load stub_needs_good.so");
    assert!(out.contains("Unable to load module"), "{out}");
}

#[test]
fn a_60_kb_body_arrives_intact() {
    let (n1, n2, _, _) = pair(7);
    let value: String = (0..60_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = format!(r#"{{"v":"{value}"}}"#);
    assert!(n1
        .cli(&format!("stubsip send to-node2 {body}"))
        .contains("Queued"));
    assert!(
        n2.wait_for_log(&format!("len={} body={body}", body.len()), WAIT),
        "{}",
        n2.log().len()
    );
}

#[test]
fn a_restarted_receiver_answers_412_and_the_body_is_resent_as_initial() {
    let (n1, mut n2, _, _) = pair(8);
    n1.cli(r#"stubsip send to-node2 {"n":1}"#);
    assert!(n2.wait_for_log(
        r#"state=initialized resource=node2 config=node2-config len=7 body={"n":1}"#,
        WAIT
    ));
    assert!(n1.wait_for_log("SIP/2.0 200 OK", WAIT));
    n2.kill9();
    n2.restart();
    n2.cli("pjsip set logger on");
    n1.cli(r#"stubsip send to-node2 {"n":2}"#);
    assert!(
        n2.wait_for_log(
            r#"state=initialized resource=node2 config=node2-config len=7 body={"n":2}"#,
            WAIT
        ),
        "{}",
        n2.log()
    );
    assert!(
        n1.wait_for_log("SIP/2.0 412 Conditional Request Failed", WAIT),
        "{}",
        n1.log()
    );
}

#[test]
fn an_unanswered_publish_is_retransmitted_and_given_up_after_32_seconds() {
    let base = port_base(9);
    // Nobody listens on base + 2.
    let n1 = node("sip-lonely", "node1", base + 1, "node2", base + 2);
    n1.cli("pjsip set logger on");
    n1.cli(r#"stubsip send to-node2 {"n":1}"#);
    assert!(
        n1.wait_for_log(
            "No response received for outbound publish 'to-node2'",
            Duration::from_secs(45)
        ),
        "{}",
        n1.log()
    );
    let sent = n1.log().matches("<--- Transmitting SIP request").count();
    // 0, 0.5, 1.5, 3.5, 7.5, then every 4 s until 32 s: 11 transmissions.
    assert!((9..=12).contains(&sent), "{sent} transmissions");
    // The next message is sent (with a fresh branch, CSeq 2).
    n1.cli(r#"stubsip send to-node2 {"n":2}"#);
    assert!(n1.wait_for_log("CSeq: 2 PUBLISH", WAIT));
}
