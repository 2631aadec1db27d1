//! `depot`: the everyday command line. All logic lives in `depot::cli`.

fn main() {
    std::process::exit(depot::cli::main_from_args());
}
