//! What the compiler must refuse, with the exact error checked (trybuild compares each case's
//! stderr with tests/ui/<case>.stderr; `compile_fail` doc tests only check that compiling
//! fails, for any reason). To update the expected output after a compiler change:
//! `TRYBUILD=overwrite cargo test --test compile_fail`, then review the diff.

#[test]
fn misuse_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
