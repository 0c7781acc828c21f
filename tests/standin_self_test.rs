//! Tests of the stand-in Asterisk itself (no res_astdb_cluster needed).

mod standin;

use standin::{testmod_so, StandIn};
use std::time::Duration;

fn plain(name: &str) -> StandIn {
    StandIn::builder(name).start()
}

#[test]
fn version_settings_and_threads() {
    let s = StandIn::builder("basics").eid("02:00:00:00:00:07").start();
    assert_eq!(
        s.cli("core show version").trim(),
        "Asterisk stand-in (res_astdb_cluster test double)"
    );
    let settings = s.cli("core show settings");
    assert!(
        settings.contains("Entity ID:                   02:00:00:00:00:07"),
        "{settings}"
    );
    assert!(
        settings.contains(&format!("{}", s.db_dir().join("astdb").display())),
        "{settings}"
    );
    let threads = s.cli("core show threads");
    assert!(
        threads.lines().last().unwrap().ends_with("threads listed."),
        "{threads}"
    );
    assert!(s.cli("no such thing").contains("No such command"));
}

#[test]
fn astdb_cli_put_get_show_deltree() {
    let s = plain("astdb-cli");
    assert_eq!(
        s.cli("database put fam k1 v1"),
        "Updated database successfully\n"
    );
    s.cli("database put fam/sub k2 \"two words\"");
    s.cli("database put other k3 v3");
    assert_eq!(s.cli("database get fam k1"), "Value: v1\n");
    assert_eq!(
        s.cli("database get fam nope"),
        "Database entry not found.\n"
    );
    assert_eq!(s.cli("database get fam/sub k2"), "Value: two words\n");
    let show = s.cli("database show fam");
    assert_eq!(
        show,
        format!(
            "{:<50}: {:<25}\n{:<50}: {:<25}\n2 results found.\n",
            "/fam/k1", "v1", "/fam/sub/k2", "two words"
        )
    );
    assert!(s.cli("database show").ends_with("3 results found.\n"));
    assert!(s
        .cli("database show fam sub")
        .ends_with("1 results found.\n"));
    // A family is a whole path component: "fa" does not match "/fam/...".
    assert!(s.cli("database show fa").ends_with("0 results found.\n"));
    assert!(s.cli("database showkey k3").contains("/other/k3"));
    assert_eq!(
        s.cli("database del fam nope"),
        "Database entry could not be removed.\n"
    );
    assert_eq!(s.cli("database del fam k1"), "Database entry removed.\n");
    assert_eq!(
        s.cli("database deltree fam"),
        "1 database entries removed.\n"
    );
    assert_eq!(
        s.cli("database deltree fam"),
        "Database entries do not exist.\n"
    );
    assert!(s
        .cli("database query \"SELECT COUNT(*) AS n FROM astdb\"")
        .contains("n    : 1"));
    assert!(s
        .cli("database put onlytwo args")
        .starts_with("Usage: database put"));
}

#[test]
fn astdb_via_dialplan_functions() {
    let s = plain("astdb-func");
    assert_eq!(s.cli("dialplan set DB(fam/key)=hello world"), "Result: 0\n");
    assert_eq!(s.cli("dialplan eval [${DB(fam/key)}]"), "[hello world]\n");
    assert_eq!(s.cli("database get fam key"), "Value: hello world\n");
    assert_eq!(
        s.cli("dialplan eval ${DB_EXISTS(fam/key)}${DB_EXISTS(fam/none)}"),
        "10\n"
    );
    s.cli("dialplan set DB(fam/a/b)=1");
    s.cli("dialplan set DB(fam/c)=x,y");
    assert_eq!(s.cli("dialplan eval ${DB_KEYS(fam)}"), "a,c,key\n");
    assert_eq!(s.cli("dialplan eval ${DB_KEYCOUNT(fam)}"), "3\n");
    // Nested substitution inside the arguments.
    s.cli("database put ptr target key");
    assert_eq!(
        s.cli("dialplan eval ${DB(fam/${DB(ptr/target)})}"),
        "hello world\n"
    );
    assert_eq!(
        s.cli("dialplan eval ${DB_DELETE(fam/key)}"),
        "hello world\n"
    );
    assert_eq!(s.cli("database get fam key"), "Database entry not found.\n");
    let out = s.cli("dialplan eval ${NO_SUCH_FUNC(x)}");
    assert!(
        out.contains("ERROR: Function NO_SUCH_FUNC not registered"),
        "{out}"
    );
    assert!(s
        .cli("core show function DB")
        .contains("Read from or write to the Asterisk database."));
}

