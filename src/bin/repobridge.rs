//! `repobridge`: git over ssh or `ext::` to a repoSpanner node (see `repospanner::bridge`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(repospanner::bridge::main(&args));
}
