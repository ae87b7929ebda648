//! `boson-bench`: see the `boson_bench` library and `benches/README.md`.

fn main() -> anyhow::Result<()> {
    boson_bench::cli::main()
}
