//! Fuzz harnesses for gpurt's input parsers. The checks live in
//! `checks.rs`, which `tests/fuzz_regressions.rs` in the main crate also
//! includes, so the fuzz targets and the corpus replay in CI run the same
//! code.

pub mod checks;
