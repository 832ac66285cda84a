//! Reads and checks `migrations/` at compile time: a malformed file fails
//! the build, naming the file and line; the program carries the rest.

fn main() {
    lockstep::build::embed_migrations("migrations");
}
