//! How much of real-world Compose the stack parser reads: every file of the shared corpus
//! (`../shared/compose-corpus/`, Docker Compose's own end-to-end fixtures), read in place,
//! is either accepted or refused with an error naming the key; the counts are printed.
//! The deliberately broken fixtures must be refused.

use phoenix_proto::model::compose;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/compose-corpus/docker-compose-e2e");
    let ok = phoenix_tests::require(
        "the shared Compose corpus (../shared/compose-corpus)",
        dir.is_dir(),
    );
    ok.then_some(dir)
}

fn compose_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the corpus")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    files
}

#[test]
fn the_corpus_is_read_or_refused_by_key() {
    let Some(dir) = corpus_dir() else { return };
    let files = compose_files(&dir);
    assert!(files.len() >= 40, "corpus has {} files", files.len());
    let mut accepted = Vec::new();
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(f).expect("read a corpus file");
        // As on a guest: the project directory is the file's own directory, the project
        // is named after the fixture, no profile is enabled and no variable is set.
        let opts = compose::ParseOptions {
            variables: BTreeMap::new(),
            project_dir: Some(PathBuf::from("/srv/phoenix/stacks/corpus")),
            project_name: Some("corpus".into()),
            profiles: Vec::new(),
        };
        match compose::parse_with(&text, &opts) {
            Ok(_) => accepted.push(name),
            Err(e) => {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default().to_string();
                // Every refusal names the key it stopped at: `compose <field>: why`.
                assert!(
                    first.starts_with("compose ") && first.contains(": "),
                    "{name}: refusal without a key: {first}"
                );
                println!("REFUSED {name}: {first}");
                refused.entry(first).or_default().push(name);
            }
        }
    }
    for a in &accepted {
        println!("ACCEPTED {a}");
    }
    println!(
        "compose corpus: {} of {} accepted, {} refused",
        accepted.len(),
        files.len(),
        files.len() - accepted.len()
    );
    // Deliberately broken: an unknown service key.
    assert!(
        !accepted
            .iter()
            .any(|a| a == "wrong-composefile_compose.yaml"),
        "the broken fixture was accepted"
    );
}
