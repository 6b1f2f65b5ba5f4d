//! `messenger`: the command-line client. All logic lives in the library.

fn main() -> std::process::ExitCode {
    messenger::cli::main()
}
