//! `lockstep import` against history tables that the other tools wrote
//! themselves: real dbmate and jetbase, installed by
//! `scripts/install-tools`, run on every engine; the result checked with
//! plain SQL.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{Project, TestDb};

/// An installed tool's program, under `LOCKSTEP_TEST_TOOLS`. Missing: a
/// loud failure in CI; locally a failure too, unless
/// `LOCKSTEP_SKIP_TOOLS=1` opts out.
fn tool(program: &str) -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LOCKSTEP_TEST_TOOLS") {
        let path = PathBuf::from(dir).join(program);
        assert!(
            path.is_file(),
            "{} is missing: run `scripts/install-tools`",
            path.display()
        );
        return Some(path);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if !in_ci && std::env::var("LOCKSTEP_SKIP_TOOLS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: LOCKSTEP_SKIP_TOOLS=1 and no LOCKSTEP_TEST_TOOLS");
        return None;
    }
    panic!(
        "LOCKSTEP_TEST_TOOLS is not set: run the tests with `scripts/test`, which installs \
         dbmate and jetbase (locally, LOCKSTEP_SKIP_TOOLS=1 skips the tests that need them)"
    );
}

/// Runs a tool in `dir`; its output on failure.
fn run_tool(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test database's URL for a Go tool (dbmate).
fn go_url(db: &TestDb) -> String {
    match db {
        TestDb::Sqlite { path } => format!("sqlite:{}", path.display()),
        TestDb::Postgres { url, .. } | TestDb::Mariadb { url, .. } => url.clone(),
    }
}

/// The test database's URL for SQLAlchemy (jetbase), with the drivers
/// `scripts/install-tools` installs.
fn sqlalchemy_url(db: &TestDb) -> String {
    let rest = |url: &str| {
        let without_scheme = url.split_once("://").unwrap().1;
        without_scheme.split('?').next().unwrap().to_string()
    };
    match db {
        TestDb::Sqlite { path } => format!("sqlite:///{}", path.display()),
        TestDb::Postgres { url, .. } => format!("postgresql+psycopg2://{}", rest(url)),
        TestDb::Mariadb { url, .. } => format!("mysql+pymysql://{}", rest(url)),
    }
}

/// An import's warnings, from its JSON document.
fn warnings(doc: &serde_json::Value) -> Vec<&str> {
    doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect()
}

fn versions(p: &Project, sql: &str) -> Vec<String> {
    p.db.query(sql).into_iter().map(|r| r[0].clone()).collect()
}

both!(dbmate_s_own_history_is_taken_over, |p| {
    let Some(dbmate) = tool("node_modules/.bin/dbmate") else {
        return;
    };
    p.migration(
        "20240101000000_users.sql",
        "-- migrate:up\nCREATE TABLE users (id integer);\n\n-- migrate:down\nDROP TABLE users;\n",
    );
    p.migration(
        "20240102000000_posts.sql",
        "-- migrate:up\nCREATE TABLE posts (id integer);\n\n-- migrate:down\nDROP TABLE posts;\n",
    );
    let mut up = Command::new(&dbmate);
    up.current_dir(p.dir.path()).args([
        "--url",
        &go_url(&p.db),
        "--migrations-dir",
        "migrations",
        "--no-dump-schema",
        "up",
    ]);
    run_tool(up, "dbmate up");
    assert!(p.db.table_exists("users") && p.db.table_exists("posts"));

    let dry = p.run(&["import", "dbmate", "--dry-run"]);
    dry.ok();
    assert!(!p.db.table_exists("lockstep_history"));
    let run = p.run(&["import", "dbmate", "--json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["changes"].as_array().unwrap().len(), 2, "{doc}");
    // Only present when there are any.
    assert!(doc["warnings"].is_null(), "{}", doc["warnings"]);
    assert_eq!(
        p.db.history(),
        [
            "20240101000000 users applied",
            "20240102000000 posts applied"
        ]
    );
    // dbmate's table as dbmate left it.
    assert_eq!(
        versions(&p, "SELECT version FROM schema_migrations ORDER BY version"),
        ["20240101000000", "20240102000000"]
    );

    // From here on lockstep migrates: nothing twice, the next one once.
    p.run(&["upgrade"]).ok();
    p.migration(
        "20240103000000_tags.sql",
        "-- migrate:up\nCREATE TABLE tags (id integer);\n\n-- migrate:down\nDROP TABLE tags;\n",
    );
    let run = p.run(&["upgrade", "--json"]);
    run.ok();
    let applied = run.json()["migrations"].clone();
    assert_eq!(applied.as_array().unwrap().len(), 1);
    assert_eq!(applied[0]["version"], 20240103000000u64);
    assert!(p.db.table_exists("tags"));
    p.run(&["rollback"]).ok();
    assert!(!p.db.table_exists("tags") && p.db.table_exists("posts"));
});

both!(jetbase_s_own_history_is_taken_over, |p| {
    let Some(jetbase) = tool("venv/bin/jetbase") else {
        return;
    };
    let dir = "jetbase/migrations";
    p.file(
        "jetbase/env.py",
        &format!("sqlalchemy_url = \"{}\"\n", sqlalchemy_url(&p.db)),
    );
    p.file(
        &format!("{dir}/V1__create_users.sql"),
        "-- upgrade\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users (id, name) VALUES (1, 'a');\n\n-- rollback\nDROP TABLE users;\n",
    );
    p.file(
        &format!("{dir}/V2__add_posts.sql"),
        "-- upgrade\nCREATE TABLE posts (id integer);\n-- rollback\nDROP TABLE posts;\n",
    );
    p.file(
        &format!("{dir}/ROC__names.sql"),
        "-- upgrade\nDROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT name FROM users;\n",
    );
    // jetbase's own default: a dotted version.
    p.file(
        &format!("{dir}/V20251225.120000__tags.sql"),
        "-- upgrade\nCREATE TABLE tags (id integer);\n-- rollback\nDROP TABLE tags;\n",
    );
    let mut up = Command::new(&jetbase);
    up.current_dir(p.path("jetbase")).arg("upgrade");
    run_tool(up, "jetbase upgrade");
    assert_eq!(
        versions(
            &p,
            "SELECT version FROM jetbase_migrations WHERE migration_type = 'VERSIONED' ORDER BY order_executed"
        ),
        ["1", "2", "20251225.120000"]
    );
    // After jetbase ran them: a comment (not in jetbase's checksum) in one,
    // a statement more in the other.
    p.file(
        &format!("{dir}/V1__create_users.sql"),
        "-- upgrade\n-- the users\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users (id, name) VALUES (1, 'a');\n\n-- rollback\nDROP TABLE users;\n",
    );
    p.file(
        &format!("{dir}/V2__add_posts.sql"),
        "-- upgrade\nCREATE TABLE posts (id integer);\nCREATE TABLE more (id integer);\n-- rollback\nDROP TABLE posts;\n",
    );

    let run = p.run(&["-m", dir, "import", "jetbase", "--json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["changes"].as_array().unwrap().len(), 4, "{doc}");
    assert_eq!(doc["changes"][2]["version"], "20251225.120000", "{doc}");
    // The repeatable one jetbase ran, as its file is now (by jetbase's
    // checksum): recorded as run.
    assert_eq!(doc["changes"][3]["name"], "names", "{doc}");
    let warnings = warnings(&doc);
    assert_eq!(
        warnings,
        ["version 2: the file changed since jetbase applied it (its checksum differs)"]
    );
    assert_eq!(
        p.db.history(),
        [
            "1 create_users applied",
            "2 add_posts applied",
            "20251225.120000 tags applied"
        ]
    );

    // Not run again until its file changes; jetbase's table stays as
    // jetbase left it.
    let runs = "SELECT runs FROM lockstep_repeatable WHERE name = 'names'";
    assert_eq!(p.db.value(runs), "1");
    let run = p.run(&["-m", dir, "upgrade"]);
    run.ok();
    assert!(!run.stdout.contains("repeatable names"), "{}", run.stdout);
    assert_eq!(p.db.value(runs), "1");
    p.file(
        &format!("{dir}/ROC__names.sql"),
        "-- upgrade\nDROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT upper(name) AS name FROM users;\n",
    );
    let run = p.run(&["-m", dir, "upgrade"]);
    run.ok();
    assert!(
        run.stdout.contains("applied repeatable names"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db.value("SELECT name FROM names"), "A");
    assert_eq!(p.db.value(runs), "2");
    assert_eq!(p.db.value("SELECT count(*) FROM jetbase_migrations"), "4");
    assert!(!p.db.table_exists("more"));
});

both!(sqlx_s_own_history_is_taken_over, |p| {
    let Some(sqlx) = tool("cargo/bin/sqlx") else {
        return;
    };
    p.migration(
        "20240101000000_users.sql",
        "CREATE TABLE users (id integer);\n",
    );
    p.migration(
        "20240102000000_posts.sql",
        "-- Add migration script here\nCREATE TABLE posts (id integer);\n",
    );
    let url = match &p.db {
        TestDb::Sqlite { path } => format!("sqlite://{}?mode=rwc", path.display()),
        other => other.url(),
    };
    let mut run = Command::new(&sqlx);
    run.current_dir(p.dir.path()).args([
        "migrate",
        "run",
        "--database-url",
        &url,
        "--source",
        "migrations",
    ]);
    run_tool(run, "sqlx migrate run");
    assert!(p.db.table_exists("users") && p.db.table_exists("posts"));
    // Changed after sqlx applied it: its checksum in sqlx's table differs.
    p.migration(
        "20240102000000_posts.sql",
        "-- Add migration script here\nCREATE TABLE posts (id integer);\nCREATE TABLE more (id integer);\n",
    );

    let run = p.run(&["import", "sqlx", "--json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["changes"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(
        doc["warnings"],
        serde_json::json!([
            "version 20240102000000: the file changed since sqlx applied it (its checksum differs)"
        ])
    );
    assert_eq!(
        p.db.history(),
        [
            "20240101000000 users applied",
            "20240102000000 posts applied"
        ]
    );
    assert_eq!(p.db.value("SELECT count(*) FROM _sqlx_migrations"), "2");
    p.migration(
        "20240103000000_tags.sql",
        "CREATE TABLE tags (id integer);\n",
    );
    let run = p.run(&["upgrade", "--json"]);
    run.ok();
    assert_eq!(run.json()["migrations"].as_array().unwrap().len(), 1);
    assert!(p.db.table_exists("tags") && !p.db.table_exists("more"));
});

both!(diesel_s_own_history_is_taken_over, |p| {
    let Some(diesel) = tool("cargo/bin/diesel") else {
        return;
    };
    for (dir, table) in [
        ("2024-01-01-000000_users", "users"),
        ("2024-01-02-000000_posts", "posts"),
    ] {
        p.file(
            &format!("migrations/{dir}/up.sql"),
            &format!("CREATE TABLE {table} (id integer);\n"),
        );
        p.file(
            &format!("migrations/{dir}/down.sql"),
            &format!("DROP TABLE {table};\n"),
        );
    }
    let url = match &p.db {
        TestDb::Sqlite { path } => path.display().to_string(),
        other => other.url(),
    };
    let mut run = Command::new(&diesel);
    run.current_dir(p.dir.path()).args([
        "migration",
        "run",
        "--database-url",
        &url,
        "--migration-dir",
        "migrations",
    ]);
    run_tool(run, "diesel migration run");
    assert!(p.db.table_exists("users") && p.db.table_exists("posts"));

    let run = p.run(&["import", "diesel", "--json"]);
    run.ok();
    assert_eq!(run.json()["changes"].as_array().unwrap().len(), 2);
    assert_eq!(
        p.db.history(),
        [
            "20240101000000 users applied",
            "20240102000000 posts applied"
        ]
    );
    assert_eq!(
        p.db.value("SELECT count(*) FROM __diesel_schema_migrations"),
        "2"
    );
    p.run(&["upgrade"]).ok();
    p.run(&["rollback"]).ok();
    assert!(!p.db.table_exists("posts") && p.db.table_exists("users"));
});

both!(dbwarden_s_own_history_is_taken_over, |p| {
    let Some(dbwarden) = tool("dbwarden-venv/bin/dbwarden") else {
        return;
    };
    let database_type = match &p.db {
        TestDb::Sqlite { .. } => "sqlite",
        TestDb::Postgres { .. } => "postgresql",
        TestDb::Mariadb { .. } => "mariadb",
    };
    p.file(
        "dbwarden/dbwarden.py",
        &format!(
            "from dbwarden import DbwardenDatabase\n\n\
             class Primary(DbwardenDatabase):\n    \
             database_name = \"primary\"\n    default = True\n    \
             database_type = \"{database_type}\"\n    \
             database_url_sync = \"{}\"\n    \
             migrations_dir = \"migrations/primary\"\n",
            sqlalchemy_url(&p.db)
        ),
    );
    let dir = "dbwarden/migrations/primary";
    p.file(
        &format!("{dir}/primary__0001_create_users.sql"),
        "-- upgrade\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users (id, name) VALUES (1, 'a; b');\n\n-- rollback\nDROP TABLE users;\n",
    );
    p.file(
        &format!("{dir}/primary__0002_add_posts.sql"),
        "-- upgrade\nCREATE TABLE posts (id integer);\n-- rollback\nDROP TABLE posts;\n",
    );
    p.file(
        &format!("{dir}/primary__ROC__names.sql"),
        "-- upgrade\nDROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT name FROM users;\n",
    );
    let mut migrate = Command::new(&dbwarden);
    migrate
        .current_dir(p.path("dbwarden"))
        .env("NO_COLOR", "1")
        .arg("migrate");
    run_tool(migrate, "dbwarden migrate");
    assert_eq!(
        versions(
            &p,
            "SELECT version FROM _dbwarden_migrations WHERE migration_type = 'versioned' ORDER BY version"
        ),
        ["0001", "0002"]
    );
    // After DBWarden ran them: a comment (not in its checksum) in one, a
    // statement more in the other.
    p.file(
        &format!("{dir}/primary__0001_create_users.sql"),
        "-- upgrade\n-- the users\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users (id, name) VALUES (1, 'a; b');\n\n-- rollback\nDROP TABLE users;\n",
    );
    p.file(
        &format!("{dir}/primary__0002_add_posts.sql"),
        "-- upgrade\nCREATE TABLE posts (id integer);\nCREATE TABLE more (id integer);\n-- rollback\nDROP TABLE posts;\n",
    );
    let rows_before = p.db.value("SELECT count(*) FROM _dbwarden_migrations");

    // DBWarden records its repeatable migration's run on some engines (not
    // MariaDB's): then it is recorded as run here too.
    let dbwarden_ran = p
        .db
        .value("SELECT count(*) FROM _dbwarden_migrations WHERE migration_type = 'runs_on_change'")
        == "1";
    let run = p.run(&["-m", dir, "import", "dbwarden", "--json"]);
    run.ok();
    let doc = run.json();
    let changes = 2 + usize::from(dbwarden_ran);
    assert_eq!(doc["changes"].as_array().unwrap().len(), changes, "{doc}");
    let warnings = warnings(&doc);
    assert_eq!(
        warnings[0],
        "version 2: the file changed since dbwarden applied it (its checksum differs)"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        p.db.history(),
        ["1 create_users applied", "2 add_posts applied"]
    );

    // `new` spells the next one as DBWarden does; lockstep applies it and
    // the repeatable one, and leaves DBWarden's table as it was.
    let run = p.run(&["-m", dir, "new", "tags", "--json"]);
    run.ok();
    let path = run.json()["path"].as_str().unwrap().to_string();
    assert!(path.ends_with("primary__0003_tags.sql"), "{path}");
    std::fs::write(
        p.dir.path().join(&path),
        "-- upgrade\nCREATE TABLE tags (id integer);\n-- rollback\nDROP TABLE tags;\n",
    )
    .unwrap();
    let run = p.run(&["-m", dir, "upgrade"]);
    run.ok();
    assert_eq!(
        run.stdout.contains("applied repeatable names"),
        !dbwarden_ran,
        "{}",
        run.stdout
    );
    assert_eq!(
        p.db.value("SELECT runs FROM lockstep_repeatable WHERE name = 'names'"),
        "1"
    );
    assert_eq!(p.db.value("SELECT name FROM names"), "a; b");
    assert!(p.db.table_exists("tags") && !p.db.table_exists("more"));
    assert_eq!(
        p.db.history(),
        [
            "1 create_users applied",
            "2 add_posts applied",
            "3 tags applied"
        ]
    );
    assert_eq!(
        p.db.value("SELECT count(*) FROM _dbwarden_migrations"),
        rows_before
    );
});

both!(yoyo_s_own_history_is_taken_over, |p| {
    let Some(yoyo) = tool("yoyo-venv/bin/yoyo") else {
        return;
    };
    // yoyo's URLs: the driver's scheme, no query.
    let url = match &p.db {
        TestDb::Sqlite { path } => format!("sqlite:///{}", path.display()),
        TestDb::Postgres { url, .. } => url.replacen("postgres://", "postgresql://", 1),
        TestDb::Mariadb { url, .. } => url.clone(),
    };
    let url = url.split('?').next().unwrap().to_string();
    // As `yoyo new` names them: date, number, a random id, a slug; a
    // rollback beside its migration.
    p.migration(
        "20240101_01_AbCdE-create-users.sql",
        "CREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users VALUES (1, 'a');\n",
    );
    p.migration(
        "20240101_01_AbCdE-create-users.rollback.sql",
        "DROP TABLE users;\n",
    );
    p.migration(
        "20240101_02_XyZ12-posts.sql",
        "-- depends: 20240101_01_AbCdE-create-users\nCREATE TABLE posts (id integer);\n",
    );
    let mut apply = Command::new(&yoyo);
    apply
        .current_dir(p.dir.path())
        .args(["apply", "--batch", "--database", &url, "migrations"]);
    run_tool(apply, "yoyo apply");
    assert_eq!(
        versions(
            &p,
            "SELECT migration_id FROM _yoyo_migration ORDER BY migration_id"
        ),
        ["20240101_01_AbCdE-create-users", "20240101_02_XyZ12-posts"]
    );

    let run = p.run(&["import", "yoyo", "--json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["changes"].as_array().unwrap().len(), 2, "{doc}");
    assert!(doc["warnings"].is_null(), "{doc}");
    assert_eq!(
        p.db.history(),
        [
            "20240101.1 AbCdE-create-users applied",
            "20240101.2 XyZ12-posts applied"
        ]
    );

    // From here on lockstep migrates: the next one once, and back.
    p.migration(
        "20240102_01_Qwert-tags.sql",
        "CREATE TABLE tags (id integer);\n",
    );
    p.migration("20240102_01_Qwert-tags.rollback.sql", "DROP TABLE tags;\n");
    let run = p.run(&["upgrade", "--json"]);
    run.ok();
    assert_eq!(run.json()["migrations"][0]["version"], "20240102.1");
    assert!(p.db.table_exists("tags"));
    p.run(&["rollback"]).ok();
    assert!(!p.db.table_exists("tags") && p.db.table_exists("posts"));
    assert_eq!(p.db.value("SELECT count(*) FROM _yoyo_migration"), "2");
});
