//! Concurrent writers and a writer killed mid-write, through the real `liberty` binary.

mod liberty_support;

use std::fs;
use std::time::{Duration, Instant};

use liberty_support::*;

#[test]
fn twenty_concurrent_adds_all_land() {
    let w = World::new();
    w.init();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut cmd = w.cmd(["add", &format!("KEY_{i:02}"), "-"]);
            cmd.stdin(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("value-{i}").as_bytes())
                .unwrap();
            child
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out);
    }
    let json: serde_json::Value = serde_json::from_str(&w.ok(["list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 20, "{json}");
    for i in 0..20 {
        assert_eq!(
            w.ok(["show", "-n", &format!("KEY_{i:02}")]),
            format!("value-{i}")
        );
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_the_previous_vault_intact() {
    let w = World::new();
    w.init();
    w.add("BEFORE", "old-value");
    let before = fs::read(w.vault_file()).unwrap();

    // The debug-build hook pauses after the temporary file is written and synced, before the
    // rename: the worst moment to die.
    let mut cmd = w.cmd(["add", "DURING", "-"]);
    cmd.env("LIBERTY_TEST_PAUSE_WRITE_MS", "30000")
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"new-value").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let temp = loop {
        let found = fs::read_dir(&w.home)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(".tmp-"));
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            Instant::now() < deadline,
            "the writer never reached its pause"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        fs::metadata(&temp).unwrap().len() > 0,
        "killed after the new content was written"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    assert_eq!(
        fs::read(w.vault_file()).unwrap(),
        before,
        "previous vault intact"
    );
    assert_eq!(w.ok(["show", "-n", "BEFORE"]), "old-value");
    assert_eq!(w.show("DURING").status.code(), Some(1));
    // The dead writer's lock died with it; the next write succeeds and clears its leftovers.
    w.add("AFTER", "later");
    assert!(!temp.exists(), "stale temporary file removed");
    assert_eq!(w.ok(["show", "-n", "AFTER"]), "later");
    assert_eq!(w.ok(["show", "-n", "BEFORE"]), "old-value");
}
