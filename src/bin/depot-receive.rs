//! `depot-receive`: the server side of `depot push`, run by sshd as a forced
//! command. All logic lives in `depot::cli` and `depot::receive`.

fn main() {
    std::process::exit(depot::cli::receive_main());
}
