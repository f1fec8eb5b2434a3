//! The `kvs` command-line tool, run as a real binary.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{value_for, TempDir};

fn kvs(args: &[&str], dir: &Path) -> Output {
    kvs_in(args, dir, None)
}

/// Runs `kvs ARGS[0] DIR ARGS[1..]` with `stdin` as standard input.
fn kvs_in(args: &[&str], dir: &Path, stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvs"));
    cmd.arg(args[0]).arg(dir).args(&args[1..]);
    cmd.args(["--buffer-size", "16MiB"]);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(o)
    );
}

#[track_caller]
fn code(o: &Output, want: i32, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout {} stderr {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(needle),
        "stderr {:?} lacks {needle:?}",
        stderr(o)
    );
    assert_eq!(
        stderr(o).trim().lines().count(),
        1,
        "one line: {}",
        stderr(o)
    );
}

#[test]
fn create_put_get_delete_and_stat() {
    let d = TempDir::new("cli");
    ok(&kvs(
        &[
            "create",
            "--expected-records",
            "1000",
            "--durability",
            "always",
        ],
        d.path(),
    ));
    code(&kvs(&["create"], d.path()), 3, "already a kvs store");
    ok(&kvs(&["put", "greeting", "hello world"], d.path()));
    let o = kvs(&["get", "greeting"], d.path());
    ok(&o);
    assert_eq!(o.stdout, b"hello world");
    code(&kvs(&["get", "nope"], d.path()), 1, "key not found: nope");
    ok(&kvs(&["delete", "greeting"], d.path()));
    code(&kvs(&["delete", "greeting"], d.path()), 1, "key not found");
    code(&kvs(&["get", "greeting"], d.path()), 1, "key not found");

    ok(&kvs(&["put", "a", "1"], d.path()));
    let o = kvs(&["stat"], d.path());
    ok(&o);
    let text = stdout(&o);
    for line in [
        "records          1",
        "format           disk_file v6",
        "max value        5.0 MiB (fixed at creation)",
        "damage           0 damaged log ranges",
        "last checkpoint",
        "recovery",
    ] {
        assert!(text.contains(line), "{text}");
    }
    let o = kvs(&["stat", "--json"], d.path());
    ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["records"], 1);
    assert_eq!(j["disk_file_format"], 6);
    assert_eq!(j["max_value_size"], 5 << 20);
    assert_eq!(j["damaged_ranges"], 0);
    assert!(j["index_bytes"].as_u64().unwrap() > 0);
    assert!(j["open_micros"].as_u64().is_some());
}

#[test]
fn values_of_5_mib_from_a_file_and_from_stdin() {
    let d = TempDir::new("cli-big");
    let big = value_for(b"big", 1, 5 << 20);
    let src = d.0.with_extension("src");
    fs::write(&src, &big).unwrap();
    ok(&kvs(
        &["put", "from-file", "--file", src.to_str().unwrap()],
        d.path(),
    ));
    let other = value_for(b"big", 2, 5 << 20);
    ok(&kvs_in(&["put", "from-stdin", "-"], d.path(), Some(&other)));
    let out = d.0.with_extension("out");
    ok(&kvs(
        &["get", "from-file", "--out", out.to_str().unwrap()],
        d.path(),
    ));
    assert!(fs::read(&out).unwrap() == big);
    let o = kvs(&["get", "from-stdin"], d.path());
    ok(&o);
    assert!(o.stdout == other);
    // One byte over the limit is refused and changes nothing.
    fs::write(&src, vec![1u8; (5 << 20) + 1]).unwrap();
    let o = kvs(
        &["put", "from-file", "--file", src.to_str().unwrap()],
        d.path(),
    );
    code(&o, 2, "larger than the limit");
    let o = kvs(&["get", "from-file"], d.path());
    assert!(o.stdout == big);
    let _ = fs::remove_file(&src);
    let _ = fs::remove_file(&out);
}

#[test]
fn binary_keys_with_hex_and_dump() {
    let d = TempDir::new("cli-hex");
    ok(&kvs(&["put", "--hex", "00ff10", "binary key"], d.path()));
    ok(&kvs(&["put", "user:1", "alice"], d.path()));
    ok(&kvs(&["put", "user:2", "bob"], d.path()));
    let o = kvs(&["get", "--hex", "00FF10"], d.path());
    ok(&o);
    assert_eq!(o.stdout, b"binary key");
    code(&kvs(&["get", "--hex", "0g"], d.path()), 2, "not hex");
    // A sign is not a hex digit ("+f" was read as 0x0f).
    code(&kvs(&["get", "--hex", "+f+f"], d.path()), 2, "not hex");

    let o = kvs(&["dump"], d.path());
    ok(&o);
    let mut lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, vec!["\\x00\\xff\\x10\t10", "user:1\t5", "user:2\t3"]);
    let o = kvs(&["dump", "--prefix", "user:", "--values"], d.path());
    let mut lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, vec!["user:1\t5\talice", "user:2\t3\tbob"]);
    let o = kvs(&["dump", "--hex", "--prefix", "00"], d.path());
    assert_eq!(stdout(&o), "00ff10\t10\n");
}

