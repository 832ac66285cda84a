//! The one printer. Data goes to stdout, progress and diagnostics to stderr;
//! with `--json`, stdout carries exactly one JSON document and nothing else.
//!
//! `LOCKSTEP_STABLE_OUTPUT=1` hides durations and timestamps in human
//! output, so that tests can compare it verbatim.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{ColorChoice, GlobalArgs};
use crate::error::{CliError, Exit};
use crate::json;

/// Below this many migrations a progress bar is more noise than help.
const PROGRESS_MIN: usize = 10;

#[derive(Clone, Copy)]
pub enum Style {
    Error,
    Hint,
    Good,
    Warn,
    Bad,
    Bold,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Error => "1;31",
            Style::Hint => "1;36",
            Style::Good => "32",
            Style::Warn => "33",
            Style::Bad => "31",
            Style::Bold => "1",
        }
    }
}

/// A duration for humans: milliseconds with one decimal below a second,
/// seconds with one decimal from there.
fn human_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    // As printed: 999.96 ms rounds to a second.
    if format!("{ms:.1}") == "1000.0" || ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

pub struct Printer {
    json: bool,
    quiet: bool,
    verbose: u8,
    color_out: bool,
    color_err: bool,
    stable: bool,
    progress: Option<Progress>,
    /// The exit code of the JSON document, once one was printed: there
    /// is only ever one.
    document_printed: Option<Exit>,
}

struct Progress {
    total: usize,
    done: usize,
    label: String,
    drawn: bool,
}

impl Printer {
    pub fn new(args: &GlobalArgs, env: &dyn Fn(&str) -> Option<String>) -> Printer {
        let no_color = env("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = |terminal: bool| match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color && env("TERM").is_none_or(|t| t != "dumb"),
        };
        Printer {
            json: args.json,
            quiet: args.quiet,
            verbose: args.verbose,
            color_out: color(std::io::stdout().is_terminal()),
            color_err: color(std::io::stderr().is_terminal()),
            stable: env("LOCKSTEP_STABLE_OUTPUT").is_some_and(|v| v == "1"),
            progress: None,
            document_printed: None,
        }
    }

