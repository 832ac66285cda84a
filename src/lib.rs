//! The `lockstep` command-line tool: arguments, settings, output and exit
//! codes around the `lockstep` library, which does the work. A library of
//! its own only so that the fuzz targets can reach the config parser and the
//! redaction of errors; the binary in `main.rs` is all there is to run.

pub mod cli;
mod commands;
pub mod error;
mod json;
mod printer;
pub mod redact;
pub mod settings;
mod signals;

/// Runs the command line in `std::env::args` and returns the exit code.
pub fn run() -> i32 {
    commands::main()
}
