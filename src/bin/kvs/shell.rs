//! `kvs shell`: commands read from a terminal or a pipe, on one open store.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use kvs::flags::StoreFlags;
use kvs::Store;

use crate::dump::dump;
use crate::stat::stat;
use crate::text::escape;
use crate::verify::verify;
use crate::{Failure, Res, EXIT_IO, EXIT_USAGE};

const SHELL_HELP: &str = "\
commands:
  put KEY VALUE      store VALUE (the rest of the line) under KEY
  get KEY            print the value (binary bytes as \\xNN)
  delete KEY         remove KEY
  (KEY is one word, as in `kvs put --batch`: for keys with spaces, `kvs put`)
  stat               what `kvs stat` prints
  dump [PREFIX]      keys and value sizes
  verify             check every record
  help, quit";

/// The key of a `get` or `delete` line: one word, as `put` takes it (a key with a space
/// could be read but never put here; found by review). `usage` names the command.
fn one_word<'a>(rest: &'a str, usage: &str) -> Res<&'a [u8]> {
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(Failure(EXIT_USAGE, format!("usage: {usage} (one word)")));
    }
    Ok(rest.as_bytes())
}

/// Reads commands from a terminal (with line editing and history) or from a pipe. Returns
/// the exit code: 0, or that of the first command that failed (its error, with the line
/// number when read from a pipe, went to standard error; a failed `verify` counts). A line
/// that cannot be read (not UTF-8, say) ends the shell as a failure.
pub fn shell(store: &Store, dir: &Path, flags: &StoreFlags) -> Res<u8> {
    let interactive = io::stdin().is_terminal();
    let mut editor = if interactive {
        let ed = rustyline::DefaultEditor::new()
            .map_err(|e| Failure(EXIT_IO, format!("terminal: {e}")))?;
        println!(
            "kvs shell on {} ({} records); `help` for commands",
            dir.display(),
            store.stats().records
        );
        Some(ed)
    } else {
        None
    };
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut first_failure: Option<u8> = None;
    let mut number = 0u64;
    loop {
        number += 1;
        let line = match &mut editor {
            Some(ed) => match ed.readline("kvs> ") {
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    l
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => break,
            },
            None => match lines.next() {
                Some(Ok(l)) => l,
                Some(Err(e)) => {
                    eprintln!("error: line {number}: {e}; stopping here");
                    first_failure.get_or_insert(if e.kind() == io::ErrorKind::InvalidData {
                        EXIT_USAGE
                    } else {
                        EXIT_IO
                    });
                    break;
                }
                None => break,
            },
        };
        let line = line.trim();
        let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let result: Res<()> = (|| {
            let mut out = io::stdout().lock();
            match cmd {
                "" => {}
                "help" | "?" => {
                    writeln!(out, "{SHELL_HELP}").map_err(|e| Failure(EXIT_IO, e.to_string()))?
                }
                "quit" | "exit" => return Err(Failure(0, String::new())),
                "put" => {
                    let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    if k.is_empty() {
                        return Err(Failure(EXIT_USAGE, "usage: put KEY VALUE".into()));
                    }
                    store.put(k.as_bytes(), v.trim_start().as_bytes())?;
                    let _ = writeln!(out, "ok");
                }
                "get" => match store.get(one_word(rest, "get KEY")?)? {
                    Some(v) => {
                        let _ = writeln!(out, "{}", escape(&v));
                    }
                    None => {
                        let _ = writeln!(out, "(not found)");
                    }
                },
                "delete" | "del" => {
                    let existed = store.delete(one_word(rest, "delete KEY")?)?;
                    let _ = writeln!(out, "{}", if existed { "deleted" } else { "(not found)" });
                }
                "stat" => {
                    let _ = writeln!(out, "{}", stat(store, dir, flags, false));
                }
                "dump" => {
                    dump(store, rest.as_bytes(), false, false, &mut out)?;
                }
                "verify" => {
                    let code = verify(store, &mut out)?;
                    if code != 0 {
                        return Err(Failure(code, "verify found damage".into()));
                    }
                }
                other => {
                    return Err(Failure(
                        EXIT_USAGE,
                        format!("unknown command '{other}'; try help"),
                    ))
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {}
            Err(Failure(0, _)) => break,
            Err(Failure(code, msg)) => {
                if editor.is_some() {
                    eprintln!("error: {msg}");
                } else {
                    eprintln!("error: line {number}: {msg}");
                }
                first_failure.get_or_insert(code);
            }
        }
    }
    Ok(first_failure.unwrap_or(0))
}
