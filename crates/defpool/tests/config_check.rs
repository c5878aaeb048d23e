//! `defpool config check`: every shipped example passes; every broken config exits 78 (EX_CONFIG)
//! with a message naming the key and the cause, before anything starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn defpool(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defpool"));
    cmd.args(args);
    // Only the overrides a case sets: the developer's own DEFPOOL_ variables must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("DEFPOOL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("defpool runs")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("config").join(name)).expect("example exists")
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_shipped_example_is_valid() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain(
            std::fs::read_dir(repo().join("config/production"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "demo.toml",
        "pool.toml",
        "solo.toml",
        "mixed.toml",
        "server.toml",
        "proxy.toml",
        "adapter.toml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "config/{required} is missing"
        );
    }
    let args: Vec<&str> = ["config", "check"]
        .into_iter()
        .chain(files.iter().map(|f| f.to_str().unwrap()))
        .collect();
    let out = defpool(&args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("valid; network").count(), files.len());
}

#[test]
fn database_passwords_never_show_in_output_or_errors() {
    let text = example("production/server.toml");
    for (url, valid) in [
        ("postgres://pool:hunter2secret@127.0.0.1:5432/defpool", true),
        (
            "postgres://pool:hunter2secret@127.0.0.1:5432 /defpool",
            false,
        ),
    ] {
        let edited = text.replacen("postgres://defpool@127.0.0.1:5432/defpool", url, 1);
        let file = write_temp("db-password.toml", &edited);
        let out = defpool(&["config", "check", file.to_str().unwrap()], &[]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), valid, "{all}");
        assert!(
            !valid || all.contains("postgres://<redacted>@127.0.0.1:5432/defpool"),
            "{all}"
        );
        assert!(valid || all.contains("server.database_url"), "{all}");
        assert!(!all.contains("hunter2secret"), "{all}");
    }
}

