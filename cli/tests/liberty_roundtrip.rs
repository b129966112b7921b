//! Round trips through the real `liberty` binary: add, show, list, rm, exec, import/export,
//! help text; and the secret never lands on disk or on a command line.

mod liberty_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use liberty_support::*;

#[test]
fn add_show_list_rm() {
    let w = World::new();
    w.init();

    // From the argument: works, with a warning about argv.
    let out = w.run(["add", "FROM_ARG", "arg value"], None);
    assert_success(&out);
    assert!(stderr(&out).contains("process list"), "{}", stderr(&out));
    // From piped stdin (no VALUE), and from `-`: one trailing newline dropped, no warning.
    let out = w.run(["add", "FROM_STDIN"], Some(b"piped value\n"));
    assert_success(&out);
    assert!(!stderr(&out).contains("warning"));
    assert_success(&w.run(["add", "FROM_DASH", "-"], Some(b"dash value\n\n")));
    let out = w.run(["add", "FROM_DASH", "-"], Some(b"dash value\n\n"));
    assert!(!out.status.success(), "replacing needs --force");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_success(&w.run(
        ["add", "--force", "FROM_DASH", "-"],
        Some(b"dash\nvalue\n\n"),
    ));

    assert_eq!(w.ok(["show", "FROM_ARG"]), "arg value\n");
    assert_eq!(w.ok(["show", "-n", "FROM_ARG"]), "arg value");
    assert_eq!(w.ok(["show", "-n", "FROM_STDIN"]), "piped value");
    assert_eq!(w.ok(["show", "-n", "FROM_DASH"]), "dash\nvalue\n");

    let missing = w.run(["show", "NOPE"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("liberty list"),
        "{}",
        stderr(&missing)
    );
    assert!(stdout(&missing).is_empty());

    let empty = w.run(["add", "EMPTY"], None);
    assert_eq!(empty.status.code(), Some(1), "empty stdin stores nothing");
    assert!(stderr(&empty).contains("nothing was stored"));
    assert_success(&w.run(["add", "EMPTY", ""], None));
    assert_eq!(w.ok(["show", "EMPTY"]), "\n");
    w.ok(["rm", "EMPTY"]);

    let bad = w.run(["add", "9LIVES", "x"], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("invalid name"));

    let table = w.ok(["list"]);
    assert!(table.starts_with("NAME"));
    for name in ["FROM_ARG", "FROM_STDIN", "FROM_DASH"] {
        assert!(table.contains(name), "{table}");
    }
    assert!(!table.contains("value"), "list never shows values: {table}");
    let json: serde_json::Value = serde_json::from_str(&w.ok(["list", "--json"])).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["FROM_ARG", "FROM_DASH", "FROM_STDIN"]);
    assert!(json[0]["created"].as_str().unwrap().ends_with('Z'));

    w.ok(["rm", "FROM_ARG"]);
    assert_eq!(w.show("FROM_ARG").status.code(), Some(1));
    assert_eq!(w.run(["rm", "FROM_ARG"], None).status.code(), Some(1));
    assert_eq!(w.ok(["list", "--json"]).matches("\"name\"").count(), 2);
}

