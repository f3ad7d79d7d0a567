//! Configuration as users meet it, through the real binary: layering
//! (defaults < file < `PEAT_SIDECAR_*` < flags), unknown keys, redaction of
//! secrets in `config check`, invalid values, keys, and `keygen`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::SidecarOptions;

/// Runs the binary with an environment holding only `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(support::binary())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running peat-sidecar")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The effective value of `key` in `config check` output.
fn setting(output: &Output, key: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("{key}: ");
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{stdout}"))
        .to_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn layers_apply_in_order_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.yaml", "");
    let defaults = run(&["--config", &empty, "config", "check"], &[]);
    assert!(defaults.status.success(), "{}", text(&defaults));
    assert_eq!(setting(&defaults, "listen"), "\"tcp://127.0.0.1:50051\"");
    assert_eq!(setting(&defaults, "app_id"), "\"peat-default\"");
    assert_eq!(setting(&defaults, "listen_socket_mode"), "\"0660\"");
    assert_eq!(setting(&defaults, "max_document_bytes"), "1048576");
    assert_eq!(setting(&defaults, "document_cache_bytes"), "33554432");
    assert_eq!(setting(&defaults, "page_cache_bytes"), "67108864");
    assert_eq!(setting(&defaults, "subscribe_backlog_bytes"), "67108864");

    let file = write(
        dir.path(),
        "config.yaml",
        "listen: tcp://127.0.0.1:1111\napp_id: from-file\npeers: [\"a:1\"]\nmax_document_bytes: 2048\n",
    );
    let from_file = run(&["--config", &file, "config", "check"], &[]);
    assert_eq!(setting(&from_file, "listen"), "\"tcp://127.0.0.1:1111\"");
    assert_eq!(setting(&from_file, "app_id"), "\"from-file\"");
    assert_eq!(setting(&from_file, "max_document_bytes"), "2048");

    let env = [
        ("PEAT_SIDECAR_LISTEN", "tcp://127.0.0.1:2222"),
        ("PEAT_SIDECAR_PEERS", "b:2, c:3"),
        ("PEAT_SIDECAR_DOCUMENT_CACHE_BYTES", "1048576"),
        ("PEAT_SIDECAR_PAGE_CACHE_BYTES", "8388608"),
        ("PEAT_SIDECAR_SUBSCRIBE_BACKLOG_BYTES", "2097152"),
    ];
    let from_env = run(&["--config", &file, "config", "check"], &env);
    assert_eq!(setting(&from_env, "document_cache_bytes"), "1048576");
    assert_eq!(setting(&from_env, "page_cache_bytes"), "8388608");
    assert_eq!(setting(&from_env, "subscribe_backlog_bytes"), "2097152");
    assert_eq!(setting(&from_env, "listen"), "\"tcp://127.0.0.1:2222\"");
    assert_eq!(setting(&from_env, "peers"), r#"["b:2","c:3"]"#);
    assert_eq!(setting(&from_env, "app_id"), "\"from-file\"", "the file still supplies what env does not");

    let from_flags =
        run(&["--config", &file, "--listen", "unix:///run/x.sock", "--peer", "d:4", "config", "check"], &env);
    assert_eq!(setting(&from_flags, "listen"), "\"unix:///run/x.sock\"");
    assert_eq!(setting(&from_flags, "peers"), r#"["d:4"]"#);
}

#[test]
fn config_check_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = String::from_utf8(run(&["keygen"], &[]).stdout).unwrap();
    let file = write(dir.path(), "config.yaml", &format!("shared_key: hunter2-formation\nencryption_key: {key}"));
    let output = run(&["--config", &file, "config", "check"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains(key.trim()), "{printed}");
    assert_eq!(setting(&output, "shared_key"), "\"<redacted>\"");
    assert_eq!(setting(&output, "encryption_key"), "\"<redacted>\"");
}

#[test]
fn keygen_prints_a_fresh_32_byte_key() {
    use base64::Engine as _;
    let a = String::from_utf8(run(&["keygen"], &[]).stdout).unwrap();
    let b = String::from_utf8(run(&["keygen"], &[]).stdout).unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(a.trim()).unwrap().len(), 32);
    assert_ne!(a, b);
}

/// (file contents, words the error must contain)
const BAD_FILES: &[(&str, &str)] = &[
    ("listen: tcp://127.0.0.1:1\nbogus_key: 1\n", "unknown key `bogus_key`"),
    ("lissten: tcp://127.0.0.1:1\n", "unknown key `lissten`"),
    ("listen: nowhere\n", "setting `listen`"),
    ("listen: unix://relative.sock\n", "must be absolute"),
    ("listen_socket_mode: \"rw\"\n", "setting `listen_socket_mode`"),
    ("node_id: \"has space\"\n", "setting `node_id`"),
    ("max_document_bytes: 0\n", "max_document_bytes"),
    ("page_cache_bytes: 0\n", "setting `page_cache_bytes` must be at least 1048576 (1 MiB)"),
    ("encryption_key: \"not base64!\"\n", "setting `encryption_key`"),
    ("encryption_key: AAAA\n", "exactly 32 bytes"),
    ("- a list\n", "expected a map"),
];

#[test]
fn invalid_configuration_is_refused_by_config_check_and_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (contents, words)) in BAD_FILES.iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.yaml"), contents);
        let output = run(&["--config", &file, "config", "check"], &[]);
        assert!(!output.status.success(), "config check accepted {contents:?}");
        assert!(text(&output).contains(words), "{contents:?}: expected {words:?} in:\n{}", text(&output));
    }
    // The daemon refuses to start on the same files, with the same message
    // (checked for an unknown key and a bad encryption key).
    for i in [0, 7] {
        let data = dir.path().join(format!("data{i}"));
        let options = SidecarOptions::new(&data);
        std::fs::copy(dir.path().join(format!("bad{i}.yaml")), data.with_extension("yaml")).unwrap();
        let (status, output) = options.start_expecting_failure();
        assert!(!status.success());
        assert!(output.contains(BAD_FILES[i].1), "{output}");
    }
    // A missing --config file is an error, not silently ignored.
    let output = run(&["--config", "/nonexistent/peat.yaml", "config", "check"], &[]);
    assert!(!output.status.success());
    assert!(text(&output).contains("/nonexistent/peat.yaml"), "{}", text(&output));
}

#[test]
fn unknown_environment_variables_are_reported_but_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.yaml", "");
    let output = run(&["--config", &empty, "config", "check"], &[("PEAT_SIDECAR_LISTN", "x")]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("PEAT_SIDECAR_LISTN"), "{}", text(&output));
}

#[test]
fn an_encryption_key_file_that_is_not_a_key_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "key", "this is not a key\n");
    let (status, output) =
        SidecarOptions::new(&dir.path().join("data")).arg("--encryption-key-file").arg(&key).start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("setting `encryption_key`"), "{output}");
    let empty = write(dir.path(), "empty-key", "\n");
    let (status, output) = SidecarOptions::new(&dir.path().join("data2"))
        .arg("--encryption-key-file")
        .arg(&empty)
        .start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("is empty"), "{output}");
}