#[test]
fn manager_actions_write_the_astdb() {
    let s = plain("ami");
    let out = s.cli("manager action DBPut Family=f Key=k Val=v");
    assert_eq!(
        out,
        "Response: Success\nMessage: Updated database successfully\n"
    );
    assert!(s
        .cli("manager action DBGet Family=f Key=k")
        .contains("Val: v"));
    assert!(s
        .cli("manager action DBDel Family=f Key=nope")
        .contains("Response: Error"));
    assert!(s
        .cli("manager action DBDel Family=f Key=k")
        .contains("Key deleted successfully"));
    s.cli("manager action DBPut Family=g Key=a/b Val=1");
    assert!(s
        .cli("manager action DBDelTree Family=g Key=a")
        .contains("Response: Success"));
    assert!(s
        .cli("manager action DBDelTree Family=g")
        .contains("Database entry not found"));
}

/// Writes are committed by the sync thread at most about once a second, so a
/// second connection sees a write only after that commit.
#[test]
fn astdb_commits_about_once_a_second() {
    let s = plain("commit");
    let count = |key: &str| -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            s.db_file(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open astdb");
        conn.query_row("SELECT COUNT(*) FROM astdb WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .expect("query")
    };
    // The first write after a quiet second is committed at once...
    s.cli("database put c first 1");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count("/c/first"), 1);
    // ...the next one waits for the sync thread to wake up again.
    s.cli("database put c second 2");
    assert_eq!(
        count("/c/second"),
        0,
        "a write must not be visible before its commit"
    );
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        count("/c/second"),
        1,
        "the write must be committed within about a second"
    );
}

#[test]
fn astdb_survives_restart_and_shutdown_commits() {
    let mut s = plain("restart");
    s.cli("database put r a 1");
    s.cli("database put r b 2");
    s.stop();
    s.restart();
    assert!(s.cli("database show r").ends_with("2 results found.\n"));
    s.kill9();
    s.restart();
    assert_eq!(s.cli("database get r a"), "Value: 1\n");
}

#[test]
fn config_loading() {
    let s = plain("config");
    s.write_conf(
        "good.conf",
        "; comment\n[tpl](!)\ncolor = blue ; trailing\n\n[one](tpl)\nname = first\\;not a comment\nexten => 100\n[two]\n  spaced   =   value  \n",
    );
    let out = s.cli("config test load good.conf");
    assert_eq!(
        out,
        "[one]\ncolor = blue (good.conf:3, inherited)\nname = first;not a comment (good.conf:6)\nexten => 100 (good.conf:7)\n[two]\nspaced = value (good.conf:9)\n"
    );
    assert_eq!(s.cli("config test load missing.conf"), "MISSING\n");
    s.write_conf("bad.conf", "[ok]\na = 1\n[broken\nb = 2\n");
    assert_eq!(s.cli("config test load bad.conf"), "INVALID\n");
    assert!(s.log().contains("parse error: no closing ']', line 3 of"));
    s.write_conf("nocat.conf", "a = 1\n");
    assert_eq!(s.cli("config test load nocat.conf"), "INVALID\n");
    s.write_conf("noparent.conf", "[x](nothere)\n");
    assert_eq!(s.cli("config test load noparent.conf"), "INVALID\n");
    // CONFIG_FLAG_FILEUNCHANGED: unchanged for the same who_asked only.
    assert!(s
        .cli("config test load good.conf mod_a unchanged")
        .starts_with("[one]"));
    assert_eq!(
        s.cli("config test load good.conf mod_a unchanged"),
        "UNCHANGED\n"
    );
    assert!(s
        .cli("config test load good.conf mod_b unchanged")
        .starts_with("[one]"));
    s.write_conf("good.conf", "[three]\nx = y\n");
    assert_eq!(
        s.cli("config test load good.conf mod_a unchanged"),
        "[three]\nx = y (good.conf:2)\n"
    );
}