    /// A printer for errors found before the arguments could be read.
    pub fn fallback(json: bool) -> Printer {
        Printer {
            json,
            quiet: false,
            verbose: 0,
            color_out: false,
            color_err: false,
            stable: false,
            progress: None,
            document_printed: None,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn paint(&self, text: &str, style: Style, stderr: bool) -> String {
        let on = if stderr {
            self.color_err
        } else {
            self.color_out
        };
        if on {
            format!("\x1b[{}m{text}\x1b[0m", style.code())
        } else {
            text.to_string()
        }
    }

    /// A line of the command's human output (stdout). Nothing in JSON mode
    /// or with `--quiet`.
    pub fn line(&mut self, text: &str) {
        self.out(text, "\n");
    }

    /// Whether human output is shown: not in JSON mode, not with
    /// `--quiet`. Commands skip building what would not be shown.
    pub fn shows_lines(&self) -> bool {
        !(self.json || self.quiet)
    }

    /// Lines of the command's human output (stdout), each ended by a
    /// newline, in one write: stdout flushes at every newline, and a
    /// thousand-row table would be a thousand writes.
    pub fn block(&mut self, text: &str) {
        self.out(text, "");
    }

    fn out(&mut self, text: &str, end: &str) {
        if !self.shows_lines() {
            return;
        }
        self.clear_progress();
        let mut out = std::io::stdout().lock();
        // A closed pipe (`lockstep status | head`) is not an error worth a panic.
        let _ = out
            .write_all(text.as_bytes())
            .and_then(|()| out.write_all(end.as_bytes()))
            .and_then(|()| out.flush());
        drop(out);
        self.draw_progress();
    }

    /// A diagnostic on stderr, suppressed by `--quiet` and `--json`.
    pub fn note(&mut self, text: &str) {
        if !self.shows_lines() {
            return;
        }
        self.err_line(text);
    }

    /// Writes a diagnostic as [`Printer::note`] does, from another thread
    /// (the library's, while the main thread waits on the database);
    /// `None` when notes are not shown.
    pub fn note_from_any_thread(&self) -> Option<impl Fn(&str) + Send + Sync + 'static> {
        self.shows_lines().then_some(|text: &str| {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        })
    }

    /// A diagnostic shown with `-v`.
    pub fn verbose(&mut self, text: &str) {
        if self.verbose > 0 && !self.json {
            self.err_line(text);
        }
    }

    /// A warning: stderr, even with `--json` (stdout stays one document),
    /// but not with `--quiet`.
    pub fn warn(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        let label = self.paint("warning:", Style::Warn, true);
        self.err_line(&format!("{label} {text}"));
    }

    /// Whether the standard input is a terminal that can answer a question
    /// (and JSON mode is off).
    pub fn can_ask(&self) -> bool {
        !self.json && std::io::stdin().is_terminal()
    }

    /// Asks a yes/no question on stderr; `true` only for an explicit yes.
    pub fn confirm(&mut self, question: &str) -> bool {
        self.clear_progress();
        let _ = write!(std::io::stderr().lock(), "{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() {
            return false;
        }
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    }

    /// Prints text as it is on stdout (`--format prometheus`).
    pub fn raw(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn err_line(&mut self, text: &str) {
        self.clear_progress();
        let _ = writeln!(std::io::stderr().lock(), "{text}");
        self.draw_progress();
    }

    /// Prints the command's JSON document, which `body` builds only with
    /// `--json`.
    /// The exit code the JSON document gave, once one is printed.
    pub fn printed_exit(&self) -> Option<Exit> {
        self.document_printed
    }

    pub fn document<T: Serialize>(&mut self, command: &str, exit: Exit, body: impl FnOnce() -> T) {
        if !self.json || self.document_printed.is_some() {
            return;
        }
        // Built only here: `status` over 10,000 migrations would otherwise
        // make a record and three strings per migration for nothing.
        let body = body();
        self.document_printed = Some(exit);
        let doc = json::Document {
            schema: json::SCHEMA,
            command,
            ok: exit == Exit::Success,
            exit_code: exit.code(),
            body,
        };
        // Whole, in one write: stdout would flush at every line of it.
        let mut text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        text.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&text);
        let _ = out.flush();
    }

    /// Reports an error: on stderr for humans, or as the JSON document.
    pub fn error(&mut self, command: &str, err: &CliError) {
        self.end_progress();
        if self.json {
            let completed = (command == "upgrade" || command == "rollback")
                .then(|| err.completed.iter().map(json::StepJson::from).collect());
            self.document(command, err.exit, || json::Failure {
                error: json::ErrorBody {
                    code: err.code,
                    message: &err.message,
                    hint: err.hint.as_deref(),
                    detail: &err.detail,
                },
                completed,
            });
            return;
        }
        let mut text = format!(
            "{} {}",
            self.paint("error:", Style::Error, true),
            err.message
        );
        if let Some(hint) = &err.hint {
            text.push_str(&format!(
                "\n{} {hint}",
                self.paint("hint:", Style::Hint, true)
            ));
        }
        self.err_line(&text);
    }

    /// A duration for humans: `0.4 ms`, `12.0 ms`, `6.2 s`; hidden in
    /// stable output.
    pub fn duration(&self, d: Duration) -> String {
        if self.stable {
            return "# ms".into();
        }
        human_duration(d)
    }

    /// A stored RFC 3339 timestamp for humans; hidden in stable output.
    pub fn timestamp(&self, rfc3339: &str) -> String {
        if self.stable {
            return "<time>".into();
        }
        match rfc3339.split_once('T') {
            Some((date, time)) => {
                let time = time.trim_end_matches('Z');
                let time = time.split('.').next().unwrap_or(time);
                format!("{date} {time} UTC")
            }
            None => rfc3339.to_string(),
        }
    }

    /// Starts a progress bar on stderr, when stderr is a terminal and the
    /// run is long enough to want one.
    pub fn start_progress(&mut self, total: usize) {
        if self.json || self.quiet || total < PROGRESS_MIN || !std::io::stderr().is_terminal() {
            return;
        }
        self.progress = Some(Progress {
            total,
            done: 0,
            label: String::new(),
            drawn: false,
        });
    }

    pub fn progress(&mut self, done: usize, label: &str) {
        if let Some(p) = &mut self.progress {
            p.done = done;
            p.label = label.to_string();
        }
        self.clear_progress();
        self.draw_progress();
    }

    pub fn end_progress(&mut self) {
        self.clear_progress();
        self.progress = None;
    }

    fn clear_progress(&mut self) {
        if let Some(p) = &mut self.progress {
            if p.drawn {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
                p.drawn = false;
            }
        }
    }

    fn draw_progress(&mut self) {
        let Some(p) = &mut self.progress else { return };
        const WIDTH: usize = 30;
        let filled = WIDTH * p.done / p.total.max(1);
        let bar = format!("{}{}", "=".repeat(filled), " ".repeat(WIDTH - filled));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "[{bar}] {}/{} {}", p.done, p.total, p.label);
        let _ = err.flush();
        p.drawn = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_one_unit_each() {
        let table = [
            (Duration::from_micros(400), "0.4 ms"),
            (Duration::from_micros(9_540), "9.5 ms"),
            (Duration::from_micros(123_456), "123.5 ms"),
            (Duration::from_micros(999_960), "1.0 s"),
            (Duration::from_millis(6_167), "6.2 s"),
            (Duration::from_secs(75), "75.0 s"),
        ];
        for (d, want) in table {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }
}
