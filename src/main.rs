//! The `gbuild` binary: parse the command line, run the verb, report errors as one line.

mod cli;
mod cmd;

fn main() {
    // Must come before any thread exists: a re-executed helper enters its user namespace here.
    if let Err(e) = gbuild::userns::enter_if_requested() {
        eprintln!("gbuild: {e}");
        std::process::exit(1);
    }
    std::process::exit(cli::main());
}