#[test]
fn loader_checks_registration_and_key() {
    let s = StandIn::builder("loader")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .module_as(testmod_so("stub_badkey"), "stub_badkey.so")
        .module_as(testmod_so("stub_noreg"), "stub_noreg.so")
        .preload(&["stub_good.so"])
        .start();
    assert!(s.cli("module show").contains("stub_good.so"));
    // The stand-in wrote since/provided_by into the undocumented function record.
    assert!(s
        .log()
        .contains("stub_good loaded (since=set provided_by=stub_good)"));
    assert!(s.cli("module load stub_good.so").contains("already loaded"));

    let out = s.cli("module load stub_noreg.so");
    assert!(out.contains("did not register itself during load"), "{out}");
    assert!(s
        .log()
        .contains("Module 'stub_noreg.so' did not register itself during load"));
    let out = s.cli("module load stub_badkey.so");
    assert!(out.contains("did not provide a valid license key"), "{out}");
    let shown = s.cli("module show");
    assert!(
        !shown.contains("stub_noreg") && !shown.contains("stub_badkey"),
        "{shown}"
    );
}

#[test]
fn module_unload_load_cycles() {
    let s = StandIn::builder("cycles")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .preload(&["stub_good.so"])
        .start();
    for _ in 0..5 {
        assert_eq!(s.cli("stubgood hello x"), "hello x (loads=1)\n");
        assert_eq!(s.cli("dialplan eval ${STUB_ECHO(a,b)}"), "STUB_ECHO:a,b\n");
        assert!(s
            .cli("module unload stub_good.so")
            .contains("Unloaded stub_good.so"));
        assert!(s.cli("stubgood hello x").contains("No such command"));
        assert!(s
            .cli("dialplan eval ${STUB_ECHO(a)}")
            .contains("not registered"));
        assert!(s
            .cli("module load stub_good.so")
            .contains("Loaded stub_good.so"));
    }
    assert!(!s.log().contains("still mapped after dlclose"));
    assert!(s
        .cli("module reload stub_good.so")
        .contains("reloaded successfully"));
    assert!(s.log().contains("stub_good reloaded"));
    assert!(s
        .cli("module unload nothere.so")
        .contains("could not be found"));
}

#[test]
fn cli_completion() {
    let s = StandIn::builder("complete")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .preload(&["stub_good.so"])
        .start();
    // Handler results (n = 0, 1, ...) and ast_cli_completion_add() results.
    assert_eq!(s.cli("_complete stubgood hello "), "alpha\nbeta\nbravo\n");
    assert_eq!(s.cli("_complete stubgood hello b"), "beta\nbravo\n");
    // Command words.
    assert_eq!(s.cli("_complete database sh"), "show\nshowkey\n");
    assert!(s.cli("_complete stub").contains("stubgood"));
    assert_eq!(s.cli("_complete module unload stub_"), "stub_good.so\n");
    assert!(s.cli("core show help").contains("stubgood hello"));
}

#[test]
fn instances_run_side_by_side() {
    let a = StandIn::builder("side-a").eid("02:00:00:00:00:0a").start();
    let b = StandIn::builder("side-b").eid("02:00:00:00:00:0b").start();
    a.cli("database put x k a");
    b.cli("database put x k b");
    assert_eq!(a.cli("database get x k"), "Value: a\n");
    assert_eq!(b.cli("database get x k"), "Value: b\n");
    assert!(a.cli("core show settings").contains("02:00:00:00:00:0a"));
    assert!(b.cli("core show settings").contains("02:00:00:00:00:0b"));
}

#[test]
fn concurrent_clients() {
    let s = plain("concurrent");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..10 {
                    s.cli(&format!("database put conc t{t}k{i} {i}"));
                }
            });
        }
    });
    assert!(s.cli("database show conc").ends_with("40 results found.\n"));
}