/// `kvs keys` lists keys and value lengths from the key summaries, by prefix, in hex too.
#[test]
fn keys_lists_by_prefix_from_the_summaries() {
    let d = TempDir::new("cli-keys");
    ok(&kvs(&["put", "--hex", "00ff10", "binary key"], d.path()));
    ok(&kvs(&["put", "user:1", "alice"], d.path()));
    ok(&kvs(&["put", "user:2", "bob"], d.path()));
    ok(&kvs(&["put", "user:3", "carol"], d.path()));
    ok(&kvs(&["delete", "user:3"], d.path()));
    // Each command closed the store: the summaries cover the whole log.
    assert!(d.path().join("summary").read_dir().unwrap().count() > 0);
    let o = kvs(&["keys"], d.path());
    ok(&o);
    let mut lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, vec!["\\x00\\xff\\x10\t10", "user:1\t5", "user:2\t3"]);
    let o = kvs(&["keys", "--prefix", "user:2"], d.path());
    assert_eq!(stdout(&o), "user:2\t3\n");
    let o = kvs(&["keys", "--hex", "--prefix", "00"], d.path());
    assert_eq!(stdout(&o), "00ff10\t10\n");
    code(
        &kvs(&["keys", "--hex", "--prefix", "zz"], d.path()),
        2,
        "not hex",
    );
}

/// `kvs put --batch` applies a file (or standard input) of puts and deletes all at once;
/// a bad line changes nothing.
#[test]
fn put_batch_from_a_file_and_from_stdin() {
    let d = TempDir::new("cli-batch");
    let files = TempDir::new("cli-batch-files");
    fs::create_dir_all(files.path()).unwrap();
    let (va, vb) = (files.path().join("a.bin"), files.path().join("b.bin"));
    fs::write(&va, b"value of a").unwrap();
    fs::write(&vb, vec![7u8; 100_000]).unwrap();
    ok(&kvs(&["put", "old", "x"], d.path()));
    let script = format!(
        "# a batch\nput a {}\n\nput b {}\ndelete old\n",
        va.display(),
        vb.display()
    );
    let list = files.path().join("batch.txt");
    fs::write(&list, &script).unwrap();
    ok(&kvs(&["put", "--batch", list.to_str().unwrap()], d.path()));
    assert_eq!(kvs(&["get", "a"], d.path()).stdout, b"value of a");
    assert_eq!(kvs(&["get", "b"], d.path()).stdout.len(), 100_000);
    code(&kvs(&["get", "old"], d.path()), 1, "not found");
    // A bad line: nothing of the batch lands.
    let bad = format!("put c {}\nfrobnicate c\n", va.display());
    code(
        &kvs_in(&["put", "--batch", "-"], d.path(), Some(bad.as_bytes())),
        2,
        "batch line 2",
    );
    code(&kvs(&["get", "c"], d.path()), 1, "not found");
    let missing = "put c /nonexistent/value\n";
    code(
        &kvs_in(&["put", "--batch", "-"], d.path(), Some(missing.as_bytes())),
        5,
        "/nonexistent/value",
    );
    let good = format!("put c {}\ndelete a\n", va.display());
    ok(&kvs_in(
        &["put", "--batch", "-"],
        d.path(),
        Some(good.as_bytes()),
    ));
    assert_eq!(kvs(&["get", "c"], d.path()).stdout, b"value of a");
    code(&kvs(&["get", "a"], d.path()), 1, "not found");
}

