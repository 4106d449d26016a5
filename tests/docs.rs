//! What the documentation shows must work when pasted: every YAML block of the README and the
//! configuration and workflow guides parses — a config with the config parser, a workflow with
//! `workflow validate`'s checks against the embedded default config. (A fragment that shows a few
//! keys without defining `agents:` is skipped.)

use std::path::Path;

fn yaml_blocks(file: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut block {
            None if line.trim_start() == "```yaml" => block = Some((n + 2, String::new())),
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
    for file in [
        "README.md",
        "docs/configuration.md",
        "docs/workflows.md",
        "docs/providers.md",
    ] {
        for (line, block) in yaml_blocks(file) {
            let at = format!("{file}:{line}");
            if block.contains("\nphases:") {
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("name: "))
                    .unwrap_or("x")
                    .trim()
                    .to_string();
                let def = dirigent::workflow::Definition {
                    name,
                    source: dirigent::workflow::Source::File(at.clone().into()),
                    text: block.clone(),
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
