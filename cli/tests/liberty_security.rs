//! Tampering, moving to another machine, recovery, passphrases and hostile vault files,
//! through the real `liberty` binary.

mod liberty_support;

use std::fs;

use liberty_support::*;

#[test]
fn swapped_ciphertexts_fail_integrity_and_change_nothing() {
    let w = World::new();
    w.init();
    w.add("FIRST", "value-one");
    w.add("SECOND", "value-two");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(w.vault_file()).unwrap()).unwrap();
    let entries = doc["entries"].as_object_mut().unwrap();
    let a = entries["FIRST"]["ciphertext"].take();
    let a_nonce = entries["FIRST"]["nonce"].take();
    entries["FIRST"]["ciphertext"] = entries["SECOND"]["ciphertext"].take();
    entries["FIRST"]["nonce"] = entries["SECOND"]["nonce"].take();
    entries["SECOND"]["ciphertext"] = a;
    entries["SECOND"]["nonce"] = a_nonce;
    let tampered = serde_json::to_vec_pretty(&doc).unwrap();
    fs::write(w.vault_file(), &tampered).unwrap();

    for name in ["FIRST", "SECOND"] {
        let out = w.show(name);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = stderr(&out);
        assert!(err.contains("integrity check failed"), "{err}");
        assert!(err.contains(&format!("`{name}`")), "{err}");
        assert!(err.contains("vault.json"), "{err}");
        assert!(stdout(&out).is_empty());
        assert!(!err.contains("value-"));
    }
    let out = w.run(["exec", "--", "true"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read(w.vault_file()).unwrap(),
        tampered,
        "reads never write"
    );
}

