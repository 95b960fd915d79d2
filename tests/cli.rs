//! The `millrace` CLI through real processes: produce with acks, keys and
//! partitions, consume with formats and offsets, `topics`, and bad input.
//! Every bad input must give one clear line on stderr and a non-zero exit,
//! and leave every record acknowledged before it in place.

mod common;

use millrace::partitioner::partition_for_key;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temp directory with a config file in it.
struct Setup {
    directory: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// `topics` is the TOML after the `data_dir` line.
    fn new(topics: &str) -> Setup {
        let directory = tempfile::tempdir().unwrap();
        let config = directory.path().join("millrace.toml");
        let text = format!("data_dir = {:?}\n{topics}", directory.path().join("data"));
        std::fs::write(&config, text).unwrap();
        Setup { directory, config }
    }

    fn data_dir(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    /// Runs `millrace SUBCOMMAND -c CONFIG ARGS...` with `stdin`.
    fn run(&self, subcommand: &str, args: &[&str], stdin: &[u8]) -> Output {
        run_millrace(subcommand, &self.config, args, stdin)
    }

    fn produce(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.run("produce", args, stdin)
    }

    /// Every record of `topic` as "%p %o %k %v" lines, via the CLI.
    fn consume_all(&self, topic: &str) -> Vec<String> {
        let output = self.run(
            "consume",
            &[
                "-t",
                topic,
                "--from-beginning",
                "--until-end",
                "-f",
                "%p %o %k %v",
            ],
            b"",
        );
        assert_success(&output);
        stdout_lines(&output)
    }
}

fn run_millrace(subcommand: &str, config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg(subcommand)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn millrace");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A child that stops reading early (bad input) breaks the pipe: fine.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A failure: non-zero exit and exactly one non-empty line on stderr, which
/// contains every piece. Returns that line.
fn assert_one_line_error(output: &Output, pieces: &[&str]) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr:?}");
    for piece in pieces {
        assert!(
            lines[0].contains(piece),
            "stderr {:?} should contain {piece:?}",
            lines[0]
        );
    }
    lines[0].to_owned()
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// "PARTITION OFFSET" acks.
fn acks(output: &Output) -> Vec<(u32, u64)> {
    stdout_lines(output)
        .iter()
        .map(|line| {
            let (partition, offset) = line.split_once(' ').expect("PARTITION OFFSET");
            (partition.parse().unwrap(), offset.parse().unwrap())
        })
        .collect()
}

const THREE_PARTITIONS: &str = "[[topic]]\nname = \"cli\"\npartitions = 3\n";

/// `-K` splits keys, `--print-acks` prints "PARTITION OFFSET" per line in
/// input order (each key on `partition_for_key`, each partition's offsets
/// counting up in input order), and `consume --from-beginning --until-end`
/// prints every record in the requested format and exits 0.
#[test]
fn produce_prints_acks_in_input_order_and_consume_prints_records() {
    let setup = Setup::new(THREE_PARTITIONS);
    let lines: Vec<(String, String)> = (0..300)
        .map(|i| (format!("key{}", i % 7), format!("value {i} with spaces")))
        .collect();
    let input: String = lines
        .iter()
        .map(|(key, value)| format!("{key}:{value}\n"))
        .collect();
    let output = setup.produce(&["-t", "cli", "-K", ":", "--print-acks"], input.as_bytes());
    assert_success(&output);
    let acks = acks(&output);
    assert_eq!(acks.len(), lines.len(), "one ack per line");
    let mut next_offset = [0u64; 3];
    for ((key, _), (partition, offset)) in lines.iter().zip(&acks) {
        assert_eq!(*partition, partition_for_key(key.as_bytes(), 3), "{key}");
        assert_eq!(
            *offset, next_offset[*partition as usize],
            "acks in input order"
        );
        next_offset[*partition as usize] += 1;
    }

    let output = setup.run(
        "consume",
        &[
            "-t",
            "cli",
            "--from-beginning",
            "--until-end",
            "-f",
            "%t %p %o %k %v",
        ],
        b"",
    );
    assert_success(&output);
    let mut printed = stdout_lines(&output);
    printed.sort();
    let mut expected: Vec<String> = lines
        .iter()
        .zip(&acks)
        .map(|((key, value), (partition, offset))| {
            format!("cli {partition} {offset} {key} {value}")
        })
        .collect();
    expected.sort();
    assert_eq!(printed, expected);
}

/// `-p` sends every line to that partition; `consume -p P --offset N` starts
/// at N; `topics` prints each partition's log end offset and high
/// watermark. Fails if `-p` is ignored, `--offset` is ignored, or `topics`
/// misreports the offsets.
#[test]
fn partition_offset_and_topics() {
    let setup = Setup::new(THREE_PARTITIONS);
    let input: String = (0..10).map(|i| format!("line-{i}\n")).collect();
    let output = setup.produce(&["-t", "cli", "-p", "2", "--print-acks"], input.as_bytes());
    assert_success(&output);
    assert_eq!(
        acks(&output),
        (0..10).map(|offset| (2, offset)).collect::<Vec<_>>()
    );

    let output = setup.run(
        "consume",
        &[
            "-t",
            "cli",
            "-p",
            "2",
            "--offset",
            "7",
            "--until-end",
            "-f",
            "%o=%v",
        ],
        b"",
    );
    assert_success(&output);
    assert_eq!(
        stdout_lines(&output),
        vec!["7=line-7", "8=line-8", "9=line-9"]
    );

    let output = setup.run("topics", &[], b"");
    assert_success(&output);
    let lines = stdout_lines(&output);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    let end_column = header
        .iter()
        .position(|name| *name == "LOG_END_OFFSET")
        .expect("LOG_END_OFFSET column");
    let watermark_column = header
        .iter()
        .position(|name| *name == "HIGH_WATERMARK")
        .expect("HIGH_WATERMARK column");
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{lines:?}");
    for (partition, row) in rows.iter().enumerate() {
        assert_eq!(row[0], "cli");
        assert_eq!(row[1], partition.to_string());
        let expected = if partition == 2 { "10" } else { "0" };
        assert_eq!(row[end_column], expected, "{lines:?}");
        assert_eq!(row[watermark_column], expected, "{lines:?}");
    }

    let output = setup.produce(&["-t", "cli", "-p", "3"], b"x\n");
    assert_one_line_error(&output, &["no partition 3", "it has 3"]);
}

/// Config errors: malformed TOML names the file and the line; an unknown key
/// names the key; a bad topic name states the rule. Nothing is created.
#[test]
fn config_errors_are_one_clear_line_and_create_nothing() {
    let malformed = Setup::new("\n[[topic]\nname = \"t\"\n");
    let output = malformed.run("topics", &[], b"");
    let config = malformed.config.display().to_string();
    assert_one_line_error(&output, &[&config, ":3:"]);
    assert!(
        !malformed.data_dir().exists(),
        "no data directory for a bad config"
    );

    let unknown = Setup::new("[[topic]]\nname = \"t\"\ncolour = \"blue\"\n");
    let output = unknown.produce(&["-t", "t"], b"x\n");
    assert_one_line_error(
        &output,
        &[
            &unknown.config.display().to_string(),
            ":4:",
            "unknown key",
            "colour",
        ],
    );
    assert!(!unknown.data_dir().exists());

    let bad_name = Setup::new("[[topic]]\nname = \"bad/name\"\n");
    let output = bad_name.run("consume", &["-t", "bad/name"], b"");
    assert_one_line_error(
        &output,
        &["invalid topic name", "bad/name", "topic[0].name"],
    );
    assert!(!bad_name.data_dir().exists());
}

/// Produces `count` lines "good-i" to partition 0 of topic `t` and returns
/// the acks; the baseline the bad-input tests check is still there.
fn produce_good(setup: &Setup, count: usize) -> Vec<String> {
    let input: String = (0..count).map(|i| format!("good-{i}\n")).collect();
    let output = setup.produce(&["-t", "t", "-p", "0", "--print-acks"], input.as_bytes());
    assert_success(&output);
    assert_eq!(acks(&output).len(), count);
    (0..count).map(|i| format!("0 {i}  good-{i}")).collect()
}

/// An unknown topic is refused by produce and consume, and changes nothing.
#[test]
fn unknown_topics_are_refused() {
    let setup = Setup::new("[[topic]]\nname = \"t\"\n");
    let expected = produce_good(&setup, 5);
    let output = setup.produce(&["-t", "nope", "--print-acks"], b"a\nb\n");
    assert_one_line_error(&output, &["unknown topic", "nope"]);
    assert!(output.stdout.is_empty());
    let output = setup.run(
        "consume",
        &["-t", "nope", "--from-beginning", "--until-end"],
        b"",
    );
    assert_one_line_error(&output, &["unknown topic", "nope"]);
    assert_eq!(setup.consume_all("t"), expected);
}

const SMALL_BATCHES: &str = "[[topic]]\nname = \"t\"\nmax_batch_bytes = \"1 KiB\"\n";

/// A line over `max_batch_bytes` stops the produce with an error naming the
/// line; the lines before it are acknowledged and stored, nothing after it.
#[test]
fn an_oversized_line_keeps_the_lines_before_it_and_nothing_after() {
    let setup = Setup::new(SMALL_BATCHES);
    let expected = produce_good(&setup, 3);
    let mut input = String::new();
    for i in 0..5 {
        input.push_str(&format!("before-{i}\n"));
    }
    input.push_str(&"o".repeat(2000));
    input.push('\n');
    input.push_str("after-0\nafter-1\n");
    let output = setup.produce(&["-t", "t", "-p", "0", "--print-acks"], input.as_bytes());
    assert_one_line_error(&output, &["line 6", "1024"]);
    assert_eq!(
        acks(&output),
        (3..8).map(|offset| (0, offset)).collect::<Vec<_>>()
    );
    let mut expected = expected;
    expected.extend((0..5).map(|i| format!("0 {}  before-{i}", i + 3)));
    assert_eq!(setup.consume_all("t"), expected);
}

/// A record whose line fits under `max_batch_bytes` but whose encoded batch
/// does not is oversized too: the lines before it are still acknowledged
/// and stored (they must not be refused with it), nothing after it.
#[test]
fn a_line_just_under_the_limit_keeps_the_lines_before_it() {
    let setup = Setup::new(SMALL_BATCHES);
    let mut input = String::new();
    for i in 0..5 {
        input.push_str(&format!("before-{i}\n"));
    }
    input.push_str(&"n".repeat(1020));
    input.push('\n');
    input.push_str("after-0\n");
    let output = setup.produce(&["-t", "t", "-p", "0", "--print-acks"], input.as_bytes());
    assert_one_line_error(&output, &["line 6", "max_batch_bytes"]);
    assert_eq!(
        acks(&output),
        (0..5).map(|offset| (0, offset)).collect::<Vec<_>>()
    );
    let expected: Vec<String> = (0..5).map(|i| format!("0 {i}  before-{i}")).collect();
    assert_eq!(setup.consume_all("t"), expected);
}

/// Many small lines that together exceed `max_batch_bytes` are all accepted:
/// the limit is per batch, and batching lines is the CLI's business. Fails
/// if the CLI gathers more lines into one produce than the topic allows.
#[test]
fn many_small_lines_are_not_refused_as_one_oversized_batch() {
    let setup = Setup::new(SMALL_BATCHES);
    let input: String = (0..2000)
        .map(|i| format!("{i:04}-{}\n", "s".repeat(95)))
        .collect();
    let output = setup.produce(&["-t", "t", "-p", "0", "--print-acks"], input.as_bytes());
    assert_success(&output);
    assert_eq!(acks(&output).len(), 2000);
    assert_eq!(setup.consume_all("t").len(), 2000);
}

/// With `-K`, a line without the delimiter stops the produce with an error
/// naming the line; the lines before it are stored, nothing after.
#[test]
fn a_line_without_the_key_delimiter_is_refused() {
    let setup = Setup::new("[[topic]]\nname = \"t\"\n");
    let expected = produce_good(&setup, 2);
    let output = setup.produce(
        &["-t", "t", "-K", ":", "--print-acks"],
        b"a:1\nb:2\nno delimiter here\nc:3\n",
    );
    assert_one_line_error(&output, &["line 3", "delimiter"]);
    assert_eq!(acks(&output), vec![(0, 2), (0, 3)]);
    let mut expected = expected;
    expected.extend(["0 2 a 1".to_owned(), "0 3 b 2".to_owned()]);
    assert_eq!(setup.consume_all("t"), expected);
}

/// Without `-K`, arbitrary bytes (NUL, invalid UTF-8, `\r` inside a line,
/// empty lines) are values: they round-trip byte for byte through produce
/// and `consume -f %v`.
#[test]
fn binary_lines_round_trip_byte_exact() {
    let setup = Setup::new("[[topic]]\nname = \"t\"\n");
    let mut rng = common::XorShift::new(0xb1_7e5);
    let mut input = Vec::new();
    for line in 0..500 {
        let length = if line % 50 == 0 {
            0
        } else {
            rng.below(300) as usize
        };
        for position in 0..length {
            let mut byte = rng.below(256) as u8;
            // A newline ends the line; a final \r is stripped as part of "\r\n".
            if byte == b'\n' || (byte == b'\r' && position + 1 == length) {
                byte = 0;
            }
            input.push(byte);
        }
        input.push(b'\n');
    }
    let output = setup.produce(&["-t", "t", "--print-acks"], &input);
    assert_success(&output);
    assert_eq!(acks(&output).len(), 500);
    let output = setup.run(
        "consume",
        &["-t", "t", "--from-beginning", "--until-end"],
        b"",
    );
    assert_success(&output);
    assert!(
        output.stdout == input,
        "values did not round-trip byte-exact"
    );
}

/// A data directory held by another process: one line naming the holder.
#[test]
fn a_locked_data_directory_names_its_holder() {
    let setup = Setup::new("[[topic]]\nname = \"t\"\n");
    let config = millrace::config::Config::from_file(&setup.config).unwrap();
    let runtime = millrace::Runtime::start(config).unwrap();
    let output = setup.run("topics", &[], b"");
    assert_one_line_error(
        &output,
        &["in use", &format!("process {}", std::process::id())],
    );
    runtime.shutdown().unwrap();
    assert_success(&setup.run("topics", &[], b""));
}

/// `millrace run` serves until SIGTERM or SIGINT, then shuts down
/// gracefully: exit 0, "millrace stopped" logged at INFO, no ERROR line,
/// and the data directory's lock released (a produce can open it after).
/// Catches: a signal handler missing (the process dies by the signal, not
/// 0), a shutdown that logs the stop as an error, a lock left behind.
#[test]
fn run_stops_gracefully_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let setup = Setup::new("[[topic]]\nname = \"events\"\n");
        let (status, seen) = serve_then_signal("run", &setup.config, signal);
        assert!(status.success(), "signal {signal}: {status:?}\n{seen:#?}");
        assert!(
            seen.iter().any(|line| line.contains("millrace stopped")),
            "{seen:#?}"
        );
        assert!(!seen.iter().any(|line| line.contains("ERROR")), "{seen:#?}");
        assert_success(&setup.produce(&["-t", "events"], b"after\n"));
        let _ = setup.data_dir();
    }
}