/// `kvs rebuild` against a store another process holds open changes nothing: it takes the
/// lock before it touches a file (it used to rename IMAGE_file aside first, and put it
/// back over the newer image the live process wrote meanwhile).
#[test]
fn rebuild_of_a_store_held_open_changes_no_file() {
    let d = TempDir::new("cli-rebuild-held");
    ok(&kvs(&["put", "a", "1"], d.path()));
    let store = kvs::Store::open(d.path(), kvs::Options::default().buffer_size(16 << 20)).unwrap();
    store.put(b"b", b"2").unwrap();
    store.checkpoint().unwrap();
    let names = [kvs::DISK_FILE, kvs::IMAGE_FILE, kvs::LOG_FILE];
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(d.path().join(n)).unwrap())
        .collect();
    let files_before = fs::read_dir(d.path()).unwrap().count();
    let ctime = |n: &str| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(d.path().join(n)).unwrap();
        (m.ctime(), m.ctime_nsec(), m.ino())
    };
    // A rename (even one undone) changes the inode's ctime.
    let image_ctime = ctime(kvs::IMAGE_FILE);
    std::thread::sleep(std::time::Duration::from_millis(20));
    code(&kvs(&["rebuild"], d.path()), 3, "in use by another process");
    assert_eq!(ctime(kvs::IMAGE_FILE), image_ctime, "IMAGE_file was moved");
    for (n, b) in names.iter().zip(&before) {
        assert_eq!(&fs::read(d.path().join(n)).unwrap(), b, "{n} changed");
    }
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), files_before);
    store.close().unwrap();
    ok(&kvs(&["rebuild"], d.path()));
    assert_eq!(stdout(&kvs(&["get", "b"], d.path())), "2");
}

#[test]
fn verify_finds_a_corrupt_record_and_rebuild_restores_the_image() {
    let d = TempDir::new("cli-verify");
    for i in 0..20 {
        let v = format!("value number {i} {}", "x".repeat(3000));
        ok(&kvs(&["put", &format!("k{i}"), &v], d.path()));
    }
    let o = kvs(&["verify"], d.path());
    ok(&o);
    assert!(stdout(&o).contains("20 records sound"), "{}", stdout(&o));

    // Rebuild after losing IMAGE_file.
    fs::remove_file(d.path().join(kvs::IMAGE_FILE)).unwrap();
    let o = kvs(&["rebuild"], d.path());
    ok(&o);
    assert!(stdout(&o).contains("20 records"), "{}", stdout(&o));
    assert!(d.path().join(kvs::IMAGE_FILE).exists());
    let o = kvs(&["get", "k7"], d.path());
    assert!(stdout(&o).starts_with("value number 7 "));

    // Flip a byte inside k7's value.
    let disk = d.path().join(kvs::DISK_FILE);
    let mut bytes = fs::read(&disk).unwrap();
    let pos = bytes
        .windows(15)
        .position(|w| w == b"value number 7 ")
        .unwrap();
    bytes[pos + 100] ^= 1;
    fs::write(&disk, &bytes).unwrap();
    let o = kvs(&["verify"], d.path());
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    assert!(stdout(&o).contains("19 records sound") && stdout(&o).contains("1 corrupt"));
    assert!(stdout(&o).contains("checksum"), "{}", stdout(&o));
    code(&kvs(&["get", "k7"], d.path()), 4, "corruption");
    ok(&kvs(&["get", "k8"], d.path()));
}

#[test]
fn clear_messages_for_locked_missing_foreign_and_newer_stores() {
    let d = TempDir::new("cli-errors");
    ok(&kvs(&["put", "k", "v"], d.path()));
    {
        let _held =
            kvs::Store::open(d.path(), kvs::Options::default().buffer_size(16 << 20)).unwrap();
        code(
            &kvs(&["get", "k"], d.path()),
            3,
            "in use by another process",
        );
    }
    ok(&kvs(&["get", "k"], d.path()));

    let missing = d.0.join("does-not-exist");
    code(&kvs(&["get", "k"], &missing), 3, "does not exist");
    code(&kvs(&["stat"], &missing), 3, "no kvs store");
    assert!(
        !missing.exists(),
        "a read-only command must not create a store"
    );

    let foreign = TempDir::new("cli-foreign");
    fs::create_dir_all(foreign.path()).unwrap();
    fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    code(&kvs(&["get", "k"], foreign.path()), 3, "not a kvs store");
    code(
        &kvs(&["put", "k", "v"], foreign.path()),
        3,
        "refusing to create",
    );
    code(
        &kvs(&["get", "k"], &foreign.path().join("notes.txt")),
        3,
        "not a directory",
    );

    // A disk_file from a future format version.
    let disk = d.path().join(kvs::DISK_FILE);
    let mut b = fs::read(&disk).unwrap();
    b[8..12].copy_from_slice(&9u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&b[0..32]);
    b[32..40].copy_from_slice(&sum.to_le_bytes());
    fs::write(&disk, &b).unwrap();
    code(
        &kvs(&["get", "k"], d.path()),
        3,
        "format version 9 is not supported",
    );
    // It says to use the newer kvs (it spoke of version 1 stores before a review).
    code(&kvs(&["get", "k"], d.path()), 3, "made by a newer kvs");

    // Bad usage.
    let o = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    code(&kvs(&["put", "k"], d.path()), 2, "give a VALUE");
}

