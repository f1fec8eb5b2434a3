//! The module order is a rule, not a comment: each module of the crate may use only the
//! modules declared after it in `src/lib.rs` (and each file of `src/log/` only those
//! declared after it in `src/log/mod.rs`, or top-level modules after `log`). This test
//! reads every `crate::...` path in `src/` and fails on any that points up or sideways,
//! which also rules out import cycles.

use std::fs;
use std::path::{Path, PathBuf};

/// The modules `file` declares with `mod NAME;`, in order.
fn declared(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    text.lines()
        .map(str::trim)
        .filter_map(|l| {
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.to_string())
        })
        .collect()
}

/// Every module path that `text` names after `crate::`: `crate::a::b` gives ["a", "b"].
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let before = rest[..i].chars().last();
        rest = after;
        // `kvs::crate::` cannot occur; skip identifiers that merely end in "crate".
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let path: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    out
}

fn source(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}.rs"));
    if file.exists() {
        file
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// Checks that `file`, module `me` among `order`, names only modules after it.
fn check_file(
    file: &Path,
    me: &str,
    order: &[String],
    log_order: &[String],
    bad: &mut Vec<String>,
) {
    let rank = |m: &str| order.iter().position(|o| o == m);
    let text = fs::read_to_string(file).unwrap();
    let (my_top, my_log) = match me.split_once("::") {
        Some((top, sub)) => (top, Some(sub)),
        None => (me, None),
    };
    for path in crate_paths(&text) {
        let Some(top) = path.first() else { continue };
        // An item of the crate root is a re-export of lib.rs: naming it would hide which
        // module is used.
        let Some(r) = rank(top) else {
            bad.push(format!(
                "{}: {me} uses crate::{} (name the module, not the crate root's re-export)",
                file.display(),
                path.join("::")
            ));
            continue;
        };
        let ok = if top == my_top {
            // Inside `log`: a file may use the files declared after it in log/mod.rs.
            match (my_log, path.get(1)) {
                (Some(mine), Some(theirs)) => {
                    let pos = |m: &str| log_order.iter().position(|o| o == m);
                    pos(theirs) > pos(mine)
                }
                _ => true,
            }
        } else {
            r > rank(my_top).unwrap()
        };
        if !ok {
            bad.push(format!(
                "{}: {me} uses crate::{}",
                file.display(),
                path.join("::")
            ));
        }
    }
}

#[test]
fn every_module_uses_only_modules_declared_after_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = declared(&src.join("lib.rs"));
    let log_order = declared(&src.join("log/mod.rs"));
    assert!(order.len() > 10, "lib.rs declares {order:?}");
    assert!(log_order.contains(&"ring".to_string()), "{log_order:?}");
    let mut bad = Vec::new();
    let mut files = 0;
    for m in &order {
        let file = source(&src, m);
        if !file.exists() {
            continue; // a feature-gated module missing from this checkout would fail the build
        }
        check_file(&file, m, &order, &log_order, &mut bad);
        files += usize::from(!file.ends_with("mod.rs"));
    }
    for m in &log_order {
        check_file(
            &src.join("log").join(format!("{m}.rs")),
            &format!("log::{m}"),
            &order,
            &log_order,
            &mut bad,
        );
        files += 1;
    }
    // Every source file is covered: a new file must be declared where this test sees it.
    let on_disk = fs::read_dir(&src)
        .unwrap()
        .chain(fs::read_dir(src.join("log")).unwrap())
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            p.extension().is_some_and(|x| x == "rs")
                && !p.ends_with("lib.rs")
                && !p.ends_with("mod.rs")
        })
        .count();
    assert_eq!(
        files, on_disk,
        "files checked vs .rs files in src/ and src/log/"
    );
    assert!(
        bad.is_empty(),
        "imports against the module order:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checker_sees_a_backward_import() {
    let order: Vec<String> = ["store", "engine", "format"].map(String::from).to_vec();
    let dir = std::env::temp_dir().join(format!("kvs-layers-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("engine.rs");
    fs::write(&file, "use crate::format::X;\nuse crate::store::Store;\n").unwrap();
    let mut bad = Vec::new();
    check_file(&file, "engine", &order, &[], &mut bad);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].ends_with("engine uses crate::store::Store"),
        "{bad:?}"
    );
}