#[test]
fn secrets_are_redacted_in_the_effective_config() {
    let out = defpool(
        &[
            "config",
            "check",
            repo().join("config/solo.toml").to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for secret in [
        "solo-admin-token-for-regtest",
        "solo-proxy-admin-token",
        "regtest-rpc-password",
        "AFnAZb3koYMnb6xkbYddrgt2o61Te77FMQqdtBRj5PZDCbRu5",
        "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes",
    ] {
        assert!(!stdout.contains(secret), "secret printed: {secret}");
    }
    assert!(stdout.contains("<redacted>"));
    // Public values and defaults are shown.
    assert!(stdout.contains("rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7"));
    assert!(stdout.contains("grace_secs = 10"));
}

#[test]
fn environment_overrides_apply_and_are_validated() {
    let file = repo().join("config/demo.toml");
    let out = defpool(
        &["config", "check", file.to_str().unwrap()],
        &[("DEFPOOL_SERVER__POOL_FEE_BPS", "250")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool_fee_bps = 250"));

    let out = defpool(
        &["config", "check", file.to_str().unwrap()],
        &[("DEFPOOL_SERVER__POOL_FEE_BPS", "20000")],
    );
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.pool_fee_bps: 20000 is outside 0..=10000"),
        "{stderr}"
    );
}

/// One broken config: how to break an example, and what the error must say.
struct Case {
    name: &'static str,
    base: &'static str,
    /// (text to find, replacement); an empty `find` appends the replacement.
    edit: (&'static str, &'static str),
    /// Substrings the error must contain: the key, and the cause.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "unknown key",
        base: "demo.toml",
        edit: ("pool_fee_bps = 100", "pool_fee_bps = 100\npool_fees = 3"),
        expect: &["server", "unknown field", "pool_fees"],
    },
    Case {
        name: "invalid payout address (corrupted checksum)",
        base: "solo.toml",
        edit: ("rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7", "rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu8"),
        expect: &["adapters[0].payout_address"],
    },
    Case {
        name: "payout address of another network",
        base: "solo.toml",
        edit: ("rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7", "ltc1qpvjudperjmpcuxmdvpdw8dhr6q0hhjxtwk7pj0"),
        expect: &["adapters[0].payout_address", "mainnet"],
    },
    Case {
        name: "payout address of another coin",
        base: "solo.toml",
        edit: (
            "rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7",
            "bcrt1q0k4ruul5d3wjttl9x9sem589h3eglcqzq86dw4",
        ),
        expect: &["adapters[0].payout_address", "wrong coin", "BTC regtest address"],
    },
    Case {
        name: "bad URL",
        base: "solo.toml",
        edit: ("rpc_url = \"http://127.0.0.1:19443\"", "rpc_url = \"http//127.0.0.1:19443\""),
        expect: &["adapters[0].rpc_url", "not a valid URL"],
    },
    Case {
        name: "wrong URL scheme for an SV1 upstream",
        base: "pool.toml",
        edit: ("url = \"stratum+tcp://bch.pool.example:3333\"", "url = \"stratum2+tcp://bch.pool.example:3333\""),
        expect: &["upstreams[1].url", "scheme `stratum2+tcp`"],
    },
    Case {
        name: "port clash",
        base: "demo.toml",
        edit: ("listen = \"127.0.0.1:3433\"", "listen = \"127.0.0.1:3333\""),
        expect: &["proxy.ports[2].listen", "clashes with proxy.ports[1].listen"],
    },
    Case {
        name: "port clash with an unspecified address",
        base: "pool.toml",
        edit: ("api_listen = \"127.0.0.1:8080\"", "api_listen = \"127.0.0.1:3333\""),
        expect: &["proxy.ports[1].listen", "clashes with server.api_listen"],
    },
    Case {
        name: "missing secret",
        base: "demo.toml",
        edit: ("admin_token = \"demo-admin-token-not-secret\"\n", ""),
        expect: &["server.admin_token", "is required"],
    },
    Case {
        name: "missing daemon credentials",
        base: "solo.toml",
        edit: ("rpc_password = \"regtest-rpc-password\"\n", ""),
        expect: &["adapters[0].rpc_password", "is required"],
    },
    Case {
        name: "out-of-range number",
        base: "demo.toml",
        edit: ("pool_fee_bps = 100", "pool_fee_bps = 10001"),
        expect: &["server.pool_fee_bps", "outside 0..=10000"],
    },
    Case {
        name: "no batches per run",
        base: "demo.toml",
        edit: ("pool_fee_bps = 100", "pool_fee_bps = 100\ningest_run_batches = 0"),
        expect: &["server.ingest_run_batches", "outside 1..=1000"],
    },
    Case {
        name: "min difficulty above max",
        base: "demo.toml",
        edit: ("min_difficulty = 0.001", "min_difficulty = 0.001\nmax_difficulty = 0.0001"),
        expect: &["proxy.ports[2].min_difficulty", "above max_difficulty"],
    },
    Case {
        name: "unknown coin",
        base: "demo.toml",
        edit: ("whitelist = [\"BTC\", \"BCH\", \"BSV\", \"LTC\", \"DOGE\"]", "whitelist = [\"BTC\", \"XMR\"]"),
        expect: &["server.whitelist[1]", "unknown coin `XMR`"],
    },
    Case {
        name: "invalid TOML",
        base: "demo.toml",
        edit: ("[server]", "[server"),
        expect: &["not valid TOML"],
    },
    Case {
        name: "malformed authority key",
        base: "solo.toml",
        edit: ("url = \"stratum2+tcp://127.0.0.1:34260\"\nauthority_public_key = \"9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs\"", "url = \"stratum2+tcp://127.0.0.1:34260\"\nauthority_public_key = \"9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAt\""),
        expect: &["upstreams[0].authority_public_key", "base58check"],
    },
    Case {
        name: "admin endpoint off loopback",
        base: "demo.toml",
        edit: ("admin_listen = \"127.0.0.1:3341\"", "admin_listen = \"0.0.0.0:3341\""),
        expect: &["proxy.admin_listen", "not a loopback address"],
    },
    Case {
        name: "duplicate upstream name",
        base: "pool.toml",
        edit: ("name = \"bsv-pool\"", "name = \"bch-pool\""),
        expect: &["upstreams[2].name", "used twice"],
    },
    Case {
        name: "upstream coin without a port of its algorithm",
        base: "solo.toml",
        edit: ("", "\n[[upstreams]]\nname = \"btc\"\ncoin = \"BTC\"\nprotocol = \"sv1\"\nurl = \"stratum+tcp://127.0.0.1:9999\"\n"),
        expect: &["upstreams[1].coin", "no sha256d port"],
    },
    Case {
        name: "merge-mined coin added on a parent of another algorithm",
        base: "demo.toml",
        edit: ("", "\n[[coins]]\nticker = \"XAUX\"\nname = \"Aux\"\nalgorithm = \"sha256d\"\ndecimals = 8\nblock_time_secs = 60\nsegwit = false\nmweb = false\nversion_rolling_mask = 0\nmerged_mining = { parent = \"LTC\", chain_id = 7 }\n[coins.networks.regtest]\naddress = { p2pkh = [0x6f] }\nsubsidy = { kind = \"halving\", initial = 100, interval = 10 }\ncoinbase_maturity = 10\npow_limit_bits = 0x207fffff\nrpc_port = 1\n"),
        expect: &["coins", "XAUX", "mines scrypt, not sha256d"],
    },
    Case {
        name: "remote server without a proxy token",
        base: "pool.toml",
        edit: ("id = \"pool-proxy-1\"", "id = \"pool-proxy-1\"\nserver_url = \"tcp://127.0.0.1:3340\""),
        expect: &["proxy.server_token", "is required"],
    },
    Case {
        name: "outbox commit window too long",
        base: "demo.toml",
        edit: ("outbox_path = \"defpool-demo-outbox.db\"", "outbox_path = \"defpool-demo-outbox.db\"\noutbox_commit_interval_ms = 500"),
        expect: &["proxy.outbox_commit_interval_ms", "500"],
    },
    Case {
        name: "adapter with a remote server but no token",
        base: "production/adapter.toml",
        edit: ("server_token = \"replace-me-ltc-adapter-control-token\"\n", ""),
        expect: &["adapters[0].server_token", "is required"],
    },
];

fn run_case(case: &Case) -> (Option<i32>, String) {
    let text = example(case.base);
    let broken = if case.edit.0.is_empty() {
        format!("{text}{}", case.edit.1)
    } else {
        assert!(
            text.contains(case.edit.0),
            "case `{}`: edit target not found",
            case.name
        );
        text.replacen(case.edit.0, case.edit.1, 1)
    };
    let file = write_temp(&format!("{}.toml", case.name.replace(' ', "-")), &broken);
    let out = defpool(&["config", "check", file.to_str().unwrap()], &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_configs_exit_78_naming_key_and_cause() {
    let mut distinct = 0;
    for case in CASES {
        let (code, stderr) = run_case(case);
        assert_eq!(code, Some(78), "case `{}`: {stderr}", case.name);
        for needle in case.expect {
            assert!(
                stderr.contains(needle),
                "case `{}`: `{needle}` not in: {stderr}",
                case.name
            );
        }
        distinct += 1;
    }
    assert!(distinct >= 10);
}

#[test]
fn regtest_only_block_target_is_refused_on_mainnet() {
    let text = example("solo.toml")
        .replace("network = \"regtest\"", "network = \"mainnet\"")
        .replace(
            "rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7",
            "ltc1qpvjudperjmpcuxmdvpdw8dhr6q0hhjxtwk7pj0",
        );
    let file = write_temp("regtest-only-on-mainnet.toml", &text);
    let out = defpool(&["config", "check", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "adapters[0].block_target_difficulty: is a regtest-only option (network is mainnet)"
        ),
        "{stderr}"
    );
    // Without the option the same mainnet config is valid.
    let fixed = text.replace("block_target_difficulty = 0.001\n", "");
    let file = write_temp("regtest-only-removed.toml", &fixed);
    assert!(defpool(&["config", "check", file.to_str().unwrap()], &[])
        .status
        .success());
}

#[test]
fn wrong_types_and_missing_files_exit_78() {
    let text = example("demo.toml").replace("pool_fee_bps = 100", "pool_fee_bps = \"lots\"");
    let file = write_temp("wrong-type.toml", &text);
    let out = defpool(&["config", "check", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("server.pool_fee_bps") && stderr.contains("invalid type"),
        "{stderr}"
    );

    let out = defpool(&["config", "check", "/nonexistent/defpool.toml"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}

#[test]
fn help_lists_only_working_subcommands() {
    let out = defpool(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A long description wraps onto deeper-indented lines: only "  <name>  …" names one.
        .filter(|l| !l[2..].starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        commands,
        [
            "config", "coins", "backtest", "proxy", "server", "run", "adapter", "demo", "migrate",
            "admin", "loadgen", "help"
        ]
    );
}

#[test]
fn coins_lists_the_registry_and_config_additions() {
    let out = defpool(&["coins", "--network", "regtest"], &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for ticker in ["BTC", "BCH", "BSV", "LTC", "DOGE"] {
        assert!(
            table.lines().any(|l| l.starts_with(ticker)),
            "{ticker} missing:\n{table}"
        );
    }
    assert!(table.contains("mweb,segwit"));
    let doge = table.lines().find(|l| l.starts_with("DOGE")).unwrap();
    assert!(doge.ends_with("LTC"), "{doge}");
    let out = defpool(&["coins", "--network", "moon"], &[]);
    assert_eq!(out.status.code(), Some(2));
}