#[test]
fn function_docs_from_thirdparty_xml() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE docs SYSTEM "appdocsxml.dtd">
<docs xmlns:xi="http://www.w3.org/2001/XInclude">
	<function name="STUB_ECHO" language="en_US">
		<since><version>1.0.0</version></since>
		<synopsis>Echo the arguments &amp; the name.</synopsis>
		<syntax><parameter name="a" required="true"/><parameter name="b"/></syntax>
		<description><para>Returns NAME:args.</para></description>
		<see-also><ref type="function">DB</ref></see-also>
	</function>
</docs>
"#;
    let s = StandIn::builder("docs")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .data_file("documentation/thirdparty/stub_good-en_US.xml", xml)
        .preload(&["stub_good.so"])
        .start();
    let out = s.cli("core show function STUB_ECHO");
    assert!(
        out.contains("[Synopsis]\nEcho the arguments & the name.\n"),
        "{out}"
    );
    assert!(out.contains("[Since]\n1.0.0\n"), "{out}");
    assert!(out.contains("[Syntax]\nSTUB_ECHO(a,b)\n"), "{out}");
    assert!(out.contains("[Description]\nReturns NAME:args.\n"), "{out}");
    assert!(out.contains("[See Also]\nDB\n"), "{out}");
    assert!(out.contains("[Provided By]\nstub_good\n"), "{out}");
}

#[test]
fn manager_events_are_logged() {
    let s = StandIn::builder("events")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .preload(&["stub_good.so"])
        .start();
    s.cli("module reload stub_good.so");
    let events = s.events();
    assert!(
        events.contains("Event: StubGoodReloaded\nPrivilege: system,all\nLoads: 1\n"),
        "{events}"
    );
    let file = std::fs::read_to_string(s.log_dir().join("events")).unwrap();
    assert!(file.contains("Event: StubGoodReloaded"), "{file}");
}

/// A thread-local destructor registered on the main thread (load at start-up)
/// pins the library: the stand-in warns after dlclose, and the next load fails
/// to register, as in real Asterisk.
#[test]
fn pinned_library_is_reported() {
    let s = StandIn::builder("pinned")
        .module_as(testmod_so("stub_tls"), "stub_tls.so")
        .preload(&["stub_tls.so"])
        .start();
    assert!(s.cli("module show").contains("stub_tls.so"));
    s.cli("module unload stub_tls.so");
    assert!(
        s.log()
            .contains("Module 'stub_tls.so' is still mapped after dlclose"),
        "{}",
        s.log()
    );
    let out = s.cli("module load stub_tls.so");
    assert!(out.contains("did not register itself during load"), "{out}");
}

#[test]
fn unload_refused_keeps_the_module() {
    let s = StandIn::builder("refuse")
        .module_as(testmod_so("stub_good"), "stub_good.so")
        .preload(&["stub_good.so"])
        .start();
    s.cli("database put stubgood refuse_unload 1");
    let out = s.cli("module unload stub_good.so");
    assert!(
        out.contains("Unable to unload resource stub_good.so"),
        "{out}"
    );
    assert!(s.cli("module show").contains("stub_good.so"));
    assert_eq!(s.cli("stubgood hello still"), "hello still (loads=1)\n");
    s.cli("database del stubgood refuse_unload");
    assert!(s
        .cli("module unload stub_good.so")
        .contains("Unloaded stub_good.so"));
}

#[test]
fn sigterm_stops_and_remote_fails_when_down() {
    let mut s = plain("sigterm");
    s.cli("database put t k v");
    let pid = s.pid().unwrap() as i32;
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the stand-in"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.log().contains("Stand-in stopped."));
    assert!(s.try_cli("core show version").is_err());
    s.restart();
    assert_eq!(s.cli("database get t k"), "Value: v\n");
}

// ---- Stasis, ao2, JSON and manager actions (testmods/stub_stasis.c) ----

