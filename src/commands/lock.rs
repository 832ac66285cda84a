//! `lock status`, `lock release`, `lock log`.

use lockstep::{LockInfo, LockState};

use super::table::Table;
use super::{connect_read_only, options};
use crate::cli::{LockLogArgs, LockReleaseArgs, LockStatusArgs, StatusFormat};
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::{Printer, Style};
use crate::settings::Settings;

pub fn status(
    settings: &Settings,
    printer: &mut Printer,
    args: &LockStatusArgs,
) -> Result<Exit, CliError> {
    settings.database()?;
    let info = connect_read_only(settings)?.lock_info()?;
    let exit = if args.check && info.is_held() {
        Exit::LockBusy
    } else {
        Exit::Success
    };
    if args.format == StatusFormat::Prometheus && !printer.is_json() {
        printer.raw(&prometheus(&info));
        return Ok(exit);
    }
    let state = info.state();
    let label = state.as_str().to_uppercase();
    let painted = match state {
        LockState::Unlocked => printer.paint(&label, Style::Good, false),
        LockState::Locked => printer.paint(&label, Style::Warn, false),
        LockState::Stale => printer.paint(&label, Style::Bad, false),
    };
    if state == LockState::Unlocked {
        printer.line(&format!(
            "{painted} (scope {}, token {})",
            info.scope, info.token
        ));
        if info.migrating || info.blocker.is_some() {
            // Free, yet something keeps the database or the row locked:
            // the next run waits for it.
            printer.line(&format!("  blocked by  {}", info.describe()));
        }
    } else {
        printer.line(&painted);
        for line in holder_rows(printer, &info).render().lines() {
            printer.line(&format!("  {line}"));
        }
        if state == LockState::Stale {
            printer.note(&format!(
                "{} the holder looks dead: the next run takes the lock over; `lockstep lock release` frees it now",
                printer.paint("hint:", Style::Hint, true)
            ));
        }
    }
    printer.document("lock status", exit, || json::LockJson::from(&info));
    Ok(exit)
}

fn holder_rows(printer: &Printer, info: &LockInfo) -> Table {
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(|t| printer.timestamp(t))
            .unwrap_or_default()
    };
    // How long ago: a heartbeat stamped by the commit's clock can be a few
    // milliseconds after the reading's `now()`, which is not the future.
    let age = |ms: Option<i64>| {
        ms.map(|ms| format!("{}s", ms.max(0) / 1000))
            .unwrap_or_default()
    };
    let alive = if info.migrating {
        "yes (a migration of its is running)"
    } else if info.session_alive == Some(false) {
        "no (its session is gone)"
    } else if !info.is_expired() {
        "yes (heartbeat within the lease)"
    } else if info.session_alive == Some(true) {
        "yes (its database session is open)"
    } else {
        "not seen (lease expired)"
    };
    let expires = match info.expires_in_ms {
        Some(ms) if ms >= 0 => format!("{} (in {}s)", time(&info.expires_at), ms / 1000),
        Some(ms) => format!("{} ({}s ago)", time(&info.expires_at), -ms / 1000),
        None => String::new(),
    };
    fn opt(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }
    let mut table = Table::bare(2);
    table
        .cell("owner")
        .cell(opt(&info.owner))
        .cell("host")
        .cell(opt(&info.host))
        .cell("pid")
        .cell(info.pid.map(|p| p.to_string()).unwrap_or_default())
        .cell("command")
        .cell(opt(&info.command))
        .cell("acquired at")
        .cell(format!(
            "{} (held {})",
            time(&info.acquired_at),
            age(info.held_ms)
        ))
        .cell("heartbeat")
        .cell(format!(
            "{} ({} ago)",
            time(&info.heartbeat_at),
            age(info.heartbeat_age_ms)
        ))
        .cell("expires at")
        .cell(expires)
        .cell("token")
        .cell(info.token)
        .cell("holder alive")
        .cell(alive)
        .cell("migrating")
        .cell(if info.migrating {
            "yes (a migration of the holder is running now)"
        } else {
            "no"
        });
    if let Some(blocker) = &info.blocker {
        table.cell("blocked by").cell(blocker);
    }
    if let Some(activity) = &info.activity {
        if let Some(statement) = &activity.statement {
            let running = activity
                .running_ms
                .map(|ms| {
                    format!(
                        " (for {})",
                        printer.duration(std::time::Duration::from_millis(ms.max(0) as u64))
                    )
                })
                .unwrap_or_default();
            table
                .cell("running")
                .cell(format!("`{statement}`{running}"));
        }
        if let Some(blocked) = &activity.blocked {
            table.cell("waiting for").cell(blocked.to_string());
        }
    }
    table
}

