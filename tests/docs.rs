//! What the documentation shows must work when pasted: every YAML block of the README and the
//! guides parses — a config with the config parser, a workflow with `workflow validate`'s checks
//! against the embedded default config — and every JSON task example is accepted as a task file.
//! (A fragment that shows a few keys without defining `agents:` is skipped.)

use std::path::Path;

/// Every documentation file: the README and `docs/*.md`.
fn doc_files() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    files.sort();
    files.insert(0, "README.md".into());
    files
}

fn yaml_blocks(file: &str) -> Vec<(usize, String)> {
    fenced_blocks(file, "```yaml")
}

fn fenced_blocks(file: &str, opening: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut block {
            None if line.trim_start() == opening => block = Some((n + 2, String::new())),
            Some(_) if line.trim_start() == "```" => out.push(block.take().unwrap()),
            Some((_, b)) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_yaml_example_in_the_docs_is_valid() {
    let default =
        dirigent::config::Config::parse(dirigent::config::DEFAULT_CONFIG, "embedded").unwrap();
    let mut checked = 0;
    for file in doc_files() {
        for (line, block) in yaml_blocks(&file) {
            let at = format!("{file}:{line}");
            if block.contains("\nphases:") || block.starts_with("phases:") {
                // A workflow shown without its `name:` gets one, as its file would.
                let (name, text) = match block.lines().find_map(|l| l.strip_prefix("name: ")) {
                    Some(name) => (name.trim().to_string(), block.clone()),
                    None => ("x".to_string(), format!("name: x\n{block}")),
                };
                let def = dirigent::workflow::Definition {
                    name,
                    source: dirigent::workflow::Source::File(at.clone().into()),
                    text,
                };
                if let Err(problems) = dirigent::workflow::validate(&def, &default) {
                    panic!(
                        "the workflow at {at} does not validate:\n{}",
                        problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            } else if !block.lines().any(|l| l.starts_with("agents:")) {
                // A fragment showing a few keys (it names agents it does not define): read
                // as part of a config, not on its own.
                continue;
            } else if let Err(e) = dirigent::config::Config::parse(&block, &at) {
                panic!("the config at {at} does not parse: {e}\n{block}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} YAML examples found: did the docs move?"
    );
}

#[test]
fn every_json_task_example_in_the_docs_is_accepted() {
    let default =
        dirigent::config::Config::parse(dirigent::config::DEFAULT_CONFIG, "embedded").unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for file in doc_files() {
        for (line, block) in fenced_blocks(&file, "```json") {
            // A task file: an object with a `prompt` (or a `workflow`); other JSON (API
            // answers, records) is not one.
            let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&block) else {
                continue;
            };
            if !map.contains_key("prompt") || map.contains_key("seq") {
                continue;
            }
            let at = format!("{file}:{line}");
            let fields = dirigent::task::parse_fields("example.json", block.as_bytes())
                .unwrap_or_else(|e| panic!("the task at {at} does not parse: {}", e.0));
            if let Err(e) = dirigent::task::accept("example".into(), fields, &default, root.path())
            {
                panic!("the task at {at} is refused: {}\n{block}", e.0);
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no JSON task example found: did the docs move?"
    );
}