#[test]
fn the_shell_reads_a_pipe() {
    let d = TempDir::new("cli-shell");
    let script = b"put a first value\nget a\nput b 2\ndump\ndelete a\nget a\ndelete a\nbogus\nverify\nquit\nput c never\n";
    let o = kvs_in(&["shell"], d.path(), Some(script));
    // The unknown command is an error, named with its line, and the exit code says so.
    code(&o, 2, "line 8: unknown command 'bogus'");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0..3], ["ok", "first value", "ok"]);
    let dumped: Vec<&str> = lines[3..5].to_vec();
    assert!(
        dumped.contains(&"a\t11") && dumped.contains(&"b\t1"),
        "{out}"
    );
    assert_eq!(lines[5..8], ["deleted", "(not found)", "(not found)"]);
    assert!(lines[8].starts_with("1 records sound"), "{out}");
    // `quit` ended the shell: c was never put.
    code(&kvs(&["get", "c"], d.path()), 1, "key not found");
    let o = kvs(&["get", "b"], d.path());
    assert_eq!(o.stdout, b"2");
}

/// Found by review: a line of the pipe that was not UTF-8 ended the shell without a word
/// and exit 0, the lines after it never run; failed commands left the exit code 0.
#[test]
fn the_shell_reports_a_line_it_cannot_read_and_failed_commands_by_exit_code() {
    let d = TempDir::new("cli-shell-bad");
    let o = kvs_in(
        &["shell"],
        d.path(),
        Some(b"put a 1\nput b \xff\nput c 3\n"),
    );
    code(&o, 2, "line 2");
    code(&kvs(&["get", "c"], d.path()), 1, "key not found");
    assert_eq!(kvs(&["get", "a"], d.path()).stdout, b"1");
    let o = kvs_in(&["shell"], d.path(), Some(b"put\nput d 4\n"));
    code(&o, 2, "line 1: usage: put KEY VALUE");
    assert_eq!(kvs(&["get", "d"], d.path()).stdout, b"4");
    // Found by review: `put` takes one word for the key, `get` and `delete` took the rest
    // of the line; now all three take one word, and more is a usage error.
    let o = kvs_in(
        &["shell"],
        d.path(),
        Some(b"put my key v\nget my key\ndelete d 4\nget my\n"),
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).lines().collect::<Vec<_>>(),
        [
            "error: line 2: usage: get KEY (one word)",
            "error: line 3: usage: delete KEY (one word)"
        ]
    );
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), ["ok", "key v"]);
    assert_eq!(kvs(&["get", "d"], d.path()).stdout, b"4");
}

/// Found by review: `kvs put` (and a batch) created the store before the library refused
/// the key or value, leaving an empty store where the user had none.
#[test]
fn a_refused_put_creates_no_store() {
    let d = TempDir::new("cli-put-refused");
    let o = kvs(&["put", "", "v"], d.path());
    assert!(
        !d.path().join(kvs::DISK_FILE).exists(),
        "a store was created"
    );
    code(&o, 2, "keys are 1..=4096 bytes");
    let files = TempDir::new("cli-put-refused-files");
    fs::create_dir_all(files.path()).unwrap();
    let big = files.path().join("big");
    fs::write(&big, vec![7u8; 2 << 20]).unwrap();
    let big = big.to_str().unwrap();
    code(
        &kvs(
            &["put", "k", "--file", big, "--max-value-size", "1MiB"],
            d.path(),
        ),
        2,
        "over the limit",
    );
    let long = format!("delete {}\n", "k".repeat(5000));
    let o = kvs_in(&["put", "--batch", "-"], d.path(), Some(long.as_bytes()));
    code(&o, 2, "batch line 1");
    assert!(
        !d.path().join(kvs::DISK_FILE).exists(),
        "a store was created"
    );
}

