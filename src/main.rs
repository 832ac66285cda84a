//! The `lockstep` command: arguments, settings, output and exit codes around
//! the `lockstep` library, which does the work.

mod cli;
mod commands;
mod error;
mod json;
mod printer;
mod settings;
mod signals;

fn main() {
    std::process::exit(commands::main());
}
