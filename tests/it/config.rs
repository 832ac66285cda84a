use crate::util::{Backend, Project};

fn sqlite() -> Project {
    Project::new(Backend::Sqlite).unwrap()
}

#[test]
fn init_says_when_the_migrations_directory_was_there() {
    let p = sqlite();
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    let init = p.run(&["init"]);
    init.ok();
    assert_eq!(
        init.stdout,
        "created lockstep.toml\nmigrations/ exists already: kept as it is\n"
    );
    assert!(p.path("migrations/1_a.sql").is_file());
}

#[test]
fn the_config_init_writes_shows_every_setting_with_its_default() {
    let p = sqlite();
    p.run(&["init"]).ok();
    let written = std::fs::read_to_string(p.path("lockstep.toml")).unwrap();
    for section in ["# [lock]", "# [statements]"] {
        assert!(written.contains(section), "{written}");
    }
    // Every commented setting, switched on, is one the file takes.
    let on: String = written
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    for setting in [
        "\n[lock]\n",
        "\ntimeout = \"5m\"\n",
        "\nlock_retries = 10\n",
    ] {
        assert!(on.contains(setting), "{on}");
    }
    std::fs::write(p.path("lockstep.toml"), on).unwrap();
    let run = p.run(&["status"]);
    run.ok();
}