#[test]
fn vault_copied_to_another_machine_needs_the_recovery_code() {
    let old = World::new().on_machine("machine-old");
    let code = old.init();
    old.add("PROVIDER_KEY", "moved-secret");

    // The vault file alone arrives on a new machine (its device key stays behind).
    let mut new = World::new().on_machine("machine-new");
    fs::create_dir_all(&new.home).unwrap();
    fs::copy(old.vault_file(), new.vault_file()).unwrap();
    let out = new.show("PROVIDER_KEY");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("different machine"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("liberty recover"), "{}", stderr(&out));
    let status = new.run(["status"], None);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        stdout(&status).contains("another machine"),
        "{}",
        stdout(&status)
    );

    // Even with the old machine's key file copied too, the fingerprint differs.
    fs::create_dir_all(&new.keys).unwrap();
    for f in fs::read_dir(&old.keys).unwrap().flatten() {
        fs::copy(f.path(), new.keys.join(f.file_name())).unwrap();
    }
    assert_eq!(new.show("PROVIDER_KEY").status.code(), Some(1));

    // A wrong or malformed code is refused and changes nothing.
    let before = fs::read(new.vault_file()).unwrap();
    let wrong = "0000-0000-0000-0000-0000-0000-0000-0000";
    let out = new.run(["recover"], Some(wrong.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not open"), "{}", stderr(&out));
    let out = new.run(["recover"], Some(b"not-a-code"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a recovery code"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(new.vault_file()).unwrap(), before);

    // The right code re-binds it here and prints a new code.
    let out = new.run(["recover"], Some(format!("{code}\n").as_bytes()));
    assert_success(&out);
    let new_code = recovery_code(&stdout(&out));
    assert_ne!(new_code, code);
    assert_eq!(new.ok(["show", "-n", "PROVIDER_KEY"]), "moved-secret");
    assert!(new.ok(["status"]).contains("yes, this machine opens it"));

    // The old code is spent; the new one works (lower case and spaces are fine).
    let out = new.run(["recover"], Some(code.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    new.set_machine("machine-newer");
    assert_eq!(new.show("PROVIDER_KEY").status.code(), Some(1));
    let sloppy = new_code.to_lowercase().replace('-', " ");
    assert_success(&new.run(["recover"], Some(sloppy.as_bytes())));
    assert_eq!(new.ok(["show", "-n", "PROVIDER_KEY"]), "moved-secret");
}

#[test]
fn passphrase_from_env_and_fd() {
    let w = World::new();
    let with_pass = |args: &[&str], pass: Option<&str>| {
        let mut cmd = w.cmd(args);
        if let Some(p) = pass {
            cmd.env("LIBERTY_PASSPHRASE", p);
        }
        cmd
    };
    let out = w.run_with(
        with_pass(&["init", "--passphrase"], Some("tr0ub4dor&3")),
        None,
    );
    assert_success(&out);
    assert!(stdout(&out).contains("Passphrase:  required"));
    assert_success(&w.run_with(
        with_pass(&["add", "GUARDED", "-"], Some("tr0ub4dor&3")),
        Some(b"behind-a-passphrase"),
    ));

    // No passphrase and no terminal: a clear error saying how to give one.
    let out = w.show("GUARDED");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("LIBERTY_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--passphrase-fd"), "{}", stderr(&out));
    let out = w.run_with(with_pass(&["show", "GUARDED"], Some("wrong")), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    let out = w.run_with(with_pass(&["show", "GUARDED"], Some("tr0ub4dor&3")), None);
    assert_eq!(stdout(&out), "behind-a-passphrase\n");

    // --passphrase-fd: from stdin (fd 0) and from another descriptor set up by a shell.
    let out = w.run(
        ["--passphrase-fd", "0", "show", "GUARDED"],
        Some(b"tr0ub4dor&3\n"),
    );
    assert_eq!(stdout(&out), "behind-a-passphrase\n");
    let out = w.run(["--passphrase-fd", "0", "show", "GUARDED"], Some(b"nope\n"));
    assert!(stderr(&out).contains("wrong passphrase"));
    let pass_file = w.dir.path().join("pass");
    fs::write(&pass_file, "tr0ub4dor&3\n").unwrap();
    let sh = w.sh(
        "exec \"$0\" --passphrase-fd 3 show -n GUARDED 3<\"$1\"",
        [&pass_file],
    );
    let out = w.run_with(sh, None);
    assert_eq!(stdout(&out), "behind-a-passphrase", "{}", stderr(&out));
    let out = w.run(["--passphrase-fd", "9", "show", "GUARDED"], None);
    assert!(
        stderr(&out).contains("--passphrase-fd 9"),
        "{}",
        stderr(&out)
    );

    // exec hides the passphrase from the child.
    let out = w.run_with(
        with_pass(
            &[
                "exec",
                "--",
                "sh",
                "-c",
                "printf %s \"${LIBERTY_PASSPHRASE-gone}:$GUARDED\"",
            ],
            Some("tr0ub4dor&3"),
        ),
        None,
    );
    assert_eq!(stdout(&out), "gone:behind-a-passphrase");
    assert!(w.ok(["status"]).contains("Passphrase:  yes"));
}

#[test]
fn bad_vault_files_get_a_clear_error_and_stay_untouched() {
    let w = World::new();
    w.init();
    w.add("KEEP", "kept-value");
    let good = fs::read_to_string(w.vault_file()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good.as_bytes()[..good.len() * 2 / 3].to_vec()),
        ("garbage", b"\x00\x01garbage".to_vec()),
        ("non-utf8", vec![b'{', 0xc3, 0x28, b'}']),
        (
            "wrong version",
            good.replacen("\"version\": 1", "\"version\": 2", 1)
                .into_bytes(),
        ),
        ("not an object", b"[1, 2, 3]".to_vec()),
        (
            "deeply nested",
            format!(
                "{{\"magic\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
        (
            "huge length",
            good.replacen(
                "\"ciphertext\": \"",
                &format!("\"ciphertext\": \"{}", "A".repeat(5_000_000)),
                1,
            )
            .into_bytes(),
        ),
        (
            "huge number",
            good.replacen("\"created\": ", "\"created\": 99999999999999999999999", 1)
                .into_bytes(),
        ),
    ];
    for (what, bytes) in cases {
        fs::write(w.vault_file(), &bytes).unwrap();
        for args in [
            &["show", "KEEP"][..],
            &["list"],
            &["add", "NEW", "x"],
            &["rm", "KEEP"],
            &["status"],
        ] {
            let out = w.run(args, None);
            assert_eq!(out.status.code(), Some(1), "{what} {args:?}");
            let err = stderr(&out);
            assert!(
                err.contains(&*w.vault_file().to_string_lossy()),
                "{what} {args:?}: {err}"
            );
            assert!(err.len() < 600, "{what}: short message: {err}");
            assert!(!err.contains("kept-value"));
        }
        assert_eq!(
            fs::read(w.vault_file()).unwrap(),
            bytes,
            "{what}: untouched"
        );
    }
    let newer = good.replacen("\"version\": 1", "\"version\": 2", 1);
    fs::write(w.vault_file(), &newer).unwrap();
    let out = w.run(["show", "KEEP"], None);
    assert!(
        stderr(&out).contains("format version 2"),
        "{}",
        stderr(&out)
    );

    // 100 MB: refused from its size, without reading it.
    fs::File::create(w.vault_file())
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let out = w.run(["show", "KEEP"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("larger than"), "{}", stderr(&out));
    assert_eq!(fs::metadata(w.vault_file()).unwrap().len(), 100 << 20);

    // And the intact file still works.
    fs::write(w.vault_file(), &good).unwrap();
    assert_eq!(w.ok(["show", "-n", "KEEP"]), "kept-value");
}
