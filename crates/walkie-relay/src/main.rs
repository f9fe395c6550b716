//! `walkie-relay`: runs the relay and administers its users and channels (see `cli.rs`).

fn main() -> std::process::ExitCode {
    walkie_relay::cli::main()
}