#[test]
fn init_then_new_then_upgrade_uses_the_config_file() {
    let p = sqlite();
    std::fs::remove_dir(p.path("migrations")).unwrap();
    let init = p.run(&["init"]);
    init.ok();
    assert_eq!(init.stdout, "created lockstep.toml\ncreated migrations/\n");
    assert!(p.path("lockstep.toml").is_file() && p.path("migrations").is_dir());
    let again = p.run(&["init"]);
    again.code(2);
    assert!(
        again
            .stderr
            .contains("lockstep.toml already exists; nothing was changed"),
        "{}",
        again.stderr
    );

    let new = p.run(&["new", "create_users"]);
    new.ok();
    let path = new.stdout.trim().to_string();
    assert!(
        path.starts_with("migrations/") && path.ends_with("_create_users.sql"),
        "{path}"
    );
    let template = std::fs::read_to_string(p.path(&path)).unwrap();
    assert!(
        template.contains("-- upgrade\n") && template.contains("-- rollback\n"),
        "{template}"
    );
    std::fs::write(
        p.path(&path),
        template.replace(
            "-- upgrade\n",
            "-- upgrade\nCREATE TABLE users (id integer);\n",
        ),
    )
    .unwrap();

    // Without LOCKSTEP_DATABASE_URL the config file's sqlite://lockstep.db
    // is used, relative to the config file.
    let mut cmd = p.command(&["upgrade"]);
    cmd.env_remove("LOCKSTEP_DATABASE_URL");
    let run = crate::util::Run::from(cmd.output().unwrap());
    run.ok();
    assert!(p.path("lockstep.db").is_file());
    let conn = rusqlite::Connection::open(p.path("lockstep.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM lockstep_history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn config_paths_are_relative_to_the_config_file() {
    let p = sqlite();
    p.file(
        "conf/lockstep.toml",
        "database_url = \"sqlite://app.db\"\nmigrations = \"db\"\n",
    );
    p.file(
        "conf/db/1_a.sql",
        "-- upgrade\nCREATE TABLE a (id integer);\n",
    );
    let mut cmd = p.command(&["upgrade", "-c", "conf/lockstep.toml"]);
    cmd.env_remove("LOCKSTEP_DATABASE_URL");
    crate::util::Run::from(cmd.output().unwrap()).ok();
    assert!(p.path("conf/app.db").is_file());
}

#[test]
fn database_url_precedence() {
    let p = sqlite();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.file("lockstep.toml", "database_url = \"sqlite://file.db\"\n");
    let run = |flag: Option<&str>, lockstep_env: Option<&str>, env: Option<&str>| {
        let mut args = vec!["upgrade"];
        if let Some(f) = flag {
            args.extend(["-d", f]);
        }
        let mut cmd = p.command(&args);
        cmd.env_remove("LOCKSTEP_DATABASE_URL");
        if let Some(v) = lockstep_env {
            cmd.env("LOCKSTEP_DATABASE_URL", v);
        }
        if let Some(v) = env {
            cmd.env("DATABASE_URL", v);
        }
        crate::util::Run::from(cmd.output().unwrap()).ok();
    };
    run(
        Some("sqlite://flag.db"),
        Some("sqlite://lenv.db"),
        Some("sqlite://env.db"),
    );
    assert!(p.path("flag.db").exists() && !p.path("lenv.db").exists());
    run(None, Some("sqlite://lenv.db"), Some("sqlite://env.db"));
    assert!(p.path("lenv.db").exists() && !p.path("env.db").exists());
    run(None, None, Some("sqlite://env.db"));
    assert!(p.path("env.db").exists() && !p.path("file.db").exists());
    run(None, None, None);
    assert!(p.path("file.db").exists());
}

#[test]
fn no_database_anywhere_is_a_usage_error() {
    let p = sqlite();
    let mut cmd = p.command(&["status"]);
    cmd.env_remove("LOCKSTEP_DATABASE_URL");
    let run = crate::util::Run::from(cmd.output().unwrap());
    run.code(2);
    insta::assert_snapshot!(run.stderr, @r"
    error: no database configured
    hint: run `lockstep init` to create lockstep.toml, or pass `--database-url URL` (or set LOCKSTEP_DATABASE_URL)
    ");
}

#[test]
fn unknown_config_key_is_named_with_its_line() {
    let p = sqlite();
    p.file(
        "lockstep.toml",
        "database_url = \"sqlite://a.db\"\nmigrations_dir = \"db\"\n",
    );
    let run = p.run(&["status"]);
    run.code(2);
    assert!(
        run.stderr
            .starts_with("error: lockstep.toml:2: unknown key `migrations_dir`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "hint: lockstep.toml takes database_url, migrations, history_table, format, a [lock] table with timeout and ttl, and a [statements] table"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_history_table_name_is_refused() {
    let p = sqlite();
    p.file("lockstep.toml", "history_table = \"h; DROP TABLE users\"\n");
    let run = p.run(&["upgrade"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("history_table in lockstep.toml: invalid table name"),
        "{}",
        run.stderr
    );
    p.file("lockstep.toml", "history_table = \"other.h\"\n");
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    let run = p.run(&["upgrade"]);
    run.code(2);
    assert!(
        run.stderr.contains("SQLite has no schema `other`"),
        "{}",
        run.stderr
    );
}

both!(custom_history_table, |p| {
    p.file("lockstep.toml", "history_table = \"schema_versions\"\n");
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    assert!(!p.db.table_exists("lockstep_history"));
    assert_eq!(p.db.value("SELECT version FROM schema_versions"), "1");
    assert_eq!(
        p.run(&["status", "--json"]).json()["history_table"],
        "schema_versions"
    );
});

#[test]
fn bad_urls_are_usage_errors_and_hide_the_password() {
    let p = sqlite();
    for url in [
        "postgres://me:hunter2@db:notaport/app",
        "oracle://me:hunter2@db/app",
        "postgres://me:hunter2@db/app?sslmode=maybe",
        "postgres://me:hunt/er2@db/app",
    ] {
        let run = p.run(&["status", "-d", url, "--json"]);
        run.code(2);
        let doc = run.json();
        assert_eq!(doc["error"]["code"], "database_url");
        for out in [&run.stdout, &run.stderr] {
            assert!(
                !out.contains("hunter2") && !out.contains("er2"),
                "{url}: {out}"
            );
        }
    }
}

#[test]
fn new_picks_distinct_versions_within_one_second() {
    let p = sqlite();
    let a = p.run(&["new", "first"]);
    let b = p.run(&["new", "second"]);
    a.ok();
    b.ok();
    let version = |path: &str| {
        path.trim()
            .trim_start_matches("migrations/")
            .split('_')
            .next()
            .unwrap()
            .to_string()
    };
    let (va, vb) = (version(&a.stdout), version(&b.stdout));
    assert_eq!(va.len(), 14, "{va}");
    assert!(vb > va, "{va} {vb}");
}

#[test]
fn new_continues_a_sequence() {
    let p = sqlite();
    p.migration("0001_a.sql", "-- upgrade\nSELECT 1;\n");
    p.migration("0002_b.sql", "-- upgrade\nSELECT 1;\n");
    let run = p.run(&["new", "c"]);
    run.ok();
    assert_eq!(run.stdout, "migrations/0003_c.sql\n");
    let doc = p.run(&["new", "d", "--json"]).json();
    assert_eq!(doc["version"], 4);
    assert_eq!(doc["path"], "migrations/0004_d.sql");
}

#[test]
fn new_refuses_bad_names_with_a_suggestion() {
    let p = sqlite();
    let run = p.run(&["new", "Add Users"]);
    run.code(2);
    assert_eq!(
        run.stderr,
        "error: invalid migration name `Add Users`: use lowercase letters, digits and `_`\nhint: lockstep new add_users\n"
    );
}

/// `new` writes the next migration in the form of the newest one: another
/// tool's, when the directory is that tool's.
/// The existing migration and its text; the path `new` prints; the files
/// it writes, with their text.
type NewCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn new_writes_in_the_form_of_the_directory() {
    let cases: &[NewCase<'_>] = &[
        (
            "0001_a.sql",
            "-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n",
            "migrations/0002_c.sql",
            &[(
                "migrations/0002_c.sql",
                "-- migrate:up\n\n\n-- migrate:down\n\n",
            )],
        ),
        (
            "0001_a.sql",
            "-- +goose Up\nSELECT 1;\n",
            "migrations/0002_c.sql",
            &[(
                "migrations/0002_c.sql",
                "-- +goose Up\n\n\n-- +goose Down\n\n",
            )],
        ),
        (
            "0001_a.sql",
            "SELECT 1;\n",
            "migrations/0002_c.sql",
            &[("migrations/0002_c.sql", "-- Add migration script here\n")],
        ),
        (
            "1.up.sql",
            "SELECT 1;\n",
            "migrations/2_c.up.sql",
            &[
                ("migrations/2_c.up.sql", ""),
                ("migrations/2_c.down.sql", ""),
            ],
        ),
        ("2023-01-01-120000_a/up.sql", "SELECT 1;\n", "", &[]),
    ];
    for (existing, content, want_path, want_files) in cases {
        let p = sqlite();
        p.migration(existing, content);
        let run = p.run(&["new", "c"]);
        run.ok();
        let path = run.stdout.trim_end();
        if want_path.is_empty() {
            // diesel: a directory named by the time, with both files.
            assert!(
                path.starts_with("migrations/20") && path.ends_with("_c"),
                "{path}"
            );
            assert!(
                !path[11..].starts_with('-') && path.matches('-').count() == 3,
                "{path}"
            );
            assert_eq!(
                std::fs::read_to_string(p.path(&format!("{path}/up.sql"))).unwrap(),
                ""
            );
            assert!(p.path(&format!("{path}/down.sql")).is_file());
            continue;
        }
        assert_eq!(path, *want_path, "{existing}");
        for (file, text) in *want_files {
            assert_eq!(
                std::fs::read_to_string(p.path(file)).unwrap(),
                *text,
                "{file}"
            );
        }
    }
}

/// `format` names whose files the directory holds: a file in another
/// layout is refused, naming it, and `new` writes that tool's form.
#[test]
fn format_refuses_other_layouts_and_shapes_new() {
    let p = sqlite();
    p.file(
        "lockstep.toml",
        "database_url = \"sqlite://test.db\"\nformat = \"dbmate\"\n",
    );
    p.migration("1_a.sql", "-- migrate:up\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    let run = p.run(&["new", "b"]);
    run.ok();
    let path = run.stdout.trim_end().to_string();
    assert_eq!(
        std::fs::read_to_string(p.path(&path)).unwrap(),
        "-- migrate:up\n\n\n-- migrate:down\n\n"
    );
    std::fs::remove_file(p.path(&path)).unwrap();
    p.migration("3_c.sql", "-- upgrade\nCREATE TABLE c (id integer);\n");
    let refused = p.run(&["status"]);
    refused.code(2);
    assert!(
        refused.stderr.starts_with(
            "error: migrations/3_c.sql: not in the layout `format` names: it uses lockstep's"
        ),
        "{}",
        refused.stderr
    );
    p.file(
        "lockstep.toml",
        "database_url = \"sqlite://test.db\"\nformat = \"flyway-ish\"\n",
    );
    let bad = p.run(&["status"]);
    bad.code(2);
    assert!(
        bad.stderr.contains("unknown format `flyway-ish`"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains(
            "hint: use one of auto, lockstep, golang-migrate, sqlx, dbmate, goose, diesel"
        ),
        "{}",
        bad.stderr
    );
}
