//! Every configuration shipped in `examples/` parses and is admitted by a coordinator of this
//! version, as `corral validate` checks it (the README and the quickstart use them as written).

use std::path::Path;

use corral_proto::config::{self, Configuration};

#[test]
fn every_shipped_example_parses_and_is_admitted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let name = path.display().to_string();
        if !name.ends_with(".yml") && !name.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let conf = config::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        let admitted = match &conf {
            Configuration::Fleet(f) => corral_proto::admission::check_fleet(f).map(|_| ()),
            other => corral_proto::admission::check(other).map(|_| ()),
        };
        if let Err(why) = admitted {
            panic!("{name}: a coordinator would refuse it: {why}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "expected the shipped examples in {}, found {checked}", dir.display());
}
