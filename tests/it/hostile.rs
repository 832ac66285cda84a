//! Hostile and broken input, table-driven, with the exact error each gets.
//! Every case leaves the database untouched (on SQLite: not even created).

use crate::util::{Backend, Project, TestDb};

/// A bad input: files to write in the project, and the exact stderr of
/// `lockstep status` (exit 2).
struct Case {
    name: &'static str,
    files: &'static [(&'static str, &'static [u8])],
    stderr: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "name with a dash",
        files: &[("migrations/1-init.sql", b"-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/1-init.sql: file name does not match `<version>_<name>.sql` or `<version>_<name>.up.sql`/`.down.sql` (version: digits; name: letters, digits, `_`, `-` and `.`) (`-` at character 2)\nhint: rename it, or move it out of the migrations directory\n",
    },
    Case {
        name: "name without a version",
        files: &[("migrations/init.sql", b"-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/init.sql: file name does not match `<version>_<name>.sql` or `<version>_<name>.up.sql`/`.down.sql` (version: digits; name: letters, digits, `_`, `-` and `.`) (`i` at character 1)\nhint: rename it, or move it out of the migrations directory\n",
    },
    Case {
        name: "a space in the name",
        files: &[("migrations/1_In it.sql", b"-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/1_In it.sql: file name does not match `<version>_<name>.sql` or `<version>_<name>.up.sql`/`.down.sql` (version: digits; name: letters, digits, `_`, `-` and `.`) (` ` at character 5)\nhint: rename it, or move it out of the migrations directory\n",
    },
    Case {
        name: "upper-case extension",
        files: &[("migrations/1_init.SQL", b"-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/1_init.SQL: the extension must be `.sql`, in lowercase\nhint: rename it, or move it out of the migrations directory\n",
    },
    Case {
        name: "version too long",
        files: &[("migrations/1234567890123456789_a.sql", b"-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/1234567890123456789_a.sql: version `1234567890123456789` has more than 18 digits\nhint: rename it, or move it out of the migrations directory\n",
    },
    Case {
        name: "duplicate version",
        files: &[
            ("migrations/1_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("migrations/001_b.sql", b"-- upgrade\nSELECT 1;\n"),
        ],
        stderr: "error: migrations/1_a.sql: duplicate version 1: `migrations/001_b.sql` has it too\nhint: give one of them a new version: each version must be unique\n",
    },
    Case {
        name: "duplicate version, single and pair",
        files: &[
            ("migrations/2_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("migrations/2_a.up.sql", b"SELECT 1;\n"),
        ],
        stderr: "error: migrations/2_a.up.sql: duplicate version 2: `migrations/2_a.sql` has it too\nhint: give one of them a new version: each version must be unique\n",
    },
    Case {
        name: "no upgrade marker among files that have one",
        files: &[
            ("migrations/1_a.sql", b"-- upgrade\nCREATE TABLE a (id integer);\n"),
            ("migrations/2_b.sql", b"CREATE TABLE b (id integer);\n"),
        ],
        stderr: "error: migrations/2_b.sql: the migrations directory mixes layouts: migrations/1_a.sql uses lockstep's `-- upgrade`/`-- rollback`; migrations/2_b.sql uses no section markers (sqlx's layout: the whole file is the upgrade)\nhint: a file without section markers runs whole as its upgrade: add `-- upgrade` (and `-- rollback`) to it, as in the other files\n",
    },
    Case {
        name: "empty upgrade section",
        files: &[("migrations/1_a.sql", b"-- upgrade\n  \n-- only a comment\n-- rollback\nDROP TABLE a;\n")],
        stderr: "error: migrations/1_a.sql:1: the upgrade section is empty\nhint: write the migration's SQL after the `-- upgrade` line\n",
    },
    Case {
        name: "empty up file",
        files: &[("migrations/1_a.up.sql", b"/* nothing */\n")],
        stderr: "error: migrations/1_a.up.sql: the upgrade file is empty\nhint: write the migration's SQL in this file\n",
    },
    Case {
        name: "down file alone",
        files: &[("migrations/1_a.down.sql", b"DROP TABLE a;\n")],
        stderr: "error: migrations/1_a.down.sql: a `.down.sql` file without its `.up.sql` file\nhint: add `1_a.up.sql`, or remove this file\n",
    },
    Case {
        name: "unknown directive",
        files: &[("migrations/1_a.sql", b"-- upgrade\n-- lockstep:no_transaction\nSELECT 1;\n")],
        stderr: "error: migrations/1_a.sql:2: unknown directive `-- lockstep:no_transaction`\nhint: the directives are `-- lockstep:no-transaction`, `-- lockstep:lock-timeout DURATION` and `-- lockstep:statement-timeout DURATION`\n",
    },
    Case {
        name: "SQL before the upgrade marker",
        files: &[("migrations/1_a.sql", b"-- header\nDROP TABLE x;\n-- upgrade\nSELECT 1;\n")],
        stderr: "error: migrations/1_a.sql:2: SQL before the `-- upgrade` line\nhint: only comments may come before `-- upgrade`\n",
    },
    Case {
        name: "two upgrade markers",
        files: &[("migrations/1_a.sql", b"-- upgrade\nSELECT 1;\n--upgrade\nSELECT 2;\n")],
        stderr: "error: migrations/1_a.sql:3: second `-- upgrade` line (the first is on line 1)\n",
    },
    Case {
        name: "NUL byte in a section",
        files: &[("migrations/1_a.sql", b"-- upgrade\nCREATE TABLE n1 (id int);\n-- note \x00 here\nCREATE TABLE n2 (id int);\n")],
        stderr: "error: migrations/1_a.sql:3: file holds a NUL byte\nhint: remove it: SQL text cannot hold a NUL byte (SQLite would silently ignore everything after it)\n",
    },
    Case {
        name: "NUL byte in a down file",
        files: &[
            ("migrations/1_a.up.sql", b"CREATE TABLE a (id int);\n"),
            ("migrations/1_a.down.sql", b"DROP TABLE a;\x00\n"),
        ],
        stderr: "error: migrations/1_a.down.sql:1: file holds a NUL byte\nhint: remove it: SQL text cannot hold a NUL byte (SQLite would silently ignore everything after it)\n",
    },
    Case {
        name: "the halves of a pair named differently",
        files: &[
            ("migrations/2_add_users.up.sql", b"CREATE TABLE u (id int);\n"),
            ("migrations/2_add_user.down.sql", b"DROP TABLE u;\n"),
        ],
        stderr: "error: migrations/2_add_user.down.sql: this `.down.sql` file and `migrations/2_add_users.up.sql` have version 2 but different names (`add_user` and `add_users`)\nhint: name both files of a pair alike, or give one of them a new version\n",
    },
    Case {
        name: "not UTF-8",
        files: &[("migrations/1_a.sql", b"-- upgrade\nINSERT INTO t VALUES ('caf\xe9');\n")],
        stderr: "error: migrations/1_a.sql:2: file is not valid UTF-8\nhint: save the file as UTF-8\n",
    },
];

both!(bad_files_get_exact_errors_and_touch_nothing, |p| {
    for case in CASES {
        let dir = p.path("migrations");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (path, content) in case.files {
            std::fs::write(p.path(path), content).unwrap();
        }
        for command in [&["status"][..], &["upgrade"], &["validate"]] {
            let run = p.run(command);
            // A file still to write (as `lockstep new` leaves it) is shown
            // by `status`, marked; the others refuse it.
            if case.stderr.contains(" is empty") && command == ["status"] {
                assert_eq!(run.code, 0, "{}: {}", case.name, run.stderr);
                assert!(
                    run.stderr.contains("has an empty upgrade section"),
                    "{}: {}",
                    case.name,
                    run.stderr
                );
                continue;
            }
            assert_eq!(run.code, 2, "{}: {command:?}\n{}", case.name, run.stderr);
            assert_eq!(run.stderr, case.stderr, "{}: {command:?}", case.name);
        }
        assert!(!p.db.table_exists("lockstep_history"), "{}", case.name);
        if let TestDb::Sqlite { path } = &p.db {
            assert!(
                !path.exists(),
                "{}: the database file was created",
                case.name
            );
        }
    }
});

#[test]
fn bom_and_crlf_are_accepted_and_hash_like_lf() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    // The same file saved by another editor: not a change.
    p.migration(
        "1_a.sql",
        "\u{feff}-- upgrade\r\nCREATE TABLE a (id integer);\r\n",
    );
    p.run(&["validate"]).ok();
}

#[test]
fn huge_file_is_refused_before_it_is_read() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let file = std::fs::File::create(p.path("migrations/1_huge.sql")).unwrap();
    // Sparse: no disk is used, and lockstep must not read it.
    file.set_len(lockstep::Migration::MAX_FILE_BYTES + 1)
        .unwrap();
    let run = p.run(&["status"]);
    run.code(2);
    assert_eq!(
        run.stderr,
        "error: migrations/1_huge.sql: file is too large (256 MiB; the limit is 256 MiB)\nhint: split it into several migrations, or load bulk data with a dedicated tool\n"
    );
}

#[test]
fn entries_that_are_not_files_or_leave_the_directory() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let outside = crate::util::TempDir::new();
    std::fs::write(
        outside.path().join("evil.sql"),
        "-- upgrade\nDROP TABLE users;\n",
    )
    .unwrap();
    let cases: Vec<(Box<dyn Fn()>, String)> = vec![
        (
            Box::new(|| std::os::unix::fs::symlink(outside.path().join("evil.sql"), p.path("migrations/1_a.sql")).unwrap()),
            format!(
                "error: migrations/1_a.sql: symbolic link points outside the migrations directory (to `{}`)\nhint: copy the file into the migrations directory instead\n",
                std::fs::canonicalize(outside.path().join("evil.sql")).unwrap().display()
            ),
        ),
        (
            Box::new(|| std::os::unix::fs::symlink("/nonexistent/x.sql", p.path("migrations/1_a.sql")).unwrap()),
            "error: migrations/1_a.sql: broken symbolic link: no such file or directory\n".to_string(),
        ),
        (
            Box::new(|| std::fs::create_dir(p.path("migrations/1_a.sql")).unwrap()),
            "error: migrations/1_a.sql: not a regular file\nhint: migrations are plain `.sql` files; rename or remove this entry\n".to_string(),
        ),
        (
            Box::new(|| {
                let path = std::ffi::CString::new(p.path("migrations/1_a.sql").to_str().unwrap()).unwrap();
                // SAFETY: a valid C string.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
            }),
            "error: migrations/1_a.sql: not a regular file\nhint: migrations are plain `.sql` files; rename or remove this entry\n".to_string(),
        ),
    ];
    for (make, want) in cases {
        let dir = p.path("migrations");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make();
        let run = p.run(&["status"]);
        run.code(2);
        assert_eq!(run.stderr, want);
    }
}

/// A file lockstep may not read. Root reads anything, so as root the
/// binary runs as `nobody`.
#[test]
fn unreadable_file_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    let file = p.path("migrations/1_a.sql");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cmd = p.command(&["status"]);
    // SAFETY: getuid has no preconditions.
    let out = if unsafe { libc::getuid() } == 0 {
        for dir in [p.dir.path(), &p.path("migrations")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut as_nobody = std::process::Command::new("runuser");
        as_nobody
            .args(["-u", "nobody", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .current_dir(p.dir.path())
            .env("LOCKSTEP_DATABASE_URL", p.db.url());
        as_nobody.output().unwrap()
    } else {
        let mut cmd = cmd;
        cmd.output().unwrap()
    };
    let run = crate::util::Run::from(out);
    run.code(2);
    assert_eq!(
        run.stderr,
        "error: migrations/1_a.sql: cannot read: permission denied\n"
    );
}

both!(a_history_table_with_other_columns_is_refused, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    // Someone replaced lockstep's table with one of their own.
    p.db.exec("DROP TABLE lockstep_history");
    p.db.exec("CREATE TABLE lockstep_history (id integer, note text)");
    for args in [&["status"][..], &["upgrade"], &["history"]] {
        let run = p.run(args);
        run.code(2);
        assert_eq!(
            run.stderr,
            "error: table lockstep_history exists but does not have the columns of lockstep's history table\nhint: set `history_table` in lockstep.toml to a name lockstep can own\n"
        );
    }
});

both!(a_newer_format_is_refused, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.db.exec("UPDATE lockstep_meta SET format_version = 99");
    let run = p.run(&["upgrade"]);
    run.code(2);
    assert!(
        run.stderr.starts_with(&format!(
            "error: table lockstep_history was written by a newer lockstep (table format 99; this lockstep {} knows format 2)",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        run.stderr
    );
});

#[test]
fn odd_urls() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let table: &[(&str, &str)] = &[
        ("postgres://u:p@h:99999/d", "error: invalid database URL: the port is not a number from 1 to 65535 (from --database-url)\n"),
        ("postgres://u@h/d?sslmode=allowed", "error: invalid database URL: unknown sslmode `allowed`; use disable, prefer, require, verify-ca or verify-full (from --database-url)\n"),
        ("postgres://u%zz@h/d", "error: invalid database URL: bad percent-encoding in the user name (from --database-url)\n"),
        ("postgres://[::1/d", "error: invalid database URL: an IPv6 address must be closed with `]` (from --database-url)\n"),
        ("postgres://u@h/d?options=-c%20x", "error: invalid database URL: unknown parameter `options`; lockstep understands host, port, user, password, dbname, sslmode, sslrootcert, connect_timeout, application_name and target_session_attrs (from --database-url)\n"),
        ("postgres://u@h1,,h2/d", "error: invalid database URL: an empty host in the URL's list of hosts (from --database-url)\n"),
        ("sqlite://a.db?cache=shared", "error: invalid database URL: unknown SQLite URL parameter `cache`; SQLite URLs take none (from --database-url)\n"),
        ("http://example.com", "error: invalid database URL: unsupported scheme `http`; use `sqlite://`, `postgres://`, `mysql://` or `mariadb://` (from --database-url)\n"),
    ];
    for (url, want) in table {
        let run = p.run(&["status", "-d", url]);
        run.code(2);
        let first_line = run.stderr.lines().next().unwrap_or_default();
        assert_eq!(format!("{first_line}\n"), *want, "{url}");
        // The URL forms fit an error in the form; a parameter's error
        // names its values and needs no hint.
        let hint = run.stderr.lines().nth(1).unwrap_or_default();
        if want.contains("parameter") || want.contains("sslmode") {
            assert_eq!(hint, "", "{url}: {}", run.stderr);
        } else {
            assert_eq!(
                hint,
                "hint: use `sqlite://FILE`, `postgres://USER@HOST:PORT/DATABASE` or `mysql://USER@HOST:PORT/DATABASE` (a password follows the user, after a colon)",
                "{url}"
            );
        }
    }
    // Percent-encoding reaches the file system decoded (the file is
    // created when there is something to apply).
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    let run = p.run(&["upgrade", "-d", "sqlite://my%20db.sqlite"]);
    run.ok();
    assert!(p.path("my db.sqlite").exists());
}

#[test]
fn new_after_the_largest_version_is_refused_and_writes_nothing() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("999999999999999999_last.sql", "-- upgrade\nSELECT 1;\n");
    let run = p.run(&["new", "next"]);
    run.code(2);
    assert_eq!(
        run.stderr,
        "error: no version is left after 999999999999999999: versions have at most 18 digits\nhint: renumber the migrations that are not applied yet, or start a new directory\n"
    );
    assert_eq!(std::fs::read_dir(p.path("migrations")).unwrap().count(), 1);
    p.run(&["status"]).ok();
}

/// A database URL typed where another argument belongs is echoed by the
/// error that names it: never with its password, human or JSON.
#[test]
fn a_password_typed_in_the_wrong_place_is_never_echoed() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let url = "postgres://u:Pw-9zQ-secret@db.example:5432/app";
    let cases: [&[&str]; 4] = [
        &["upgrade", url],
        &["-c", url, "status"],
        &["--color", url, "status"],
        &[
            "status",
            "postgres://u@h/d?sslmode=disable&password=Pw-9zQ-secret",
        ],
    ];
    for args in cases {
        for json in [false, true] {
            let mut args = args.to_vec();
            if json {
                args.push("--json");
            }
            let run = p.run(&args);
            run.code(2);
            let all = format!("{}{}", run.stdout, run.stderr);
            assert!(!all.contains("Pw-9zQ-secret"), "{args:?}: {all}");
            if json {
                let doc = run.json();
                assert_eq!(doc["exit_code"], 2, "{doc}");
            }
        }
    }
    // What is shown says which argument it was.
    let run = p.run(&["upgrade", url]);
    assert!(
        run.stderr
            .contains("'postgres://u:***@db.example:5432/app'"),
        "{}",
        run.stderr
    );
}

both!(
    lock_durations_out_of_range_are_refused_before_anything_runs,
    |p| {
        p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
        p.file("lockstep.toml", "[lock]\nttl = \"597h\"\n");
        let run = p.run(&["upgrade"]);
        run.code(2);
        assert_eq!(
            run.stderr,
            "error: [lock] ttl in lockstep.toml: the lease must be at most 24h\n"
        );
        p.file("lockstep.toml", "");
        let run = p.run(&["upgrade", "--lock-timeout", "25h"]);
        run.code(2);
        assert!(
            run.stderr
                .contains("the wait for the lock must be at most 24h"),
            "{}",
            run.stderr
        );
        assert!(!p.db.table_exists("lockstep_history"));
        if let TestDb::Sqlite { path } = &p.db {
            assert!(!path.exists());
        }
        // The longest there is works.
        p.file(
            "lockstep.toml",
            "[lock]\nttl = \"24h\"\ntimeout = \"24h\"\n",
        );
        p.run(&["upgrade"]).ok();
        assert_eq!(p.db.history(), ["1 a applied"]);
    }
);

/// Runs the binary, failing (and killing it) if it takes longer than a
/// minute: for inputs that used to hang.
fn run_bounded(p: &Project, args: &[&str]) -> crate::util::Run {
    let mut child = p.spawn(args);
    let started = std::time::Instant::now();
    while !child.exited() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.signal(libc::SIGKILL);
            panic!("{args:?} still ran after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.finish()
}

/// `sslrootcert` names a file lockstep reads whole: a device is not read
/// without end, a FIFO is not waited on, a huge file is not loaded.
#[test]
fn sslrootcert_must_be_a_regular_file_of_bounded_size() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let fifo = p.path("ca.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let huge = p.path("huge.pem");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    let cases = [
        ("/dev/zero".to_string(), "not a regular file"),
        (fifo.display().to_string(), "not a regular file"),
        (
            huge.display().to_string(),
            "file is too large (64 MiB; the limit is 16 MiB)",
        ),
    ];
    for (file, why) in cases {
        let url = format!("postgres://u@127.0.0.1:1/d?sslmode=verify-full&sslrootcert={file}");
        let run = run_bounded(&p, &["status", "-d", &url]);
        run.code(1);
        assert!(
            run.stderr
                .contains(&format!("cannot read sslrootcert `{file}`: {why}")),
            "{file}: {}",
            run.stderr
        );
    }
}

/// A server that accepts connections and never answers: `connect_timeout`
/// bounds the whole set-up (the TLS request and the start-up included),
/// not only the TCP connect.
#[test]
fn connect_timeout_bounds_a_server_that_accepts_and_never_answers() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Held open, never read from nor written to.
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    for sslmode in ["disable", "prefer", "require"] {
        let url = format!("postgres://u@127.0.0.1:{port}/d?sslmode={sslmode}&connect_timeout=1");
        let run = run_bounded(&p, &["status", "-d", &url]);
        run.code(1);
        assert!(
            run.stderr
                .contains("timed out after 1s setting up the connection"),
            "{sslmode}: {}",
            run.stderr
        );
    }
}
