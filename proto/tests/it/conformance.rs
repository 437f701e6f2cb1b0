//! Every configuration in `shared/conformance/dstack-configs` (each one accepted by dstack 0.22.5) is
//! either accepted by Corral's parser or refused on purpose: with `unsupported: true` and a named field.
//! A refusal of any other kind is a bug in the parser, and fails this test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_proto::config::{self, Configuration};

/// `$CORRAL_CONFORMANCE_DIR/dstack-configs` (a relative path is from the repository's root), or by
/// default `../shared/conformance/dstack-configs` beside the repository.
fn corpus_dir() -> PathBuf {
    // This crate's parent: the repository's root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from(".."), Path::to_path_buf);
    let base = std::env::var_os("CORRAL_CONFORMANCE_DIR")
        .map_or_else(|| root.join("../shared/conformance"), |dir| root.join(PathBuf::from(dir)));
    base.join("dstack-configs")
}

/// `type` of each file, from the corpus's manifest.
fn manifest(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap_or_default();
    text.lines().skip(1).filter_map(|l| l.split_once('\t')).map(|(f, t)| (f.to_owned(), t.to_owned())).collect()
}

#[derive(Default)]
struct Tally {
    accepted: BTreeMap<String, usize>,
    refused: BTreeMap<String, usize>,
    refusal_reasons: BTreeMap<String, usize>,
    other: Vec<String>,
}

#[test]
fn dstack_corpus_is_accepted_or_refused_by_name() {
    let dir = corpus_dir();
    // The corpus lives outside the repository. Without it this test fails: a pass that checked
    // nothing would say the parser conforms.
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "no conformance corpus at {}: {e} (put the shared data there, or set CORRAL_CONFORMANCE_DIR \
             to the folder that holds dstack-configs/)",
            dir.display()
        )
    });
    let types = manifest(&dir);
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() > 200, "expected the whole corpus, found {} files", files.len());

    let mut tally = Tally::default();
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = types.get(&name).cloned().unwrap_or_else(|| "?".into());
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match config::parse(&text, &name) {
            Ok(conf) => {
                assert_eq!(conf.kind(), kind, "{name}: parsed as the wrong type");
                // The typed model must survive the HTTP API's JSON.
                let json = serde_json::to_string(&conf).expect("configurations serialize");
                let back: Configuration = serde_json::from_str(&json).expect("configurations deserialize");
                assert_eq!(back, conf, "{name}: JSON round trip");
                *tally.accepted.entry(kind).or_default() += 1;
            }
            Err(e) if e.unsupported && !e.field.is_empty() && e.line > 0 => {
                *tally.refused.entry(kind).or_default() += 1;
                let reason = format!("{}: {}", e.field.split('[').next().unwrap_or(&e.field), e.message);
                *tally.refusal_reasons.entry(reason).or_default() += 1;
            }
            Err(e) => tally.other.push(e.to_string()),
        }
    }

    let total = |m: &BTreeMap<String, usize>| m.values().sum::<usize>();
    println!("conformance: {} files", files.len());
    println!("  accepted:          {} {:?}", total(&tally.accepted), tally.accepted);
    println!("  refused by name:   {} {:?}", total(&tally.refused), tally.refused);
    println!("  other (must be 0): {}", tally.other.len());
    println!("refusals:");
    for (reason, n) in &tally.refusal_reasons {
        println!("  {n:3}  {reason}");
    }
    for e in &tally.other {
        println!("OTHER {e}");
    }
    assert!(
        tally.other.is_empty(),
        "{} files dstack accepts failed to parse:\n{}",
        tally.other.len(),
        tally.other.join("\n")
    );

    // Most run configurations and fleets must be taken, not refused.
    for kind in ["task", "service", "dev-environment", "fleet"] {
        let accepted = tally.accepted.get(kind).copied().unwrap_or(0);
        let refused = tally.refused.get(kind).copied().unwrap_or(0);
        assert!(
            accepted * 10 >= (accepted + refused) * 6,
            "{kind}: only {accepted} of {} accepted",
            accepted + refused
        );
    }
}

/// The configurations a coordinator runs (gateways, volumes and presets are applied otherwise).
const RUNS_AND_FLEETS: [&str; 4] = ["task", "service", "dev-environment", "fleet"];

/// What a coordinator of this version does with a parsed configuration: the same check `corral
/// apply` meets on the server and `corral validate` runs here.
fn admit(conf: &Configuration) -> Result<(), corral_proto::admission::Refused> {
    // `env: [HF_TOKEN]` is taken from the environment of `corral apply`, as a user would have it set.
    let mut conf = conf.clone();
    let from_apply = |env: &mut Vec<config::EnvVar>| {
        for e in env.iter_mut().filter(|e| e.value.is_none()) {
            e.value = Some(format!("<{} from the environment of corral apply>", e.name));
        }
    };
    match &mut conf {
        Configuration::Task(t) => from_apply(&mut t.env),
        Configuration::Service(s) => from_apply(&mut s.env),
        Configuration::DevEnvironment(d) => from_apply(&mut d.env),
        Configuration::Fleet(f) => from_apply(&mut f.env),
        Configuration::Volume(_) => {}
    }
    match &conf {
        Configuration::Fleet(f) => corral_proto::admission::check_fleet(f).map(|_| ()),
        other if RUNS_AND_FLEETS.contains(&other.kind()) => corral_proto::admission::check(other).map(|_| ()),
        _ => Ok(()),
    }
}

/// The goal of issue "every dstack config runs": a coordinator takes at least 95 % of the corpus's
/// run and fleet configurations; the rest need what Corral does not have (a cloud other than AWS).
#[test]
fn dstack_corpus_runs_on_a_coordinator() {
    let dir = corpus_dir();
    let types = manifest(&dir);
    assert!(
        types.len() > 200,
        "no corpus manifest at {} (see dstack_corpus_is_accepted_or_refused_by_name)",
        dir.display()
    );
    let mut admitted = 0;
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, kind) in &types {
        if !RUNS_AND_FLEETS.contains(&kind.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let outcome = match config::parse(&text, name) {
            Ok(conf) => admit(&conf).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => admitted += 1,
            Err(why) => {
                // `file:line:col: field: message` from the parser, `field: message` from admission.
                let field = why.strip_prefix(name.as_str()).map_or(why.as_str(), |rest| {
                    rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':').trim_start()
                });
                let key = field.split([':', '[', '.']).next().unwrap_or(field).to_owned();
                refused.entry(key).or_default().push(format!("{name}: {why}"));
            }
        }
    }
    let total = admitted + refused.values().map(Vec::len).sum::<usize>();
    println!(
        "admission: {admitted} of {total} run and fleet configurations ({:.1} %)",
        100.0 * admitted as f64 / total as f64
    );
    for (field, files) in &refused {
        println!("  {:3}  {field}", files.len());
        for f in files {
            println!("         {f}");
        }
    }
    assert!(admitted * 100 >= total * 95, "a coordinator admits only {admitted} of {total} (goal: 95 %)");
}
