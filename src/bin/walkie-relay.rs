//! `walkie-relay`: the relay's command line (the same program as `crates/walkie-relay`'s
//! binary; kept here so this package's tests and benches can run it).

fn main() -> std::process::ExitCode {
    walkie_relay::cli::main()
}
