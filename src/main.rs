fn main() {
    std::process::exit(lockstep_cli::run());
}