#[test]
fn secret_bytes_are_nowhere_on_disk() {
    let w = World::new();
    let code = w.init();
    let canary = "canary-5d1f0a7e-never-on-disk";
    w.add("CANARY", canary);
    w.add("OTHER", &format!("{canary}-2"));
    w.ok(["rm", "OTHER"]);
    let files = w.files();
    assert!(files.iter().any(|f| f.ends_with("vault.json")));
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "key"))
    );
    for f in files {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !contains_bytes(&bytes, canary.as_bytes()),
            "{f:?} holds the secret"
        );
        assert!(
            !contains_bytes(&bytes, code.as_bytes()),
            "{f:?} holds the recovery code"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&f).unwrap().permissions().mode();
        if f.starts_with(&w.home) || f.starts_with(&w.keys) {
            assert_eq!(mode & 0o777, 0o600, "{f:?}");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    for d in [&w.home, &w.keys] {
        assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn init_twice_refuses_and_keeps_the_vault() {
    let w = World::new();
    w.init();
    w.add("A", "1");
    let before = fs::read(w.vault_file()).unwrap();
    let out = w.run(["init"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "no new recovery code");
    assert_eq!(fs::read(w.vault_file()).unwrap(), before);
}

#[test]
fn auto_key_store_falls_back_to_the_key_file_and_says_so() {
    let w = World::new();
    let mut cmd = w.cmd(["init"]);
    cmd.env_remove("LIBERTY_KEY_STORE"); // auto; no session bus in our empty runtime dir
    let out = w.run_with(cmd, None);
    assert_success(&out);
    let status = w.ok(["status"]);
    assert!(status.contains("key file"), "{status}");
    assert!(status.contains(&*w.keys.to_string_lossy()), "{status}");
    assert!(status.contains("Passphrase:  no"), "{status}");
    assert!(status.contains("Entries:     0"), "{status}");
    assert!(status.contains("yes, this machine opens it"), "{status}");
}

#[test]
fn exec_passes_env_stdio_and_exit_status() {
    let w = World::new();
    w.init();
    w.add("API_KEY", "exec-secret-1");
    w.add("OTHER_KEY", "exec-secret-2");

    let out = w.run(
        [
            "exec",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$API_KEY\" \"$OTHER_KEY\" \"${LIBERTY_PASSPHRASE-unset}\"",
        ],
        None,
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "exec-secret-1|exec-secret-2|unset");

    let out = w.run(
        [
            "exec",
            "--only",
            "API_KEY",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"$API_KEY\" \"${OTHER_KEY-absent}\"",
        ],
        None,
    );
    assert_eq!(stdout(&out), "exec-secret-1|absent");

    // Exit status and stdin/stderr pass through; arguments starting with '-' reach the command.
    let out = w.run(
        ["exec", "--", "sh", "-c", "cat; echo err >&2; exit 7"],
        Some(b"from stdin"),
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "from stdin");
    assert_eq!(stderr(&out), "err\n");
    let out = w.run(["exec", "--", "ls", "-d", "/"], None);
    assert_eq!(stdout(&out), "/\n");

    let out = w.run(["exec", "--", "no-such-command-liberty-test"], None);
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("command not found"));
    let out = w.run(["exec", "--only", "MISSING", "--", "true"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("MISSING"));
    let out = w.run(["exec"], None);
    assert_eq!(out.status.code(), Some(2), "usage error without a command");
}

#[test]
fn exec_is_the_command_itself_signals_reach_it_and_argv_holds_no_secret() {
    let w = World::new();
    w.init();
    let secret = "argv-canary-8c2d41";
    w.add("TOKEN", secret);
    let mut cmd = w.cmd([
        "exec",
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");

    // The process liberty started IS the command (exec replaced it): same pid, now `sh`.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sh");
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(contains_bytes(
        &environ,
        format!("TOKEN={secret}").as_bytes()
    ));
    // No process on the machine shows the secret in its argv.
    let mut seen = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            seen += 1;
            assert!(
                !contains_bytes(&cmdline, secret.as_bytes()),
                "secret in argv of {:?}",
                entry.path()
            );
        }
    }
    assert!(seen > 1);

    // SAFETY: kill(2) on the pid of a child we spawned and have not yet waited for.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(42),
        "the child's TERM trap ran: {status:?}"
    );
    assert_eq!(status.signal(), None);
}

#[test]
fn import_then_export_round_trips() {
    let w = World::new();
    w.init();
    let env_file = w.dir.path().join("in.env");
    fs::write(
        &env_file,
        "# provider keys\nexport OPENAI_API_KEY=sk-abc123\n\nQUOTED=\"line1\\nline2 \\\"q\\\" $HOME\"\nSINGLE='it is # not a comment'\nSPACES = padded value   # comment\nEMPTY=\n",
    )
    .unwrap();
    let out = w.run(["import".as_ref(), env_file.as_os_str()], None);
    assert_success(&out);
    assert!(
        stderr(&out).contains("imported 5 secrets"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.ok(["show", "-n", "QUOTED"]), "line1\nline2 \"q\" $HOME");
    assert_eq!(w.ok(["show", "-n", "SINGLE"]), "it is # not a comment");
    assert_eq!(w.ok(["show", "-n", "SPACES"]), "padded value");
    assert_eq!(w.ok(["show", "-n", "EMPTY"]), "");

    // Awkward values survive export and re-import byte for byte.
    w.add("AWKWARD", "a'b\"c $d `e` \\f\ttab\r\nnext ✓");
    let refused = w.run(["export"], None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--plaintext"));
    assert!(stdout(&refused).is_empty());
    let exported = w.ok(["export", "--plaintext"]);
    assert!(
        exported.contains("OPENAI_API_KEY=sk-abc123\n"),
        "{exported}"
    );

    let w2 = World::new();
    w2.init();
    let file2 = w2.dir.path().join("out.env");
    fs::write(&file2, &exported).unwrap();
    assert_success(&w2.run(["import".as_ref(), file2.as_os_str()], None));
    for name in [
        "OPENAI_API_KEY",
        "QUOTED",
        "SINGLE",
        "SPACES",
        "EMPTY",
        "AWKWARD",
    ] {
        assert_eq!(
            w2.ok(["show", "-n", name]),
            w.ok(["show", "-n", name]),
            "{name}"
        );
    }
    assert_eq!(w2.ok(["export", "--plaintext"]), exported);

    // Existing names need --force; a malformed file imports nothing and names file:line.
    let again = w2.run(["import".as_ref(), file2.as_os_str()], None);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"));
    let bad = w.dir.path().join("bad.env");
    fs::write(&bad, "GOOD=1\nALSO_GOOD=2\nthis line is wrong\n").unwrap();
    let before = fs::read(w.vault_file()).unwrap();
    let out = w.run(["import".as_ref(), bad.as_os_str()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:3:", bad.display())),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(w.vault_file()).unwrap(), before);
    assert_eq!(w.show("GOOD").status.code(), Some(1));
}

#[test]
fn every_command_has_help_a_newcomer_can_read() {
    let w = World::new();
    let top = w.ok(["--help"]);
    for cmd in [
        "init", "add", "show", "list", "rm", "exec", "import", "export", "recover", "status",
    ] {
        assert!(top.contains(cmd), "top-level help lists {cmd}");
        let help = w.ok([cmd, "--help"]);
        assert!(help.contains("Usage: liberty"), "{cmd}: {help}");
        let prose = help.split("Usage:").next().unwrap();
        assert!(
            prose.split_whitespace().count() >= 12,
            "{cmd} explains itself: {prose}"
        );
    }
    assert!(!top.contains("generate"), "the generator stays hidden");
    assert!(w.ok(["--version"]).starts_with("liberty "));
    let out = w.run(["show"], None);
    assert_eq!(out.status.code(), Some(2));
}