/// Metrics for a node-exporter textfile.
fn prometheus(info: &LockInfo) -> String {
    let scope = info.scope.replace('\\', "\\\\").replace('"', "\\\"");
    let labels = format!("{{scope=\"{scope}\"}}");
    let held_seconds = info.held_ms.filter(|_| info.is_held()).unwrap_or(0) as f64 / 1000.0;
    let blocked = info.activity.as_ref().and_then(|a| a.blocked.as_ref());
    let metrics = [
        (
            "lockstep_lock_held",
            "Whether the migration lock is held (1) or free (0).",
            u8::from(info.is_held()).to_string(),
        ),
        (
            "lockstep_lock_held_seconds",
            "How long the current holder has held the migration lock.",
            format!("{held_seconds:.3}"),
        ),
        (
            "lockstep_lock_token",
            "The migration lock's current fencing token.",
            info.token.to_string(),
        ),
        (
            "lockstep_lock_stale",
            "Whether the migration lock is held by a holder that looks dead (1) or not (0).",
            u8::from(info.state() == LockState::Stale).to_string(),
        ),
        (
            "lockstep_lock_holder_waiting",
            "Whether the holder's migration waits for a table lock that another session holds (1) or not (0).",
            u8::from(blocked.is_some()).to_string(),
        ),
        (
            "lockstep_lock_holder_waiting_seconds",
            "How long the holder's migration has waited for that table lock.",
            format!("{:.3}", blocked.map_or(0, |b| b.waited_ms.max(0)) as f64 / 1000.0),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in metrics {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {value}\n"
        ));
    }
    out
}

pub fn release(
    settings: &Settings,
    printer: &mut Printer,
    args: &LockReleaseArgs,
) -> Result<Exit, CliError> {
    settings.database()?;
    let info = connect_read_only(settings)?.lock_info()?;
    let unchanged = |printer: &mut Printer, info: &LockInfo| {
        printer.document("lock release", Exit::Success, || json::LockRelease {
            released: false,
            previous: json::LockJson::from(info),
        });
    };
    if !info.is_held() {
        printer.line("the migration lock is free; nothing to release");
        unchanged(printer, &info);
        return Ok(Exit::Success);
    }
    let alive = info.holder_alive();
    if alive && !args.force {
        return Err(CliError::new(
            Exit::Refused,
            "holder_alive",
            format!("the migration lock is held by {}, which looks alive; nothing was released", info.describe()),
        )
        .with_hint(
            "wait for it, or if you know it is not running, `lockstep lock release --force` (a holder that is in fact running then stops at its next migration with exit 5)",
        ));
    }
    if !args.yes {
        if !printer.can_ask() {
            return Err(CliError::usage(
                "`lock release` needs confirmation and there is no terminal to ask on",
            )
            .with_hint("pass --yes to release without asking"));
        }
        let question = format!(
            "release the migration lock held by {}{}?",
            info.describe(),
            if alive { ", which looks alive" } else { "" }
        );
        if !printer.confirm(&question) {
            printer.line("nothing was released");
            unchanged(printer, &info);
            return Ok(Exit::Success);
        }
    }
    let wait = args.lock_timeout.unwrap_or(settings.lock_timeout);
    if info.migrating {
        printer.note(&format!(
            "a migration of the holder is running; waiting up to {}s for it to commit",
            wait.as_secs()
        ));
    }
    let mut migrator =
        lockstep::Migrator::connect(settings.database()?, options(settings, None, None))?;
    let released = migrator.force_release(&info, wait)?;
    if !released {
        return Err(CliError::new(
            Exit::Failed,
            "lock_changed",
            "the migration lock changed while this command looked at it; nothing was released",
        )
        .with_hint("run `lockstep lock status` and decide again"));
    }
    printer.line(&format!(
        "released the migration lock held by {} (token {} is no longer valid)",
        info.owner.as_deref().unwrap_or("nobody"),
        info.token
    ));
    if alive {
        printer.warn(
            "if that holder is still running, it stops at its next migration with exit code 5",
        );
    }
    printer.document("lock release", Exit::Success, || json::LockRelease {
        released: true,
        previous: json::LockJson::from(&info),
    });
    Ok(Exit::Success)
}

pub fn log(
    settings: &Settings,
    printer: &mut Printer,
    args: &LockLogArgs,
) -> Result<Exit, CliError> {
    settings.database()?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let events = connect_read_only(settings)?.lock_log(limit)?;
    if events.is_empty() {
        printer.line("no lock events");
    } else if printer.shows_lines() {
        let mut table = Table::new(&[
            "AT", "EVENT", "TOKEN", "OWNER", "HOST", "PID", "COMMAND", "DETAIL",
        ]);
        for e in &events {
            let mut detail = e.detail.clone().unwrap_or_default();
            if let Some(previous) = &e.previous_owner {
                let from = format!("from {previous}");
                detail = if detail.is_empty() {
                    from
                } else {
                    format!("{from}: {detail}")
                };
            }
            table
                .cell(printer.timestamp(&e.at))
                .cell(&e.event)
                .cell(e.token)
                .cell(e.owner.as_deref().unwrap_or_default())
                .cell(e.host.as_deref().unwrap_or_default())
                .cell(e.pid.map(|p| p.to_string()).unwrap_or_default())
                .cell(e.command.as_deref().unwrap_or_default())
                .cell(detail);
        }
        printer.block(&table.render());
    }
    printer.document("lock log", Exit::Success, || json::LockLog {
        scope: settings.history_table.to_string(),
        events: events.iter().map(json::LogJson::from).collect(),
    });
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_a_hair_in_the_future_read_as_now() {
        let info = LockInfo {
            scope: "s".into(),
            token: 3,
            owner: Some("o".into()),
            held_ms: Some(-4),
            heartbeat_age_ms: Some(-3),
            expires_in_ms: Some(29_000),
            ..LockInfo::default()
        };
        let text = holder_rows(&Printer::fallback(false), &info).render();
        assert!(text.contains("(held 0s)"), "{text}");
        assert!(text.contains("(0s ago)"), "{text}");
        assert!(!text.contains("in 0s ago"), "{text}");
    }
}
