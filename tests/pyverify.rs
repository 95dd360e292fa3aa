//! The Python verifier venv is created by the test command itself and holds every reader.

#[test]
fn verifier_venv_imports_every_reader() {
    let Some(out) = support::run_python("smoke.py", &[]) else {
        return;
    };
    let out = out.unwrap();
    assert!(out.starts_with("1.23.2 1.32.0"), "{out}");
}