/// Starts `millrace SUBCOMMAND CONFIG`, waits (bounded) until it logs
/// "serving", sends it `signal`, and returns its exit status and the lines
/// it wrote on stderr.
fn serve_then_signal(
    subcommand: &str,
    config: &Path,
    signal: libc::c_int,
) -> (std::process::ExitStatus, Vec<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg(subcommand)
        .arg(config)
        .env("MILLRACE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines_sender, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    // The signal handler is installed right after the runtime starts and
    // logs "serving".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|line: &String| line.contains("serving")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no 'serving' line: {seen:?}");
        };
        seen.push(line);
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    (status, seen)
}

/// `millrace node` runs a config as a cluster member, like `run` (here a
/// cluster of one), and refuses a config without `[node]`: one line naming
/// the file, a non-zero exit, nothing created.
/// Catches: `node` accepting a single-node config, or not running one with
/// `[node]`.
#[test]
fn node_runs_cluster_members_and_refuses_other_configs() {
    let member = Setup::new(
        "[node]\nid = 1\nlisten = \"127.0.0.1:0\"\npeers = []\n[[topic]]\nname = \"events\"\n",
    );
    let (status, seen) = serve_then_signal("node", &member.config, libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{seen:#?}");
    assert!(
        seen.iter().any(|line| line.contains("millrace stopped")),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|line| line.contains("ERROR")), "{seen:#?}");

    let single = Setup::new("[[topic]]\nname = \"events\"\n");
    let output = node_exit(&single.config);
    let config = single.config.display().to_string();
    assert_one_line_error(
        &output,
        &[&format!(
            "error: {config}: millrace node needs a [node] section (id, listen, peers)"
        )],
    );
    assert!(!single.data_dir().exists(), "nothing opened");

    // A config that does not parse gets its own error, not the [node] one.
    let broken = Setup::new("[node]\nid = 0\nlisten = \"127.0.0.1:0\"\npeers = []\n");
    let output = node_exit(&broken.config);
    assert_one_line_error(&output, &[":3:6 (node.id)", "node ids start at 1"]);
    assert!(!broken.data_dir().exists());
}

/// `millrace node CONFIG`, expected to exit by itself: one that is still
/// running after 30 s (it accepted the config and serves) is killed and
/// fails the test rather than hanging it.
fn node_exit(config: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("node")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn millrace");
    let pid = child.id();
    let (sender, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match exited.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(output) => output.expect("wait for millrace"),
        Err(_) => {
            // SAFETY: killing our own child process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!(
                "millrace node {} did not exit: it should refuse the config",
                config.display()
            );
        }
    }
}