const STUB_STASIS_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE docs SYSTEM "appdocsxml.dtd">
<docs xmlns:xi="http://www.w3.org/2001/XInclude">
	<manager name="StubList" language="en_US" module="stub_stasis">
		<since><version>1.0.0</version></since>
		<synopsis>List some items.</synopsis>
		<syntax>
			<xi:include xpointer="xpointer(/docs/manager[@name='Login']/syntax/parameter[@name='ActionID'])" />
			<parameter name="Count"><para>How many items.</para></parameter>
			<parameter name="Other" required="true"/>
		</syntax>
		<description><para>Sends StubListItem events.</para><para>Then a complete event.</para></description>
		<see-also><ref type="manager">StubEcho</ref></see-also>
	</manager>
	<managerEvent language="en_US" name="StubStasisEvent">
		<managerEventInstance class="EVENT_FLAG_SYSTEM">
			<synopsis>Raised for each message published.</synopsis>
			<syntax>
				<parameter name="Seq"><para>The sequence number.</para></parameter>
				<parameter name="Text" required="false"><para>The text given.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
</docs>
"#;

fn with_stub_stasis(name: &str) -> StandIn {
    StandIn::builder(name)
        .module_as(testmod_so("stub_stasis"), "stub_stasis.so")
        .data_file(
            "documentation/thirdparty/stub_stasis-en_US.xml",
            STUB_STASIS_XML,
        )
        .preload(&["stub_stasis.so"])
        .start()
}

/// Waits until the dispatcher has delivered `n` messages in all.
fn wait_delivered(s: &StandIn, n: usize) -> String {
    let want = format!("{n} messages delivered, 0 queued");
    s.wait_for_cli("stasis show messages", Duration::from_secs(10), |o| {
        o.contains(&want)
    })
}

#[test]
fn published_messages_become_ami_events_and_json_lines() {
    let s = with_stub_stasis("stasis-pub");
    assert_eq!(s.cli("stubstasis publish 3 hi"), "published 3\n");
    assert_eq!(s.cli("stubstasis publish-ami 1"), "published 1\n");
    let shown = wait_delivered(&s, 4);
    // One line per message with to_json (not the AMI-only type), compact JSON.
    let lines: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("stub_stasis"))
        .collect();
    assert_eq!(lines.len(), 3, "{shown}");
    for (i, line) in lines.iter().enumerate() {
        let (ty, json) = line.split_once(' ').unwrap();
        assert_eq!(ty, "stub_stasis_type");
        assert_eq!(
            json,
            format!(
                r#"{{"type":"StubStasisEvent","seq":{i},"text":"hi","extra":{{"list":[1,2.5,true,null]}}}}"#
            )
        );
        let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(v["seq"], i);
    }
    let file = std::fs::read_to_string(s.log_dir().join("stasis")).unwrap();
    assert_eq!(file.lines().collect::<Vec<_>>(), lines);
    // Every message with to_ami is an event, in order, as manager would raise it.
    let events = s.events();
    for i in 0..3 {
        let ev = format!(
            "Event: StubStasisEvent\nPrivilege: system,all\nType: stub_stasis_type\nSeq: {i}\nText: hi\n"
        );
        assert!(events.contains(&ev), "{events}");
    }
    assert!(
        events.contains("Type: stub_stasis_ami_only\nSeq: 0\nText: ami\n"),
        "{events}"
    );
    let file = std::fs::read_to_string(s.log_dir().join("events")).unwrap();
    assert_eq!(file.matches("Event: StubStasisEvent").count(), 4, "{file}");
}

#[test]
fn message_data_is_released_after_delivery() {
    let s = with_stub_stasis("stasis-release");
    s.cli("stubstasis publish 5");
    wait_delivered(&s, 5);
    // The dispatcher's reference was the last one: the module's destructor ran.
    s.wait_for_cli("stubstasis live", Duration::from_secs(5), |o| {
        o == "live=0 created=5 destroyed=5\n"
    });
}

#[test]
fn ao2_refcounts_and_message_accessors() {
    let s = with_stub_stasis("stasis-ao2");
    assert_eq!(s.cli("stubstasis selftest"), "selftest ok\n");
    // Its message has neither to_ami nor to_json: delivered, shown nowhere.
    let shown = wait_delivered(&s, 1);
    assert_eq!(shown, "1 messages delivered, 0 queued, 0 dropped\n");
    assert!(!s.log().contains("FRACK"), "{}", s.log());
}

