//! The library API end to end, in-process. The vault reads its locations from the
//! environment, so every test takes one lock and sets a private environment first.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use liberty_vault::{
    Binding, Error, ErrorKind, ExposeSecret, InitOptions, KeyStoreKind, KeyStorePreference,
    Passphrase, RecoverOptions, RecoveryCode, SecretString, Unlock, Vault, env,
};

static ENV_LOCK: Mutex<()> = Mutex::new(());

struct Fixture {
    _guard: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    home: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        // SAFETY: every test that touches the environment holds ENV_LOCK, so no other thread
        // of this test binary reads or writes it concurrently.
        unsafe {
            std::env::set_var(env::LIBERTY_KEY_DIR, dir.path().join("keys"));
            std::env::set_var(env::LIBERTY_KEY_STORE, "file");
            std::env::set_var(env::LIBERTY_TEST_MACHINE_ID, "machine-a");
            std::env::set_var(env::LIBERTY_HOME, &home);
            std::env::remove_var(env::LIBERTY_PASSPHRASE);
        }
        Fixture {
            _guard: guard,
            dir,
            home,
        }
    }

    fn machine(&self, id: &str) {
        // SAFETY: as above, ENV_LOCK is held by `self`.
        unsafe { std::env::set_var(env::LIBERTY_TEST_MACHINE_ID, id) }
    }

    fn vault_file(&self) -> PathBuf {
        self.home.join("vault.json")
    }

    fn init(&self) -> (Vault, RecoveryCode) {
        Vault::init(&self.home, InitOptions::default()).unwrap()
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn value(v: &Vault, name: &str) -> Option<String> {
    v.get(name).unwrap().map(|s| s.expose_secret().to_owned())
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn set_get_list_remove_and_reopen() {
    let fx = Fixture::new();
    let (mut v, _code) = fx.init();
    assert!(v.is_empty());
    v.set("OPENAI_API_KEY", &secret("sk-one")).unwrap();
    v.create("ANTHROPIC_API_KEY", &secret("ak-two")).unwrap();
    let err = v.create("OPENAI_API_KEY", &secret("x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::EntryExists);
    v.set("OPENAI_API_KEY", &secret("sk-three")).unwrap();
    assert_eq!(value(&v, "OPENAI_API_KEY").as_deref(), Some("sk-three"));
    assert_eq!(v.names(), ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]);
    assert!(v.contains("ANTHROPIC_API_KEY"));
    let list = v.list();
    assert!(list.iter().all(|e| e.created <= e.updated));
    assert_eq!(value(&v, "MISSING"), None);

    let again = Vault::open(&fx.home, Unlock::Machine).unwrap();
    assert_eq!(
        value(&again, "ANTHROPIC_API_KEY").as_deref(),
        Some("ak-two")
    );
    let opened = Vault::open_default().unwrap();
    assert_eq!(opened.len(), 2);

    assert!(v.remove("ANTHROPIC_API_KEY").unwrap());
    assert!(!v.remove("ANTHROPIC_API_KEY").unwrap());
    assert_eq!(
        Vault::open(&fx.home, Unlock::Machine).unwrap().names(),
        ["OPENAI_API_KEY"]
    );

    assert_eq!(
        v.set("1BAD", &secret("x")).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        v.set("A", &secret("a\0b")).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let big = "x".repeat(liberty_vault::MAX_VALUE_BYTES + 1);
    assert_eq!(
        v.set("A", &secret(&big)).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(!format!("{v:?}").contains("sk-three"));
}

#[test]
fn files_are_private_and_hold_no_plaintext() {
    let fx = Fixture::new();
    let (mut v, code) = fx.init();
    let secret_value = "plaintext-canary-7f3a9c";
    v.set("CANARY", &secret(secret_value)).unwrap();
    let files = all_files(fx.dir.path());
    assert!(files.len() >= 3, "vault, lock and key file: {files:?}");
    for f in files {
        let bytes = fs::read(&f).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(secret_value), "{f:?}");
        assert!(!hay.contains(code.expose_secret().as_str()), "{f:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o077,
            0,
            "{f:?}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&fx.home).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn init_refuses_an_existing_vault() {
    let fx = Fixture::new();
    let (mut v, _) = fx.init();
    v.set("A", &secret("1")).unwrap();
    let before = fs::read(fx.vault_file()).unwrap();
    let err = Vault::init(&fx.home, InitOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VaultExists);
    assert_eq!(fs::read(fx.vault_file()).unwrap(), before);
}

#[test]
fn key_dir_inside_the_vault_dir_is_refused() {
    let fx = Fixture::new();
    // SAFETY: ENV_LOCK is held by the fixture.
    unsafe { std::env::set_var(env::LIBERTY_KEY_DIR, fx.home.join("keys")) };
    let err = Vault::init(&fx.home, InitOptions::default()).unwrap_err();
    assert!(matches!(err, Error::KeyDirInsideVault { .. }), "{err}");
    assert!(!fx.vault_file().exists());
}

#[test]
fn swapped_ciphertexts_fail_integrity() {
    let fx = Fixture::new();
    let (mut v, _) = fx.init();
    v.set("A", &secret("value-a")).unwrap();
    v.set("B", &secret("value-b")).unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.vault_file()).unwrap()).unwrap();
    let entries = doc["entries"].as_object_mut().unwrap();
    let a = entries["A"].clone();
    let b = entries["B"].clone();
    entries.insert("A".into(), b);
    entries.insert("B".into(), a);
    let tampered = serde_json::to_vec_pretty(&doc).unwrap();
    fs::write(fx.vault_file(), &tampered).unwrap();
    let v = Vault::open(&fx.home, Unlock::Machine).unwrap();
    for name in ["A", "B"] {
        let err = v.get(name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains("vault.json"), "{err}");
    }
    assert!(v.entries().is_err());
    assert_eq!(fs::read(fx.vault_file()).unwrap(), tampered);
}

#[test]
fn slot_parameters_cannot_be_changed_or_downgraded() {
    let fx = Fixture::new();
    let pass = || Passphrase::new(secret("correct horse battery")).unwrap();
    let options = InitOptions {
        passphrase: Some(pass()),
        key_store: KeyStorePreference::File,
    };
    Vault::init(&fx.home, options).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.vault_file()).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 4] = [
        ("drop passphrase", |d| {
            d["slots"]["device"]["passphrase"] = serde_json::Value::Null
        }),
        ("weaken memory", |d| {
            d["slots"]["device"]["passphrase"]["m_kib"] = 8.into()
        }),
        ("change time cost", |d| {
            d["slots"]["device"]["passphrase"]["t"] = 3.into()
        }),
        ("change store", |d| {
            d["slots"]["device"]["store"] = "keyring".into()
        }),
    ];
    for (what, edit) in edits {
        let mut doc = original.clone();
        edit(&mut doc);
        fs::write(fx.vault_file(), serde_json::to_vec(&doc).unwrap()).unwrap();
        let opened = Vault::open(&fx.home, Unlock::Passphrase(pass()));
        assert!(opened.is_err(), "{what} must not open");
    }
    fs::write(fx.vault_file(), serde_json::to_vec(&original).unwrap()).unwrap();
    Vault::open(&fx.home, Unlock::Passphrase(pass())).unwrap();
}

#[test]
fn passphrase_is_required_in_addition_to_the_machine() {
    let fx = Fixture::new();
    let options = InitOptions {
        passphrase: Some(Passphrase::new(secret("right one")).unwrap()),
        key_store: KeyStorePreference::File,
    };
    let (mut v, code) = Vault::init(&fx.home, options).unwrap();
    assert!(v.has_passphrase());
    v.set("A", &secret("1")).unwrap();
    let err = Vault::open(&fx.home, Unlock::Machine).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PassphraseRequired);
    assert!(err.to_string().contains("LIBERTY_PASSPHRASE"));
    let wrong = Unlock::Passphrase(Passphrase::new(secret("wrong one")).unwrap());
    assert!(matches!(
        Vault::open(&fx.home, wrong).unwrap_err(),
        Error::WrongPassphrase { .. }
    ));
    let right = Unlock::Passphrase(Passphrase::new(secret("right one")).unwrap());
    assert_eq!(
        value(&Vault::open(&fx.home, right).unwrap(), "A").as_deref(),
        Some("1")
    );
    // SAFETY: ENV_LOCK is held by the fixture.
    unsafe { std::env::set_var(env::LIBERTY_PASSPHRASE, "right one") };
    assert_eq!(Vault::open_default().unwrap().len(), 1);
    assert!(matches!(
        Vault::inspect(&fx.home).unwrap().binding,
        Binding::MatchesPassphraseNotChecked
    ));
    // The recovery code alone still re-binds it.
    let (v, _) = Vault::recover(&fx.home, &code, RecoverOptions::default()).unwrap();
    assert!(!v.has_passphrase());
    assert_eq!(
        value(&Vault::open(&fx.home, Unlock::Machine).unwrap(), "A").as_deref(),
        Some("1")
    );
}

#[test]
fn another_machine_cannot_open_and_recovery_rebinds() {
    let fx = Fixture::new();
    let (mut v, code) = fx.init();
    v.set("A", &secret("value-a")).unwrap();
    let status = Vault::inspect(&fx.home).unwrap();
    assert_eq!(status.binding, Binding::Opens);
    assert_eq!(status.key_store, KeyStoreKind::File);
    assert_eq!(status.entries, 1);

    fx.machine("machine-b");
    let err = Vault::open(&fx.home, Unlock::Machine).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMachine);
    assert_eq!(
        Vault::inspect(&fx.home).unwrap().binding,
        Binding::OtherMachine
    );

    let wrong = RecoveryCode::parse(&"7".repeat(32)).unwrap();
    let before = fs::read(fx.vault_file()).unwrap();
    let err = Vault::recover(&fx.home, &wrong, RecoverOptions::default()).unwrap_err();
    assert!(matches!(err, Error::WrongRecoveryCode { .. }));
    assert_eq!(fs::read(fx.vault_file()).unwrap(), before);

    let (v2, new_code) = Vault::recover(&fx.home, &code, RecoverOptions::default()).unwrap();
    assert_ne!(new_code.expose_secret(), code.expose_secret());
    assert_eq!(value(&v2, "A").as_deref(), Some("value-a"));
    assert_eq!(
        value(&Vault::open(&fx.home, Unlock::Machine).unwrap(), "A").as_deref(),
        Some("value-a")
    );
    // The old code no longer opens the re-keyed vault; the new one does.
    assert!(Vault::recover(&fx.home, &code, RecoverOptions::default()).is_err());
    // A handle opened before the re-key refuses to write rather than corrupt the vault.
    assert_eq!(
        v.set("B", &secret("x")).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    fx.machine("machine-a");
    assert_eq!(
        Vault::open(&fx.home, Unlock::Machine).unwrap_err().kind(),
        ErrorKind::WrongMachine
    );
}

#[test]
fn missing_device_key_is_reported() {
    let fx = Fixture::new();
    let (v, _) = fx.init();
    fs::remove_file(fx.dir.path().join("keys").join(format!("{}.key", v.id()))).unwrap();
    let err = Vault::open(&fx.home, Unlock::Machine).unwrap_err();
    assert!(matches!(err, Error::DeviceKeyMissing { .. }), "{err}");
    assert_eq!(
        Vault::inspect(&fx.home).unwrap().binding,
        Binding::KeyMissing
    );
}

#[test]
fn concurrent_writers_merge() {
    let fx = Fixture::new();
    fx.init();
    let home = fx.home.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let home = home.clone();
            std::thread::spawn(move || {
                let mut v = Vault::open(&home, Unlock::Machine).unwrap();
                v.set(&format!("K{i}"), &SecretString::from(format!("v{i}")))
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = Vault::open(&home, Unlock::Machine).unwrap();
    assert_eq!(v.len(), 8);
    for i in 0..8 {
        assert_eq!(value(&v, &format!("K{i}")), Some(format!("v{i}")));
    }
}

#[test]
fn bad_vault_files_are_refused_and_left_alone() {
    let fx = Fixture::new();
    let (mut v, _) = fx.init();
    v.set("A", &secret("1")).unwrap();
    let good = fs::read_to_string(fx.vault_file()).unwrap();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        ("empty", vec![], ErrorKind::Corrupt),
        (
            "truncated",
            good.as_bytes()[..good.len() / 2].to_vec(),
            ErrorKind::Corrupt,
        ),
        ("not json", b"hello".to_vec(), ErrorKind::Corrupt),
        (
            "non utf-8",
            vec![0xff, 0xfe, b'{', 0x80],
            ErrorKind::Corrupt,
        ),
        ("deep", deep.into_bytes(), ErrorKind::Corrupt),
        (
            "wrong version",
            good.replacen("\"version\": 1", "\"version\": 99", 1)
                .into_bytes(),
            ErrorKind::Corrupt,
        ),
        (
            "huge number",
            good.replacen("\"version\": 1", "\"version\": 1e999", 1)
                .into_bytes(),
            ErrorKind::Corrupt,
        ),
        (
            "unknown field",
            good.replacen("{", "{\"x\": 1,", 1).into_bytes(),
            ErrorKind::Corrupt,
        ),
        (
            "long field",
            good.replacen(
                "\"nonce\": \"",
                &format!("\"nonce\": \"{}", "A".repeat(1_000_000)),
                1,
            )
            .into_bytes(),
            ErrorKind::Corrupt,
        ),
    ];
    for (what, bytes, kind) in cases {
        fs::write(fx.vault_file(), &bytes).unwrap();
        let err = Vault::open(&fx.home, Unlock::Machine).unwrap_err();
        assert_eq!(err.kind(), kind, "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&*fx.vault_file().to_string_lossy()),
            "{what}: {msg}"
        );
        assert!(msg.len() < 400, "{what}: message too long: {msg}");
        assert!(
            v.set("B", &secret("2")).is_err(),
            "{what}: a write must not replace it"
        );
        assert_eq!(fs::read(fx.vault_file()).unwrap(), bytes, "{what}");
    }
    let wrong_version = good.replacen("\"version\": 1", "\"version\": 2", 1);
    fs::write(fx.vault_file(), &wrong_version).unwrap();
    let msg = Vault::open(&fx.home, Unlock::Machine)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("version 2"), "{msg}");
    let big = fs::File::create(fx.vault_file()).unwrap();
    big.set_len(100 * 1024 * 1024).unwrap();
    let err = Vault::open(&fx.home, Unlock::Machine).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("larger than"), "{err}");
}
