//! Every example configuration shipped in the repository parses, so the
//! documented configs cannot rot.

use std::fs;
use std::path::Path;

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = fs::read_to_string(&p).unwrap();
            let c = coffer::config::Config::parse(&p, &text)
                .unwrap_or_else(|e| panic!("{e} ({})", e.hint.clone().unwrap_or_default()));
            // Signed is the default: an example job that backs up signs.
            if !c.sources.is_empty() {
                let problems = c.backup_problems().join("; ");
                assert!(
                    !problems.contains("signing_key"),
                    "{}: {problems}",
                    p.display()
                );
            }
            n += 1;
        }
    }
    assert!(n >= 2, "found only {n} example configs");
}

#[test]
fn the_packaged_template_parses_and_says_what_is_missing() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/debian/coffer.toml");
    let c = coffer::config::Config::parse(&p, &fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    let problems = c.backup_problems().join("; ");
    assert!(problems.contains("recipients is empty"), "{problems}");
    assert!(problems.contains("no [[source]]"), "{problems}");
    assert!(!problems.contains("signing_key"), "{problems}");
}

#[test]
fn readme_config_blocks_parse() {
    // TOML blocks in the README that start with [job] are complete configs.
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut n = 0;
    for block in readme.split("```toml").skip(1) {
        let body = block.split("```").next().unwrap();
        if body.trim_start().starts_with("[job]") {
            // A snippet showing a few [job] keys gets the required name and a
            // store, so
            // that its keys are still checked against the real parser.
            let mut doc: toml::Table = body.parse().unwrap_or_else(|e| panic!("{e}"));
            if let Some(job) = doc.get_mut("job").and_then(toml::Value::as_table_mut) {
                job.entry("name").or_insert_with(|| "snippet".into());
            }
            if !doc.contains_key("store") {
                let store: toml::Table = "type = \"local\"\npath = \"/tmp/x\"".parse().unwrap();
                doc.insert("store".into(), toml::Value::Array(vec![store.into()]));
            }
            coffer::config::Config::parse(Path::new("README.md"), &doc.to_string())
                .unwrap_or_else(|e| panic!("{e}\n{body}"));
            n += 1;
        }
    }
    assert!(n >= 1, "the README should show a complete config");
}