#[test]
fn json_load_is_strict_and_dump_follows_the_format() {
    let s = with_stub_stasis("stasis-json");
    let json = |fmt: &str, text: &str| s.cli(&format!("stubstasis json {fmt} {text}"));
    assert_eq!(
        json(
            "compact",
            r#" { "a" : [ 1, -2.5e3, true, false, null, "x" ], "b": {} } "#
        ),
        "{\"a\":[1,-2500.0,true,false,null,\"x\"],\"b\":{}}\n"
    );
    // Escapes decoded and written back as Jansson does; UTF-8 kept.
    assert_eq!(
        json("compact", r#"["\u00e9\n\u0001\/\ud83d\ude00\"\\"]"#),
        "[\"\u{e9}\\n\\u0001/\u{1f600}\\\"\\\\\"]\n"
    );
    // Reals: shortest form that reads back, ".0" on whole numbers.
    assert_eq!(
        json(
            "compact",
            "[0.1, 100.0, 1e16, 1e15, 0.0001, 0.00001, -0.0, -0, 1E2]"
        ),
        "[0.1,100.0,1e16,1000000000000000.0,0.0001,1e-5,-0.0,0,100.0]\n"
    );
    // A repeated key replaces the value in its place.
    assert_eq!(
        json("compact", r#"{"b":1,"a":2,"b":3}"#),
        "{\"b\":3,\"a\":2}\n"
    );
    assert_eq!(
        json("sorted", r#"{"b":1,"a":2,"B":3}"#),
        "{\"B\":3,\"a\":2,\"b\":1}\n"
    );
    assert_eq!(
        json("pretty", r#"{"b":[1,{}],"a":"x"}"#),
        "{\n  \"b\": [\n    1,\n    {}\n  ],\n  \"a\": \"x\"\n}\n"
    );
    assert_eq!(
        json("pretty-sorted", r#"{"b":1,"a":[true]}"#),
        "{\n  \"a\": [\n    true\n  ],\n  \"b\": 1\n}\n"
    );
    for bad in [
        "5",
        "\"top-level string\"",
        "null",
        "",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "[01]",
        "[1.]",
        "[.5]",
        "[-]",
        "[1e]",
        "[tru]",
        "[truex]",
        "{\"a\":1} x",
        "{\"a\":1}{}",
        "[\"\\u0000\"]",
        "[\"\\ud800\"]",
        "[\"\\udc00\"]",
        "[\"\\x\"]",
        "[\"tab\there\"]",
        "[9223372036854775808]",
        "[1e400]",
        "{1:2}",
        "['a']",
        "[1 2]",
    ] {
        assert_eq!(json("compact", bad), "INVALID\n", "accepted {bad:?}");
    }
    assert_eq!(
        json("compact", "[9223372036854775807, 1e-400]"),
        "[9223372036854775807,0.0]\n"
    );
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(json("compact", &deep(2048)), format!("{}\n", deep(2048)));
    assert_eq!(json("compact", &deep(2049)), "INVALID\n");
}

#[test]
fn manager_actions_answer_with_action_id_and_errors() {
    let s = with_stub_stasis("ami-actions");
    assert_eq!(
        s.cli("manager action StubEcho Echo=hello ActionID=42"),
        "Response: Success\nActionID: 42\nMessage: hello\n\n"
    );
    assert_eq!(
        s.cli("manager action stubecho echo=lower"),
        "Response: Success\nMessage: lower\n\n"
    );
    assert_eq!(
        s.cli("manager action StubEcho ActionID=1"),
        "Response: Error\nActionID: 1\nMessage: Echo: is required\n\n"
    );
    // A handler returning non-zero (Asterisk closes the session): its output is shown.
    assert_eq!(
        s.cli("manager action StubEcho Echo=x Fail=yes"),
        "Response: Error\nMessage: Failing as asked\n\n"
    );
    assert_eq!(
        s.cli("manager action NoSuchAction ActionID=9"),
        "Response: Error\nActionID: 9\nMessage: Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show available commands.\n\n"
    );
    // The core DB actions still answer as before.
    assert_eq!(
        s.cli("manager action DBPut Family=f Key=k Val=v"),
        "Response: Success\nMessage: Updated database successfully\n"
    );
    // A second registration of a name (any case), or of a core action's, fails.
    assert!(
        s.log()
            .contains("stub_stasis loaded (dup=-1 builtin=-1 declined=0)"),
        "{}",
        s.log()
    );
}

#[test]
fn list_action_sends_ack_items_and_complete_event() {
    let s = with_stub_stasis("ami-list");
    assert_eq!(
        s.cli("manager action StubList Count=2 ActionID=7"),
        "Response: Success\nActionID: 7\nEventList: start\nMessage: Items will follow\n\n\
         Event: StubListItem\nActionID: 7\nIndex: 0\n\n\
         Event: StubListItem\nActionID: 7\nIndex: 1\n\n\
         Event: StubListComplete\nActionID: 7\nEventList: Complete\nListItems: 2\nNote: end of list\n\n"
    );
    assert_eq!(
        s.cli("manager action StubList Count=0"),
        "Response: Success\nEventList: start\nMessage: Items will follow\n\n\
         Event: StubListComplete\nEventList: Complete\nListItems: 0\nNote: end of list\n\n"
    );
}

#[test]
fn manager_show_commands_and_their_help() {
    let s = with_stub_stasis("ami-help");
    let list = s.cli("manager show commands");
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows[0], "  Action     Synopsis");
    assert_eq!(rows[1], "  ------     --------");
    assert!(rows.contains(&"  DBGet      Get DB Entry."), "{list}");
    assert!(rows.contains(&"  StubEcho   Echo a header back."), "{list}");
    // Registered without help: the synopsis comes from the XML documentation.
    assert!(rows.contains(&"  StubList   List some items."), "{list}");
    assert!(rows.contains(&"  StubSlow   "), "{list}");

    // Help given at registration.
    assert_eq!(
        s.cli("manager show command StubEcho"),
        "Action: StubEcho\nSynopsis: Echo a header back.\nPrivilege: system,all\n\
         Answers with the Echo header as its message.\n"
    );
    // Help from <manager name="StubList">.
    let out = s.cli("manager show command stublist");
    for part in [
        "  -= Info about Manager Command 'StubList' =- \n",
        "[Synopsis]\nList some items.\n\n",
        "[Provided By]\nstub_stasis\n\n",
        "[Since]\n1.0.0\n\n",
        "[Description]\nSends StubListItem events.\nThen a complete event.\n\n",
        "[Syntax]\nAction: StubList\n[Count:] <value>\nOther: <value>\n\n",
        "[Arguments]\n\nCount\n    How many items.\n\n",
        "[Privilege]\nsystem,reporting,all\n\n",
        "[See Also]\nStubEcho\n\n",
    ] {
        assert!(out.contains(part), "missing {part:?} in\n{out}");
    }
    // No help anywhere.
    let out = s.cli("manager show command StubSlow");
    assert!(out.contains("[Synopsis]\nNot available\n"), "{out}");
    assert!(out.contains("[Syntax]\nAction: StubSlow\n"), "{out}");
    // An unknown name prints nothing, as in Asterisk.
    assert_eq!(s.cli("manager show command NoSuchAction"), "");
    assert_eq!(
        s.cli("_complete manager show command Stub"),
        "StubEcho\nStubList\nStubSlow\n"
    );
}

#[test]
fn manager_show_event_reads_thirdparty_xml() {
    let s = with_stub_stasis("ami-event-doc");
    let out = s.cli("manager show event StubStasisEvent");
    assert!(out.starts_with("Event: StubStasisEvent\n"), "{out}");
    for part in [
        "  -= Info about Manager Event 'StubStasisEvent' =- \n",
        "[Synopsis]\nRaised for each message published.\n\n",
        "[Syntax]\nEvent: StubStasisEvent\nSeq: <value>\n[Text:] <value>\n\n",
        "[Arguments]\n\nSeq\n    The sequence number.\n\nText\n    The text given.\n\n",
    ] {
        assert!(out.contains(part), "missing {part:?} in\n{out}");
    }
    assert_eq!(
        s.cli("manager show event NoSuchEvent"),
        "Could not find event 'NoSuchEvent'\n"
    );
}

#[test]
fn module_unload_unregisters_actions_across_cycles() {
    let s = with_stub_stasis("ami-cycles");
    for round in 0..3 {
        assert!(s
            .cli("manager action StubEcho Echo=x")
            .contains("Message: x"));
        s.cli("stubstasis publish 2");
        assert!(s
            .cli("module unload stub_stasis.so")
            .contains("Unloaded stub_stasis.so"));
        assert!(
            s.log()
                .contains(&format!("stub_stasis unloaded (live=0 destroyed={})", 2)),
            "round {round}: {}",
            s.log()
        );
        assert!(s
            .cli("manager action StubEcho Echo=x")
            .contains("Invalid/unknown command: StubEcho."));
        let list = s.cli("manager show commands");
        assert!(!list.contains("Stub"), "{list}");
        assert!(list.contains("DBGet"), "{list}");
        assert!(s
            .cli("module load stub_stasis.so")
            .contains("Loaded stub_stasis.so"));
    }
    wait_delivered(&s, 6);
    assert!(!s.log().contains("still mapped after dlclose"));
}

#[test]
fn unload_waits_while_the_dispatcher_delivers() {
    let s = with_stub_stasis("stasis-unload");
    // Ten messages whose to_ami takes 20 ms each: most are still queued at the unload.
    assert_eq!(s.cli("stubstasis publish 10 slow 20000"), "published 10\n");
    assert!(s
        .cli("module unload stub_stasis.so")
        .contains("Unloaded stub_stasis.so"));
    assert!(
        s.log()
            .contains("stub_stasis unloaded (live=0 destroyed=10)"),
        "{}",
        s.log()
    );
    assert_eq!(s.events().matches("Text: slow").count(), 10);
}

#[test]
fn busy_action_holds_the_module() {
    let s = with_stub_stasis("ami-busy");
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| s.cli("manager action StubSlow Ms=800"));
        // The call holds a reference to its module, as in Asterisk: use count 1.
        s.wait_for_cli(
            "module show like stub_stasis",
            Duration::from_secs(5),
            |o| {
                o.lines().any(|l| {
                    l.starts_with("stub_stasis.so")
                        && l.split_whitespace().rev().nth(2) == Some("1")
                })
            },
        );
        let out = s.cli("module unload stub_stasis.so");
        assert!(out.contains("Soft unload failed"), "{out}");
        assert_eq!(
            slow.join().unwrap(),
            "Response: Success\nMessage: Slept\n\n"
        );
    });
    assert!(s
        .cli("module unload stub_stasis.so")
        .contains("Unloaded stub_stasis.so"));
}

#[test]
fn shutdown_delivers_queued_messages_before_unloading_modules() {
    let mut s = with_stub_stasis("stasis-shutdown");
    assert_eq!(s.cli("stubstasis publish 10 bye 20000"), "published 10\n");
    s.stop();
    let events = std::fs::read_to_string(s.log_dir().join("events")).unwrap();
    assert_eq!(events.matches("Text: bye").count(), 10, "{events}");
    let log = s.log();
    let stopped = log
        .find("Stasis stopped after delivering 10 messages")
        .expect("dispatcher stopped");
    let unloading = log
        .find("Unloading stub_stasis.so at shutdown")
        .expect("module unloaded");
    assert!(stopped < unloading, "{log}");
    assert!(
        log.contains("stub_stasis unloaded (live=0 destroyed=10)"),
        "{log}"
    );
}

#[test]
fn stasis_conf_declines_message_types() {
    let s = StandIn::builder("stasis-declined")
        .module_as(testmod_so("stub_stasis"), "stub_stasis.so")
        .conf_file(
            "stasis.conf",
            "[declined_message_types]\ndecline => stub_stasis_declined\n",
        )
        .preload(&["stub_stasis.so"])
        .start();
    // STASIS_MESSAGE_TYPE_DECLINED is 1.
    assert!(
        s.log()
            .contains("stub_stasis loaded (dup=-1 builtin=-1 declined=1)"),
        "{}",
        s.log()
    );
}