/// A reader that closes the pipe early (`consume | head -1`) ends the
/// consumer quietly with exit 0, as kcat does.
/// Catches: a broken pipe reported as an error (one line on stderr, exit 1).
#[test]
fn consume_ends_quietly_when_its_reader_closes_the_pipe() {
    use std::io::BufRead;
    let setup = Setup::new("[[topic]]\nname = \"events\"\n");
    let lines: Vec<u8> = (0..200_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert_success(&setup.produce(&["-t", "events"], &lines));
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["consume", "-c"])
        .arg(&setup.config)
        .args(["-t", "events", "--from-beginning", "--until-end"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "0\n");
    // The reader is dropped here: the pipe is closed with most records unread.
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `millrace run --until-caught-up`, then `dlq list` and `dlq replay`, as an
/// operator would use them.
#[test]
fn dead_letters_are_listed_and_replayed_from_the_cli() {
    let setup = Setup::new(
        r#"[[topic]]
name = "in"
[[topic]]
name = "out"
[[pipeline]]
name = "copy"
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "filter"
field = "ok"
exists = true
[pipeline.sink]
type = "topic"
topic = "out"
"#,
    );
    let config = setup.config.clone();
    let input = b"{\"ok\":1}\n{\"ok\":\nnot json\n{\"ok\":2}\n{\"ok\":3}\n";
    assert_success(&run_millrace("produce", &config, &["-t", "in"], input));
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(args)
            .arg(&config)
            .output()
            .unwrap();
        assert_success(&output);
    };
    run(&["run", "--until-caught-up"]);

    let listed = run_millrace("dlq", &config, &["list", "copy"], b"");
    assert_success(&listed);
    let entries: Vec<serde_json::Value> = stdout_lines(&listed)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        let error = entry["error"].as_str().unwrap();
        assert!(error.contains("not JSON"), "{entry}");
        assert!(
            entry["stage"].as_str().unwrap().contains("filter"),
            "{entry}"
        );
    }
    let values: Vec<&str> = entries
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["{\"ok\":", "not json"]);
    let out = setup.consume_all("out");
    assert_eq!(out.len(), 3, "{out:?}");

    let replayed = run_millrace("dlq", &config, &["replay", "copy"], b"");
    assert_success(&replayed);
    assert_eq!(stdout_lines(&replayed), ["replayed 2 dead letters of copy"]);
    let again = run_millrace("dlq", &config, &["replay", "copy"], b"");
    assert_eq!(stdout_lines(&again), ["replayed 0 dead letters of copy"]);
    // The replayed records are back in the source; still malformed, they
    // fail again, with their first identity.
    run(&["run", "--until-caught-up"]);
    let listed = run_millrace("dlq", &config, &["list", "copy"], b"");
    let entries: Vec<serde_json::Value> = stdout_lines(&listed)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[2]["origin"], entries[0]["origin"]);

    let unknown = run_millrace("dlq", &config, &["list", "nope"], b"");
    assert_one_line_error(&unknown, &["no pipeline named \"nope\""]);
}
