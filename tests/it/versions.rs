//! Flyway's dotted and underscored versions: read from the files, applied
//! and rolled back in Flyway's order, and recorded once the history table
//! is widened to text versions (table format 2); a table that never meets
//! one stays at format 1. Checked with plain SQL.

use crate::util::{Project, TestDb};

/// The type of the history table's version column, as the engine says.
fn version_type(p: &Project) -> String {
    match &p.db {
        TestDb::Sqlite { .. } => {
            p.db.value("SELECT group_concat(DISTINCT typeof(version)) FROM lockstep_history")
        }
        db => {
            let schema = match db {
                TestDb::Postgres { .. } => "current_schema()",
                _ => "DATABASE()",
            };
            p.db.value(&format!(
                "SELECT data_type FROM information_schema.columns WHERE table_name = 'lockstep_history' \
                 AND column_name = 'version' AND table_schema = {schema}"
            ))
        }
    }
}

/// The version column's type at table format 1.
fn whole_type(p: &Project) -> &'static str {
    match &p.db {
        TestDb::Sqlite { .. } => "integer",
        _ => "bigint",
    }
}

/// The history's versions as the table holds them, and the format row.
fn recorded(p: &Project) -> (Vec<String>, String) {
    let mut versions: Vec<String> =
        p.db.query("SELECT version FROM lockstep_history")
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
    versions.sort();
    let format = p
        .db
        .value("SELECT format_version FROM lockstep_meta WHERE table_name = 'lockstep_history'");
    (versions, format)
}

/// The versions of a document's `migrations`, in order.
fn json_versions(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].clone())
        .collect()
}

/// The order the migrations ran in, as they numbered their rows.
fn ran(p: &Project) -> Vec<String> {
    p.db.query("SELECT label FROM steps ORDER BY n")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

both!(dotted_versions_run_in_flyway_s_order, |p| {
    let step = |label: &str| {
        format!(
            "-- upgrade\nINSERT INTO steps (n, label) SELECT count(*) + 1, '{label}' FROM steps;\n\
             -- rollback\nDELETE FROM steps WHERE label = '{label}';\n"
        )
    };
    p.migration(
        "V1__steps.sql",
        "-- upgrade\nCREATE TABLE steps (n integer PRIMARY KEY, label varchar(20));\n-- rollback\nDROP TABLE steps;\n",
    );
    p.run(&["upgrade"]).ok();
    // Whole versions only: the table stays as older releases read it.
    assert_eq!(recorded(&p), (vec!["1".to_string()], "1".to_string()));
    assert_eq!(version_type(&p), whole_type(&p));

    for (file, label) in [
        ("V1.10__ten.sql", "1.10"),
        ("V1.2__two.sql", "1.2"),
        ("V1_1__one.sql", "1.1"),
        ("V2__whole.sql", "2"),
    ] {
        p.migration(file, &step(label));
    }
    let status = p.run(&["status", "--json"]);
    let doc = status.json();
    // Whole versions stay numbers in JSON; dotted ones are text.
    assert_eq!(
        json_versions(&doc),
        [
            serde_json::json!(1),
            serde_json::json!("1.1"),
            serde_json::json!("1.2"),
            serde_json::json!("1.10"),
            serde_json::json!(2)
        ],
        "{doc}"
    );

    let run = p.run(&["upgrade", "--to", "1.2"]);
    run.ok();
    assert!(run.stdout.contains("1.1 one"), "{}", run.stdout);
    assert_eq!(ran(&p), ["1.1", "1.2"]);
    // The first dotted version widened the table.
    assert_eq!(
        recorded(&p),
        (
            vec!["1".to_string(), "1.1".to_string(), "1.2".to_string()],
            "2".to_string()
        )
    );
    let text = match &p.db {
        TestDb::Sqlite { .. } => "text",
        TestDb::Postgres { .. } => "text",
        TestDb::Mariadb { .. } => "varchar",
    };
    assert_eq!(version_type(&p), text);
    p.run(&["upgrade"]).ok();
    assert_eq!(ran(&p), ["1.1", "1.2", "1.10", "2"]);
    p.run(&["status", "--check"]).ok();

    // Rolled back newest first, down to and keeping 1.1.
    let run = p.run(&["rollback", "--to", "1_1", "--json"]);
    run.ok();
    assert_eq!(
        json_versions(&run.json()),
        [
            serde_json::json!(2),
            serde_json::json!("1.10"),
            serde_json::json!("1.2")
        ]
    );
    assert_eq!(ran(&p), ["1.1"]);
    assert_eq!(recorded(&p).0, ["1".to_string(), "1.1".to_string()]);
    // Once widened, whole versions are recorded as text too, and read
    // back in order.
    p.run(&["upgrade"]).ok();
    assert_eq!(ran(&p), ["1.1", "1.2", "1.10", "2"]);
    let history = p.run(&["history", "--json"]);
    assert_eq!(
        json_versions(&history.json()),
        [
            serde_json::json!(1),
            serde_json::json!("1.1"),
            serde_json::json!("1.2"),
            serde_json::json!("1.10"),
            serde_json::json!(2)
        ]
    );
});

both!(a_version_lockstep_cannot_read_is_named, |p| {
    p.migration("V1.1__a.sql", "-- upgrade\nSELECT 1;\n");
    p.run(&["upgrade"]).ok();
    p.db.exec("UPDATE lockstep_history SET version = '1.x'");
    let run = p.run(&["status"]);
    run.code(2);
    assert!(
        run.stderr.starts_with(
            "error: table lockstep_history holds version `1.x`, which is not a version lockstep reads"
        ),
        "{}",
        run.stderr
    );
});
