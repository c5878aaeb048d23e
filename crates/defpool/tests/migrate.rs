//! `defpool migrate`: the real binary migrates SQLite (by config file) and PostgreSQL (by URL,
//! own schema), says what it applied, applies nothing the second time; a bad URL or config exits
//! 78 naming `server.database_url`; an unreachable store exits 1 with the cause; a password in
//! the URL never appears in the output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use defpool_store::Store;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const PASSWORD: &str = "not-a-real-password-4711";

fn defpool(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defpool"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("DEFPOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("defpool runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-migrate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn config(dir: &Path, database_url: &str) -> PathBuf {
    let file = dir.join("server.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ndatabase_url = \"{database_url}\"\n\
             admin_token = \"migrate-test-admin-token-0123456789\"\n"
        ),
    )
    .expect("write config");
    file
}

/// Asserts the first run applied every migration and the second applied nothing, then that the
/// store itself finds nothing left to apply.
fn check_idempotent(args: &[&str], url: &str) {
    let first = defpool(args);
    let (out, err) = text(&first);
    assert!(first.status.success(), "first run: {out}\n{err}");
    assert!(
        out.contains("applied migration 1 (initial)")
            && out.contains("applied migration 2 (worker facts on work rows)"),
        "first run: {out}"
    );
    let second = defpool(args);
    let (out, err) = text(&second);
    assert!(second.status.success(), "second run: {out}\n{err}");
    assert!(out.contains("nothing to apply"), "second run: {out}");
    assert!(!out.contains("applied migration"), "second run: {out}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::connect(url).await.expect("open the migrated store");
        let report = store.migrate().await.expect("migrate again");
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(store.total_work().await.unwrap(), 0);
        store.close().await;
    });
}

#[test]
fn sqlite_by_config_file() {
    let dir = temp("sqlite");
    let url = format!("sqlite:{}", dir.join("pool.db").display());
    let file = config(&dir, &url);
    check_idempotent(&["migrate", "--config", file.to_str().unwrap()], &url);
    let _ = std::fs::remove_dir_all(&dir);
}

fn psql(admin_url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs (the PostgreSQL client is needed for this test)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postgres_by_url() {
    if std::env::var("DEFPOOL_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("DEFPOOL_SKIP_POSTGRES=1: skipping the PostgreSQL case");
        return;
    }
    let admin_url =
        std::env::var("DEFPOOL_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.to_string());
    let schema = format!("defpool_migrate_{}", std::process::id());
    psql(
        &admin_url,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    );
    psql(&admin_url, &format!("CREATE SCHEMA {schema}"));
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
    check_idempotent(&["migrate", "--database-url", &url], &url);
    psql(&admin_url, &format!("DROP SCHEMA {schema} CASCADE"));
}

fn assert_exit(o: &Output, code: i32, needle: &str) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(code), "{out}\n{err}");
    assert!(err.contains(needle), "wanted `{needle}` in: {err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "password leaked: {out}\n{err}"
    );
}

#[test]
fn bad_urls_and_configs_exit_78() {
    let with_password = format!("mysql://pool:{PASSWORD}@127.0.0.1/pool");
    assert_exit(
        &defpool(&["migrate", "--database-url", &with_password]),
        78,
        "server.database_url: scheme `mysql`",
    );
    assert_exit(
        &defpool(&["migrate", "--database-url", "sqlite:"]),
        78,
        "server.database_url:",
    );
    assert_exit(
        &defpool(&[
            "migrate",
            "--database-url",
            &format!("postgres://pool:{PASSWORD}@/pool"),
        ]),
        78,
        "server.database_url: the URL names no host",
    );
    let dir = temp("bad-config");
    let file = config(&dir, &format!("redis://pool:{PASSWORD}@127.0.0.1/0"));
    assert_exit(
        &defpool(&["migrate", "--config", file.to_str().unwrap()]),
        78,
        "server.database_url",
    );
    let no_server = dir.join("no-server.toml");
    std::fs::write(&no_server, "network = \"regtest\"\n").unwrap();
    assert_exit(
        &defpool(&["migrate", "--config", no_server.to_str().unwrap()]),
        78,
        "server",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_store_exits_1_with_the_cause() {
    // A loopback port nobody listens on: refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://pool:{PASSWORD}@127.0.0.1:{port}/pool");
    let o = defpool(&["migrate", "--database-url", &url]);
    assert_exit(&o, 1, "refused");
    let (_, err) = text(&o);
    assert!(err.contains("postgres://pool:***@127.0.0.1"), "{err}");

    let missing = temp("unreachable").join("no-such-dir").join("pool.db");
    let o = defpool(&[
        "migrate",
        "--database-url",
        &format!("sqlite:{}", missing.display()),
    ]);
    assert_exit(&o, 1, "opening the SQLite database");
}
