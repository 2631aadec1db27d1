//! `depot-summary`: regenerates a repository's summary and index when refs
//! changed. All logic lives in `depot::cli` and `depot::summary`.

fn main() {
    std::process::exit(depot::cli::summary_main());
}