/// Found by review: `kvs put KEY -` read all of standard input before it checked the
/// limit, so an endless input (`cat /dev/zero | kvs put k -`) ate memory until the machine
/// ran out. It now stops one byte past the limit.
#[test]
fn a_put_from_standard_input_stops_reading_past_the_limit() {
    let d = TempDir::new("cli-put-stdin-limit");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["put"])
        .arg(d.path())
        .args(["k", "-", "--max-value-size", "1MiB"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    // At most 256 MiB: bounded whether or not the command stops reading.
    while sent < 256 << 20 {
        match input.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    drop(input);
    let o = child.wait_with_output().unwrap();
    code(&o, 2, "over the limit");
    assert!(sent < 64 << 20, "it read {sent} bytes");
    assert!(
        !d.path().join(kvs::DISK_FILE).exists(),
        "a store was created"
    );
}

/// Found by review: an `--expected-records` whose index the machine cannot hold (up to
/// 2^32 - 2 are taken) aborted the process; it is an error now.
#[test]
fn an_index_too_large_for_memory_is_an_error_not_an_abort() {
    let d = TempDir::new("cli-huge-index");
    let o = kvs(&["create", "--expected-records", "4000000000"], d.path());
    code(&o, 5, "Cannot allocate memory");
}

/// Found by review: an OPTIONS file that could not be read (here not UTF-8) was taken
/// for no OPTIONS file, and the store opened with the defaults instead of its settings.
#[test]
fn an_unreadable_options_file_is_an_error() {
    let d = TempDir::new("cli-options-unreadable");
    ok(&kvs(&["create", "--durability", "always"], d.path()));
    fs::write(d.path().join("OPTIONS"), b"durability = always\n\xff\n").unwrap();
    code(&kvs(&["stat"], d.path()), 3, "OPTIONS");
}

/// A reader that stops early (`kvs get ... | head -c 10`) is not an error, as for `dump`.
#[test]
fn get_into_a_pipe_closed_early_exits_0() {
    let d = TempDir::new("cli-get-pipe");
    let files = TempDir::new("cli-get-pipe-files");
    fs::create_dir_all(files.path()).unwrap();
    let big = files.path().join("big");
    fs::write(&big, vec![1u8; 4 << 20]).unwrap();
    ok(&kvs(
        &["put", "k", "--file", big.to_str().unwrap()],
        d.path(),
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["get"])
        .arg(d.path())
        .args(["k", "--buffer-size", "16MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    ok(&o);
}

#[test]
fn settings_given_to_create_are_kept_for_later_commands() {
    let d = TempDir::new("cli-options");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kvs"))
            .args(args)
            .output()
            .unwrap();
        ok(&o);
        o
    };
    let dir = d.path().to_str().unwrap();
    run(&[
        "create",
        dir,
        "--durability",
        "always",
        "--buffer-size",
        "24MiB",
    ]);
    let j: serde_json::Value =
        serde_json::from_slice(&run(&["stat", dir, "--json"]).stdout).unwrap();
    assert_eq!(j["durability"], "always");
    assert_eq!(j["buffer_bytes"], 24 << 20);
    let o = run(&["stat", dir, "--json", "--durability", "none"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["durability"], "none", "a flag given later wins");
    assert_eq!(j["buffer_bytes"], 24 << 20);
    fs::write(d.path().join("OPTIONS"), "durability = sometimes\n").unwrap();
    code(&kvs(&["stat"], d.path()), 3, "sometimes");
}

#[test]
fn compact_gives_space_back() {
    let d = TempDir::new("cli-compact");
    ok(&kvs(
        &[
            "create",
            "--segment-size",
            "1MiB",
            "--max-value-size",
            "256KiB",
        ],
        d.path(),
    ));
    assert!(fs::read_to_string(d.path().join("OPTIONS"))
        .unwrap()
        .contains("segment_size = 1048576"));
    let value = d.path().join("value");
    {
        let store = kvs::Store::open(
            d.path(),
            kvs::Options::default()
                .buffer_size(16 << 20)
                .max_value_size(256 << 10)
                .segment_size(1 << 20)
                .background_reclaim(false),
        )
        .unwrap();
        for round in 0..5u64 {
            for k in 0..20u64 {
                let key = format!("k{k}");
                store
                    .put(key.as_bytes(), &value_for(key.as_bytes(), round, 100_000))
                    .unwrap();
            }
            // Every version reaches disk (else the ring drops overwritten ones unwritten).
            store.sync().unwrap();
        }
        store.close().unwrap();
    }
    let o = kvs(&["stat", "--json"], d.path());
    ok(&o);
    let before: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(before["segment_size"], 1 << 20);
    assert!(before["dead_bytes"].as_u64().unwrap() > 3 * before["live_bytes"].as_u64().unwrap());
    let o = kvs(&["compact"], d.path());
    ok(&o);
    assert!(stdout(&o).contains("segments freed"), "{}", stdout(&o));
    let o = kvs(&["stat", "--json"], d.path());
    let after: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let alloc = |j: &serde_json::Value| j["disk_file_allocated_bytes"].as_u64().unwrap();
    assert!(alloc(&after) * 2 < alloc(&before), "{before} -> {after}");
    ok(&kvs(
        &["get", "k7", "--out", value.to_str().unwrap()],
        d.path(),
    ));
    assert_eq!(fs::read(&value).unwrap(), value_for(b"k7", 4, 100_000));
}
