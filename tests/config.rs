//! The configuration through the public API: what parses, to what, and what
//! each bad input's error says (origin, line:column, key path, rule).

use std::path::{Path, PathBuf};
use std::time::Duration;

use millrace::config::*;

const ORIGIN: &str = "test.toml";

fn parse(text: &str) -> Config {
    match Config::from_toml_str(text, ORIGIN) {
        Ok(config) => config,
        Err(error) => panic!("expected {text:?} to parse, got: {error}"),
    }
}

/// Parses `text`, expecting an error whose one-line message starts with
/// `prefix` (origin and location) and contains every piece of `rule`.
fn assert_error(text: &str, prefix: &str, rule: &[&str]) -> ConfigError {
    let error = match Config::from_toml_str(text, ORIGIN) {
        Ok(config) => panic!("expected {text:?} to fail, parsed {config:?}"),
        Err(error) => error,
    };
    let shown = error.to_string();
    assert!(
        shown.starts_with(prefix),
        "error {shown:?} should start with {prefix:?}"
    );
    for piece in rule {
        assert!(
            shown.contains(piece),
            "error {shown:?} should contain {piece:?}"
        );
    }
    assert!(!shown.contains('\n'), "error should be one line: {shown:?}");
    assert_eq!(error.origin, ORIGIN);
    error
}

/// A config with one topic table made of `topic_lines` (the topic starts on line 2).
fn with_topic(topic_lines: &str) -> String {
    format!("data_dir = \"/var/lib/millrace\"\n[[topic]]\n{topic_lines}")
}

#[test]
fn full_config_parses_to_expected_values() {
    let config = parse(
        r#"
data_dir = "/srv/millrace"

[[topic]]
name = "events"
partitions = 4
segment_bytes = "128 MiB"
segment_age = "1h"
retention = "7d"
retention_bytes = "10 GiB"
fsync = "10ms"
max_batch_bytes = "2 MiB"
index_interval_bytes = 8192
cleanup = "delete"
replication_factor = 1

[[topic]]
name = "audit.log_v2-x"
segment_bytes = 1048576
retention_bytes = "1.5 GB"
"#,
    );
    assert_eq!(config.data_dir, PathBuf::from("/srv/millrace"));
    assert_eq!(config.topics.len(), 2);
    let events = config.topic("events").expect("events");
    assert_eq!(events.name, "events");
    assert_eq!(events.partitions, 4);
    assert_eq!(events.segment_bytes, 128 << 20);
    assert_eq!(events.segment_age, Some(Duration::from_secs(3600)));
    assert_eq!(events.retention, Some(Duration::from_secs(7 * 24 * 3600)));
    assert_eq!(events.retention_bytes, Some(10 << 30));
    assert_eq!(
        events.fsync,
        FsyncPolicy::Interval(Duration::from_millis(10))
    );
    assert_eq!(events.max_batch_bytes, 2 << 20);
    assert_eq!(events.index_interval_bytes, 8192);
    assert_eq!(events.cleanup, CleanupPolicy::Delete);
    assert_eq!(events.delete_retention, DELETE_RETENTION_DEFAULT);
    assert_eq!(events.min_dirty_ratio, MIN_DIRTY_RATIO_DEFAULT);
    assert_eq!(events.replication_factor, 1);

    let audit = &config.topics[1];
    assert_eq!(audit.name, "audit.log_v2-x");
    assert_eq!(audit.segment_bytes, 1 << 20);
    assert_eq!(audit.retention_bytes, Some(1_500_000_000));
    assert_eq!(audit.partitions, 1);
    assert!(config.topic("missing").is_none());
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn defaults() {
    let config = parse("data_dir = \"data\"\n[[topic]]\nname = \"t\"\n");
    let topic = &config.topics[0];
    assert_eq!(topic, &TopicConfig::with_defaults("t"));
    assert_eq!(topic.partitions, 1);
    assert_eq!(topic.segment_bytes, 64 << 20);
    assert_eq!(topic.segment_age, None);
    assert_eq!(topic.retention, None);
    assert_eq!(topic.retention_bytes, None);
    assert_eq!(topic.fsync, FsyncPolicy::Always);
    assert_eq!(topic.max_batch_bytes, 1 << 20);
    assert_eq!(topic.index_interval_bytes, 4 << 10);
    assert_eq!(topic.cleanup, CleanupPolicy::Delete);
    assert_eq!(topic.delete_retention, Duration::from_secs(24 * 3600));
    assert_eq!(topic.min_dirty_ratio, 0.5);
    assert_eq!(topic.replication_factor, 1);
    assert_eq!(config.compactor, CompactorConfig::default());
    assert_eq!(config.compactor.memory_budget, 256 << 20);
    assert_eq!(config.compactor.interval, Duration::from_secs(30));
}

#[test]
fn no_topics_and_relative_data_dir_kept_as_written() {
    let config = parse("data_dir = \"./data/../data\"\n");
    assert_eq!(config.data_dir, PathBuf::from("./data/../data"));
    assert!(config.topics.is_empty());
    assert_eq!(config, Config::new("./data/../data"));
}

#[test]
fn inline_topic_tables_parse_too() {
    let config =
        parse("data_dir = \"d\"\ntopic = [{ name = \"a\", partitions = 2 }, { name = \"b\" }]\n");
    assert_eq!(config.topics.len(), 2);
    assert_eq!(config.topics[0].partitions, 2);
}

#[test]
fn the_example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml");
    let config = Config::from_file(&path).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    let events = config.topic("events").expect("topic events");
    assert_eq!(events.partitions, 4);
    let expected = TopicConfig {
        partitions: 4,
        ..TopicConfig::with_defaults("events")
    };
    assert_eq!(events, &expected, "the example shows the defaults");
    assert_eq!(config.shutdown_timeout, SHUTDOWN_TIMEOUT_DEFAULT);
    assert_eq!(config.startup, StartupConfig::default());
    assert_eq!(config.http, None, "the example keeps [http] commented out");
    assert_eq!(
        config.compactor,
        CompactorConfig::default(),
        "the example keeps [compactor] commented out"
    );
}

/// The example's commented-out compaction keys, uncommented, parse to the
/// defaults they claim (so the reference cannot drift from the code).
#[test]
fn the_example_file_commented_compaction_keys_parse() {
    const COMMENTED: [&str; 6] = [
        "# cleanup = ",
        "# delete_retention = ",
        "# min_dirty_ratio = ",
        "# [compactor]",
        "# memory_budget = ",
        "# interval = ",
    ];
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml");
    let text = std::fs::read_to_string(&path).expect("read the example");
    let mut uncommented = String::new();
    let mut found = 0;
    for line in text.lines() {
        // The commented cleanup replaces the active one.
        if line == "cleanup = \"delete\"" {
            continue;
        }
        if COMMENTED.iter().any(|prefix| line.starts_with(prefix)) {
            uncommented.push_str(&line[2..]);
            found += 1;
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    assert_eq!(found, COMMENTED.len(), "each key appears once, commented");
    let config = Config::from_toml_str(&uncommented, "quickstart (uncommented)")
        .unwrap_or_else(|error| panic!("{error}"));
    let events = config.topic("events").expect("topic events");
    assert_eq!(events.cleanup, CleanupPolicy::CompactAndDelete);
    assert_eq!(events.delete_retention, DELETE_RETENTION_DEFAULT);
    assert_eq!(events.min_dirty_ratio, MIN_DIRTY_RATIO_DEFAULT);
    assert_eq!(config.compactor, CompactorConfig::default());
}

#[test]
fn missing_file_names_the_path() {
    let error = Config::from_file(Path::new("/nonexistent/millrace.toml")).unwrap_err();
    assert_eq!(error.origin, "/nonexistent/millrace.toml");
    assert!(
        error.to_string().contains("cannot read the config file"),
        "{error}"
    );
}

#[test]
fn file_errors_name_the_file_and_line() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("bad.toml");
    std::fs::write(&path, "data_dir = \"d\"\n\n[[topic]]\nname = \"a b\"\n").expect("write");
    let error = Config::from_file(&path).unwrap_err();
    let shown = error.to_string();
    let prefix = format!(
        "{}:4:8 (topic[0].name): invalid topic name \"a b\"",
        path.display()
    );
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} should start with {prefix:?}"
    );
}

#[test]
fn malformed_toml() {
    assert_error("data_dir = \"d\"\n[[topic]\n", "test.toml:2:", &["invalid"]);
    assert_error("data_dir = \n", "test.toml:1:", &[]);
    assert_error("data_dir = \"unterminated\n", "test.toml:1:", &[]);
}

#[test]
fn duplicate_key() {
    assert_error(
        &with_topic("name = \"a\"\npartitions = 1\npartitions = 2\n"),
        "test.toml:5:1",
        &["duplicate key `partitions`"],
    );
}

#[test]
fn unknown_top_level_key() {
    assert_error(
        "data_dir = \"d\"\ndata_directory = \"x\"\n",
        "test.toml:2:1 (data_directory): ",
        &["unknown key `data_directory`", "`data_dir`"],
    );
}

#[test]
fn unknown_topic_key() {
    assert_error(
        &with_topic("name = \"a\"\npartitons = 3\n"),
        "test.toml:4:1 (topic[0].partitons): ",
        &["unknown key `partitons`", "`partitions`"],
    );
    // In the second topic, to check the index in the key path.
    assert_error(
        "data_dir = \"d\"\n[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\nretention_ms = 5\n",
        "test.toml:6:1 (topic[1].retention_ms): ",
        &["unknown key `retention_ms`"],
    );
}

#[test]
fn unknown_keys_in_other_shapes() {
    // A dotted key, at the top level and inside a topic.
    assert_error(
        "data_dir = \"d\"\nfoo.bar = 1\n",
        "test.toml:2:1 (foo): ",
        &["unknown key `foo`"],
    );
    assert_error(
        &with_topic("name = \"a\"\nsegment.bytes = 3\n"),
        "test.toml:4:1 (topic[0].segment): ",
        &["unknown key `segment`"],
    );
    // Topics as an inline array of tables.
    assert_error(
        "data_dir = \"d\"\ntopic = [{ name = \"a\" }, { name = \"b\", foo = 1 }]\n",
        "test.toml:2:40 (topic[1].foo): ",
        &["unknown key `foo`"],
    );
    // A section another issue will bring is unknown until then.
    assert_error(
        "data_dir = \"d\"\n[cluster]\nid = 1\n",
        "test.toml:2:2 (cluster): ",
        &["unknown key `cluster`"],
    );
}

#[test]
fn topic_must_be_an_array_of_tables() {
    assert_error(
        "data_dir = \"d\"\n[topic]\nname = \"a\"\n",
        "test.toml:2:1",
        &["expected a sequence"],
    );
}

#[test]
fn wrong_value_type_names_the_key() {
    assert_error(
        &with_topic("name = \"a\"\npartitions = \"four\"\n"),
        "test.toml:4:14 (topic[0].partitions): ",
        &["invalid type: string \"four\""],
    );
    assert_error(
        "data_dir = 5\n",
        "test.toml:1:12 (data_dir): ",
        &["invalid type: integer `5`"],
    );
    assert_error(
        &with_topic("name = \"a\"\nsegment_bytes = 1.5\n"),
        "test.toml:4:17 (topic[0].segment_bytes): ",
        &["a size: an integer number of bytes or a string like \"64 MiB\""],
    );
    assert_error(
        &with_topic("name = \"a\"\nretention = 3600\n"),
        "test.toml:4:13 (topic[0].retention): ",
        &["invalid type: integer `3600`"],
    );
}

#[test]
fn bad_topic_names() {
    let long = "x".repeat(250);
    for name in ["", ".", "..", "a/b", "a b", "ünïcode", long.as_str()] {
        let error = assert_error(
            &with_topic(&format!("name = \"{name}\"\n")),
            "test.toml:3:8 (topic[0].name): invalid topic name ",
            &[
                "[A-Za-z0-9._-]",
                "1 to 249 characters",
                "not \".\" or \"..\"",
            ],
        );
        assert_eq!(validate_topic_name(name).err(), Some(error.message));
    }
    assert_error(
        &with_topic(&format!("name = \"{long}\"\n")),
        "test.toml:3:8",
        &["250 characters"],
    );
    assert_error(
        &with_topic("name = \"a/b\"\n"),
        "test.toml:3:8",
        &["'/' is not allowed"],
    );
    assert_eq!(validate_topic_name(&"x".repeat(249)), Ok(()));
    assert_eq!(validate_topic_name("a.b_c-D9"), Ok(()));
}

#[test]
fn topic_without_name() {
    assert_error(
        "data_dir = \"d\"\n[[topic]]\npartitions = 2\n",
        "test.toml:2:1 (topic[0].name): ",
        &["missing required key `name`"],
    );
}

#[test]
fn partitions_out_of_range() {
    for (value, shown) in [
        ("0", "got 0"),
        ("-1", "got -1"),
        ("10001", "got 10001"),
        ("4294967297", "got 4294967297"),
    ] {
        assert_error(
            &with_topic(&format!("name = \"a\"\npartitions = {value}\n")),
            "test.toml:4:14 (topic[0].partitions): ",
            &["partitions must be between 1 and 10000", shown],
        );
    }
    assert_eq!(
        parse(&with_topic("name = \"a\"\npartitions = 10000\n")).topics[0].partitions,
        10_000
    );
}

#[test]
fn bad_sizes() {
    assert_error(
        &with_topic("name = \"a\"\nsegment_bytes = \"64 MiBs\"\n"),
        "test.toml:4:17 (topic[0].segment_bytes): ",
        &["invalid size \"64 MiBs\"", "unknown unit \"MiBs\""],
    );
    assert_error(
        &with_topic("name = \"a\"\nretention_bytes = \"lots\"\n"),
        "test.toml:4:19 (topic[0].retention_bytes): ",
        &["invalid size \"lots\""],
    );
    assert_error(
        &with_topic("name = \"a\"\nmax_batch_bytes = -1\n"),
        "test.toml:4:19 (topic[0].max_batch_bytes): ",
        &["must not be negative"],
    );
    assert_error(
        &with_topic("name = \"a\"\nsegment_bytes = \"100000000 TiB\"\n"),
        "test.toml:4:17 (topic[0].segment_bytes): ",
        &["more than 2^64 - 1 bytes"],
    );
}

#[test]
fn sizes_out_of_bounds() {
    assert_error(
        &with_topic("name = \"a\"\nsegment_bytes = \"1 KiB\"\n"),
        "test.toml:4:17 (topic[0].segment_bytes): ",
        &["segment_bytes must be between 4 KiB and 1 GiB, got 1 KiB"],
    );
    assert_error(
        &with_topic("name = \"a\"\nmax_batch_bytes = \"65 MiB\"\n"),
        "test.toml:4:19 (topic[0].max_batch_bytes): ",
        &["max_batch_bytes must be between 1 KiB and 64 MiB, got 65 MiB"],
    );
    assert_error(
        &with_topic("name = \"a\"\nindex_interval_bytes = 0\n"),
        "test.toml:4:24 (topic[0].index_interval_bytes): ",
        &["index_interval_bytes must be between"],
    );
    assert_error(
        &with_topic("name = \"a\"\nretention_bytes = 0\n"),
        "test.toml:4:19 (topic[0].retention_bytes): ",
        &["retention_bytes must be more than 0 B"],
    );
}

#[test]
fn bad_durations() {
    assert_error(
        &with_topic("name = \"a\"\nretention = \"7 dayz\"\n"),
        "test.toml:4:13 (topic[0].retention): ",
        &["invalid retention \"7 dayz\"", "\"250ms\""],
    );
    assert_error(
        &with_topic("name = \"a\"\nsegment_age = \"soon\"\n"),
        "test.toml:4:15 (topic[0].segment_age): ",
        &["invalid segment_age \"soon\""],
    );
    assert_error(
        &with_topic("name = \"a\"\nretention = \"0s\"\n"),
        "test.toml:4:13 (topic[0].retention): ",
        &["retention must be more than 0s"],
    );
    assert_error(
        &with_topic("name = \"a\"\nsegment_age = \"200years\"\n"),
        "test.toml:4:15 (topic[0].segment_age): ",
        &["at most 36500d"],
    );
}

#[test]
fn bad_fsync() {
    assert_error(
        &with_topic("name = \"a\"\nfsync = \"sometimes\"\n"),
        "test.toml:4:9 (topic[0].fsync): ",
        &[
            "invalid fsync \"sometimes\"",
            "expected \"always\" or a duration like \"10ms\"",
        ],
    );
    for value in ["0ms", "11s"] {
        assert_error(
            &with_topic(&format!("name = \"a\"\nfsync = \"{value}\"\n")),
            "test.toml:4:9 (topic[0].fsync): ",
            &["fsync interval must be more than 0s and at most 10s"],
        );
    }
    let config = parse(&with_topic("name = \"a\"\nfsync = \"10s\"\n"));
    assert_eq!(
        config.topics[0].fsync,
        FsyncPolicy::Interval(Duration::from_secs(10))
    );
}

#[test]
fn duplicate_topic() {
    let text = "data_dir = \"d\"\n[[topic]]\nname = \"events\"\n[[topic]]\nname = \"other\"\n[[topic]]\nname = \"events\"\n";
    assert_error(
        text,
        "test.toml:7:8 (topic[2].name): ",
        &["duplicate topic name \"events\"", "topic[0]"],
    );
    // Differing only in case: they would share directories on macOS and Windows.
    let text = "data_dir = \"d\"\n[[topic]]\nname = \"Events\"\n[[topic]]\nname = \"events\"\n";
    assert_error(
        text,
        "test.toml:5:8 (topic[1].name): ",
        &["duplicate topic name \"events\"", "\"Events\""],
    );
}

#[test]
fn missing_data_dir() {
    assert_error(
        "[[topic]]\nname = \"a\"\n",
        "test.toml (data_dir): ",
        &["missing required key `data_dir`"],
    );
    assert_error(
        "",
        "test.toml (data_dir): ",
        &["missing required key `data_dir`"],
    );
    assert_error(
        "data_dir = \"\"\n",
        "test.toml:1:12 (data_dir): ",
        &["data_dir must not be empty"],
    );
}

#[test]
fn cleanup_values_parse() {
    let cleanup = |value: &str| {
        parse(&with_topic(&format!(
            "name = \"a\"\ncleanup = \"{value}\"\n"
        )))
        .topics[0]
            .cleanup
    };
    assert_eq!(cleanup("delete"), CleanupPolicy::Delete);
    assert_eq!(cleanup("compact"), CleanupPolicy::Compact);
    for value in [
        "compact,delete",
        "delete,compact",
        "compact, delete",
        " delete , compact ",
    ] {
        assert_eq!(cleanup(value), CleanupPolicy::CompactAndDelete, "{value:?}");
    }
    assert!(CleanupPolicy::Compact.compacts() && !CleanupPolicy::Compact.deletes());
    assert!(
        CleanupPolicy::CompactAndDelete.compacts() && CleanupPolicy::CompactAndDelete.deletes()
    );
}

#[test]
fn bad_cleanup() {
    for value in ["purge", "compact,", "compact,compact", "compact delete", ""] {
        assert_error(
            &with_topic(&format!("name = \"a\"\ncleanup = \"{value}\"\n")),
            "test.toml:4:11 (topic[0].cleanup): ",
            &[
                &format!("invalid cleanup \"{value}\""),
                "expected \"delete\", \"compact\" or \"compact,delete\"",
            ],
        );
    }
    assert_error(
        &with_topic("name = \"a\"\ncleanup = [\"compact\", \"delete\"]\n"),
        "test.toml:4:11 (topic[0].cleanup): ",
        &["invalid type: sequence"],
    );
}

#[test]
fn compaction_topic_keys_parse() {
    let config = parse(&with_topic(
        "name = \"a\"\ncleanup = \"compact\"\ndelete_retention = \"1h 30m\"\nmin_dirty_ratio = 0.25\n",
    ));
    let topic = &config.topics[0];
    assert_eq!(topic.cleanup, CleanupPolicy::Compact);
    assert_eq!(topic.delete_retention, Duration::from_secs(5400));
    assert_eq!(topic.min_dirty_ratio, 0.25);
    assert_eq!(config.validate(), Ok(()));

    let topic =
        |lines: &str| parse(&with_topic(&format!("name = \"a\"\n{lines}\n"))).topics[0].clone();
    assert_eq!(topic("min_dirty_ratio = 0").min_dirty_ratio, 0.0);
    assert_eq!(topic("min_dirty_ratio = 1").min_dirty_ratio, 1.0);
    assert_eq!(topic("min_dirty_ratio = 0.0").min_dirty_ratio, 0.0);
    assert_eq!(topic("min_dirty_ratio = 1.0").min_dirty_ratio, 1.0);
    assert_eq!(topic("min_dirty_ratio = 1e-1").min_dirty_ratio, 0.1);
    assert_eq!(
        topic("delete_retention = \"1ms\"").delete_retention,
        Duration::from_millis(1)
    );
    assert_eq!(
        topic("delete_retention = \"36500d\"").delete_retention,
        AGE_MAX
    );
    // Harmless on a topic that only deletes: kept, and ignored there.
    let deleting = topic("cleanup = \"delete\"\ndelete_retention = \"7d\"\nmin_dirty_ratio = 0.9");
    assert_eq!(deleting.cleanup, CleanupPolicy::Delete);
    assert_eq!(
        deleting.delete_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(deleting.min_dirty_ratio, 0.9);
}

#[test]
fn bad_delete_retention() {
    let cases = [
        (
            "\"0s\"",
            "delete_retention must be more than 0s and at most 36500d",
        ),
        (
            "\"36501d\"",
            "delete_retention must be more than 0s and at most 36500d",
        ),
        ("\"a day\"", "invalid delete_retention \"a day\""),
        ("86400", "invalid type: integer `86400`"),
    ];
    for (value, rule) in cases {
        assert_error(
            &with_topic(&format!("name = \"a\"\ndelete_retention = {value}\n")),
            "test.toml:4:20 (topic[0].delete_retention): ",
            &[rule],
        );
    }
}

#[test]
fn bad_min_dirty_ratio() {
    for (value, shown) in [
        ("1.5", "got 1.5"),
        ("-0.1", "got -0.1"),
        ("2", "got 2"),
        ("-1", "got -1"),
        ("nan", "got NaN"),
        ("inf", "got inf"),
        ("-inf", "got -inf"),
    ] {
        assert_error(
            &with_topic(&format!("name = \"a\"\nmin_dirty_ratio = {value}\n")),
            "test.toml:4:19 (topic[0].min_dirty_ratio): ",
            &["min_dirty_ratio must be a number from 0 to 1", shown],
        );
    }
    assert_error(
        &with_topic("name = \"a\"\nmin_dirty_ratio = \"0.5\"\n"),
        "test.toml:4:19 (topic[0].min_dirty_ratio): ",
        &["invalid type: string \"0.5\"", "a number from 0 to 1"],
    );
    // In the second topic, to check the index in the key path.
    assert_error(
        "data_dir = \"d\"\n[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\nmin_dirty_ratio = 3\n",
        "test.toml:6:19 (topic[1].min_dirty_ratio): ",
        &["min_dirty_ratio must be a number from 0 to 1, got 3"],
    );
}

#[test]
fn replication_factor_above_one_needs_a_cluster_that_large() {
    assert_error(
        &with_topic("name = \"a\"\nreplication_factor = 3\n"),
        "test.toml:4:22 (topic[0].replication_factor): ",
        &["needs a [node] section with at least 2 peers"],
    );
    assert_error(
        &with_topic("name = \"a\"\nreplication_factor = 0\n"),
        "test.toml:4:22 (topic[0].replication_factor): ",
        &["must be between 1 and 7"],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes in UTF-8 but one column.
    assert_error(
        "# café\ndata_dir = \"d\"\n[[topic]]\nname = \"é\"\n",
        "test.toml:4:8 (topic[0].name): ",
        &["'é' is not allowed"],
    );
}

#[test]
fn validate_checks_configs_built_in_code() {
    let mut config = Config::new("data");
    config.topics.push(TopicConfig::with_defaults("events"));
    assert_eq!(config.validate(), Ok(()));

    let broken = |edit: Edit| {
        let mut config = config.clone();
        config.topics.push(TopicConfig::with_defaults("second"));
        edit(&mut config.topics[1]);
        config
            .validate()
            .expect_err("should be invalid")
            .to_string()
    };
    type Edit = fn(&mut TopicConfig);
    let cases: [(Edit, &str); 15] = [
        (
            |t| t.name = "a b".into(),
            "<config> (topic[1].name): invalid topic name",
        ),
        (
            |t| t.name = "EVENTS".into(),
            "<config> (topic[1].name): duplicate topic name",
        ),
        (
            |t| t.partitions = 0,
            "<config> (topic[1].partitions): partitions must be between 1 and 10000",
        ),
        (
            |t| t.segment_bytes = 1,
            "<config> (topic[1].segment_bytes): segment_bytes must be between",
        ),
        (
            |t| t.segment_age = Some(Duration::ZERO),
            "<config> (topic[1].segment_age): ",
        ),
        (
            |t| t.retention = Some(Duration::MAX),
            "<config> (topic[1].retention): ",
        ),
        (
            |t| t.retention_bytes = Some(0),
            "<config> (topic[1].retention_bytes): ",
        ),
        (
            |t| t.fsync = FsyncPolicy::Interval(Duration::ZERO),
            "<config> (topic[1].fsync): ",
        ),
        (
            |t| t.max_batch_bytes = 1 << 30,
            "<config> (topic[1].max_batch_bytes): ",
        ),
        (
            |t| t.delete_retention = Duration::ZERO,
            "<config> (topic[1].delete_retention): delete_retention must be more than 0s",
        ),
        (
            |t| t.delete_retention = AGE_MAX + Duration::from_nanos(1),
            "<config> (topic[1].delete_retention): ",
        ),
        (
            |t| t.min_dirty_ratio = f64::NAN,
            "<config> (topic[1].min_dirty_ratio): min_dirty_ratio must be a number from 0 to 1, got NaN",
        ),
        (
            |t| t.min_dirty_ratio = -0.5,
            "<config> (topic[1].min_dirty_ratio): ",
        ),
        (
            |t| t.min_dirty_ratio = 1.5,
            "<config> (topic[1].min_dirty_ratio): ",
        ),
        (
            |t| t.replication_factor = 2,
            "<config> (topic[1].replication_factor): replication_factor = 2 needs a [node] section",
        ),
    ];
    for (edit, prefix) in cases {
        let shown = broken(edit);
        assert!(
            shown.starts_with(prefix),
            "{shown:?} should start with {prefix:?}"
        );
    }

    let empty = Config::new("");
    assert_eq!(
        empty.validate().unwrap_err().to_string(),
        "<config> (data_dir): data_dir must not be empty"
    );
}

/// A config whose lines after `data_dir` (line 1) are `lines`.
fn after_data_dir(lines: &str) -> String {
    format!("data_dir = \"d\"\n{lines}")
}

#[test]
fn startup_http_and_shutdown_timeout_defaults() {
    let config = parse("data_dir = \"d\"\n");
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.startup.hot_window, Duration::from_secs(24 * 3600));
    assert_eq!(config.startup.chunk_bytes, CHUNK_BYTES_DEFAULT);
    assert_eq!(config.startup.background_load_bytes_per_second, None);
    assert_eq!(config.startup, StartupConfig::default());
    assert_eq!(config.http, None);
    // An empty [startup] table is all defaults too.
    assert_eq!(
        parse(&after_data_dir("[startup]\n")).startup,
        StartupConfig::default()
    );
}

#[test]
fn startup_keys_parse() {
    let config = parse(&after_data_dir(
        "[startup]\nhot_window = \"2h 30m\"\nchunk_bytes = \"128 MiB\"\nbackground_load_rate = \"200 MiB\"\n",
    ));
    assert_eq!(
        config.startup,
        StartupConfig {
            hot_window: Duration::from_secs(9000),
            chunk_bytes: 128 << 20,
            background_load_bytes_per_second: Some(200 << 20),
        }
    );
    let rate = |value: &str| {
        parse(&after_data_dir(&format!(
            "[startup]\nbackground_load_rate = {value}\n"
        )))
        .startup
        .background_load_bytes_per_second
    };
    assert_eq!(rate("\"200 MiB/s\""), Some(200 << 20));
    assert_eq!(rate("\"1.5GB/s\""), Some(1_500_000_000));
    assert_eq!(rate("1048576"), Some(1 << 20));
    let startup = |lines: &str| parse(&after_data_dir(&format!("[startup]\n{lines}\n"))).startup;
    assert_eq!(startup("hot_window = \"0s\"").hot_window, Duration::ZERO);
    assert_eq!(
        startup("hot_window = \"36500d\"").hot_window,
        HOT_WINDOW_MAX
    );
    assert_eq!(startup("chunk_bytes = 65536").chunk_bytes, 64 << 10);
    assert_eq!(startup("chunk_bytes = \"4 GiB\"").chunk_bytes, 4 << 30);
    // [startup] may come after the topics.
    let config = parse(&after_data_dir(
        "[[topic]]\nname = \"a\"\n[startup]\nhot_window = \"1h\"\n",
    ));
    assert_eq!(config.startup.hot_window, Duration::from_secs(3600));
    assert_eq!(config.topics.len(), 1);
}

#[test]
fn shutdown_timeout_parses() {
    let timeout = |value: &str| {
        parse(&after_data_dir(&format!(
            "shutdown_timeout = \"{value}\"\n"
        )))
        .shutdown_timeout
    };
    assert_eq!(timeout("5s"), Duration::from_secs(5));
    assert_eq!(timeout("250ms"), Duration::from_millis(250));
    assert_eq!(timeout("1h"), SHUTDOWN_TIMEOUT_MAX);
}

#[test]
fn http_listen_parses() {
    let listen = |value: &str| {
        parse(&after_data_dir(&format!("[http]\nlisten = \"{value}\"\n")))
            .http
            .expect("[http] is present")
            .listen
    };
    assert_eq!(listen("127.0.0.1:9644"), "127.0.0.1:9644".parse().unwrap());
    assert_eq!(listen("0.0.0.0:0").port(), 0);
    assert_eq!(listen("[::1]:9644"), "[::1]:9644".parse().unwrap());
}

#[test]
fn bad_shutdown_timeout() {
    for value in ["0s", "61m"] {
        assert_error(
            &after_data_dir(&format!("shutdown_timeout = \"{value}\"\n")),
            "test.toml:2:20 (shutdown_timeout): ",
            &["shutdown_timeout must be more than 0s and at most 1h"],
        );
    }
    assert_error(
        &after_data_dir("shutdown_timeout = \"soon\"\n"),
        "test.toml:2:20 (shutdown_timeout): ",
        &["invalid shutdown_timeout \"soon\"", "\"250ms\""],
    );
    assert_error(
        &after_data_dir("shutdown_timeout = 30\n"),
        "test.toml:2:20 (shutdown_timeout): ",
        &["invalid type: integer `30`"],
    );
}

#[test]
fn bad_startup_values() {
    let cases = [
        (
            "hot_window = \"36501d\"",
            "test.toml:3:14 (startup.hot_window): ",
            "hot_window must be at most 36500d",
        ),
        (
            "hot_window = \"yesterday\"",
            "test.toml:3:14 (startup.hot_window): ",
            "invalid hot_window \"yesterday\"",
        ),
        (
            "hot_window = 86400",
            "test.toml:3:14 (startup.hot_window): ",
            "invalid type: integer `86400`",
        ),
        (
            "chunk_bytes = \"32 KiB\"",
            "test.toml:3:15 (startup.chunk_bytes): ",
            "chunk_bytes must be between 64 KiB and 4 GiB, got 32 KiB",
        ),
        (
            "chunk_bytes = \"5 GiB\"",
            "test.toml:3:15 (startup.chunk_bytes): ",
            "chunk_bytes must be between 64 KiB and 4 GiB, got 5 GiB",
        ),
        (
            "chunk_bytes = -1",
            "test.toml:3:15 (startup.chunk_bytes): ",
            "chunk_bytes must not be negative",
        ),
        (
            "chunk_bytes = \"lots\"",
            "test.toml:3:15 (startup.chunk_bytes): ",
            "invalid size \"lots\"",
        ),
        (
            "background_load_rate = \"0 MiB/s\"",
            "test.toml:3:24 (startup.background_load_rate): ",
            "background_load_rate must be more than 0 B per second",
        ),
        (
            "background_load_rate = 0",
            "test.toml:3:24 (startup.background_load_rate): ",
            "background_load_rate must be more than 0 B per second",
        ),
        (
            "background_load_rate = \"fast\"",
            "test.toml:3:24 (startup.background_load_rate): ",
            "invalid background_load_rate: invalid size \"fast\"",
        ),
    ];
    for (line, prefix, rule) in cases {
        assert_error(
            &after_data_dir(&format!("[startup]\n{line}\n")),
            prefix,
            &[rule],
        );
    }
}

#[test]
fn bad_http_values() {
    for value in ["localhost:9644", "127.0.0.1", "127.0.0.1:70000", ""] {
        assert_error(
            &after_data_dir(&format!("[http]\nlisten = \"{value}\"\n")),
            "test.toml:3:10 (http.listen): ",
            &[
                &format!("invalid listen \"{value}\""),
                "expected an IP address and port like \"127.0.0.1:9644\"",
            ],
        );
    }
    assert_error(
        &after_data_dir("[http]\nlisten = 9644\n"),
        "test.toml:3:10 (http.listen): ",
        &["invalid type: integer `9644`"],
    );
    assert_error(
        &after_data_dir("[http]\n"),
        "test.toml:2:1 (http.listen): ",
        &["missing required key `listen` in [http]"],
    );
}

#[test]
fn unknown_keys_in_startup_and_http() {
    assert_error(
        &after_data_dir("[startup]\nhot_window = \"1h\"\nhot_windw = \"2h\"\n"),
        "test.toml:4:1 (startup.hot_windw): ",
        &["unknown key `hot_windw`", "`hot_window`", "`chunk_bytes`"],
    );
    assert_error(
        &after_data_dir("[http]\nlisten = \"127.0.0.1:0\"\nport = 9644\n"),
        "test.toml:4:1 (http.port): ",
        &["unknown key `port`", "`listen`"],
    );
    // Keys of a section written at the top level are unknown there.
    assert_error(
        &after_data_dir("hot_window = \"1h\"\n"),
        "test.toml:2:1 (hot_window): ",
        &["unknown key `hot_window`"],
    );
}

#[test]
fn validate_checks_startup_and_shutdown_timeout_built_in_code() {
    let mut config = Config::new("data");
    config.http = Some(HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    config.startup.hot_window = Duration::ZERO;
    config.startup.background_load_bytes_per_second = Some(1);
    assert_eq!(config.validate(), Ok(()));

    type Edit = fn(&mut Config);
    let cases: [(Edit, &str); 6] = [
        (
            |c| c.shutdown_timeout = Duration::ZERO,
            "<config> (shutdown_timeout): shutdown_timeout must be more than 0s",
        ),
        (
            |c| c.shutdown_timeout = SHUTDOWN_TIMEOUT_MAX + Duration::from_nanos(1),
            "<config> (shutdown_timeout): ",
        ),
        (
            |c| c.startup.hot_window = Duration::MAX,
            "<config> (startup.hot_window): hot_window must be at most 36500d",
        ),
        (
            |c| c.startup.chunk_bytes = CHUNK_BYTES_MIN - 1,
            "<config> (startup.chunk_bytes): chunk_bytes must be between 64 KiB and 4 GiB",
        ),
        (
            |c| c.startup.chunk_bytes = CHUNK_BYTES_MAX + 1,
            "<config> (startup.chunk_bytes): ",
        ),
        (
            |c| c.startup.background_load_bytes_per_second = Some(0),
            "<config> (startup.background_load_rate): background_load_rate must be more than 0",
        ),
    ];
    for (edit, prefix) in cases {
        let mut broken = config.clone();
        edit(&mut broken);
        let shown = broken
            .validate()
            .expect_err("should be invalid")
            .to_string();
        assert!(
            shown.starts_with(prefix),
            "{shown:?} should start with {prefix:?}"
        );
    }
}

#[test]
fn compactor_keys_parse() {
    // An empty [compactor] table is all defaults.
    assert_eq!(
        parse(&after_data_dir("[compactor]\n")).compactor,
        CompactorConfig::default()
    );
    let config = parse(&after_data_dir(
        "[compactor]\nmemory_budget = \"1 GiB\"\ninterval = \"5m\"\n",
    ));
    assert_eq!(
        config.compactor,
        CompactorConfig {
            memory_budget: 1 << 30,
            interval: Duration::from_secs(300),
            bytes_per_second: None,
        }
    );
    let compactor =
        |lines: &str| parse(&after_data_dir(&format!("[compactor]\n{lines}\n"))).compactor;
    assert_eq!(compactor("memory_budget = 1048576").memory_budget, 1 << 20);
    assert_eq!(
        compactor("rate = \"32 MiB\"").bytes_per_second,
        Some(32 << 20)
    );
    assert_eq!(
        compactor("rate = \"32 MiB/s\"").bytes_per_second,
        Some(32 << 20)
    );
    assert_eq!(compactor("interval = \"1m\"").bytes_per_second, None);
    assert_eq!(
        compactor("memory_budget = \"1 MiB\"").memory_budget,
        COMPACTOR_MEMORY_BUDGET_MIN
    );
    assert_eq!(
        compactor("memory_budget = \"1 TiB\"").memory_budget,
        COMPACTOR_MEMORY_BUDGET_MAX
    );
    assert_eq!(
        compactor("interval = \"100ms\"").interval,
        COMPACTOR_INTERVAL_MIN
    );
    assert_eq!(
        compactor("interval = \"1d\"").interval,
        COMPACTOR_INTERVAL_MAX
    );
    assert_eq!(
        compactor("interval = \"24h\"").interval,
        Duration::from_secs(86_400)
    );
    // [compactor] may come after the topics.
    let config = parse(&after_data_dir(
        "[[topic]]\nname = \"a\"\ncleanup = \"compact\"\n[compactor]\ninterval = \"1s\"\n",
    ));
    assert_eq!(config.compactor.interval, Duration::from_secs(1));
    assert_eq!(config.topics[0].cleanup, CleanupPolicy::Compact);
}

#[test]
fn bad_compactor_values() {
    let cases = [
        (
            "rate = 0",
            "test.toml:3:8 (compactor.rate): ",
            "rate must be more than 0 bytes per second",
        ),
        (
            "memory_budget = \"1023 KiB\"",
            "test.toml:3:17 (compactor.memory_budget): ",
            "memory_budget must be between 1 MiB and 1 TiB, got 1023 KiB",
        ),
        (
            "memory_budget = \"2 TiB\"",
            "test.toml:3:17 (compactor.memory_budget): ",
            "memory_budget must be between 1 MiB and 1 TiB, got 2 TiB",
        ),
        (
            "memory_budget = 0",
            "test.toml:3:17 (compactor.memory_budget): ",
            "memory_budget must be between 1 MiB and 1 TiB, got 0 B",
        ),
        (
            "memory_budget = -1",
            "test.toml:3:17 (compactor.memory_budget): ",
            "memory_budget must not be negative",
        ),
        (
            "memory_budget = \"plenty\"",
            "test.toml:3:17 (compactor.memory_budget): ",
            "invalid size \"plenty\"",
        ),
        (
            "memory_budget = 1.5",
            "test.toml:3:17 (compactor.memory_budget): ",
            "a size: an integer number of bytes or a string like \"64 MiB\"",
        ),
        (
            "interval = \"99ms\"",
            "test.toml:3:12 (compactor.interval): ",
            "interval must be between 100ms and 1d, got 99ms",
        ),
        (
            "interval = \"0s\"",
            "test.toml:3:12 (compactor.interval): ",
            "interval must be between 100ms and 1d, got 0s",
        ),
        (
            "interval = \"25h\"",
            "test.toml:3:12 (compactor.interval): ",
            "interval must be between 100ms and 1d, got 1day 1h",
        ),
        (
            "interval = \"often\"",
            "test.toml:3:12 (compactor.interval): ",
            "invalid interval \"often\"",
        ),
        (
            "interval = 30",
            "test.toml:3:12 (compactor.interval): ",
            "invalid type: integer `30`",
        ),
    ];
    for (line, prefix, rule) in cases {
        assert_error(
            &after_data_dir(&format!("[compactor]\n{line}\n")),
            prefix,
            &[rule],
        );
    }
}

#[test]
fn unknown_keys_in_compactor() {
    assert_error(
        &after_data_dir("[compactor]\ninterval = \"1m\"\nmemory = \"1 GiB\"\n"),
        "test.toml:4:1 (compactor.memory): ",
        &["unknown key `memory`", "`memory_budget`", "`interval`"],
    );
    // The compactor's keys are not topic keys, and the topic keys not its.
    assert_error(
        &with_topic("name = \"a\"\nmemory_budget = \"1 GiB\"\n"),
        "test.toml:4:1 (topic[0].memory_budget): ",
        &["unknown key `memory_budget`"],
    );
    assert_error(
        &after_data_dir("[compactor]\nmin_dirty_ratio = 0.5\n"),
        "test.toml:3:1 (compactor.min_dirty_ratio): ",
        &["unknown key `min_dirty_ratio`"],
    );
    // Written at the top level, they are unknown there.
    assert_error(
        &after_data_dir("interval = \"1m\"\n"),
        "test.toml:2:1 (interval): ",
        &["unknown key `interval`"],
    );
}

#[test]
fn validate_checks_compactor_built_in_code() {
    let mut config = Config::new("data");
    config.compactor = CompactorConfig {
        memory_budget: COMPACTOR_MEMORY_BUDGET_MIN,
        interval: COMPACTOR_INTERVAL_MAX,
        bytes_per_second: Some(1),
    };
    assert_eq!(config.validate(), Ok(()));

    type Edit = fn(&mut CompactorConfig);
    let cases: [(Edit, &str); 4] = [
        (
            |c| c.memory_budget = COMPACTOR_MEMORY_BUDGET_MIN - 1,
            "<config> (compactor.memory_budget): memory_budget must be between 1 MiB and 1 TiB",
        ),
        (
            |c| c.memory_budget = COMPACTOR_MEMORY_BUDGET_MAX + 1,
            "<config> (compactor.memory_budget): ",
        ),
        (
            |c| c.interval = COMPACTOR_INTERVAL_MIN - Duration::from_nanos(1),
            "<config> (compactor.interval): interval must be between 100ms and 1d",
        ),
        (
            |c| c.interval = COMPACTOR_INTERVAL_MAX + Duration::from_nanos(1),
            "<config> (compactor.interval): ",
        ),
    ];
    for (edit, prefix) in cases {
        let mut broken = config.clone();
        edit(&mut broken.compactor);
        let shown = broken
            .validate()
            .expect_err("should be invalid")
            .to_string();
        assert!(
            shown.starts_with(prefix),
            "{shown:?} should start with {prefix:?}"
        );
    }
}

#[test]
fn kafka_table_parses_with_defaults_and_every_key() {
    let config = parse(&after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\n"));
    let kafka = config.kafka.expect("[kafka] is present");
    assert_eq!(kafka.listen, "127.0.0.1:0".parse().expect("address"));
    assert_eq!(kafka.advertised, None);
    assert_eq!(kafka.max_connections, 256);
    assert_eq!(kafka.request_max_bytes, 100 * 1024 * 1024);
    let config = parse(&after_data_dir(
        "[kafka]\nlisten = \"127.0.0.1:9092\"\nadvertised = \"broker.example:19092\"\n\
         max_connections = 3\nrequest_max_bytes = \"1 MiB\"\n",
    ));
    let kafka = config.kafka.expect("[kafka] is present");
    assert_eq!(kafka.advertised, Some(("broker.example".to_owned(), 19092)));
    assert_eq!(kafka.max_connections, 3);
    assert_eq!(kafka.request_max_bytes, 1024 * 1024);
    assert_eq!(parse(&after_data_dir("")).kafka, None, "off unless present");
}

#[test]
fn bad_kafka_values_name_the_key_and_line() {
    assert_error(
        &after_data_dir("[kafka]\n"),
        "test.toml:2:1 (kafka.listen): ",
        &["missing required key `listen` in [kafka]"],
    );
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"localhost:9092\"\n"),
        "test.toml:3:10 (kafka.listen): ",
        &[],
    );
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\nmax_connections = 0\n"),
        "test.toml:4:19 (kafka.max_connections): ",
        &["between 1 and 65536"],
    );
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\nrequest_max_bytes = 100\n"),
        "test.toml:4:21 (kafka.request_max_bytes): ",
        &["out of range"],
    );
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\nadvertised = \"no-port\"\n"),
        "test.toml:4:14 (kafka.advertised): ",
        &["host:port"],
    );
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\nport = 1\n"),
        "test.toml:4:1 (kafka.port): ",
        &["unknown"],
    );
}

#[test]
fn kafka_allow_topic_management_defaults_off_and_must_be_a_boolean() {
    let config = parse(&after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\n"));
    assert!(
        !config.kafka.expect("[kafka]").allow_topic_management,
        "off by default"
    );
    let config = parse(&after_data_dir(
        "[kafka]\nlisten = \"127.0.0.1:0\"\nallow_topic_management = true\n",
    ));
    assert!(config.kafka.expect("[kafka]").allow_topic_management);
    let config = parse(&after_data_dir(
        "[kafka]\nlisten = \"127.0.0.1:0\"\nallow_topic_management = false\n",
    ));
    assert!(!config.kafka.expect("[kafka]").allow_topic_management);
    assert_error(
        &after_data_dir("[kafka]\nlisten = \"127.0.0.1:0\"\nallow_topic_management = \"yes\"\n"),
        "test.toml:4:26 (kafka.allow_topic_management): ",
        &["invalid type: string \"yes\", expected a boolean"],
    );
}

// ---------------------------------------------------------------------------
// [node]: the cluster

/// A config with one topic of `replication_factor` (lines 2-4) and a
/// `[node]` table (line 5) made of `node_lines` (from line 6).
fn with_node(node_lines: &str, replication_factor: u32) -> String {
    format!(
        "data_dir = \"/var/lib/millrace\"\n[[topic]]\nname = \"a\"\nreplication_factor = {replication_factor}\n[node]\n{node_lines}"
    )
}

/// `id`, `listen` and `peers` (lines 6-8 under [`with_node`]).
const THREE_NODES: &str =
    "id = 1\nlisten = \"127.0.0.1:7001\"\npeers = [\"2@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]\n";

fn peer(id: u64, address: &str) -> PeerConfig {
    PeerConfig {
        id,
        address: address.parse().unwrap(),
    }
}

/// The node of [`THREE_NODES`] with every optional key at its default.
fn node_one_of_three() -> NodeConfig {
    NodeConfig {
        id: 1,
        listen: "127.0.0.1:7001".parse().unwrap(),
        peers: vec![peer(2, "127.0.0.1:7002"), peer(3, "127.0.0.1:7003")],
        cluster_id: "millrace".to_owned(),
        tick: Duration::from_millis(50),
        election_ticks: 10,
        heartbeat_ticks: 2,
        join: false,
    }
}

#[test]
fn a_three_node_cluster_parses_with_defaults() {
    let config = parse(&with_node(THREE_NODES, 3));
    let node = config.node.expect("[node]");
    assert_eq!(node, node_one_of_three());
    assert_eq!(node.cluster_id, CLUSTER_ID_DEFAULT);
    assert_eq!(node.tick, TICK_DEFAULT);
    assert_eq!(node.election_ticks, ELECTION_TICKS_DEFAULT);
    assert_eq!(node.heartbeat_ticks, HEARTBEAT_TICKS_DEFAULT);
    assert_eq!(node.members(), vec![1, 2, 3]);
    assert_eq!(config.topics[0].replication_factor, 3);
    assert_eq!(config.topics[0].acks, Acks::All);
    assert_eq!(Acks::default(), Acks::All);
    assert_eq!(parse(&with_topic("name = \"a\"\n")).node, None);
}

#[test]
fn members_are_every_node_id_sorted() {
    let node = parse(&with_node(
        "id = 5\nlisten = \"[::1]:7005\"\npeers = [\"9@[::1]:7009\", \"2@10.0.0.2:7002\"]\n",
        3,
    ))
    .node
    .expect("[node]");
    assert_eq!(node.listen, "[::1]:7005".parse().unwrap());
    assert_eq!(
        node.peers,
        vec![peer(9, "[::1]:7009"), peer(2, "10.0.0.2:7002")],
        "peers keep their file order"
    );
    assert_eq!(node.members(), vec![2, 5, 9]);
    // A cluster of one (no peers) is a cluster too.
    let alone = parse(&with_node(
        "id = 1\nlisten = \"127.0.0.1:7001\"\npeers = []\n",
        1,
    ));
    assert_eq!(alone.node.expect("[node]").members(), vec![1]);
}

#[test]
fn node_keys_and_acks_are_read() {
    let config = parse(&format!(
        "data_dir = \"d\"\n[[topic]]\nname = \"a\"\nreplication_factor = 2\nacks = \"leader\"\n[node]\n{THREE_NODES}cluster_id = \"prod-eu.1\"\ntick = \"20ms\"\nelection_ticks = 20\nheartbeat_ticks = 3\n"
    ));
    assert_eq!(
        config.node.expect("[node]"),
        NodeConfig {
            cluster_id: "prod-eu.1".to_owned(),
            tick: Duration::from_millis(20),
            election_ticks: 20,
            heartbeat_ticks: 3,
            ..node_one_of_three()
        }
    );
    assert_eq!(config.topics[0].acks, Acks::Leader);
    let all = parse(&with_topic("name = \"a\"\nacks = \"all\"\n"));
    assert_eq!(all.topics[0].acks, Acks::All);
    let joining = parse(&with_node(&format!("{THREE_NODES}join = true\n"), 3));
    assert!(joining.node.expect("[node]").join);
}

/// The values at the edge of each `[node]` rule are accepted, so the rules
/// are no stricter than they say.
#[test]
fn node_values_at_their_limits_parse() {
    let long_id = "x".repeat(CLUSTER_ID_BYTES_MAX);
    let seven_nodes = (2..=7)
        .map(|id| format!("\"{id}@127.0.0.1:700{id}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for lines in [
        format!("{THREE_NODES}cluster_id = \"{long_id}\"\n"),
        format!("{THREE_NODES}cluster_id = \"A.b_c-9\"\n"),
        format!("{THREE_NODES}tick = \"10s\"\n"),
        format!("{THREE_NODES}tick = \"1ms\"\n"),
        format!("{THREE_NODES}heartbeat_ticks = 1\nelection_ticks = 2\n"),
        format!("{THREE_NODES}election_ticks = {TICKS_MAX}\n"),
        format!("id = 1\nlisten = \"127.0.0.1:7001\"\npeers = [{seven_nodes}]\n"),
    ] {
        parse(&with_node(&lines, 1));
    }
    assert_eq!(TICK_MAX, Duration::from_secs(10));
    assert_eq!(CLUSTER_ID_BYTES_MAX, 64);
}

/// Each `[node]` rule: the error names the file, the line and column of
/// the offending value, the key path and the rule.
#[test]
fn each_node_rule_names_its_key_and_line() {
    let listen = "id = 1\nlisten = \"127.0.0.1:7001\"\n";
    let base = format!("{listen}peers = []\n");
    let eight_nodes = (2..=8)
        .map(|id| format!("\"{id}@127.0.0.1:700{id}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let too_long = "x".repeat(CLUSTER_ID_BYTES_MAX + 1);
    let cases: Vec<(String, &str, &[&str])> = vec![
        // id
        (
            "listen = \"127.0.0.1:7001\"\npeers = []\n".into(),
            ":5:1 (node.id)",
            &["missing required key `id` in [node]"],
        ),
        (
            "id = 0\nlisten = \"127.0.0.1:7001\"\npeers = []\n".into(),
            ":6:6 (node.id)",
            &["id = 0: node ids start at 1"],
        ),
        (
            "id = -1\nlisten = \"127.0.0.1:7001\"\npeers = []\n".into(),
            ":6:6 (node.id)",
            &["id = -1 is not a node id (1 or more)"],
        ),
        // listen
        (
            "id = 1\npeers = []\n".into(),
            ":5:1 (node.listen)",
            &["missing required key `listen` in [node]"],
        ),
        (
            "id = 1\nlisten = \"localhost:7001\"\npeers = []\n".into(),
            ":7:10 (node.listen)",
            &[
                "invalid listen \"localhost:7001\"",
                "expected an IP address and port",
                "not a host name",
            ],
        ),
        (
            "id = 1\nlisten = \"127.0.0.1\"\npeers = []\n".into(),
            ":7:10 (node.listen)",
            &["invalid listen \"127.0.0.1\""],
        ),
        // peers: the form of each entry
        (
            listen.into(),
            ":5:1 (node.peers)",
            &["missing required key `peers` in [node]"],
        ),
        (
            format!("{listen}peers = [\"2-127.0.0.1:7002\"]\n"),
            ":8:10 (node.peers)",
            &[
                "invalid peer \"2-127.0.0.1:7002\"",
                "no '@'",
                "expected \"ID@IP:PORT\" like \"2@127.0.0.1:7002\"",
            ],
        ),
        (
            format!("{listen}peers = [\"2@127.0.0.1:7002\", \"x@127.0.0.1:7003\"]\n"),
            ":8:30 (node.peers)",
            &["\"x\" is not a node id", "expected \"ID@IP:PORT\""],
        ),
        (
            format!("{listen}peers = [\"2@localhost:7002\"]\n"),
            ":8:10 (node.peers)",
            &[
                "\"localhost:7002\" is not an IP address and port",
                "expected \"ID@IP:PORT\"",
            ],
        ),
        (
            format!("{listen}peers = \"2@127.0.0.1:7002\"\n"),
            ":8:9 (node.peers)",
            &["invalid type: string", "expected a sequence"],
        ),
        // peers: ids and addresses of their own
        (
            format!("{listen}peers = [\"0@127.0.0.1:7002\"]\n"),
            ":8:10 (node.peers)",
            &["peers[0] \"0@127.0.0.1:7002\" has id 0: node ids start at 1"],
        ),
        (
            format!("{listen}peers = [\"2@127.0.0.1:7002\", \"1@127.0.0.1:7003\"]\n"),
            ":8:30 (node.peers)",
            &["peers[1] \"1@127.0.0.1:7003\" has this node's own id 1"],
        ),
        (
            format!("{listen}peers = [\"2@127.0.0.1:7001\"]\n"),
            ":8:10 (node.peers)",
            &["peers[0] \"2@127.0.0.1:7001\" has this node's own listen address 127.0.0.1:7001"],
        ),
        (
            format!("{listen}peers = [\"2@127.0.0.1:7002\", \"2@127.0.0.1:7003\"]\n"),
            ":8:30 (node.peers)",
            &["peers[1] \"2@127.0.0.1:7003\" has the same id as peers[0]"],
        ),
        (
            format!("{listen}peers = [\"2@127.0.0.1:7002\", \"3@127.0.0.1:7002\"]\n"),
            ":8:30 (node.peers)",
            &["peers[1] \"3@127.0.0.1:7002\" has the same address as peers[0]"],
        ),
        (
            format!("{listen}peers = [{eight_nodes}]\n"),
            ":8:9 (node.peers)",
            &["a cluster of 8 nodes (this one and 7 peers) is over the limit of 7 nodes"],
        ),
        // cluster_id
        (
            format!("{base}cluster_id = \"\"\n"),
            ":9:14 (node.cluster_id)",
            &[
                "invalid cluster_id \"\": it is empty",
                "1 to 64 characters of [A-Za-z0-9._-]",
            ],
        ),
        (
            format!("{base}cluster_id = \"a b\"\n"),
            ":9:14 (node.cluster_id)",
            &["' ' is not allowed", "1 to 64 characters of [A-Za-z0-9._-]"],
        ),
        (
            format!("{base}cluster_id = \"{too_long}\"\n"),
            ":9:14 (node.cluster_id)",
            &[
                "it has 65 characters",
                "1 to 64 characters of [A-Za-z0-9._-]",
            ],
        ),
        // tick
        (
            format!("{base}tick = \"0s\"\n"),
            ":9:8 (node.tick)",
            &["tick = 0s is out of range: more than 0 and at most 10s"],
        ),
        (
            format!("{base}tick = \"11s\"\n"),
            ":9:8 (node.tick)",
            &["tick = 11s is out of range"],
        ),
        (
            format!("{base}tick = \"soon\"\n"),
            ":9:8 (node.tick)",
            &["invalid tick \"soon\"", "expected a duration"],
        ),
        // heartbeat_ticks and election_ticks
        (
            format!("{base}heartbeat_ticks = 0\n"),
            ":9:19 (node.heartbeat_ticks)",
            &["heartbeat_ticks = 0 is out of range: at least 1"],
        ),
        (
            format!("{base}heartbeat_ticks = -1\n"),
            ":9:19 (node.heartbeat_ticks)",
            &["heartbeat_ticks = -1 is out of range"],
        ),
        (
            format!("{base}heartbeat_ticks = {}\n", TICKS_MAX + 1),
            ":9:19 (node.heartbeat_ticks)",
            &["heartbeat_ticks = 1000001 is out of range: at least 1 and at most 1000000"],
        ),
        (
            format!("{base}election_ticks = 2\n"),
            ":9:18 (node.election_ticks)",
            &["election_ticks = 2 must be more than heartbeat_ticks = 2"],
        ),
        (
            format!("{base}heartbeat_ticks = 5\nelection_ticks = 4\n"),
            ":10:18 (node.election_ticks)",
            &["election_ticks = 4 must be more than heartbeat_ticks = 5"],
        ),
        (
            format!("{base}election_ticks = {}\n", TICKS_MAX + 1),
            ":9:18 (node.election_ticks)",
            &["at most 1000000"],
        ),
        // unknown keys
        (
            format!("{base}votes = 3\n"),
            ":9:1 (node.votes)",
            &["unknown key `votes`"],
        ),
    ];
    for (lines, location, rule) in cases {
        assert_error(
            &with_node(&lines, 1),
            &format!("{ORIGIN}{location}: "),
            rule,
        );
    }
}

/// A host that builds a `[node]` in code gets the same rules from
/// `Config::validate`, at the key path.
#[test]
fn validate_checks_nodes_built_in_code() {
    let mut config = Config::new("data");
    let mut topic = TopicConfig::with_defaults("events");
    topic.replication_factor = 3;
    config.topics.push(topic);
    config.node = Some(node_one_of_three());
    assert_eq!(config.validate(), Ok(()));

    type Edit = fn(&mut Config);
    let cases: [(Edit, &str); 8] = [
        (
            |c| c.node.as_mut().unwrap().id = 0,
            "<config> (node.id): id = 0: node ids start at 1",
        ),
        (
            |c| c.node.as_mut().unwrap().peers[1].id = 1,
            "<config> (node.peers): peers[1] \"1@127.0.0.1:7003\" has this node's own id 1",
        ),
        (
            |c| c.node.as_mut().unwrap().cluster_id = String::new(),
            "<config> (node.cluster_id): invalid cluster_id \"\"",
        ),
        (
            |c| c.node.as_mut().unwrap().tick = Duration::ZERO,
            "<config> (node.tick): tick = 0s is out of range",
        ),
        (
            |c| c.node.as_mut().unwrap().heartbeat_ticks = 0,
            "<config> (node.heartbeat_ticks): ",
        ),
        (
            |c| c.node.as_mut().unwrap().election_ticks = 2,
            "<config> (node.election_ticks): election_ticks = 2 must be more than heartbeat_ticks = 2",
        ),
        (
            |c| c.topics[0].replication_factor = 4,
            "<config> (topic[0].replication_factor): replication_factor = 4 is more than the cluster's 3 nodes",
        ),
        (
            |c| c.node = None,
            "<config> (topic[0].replication_factor): replication_factor = 3 needs a [node] section with at least 2 peers",
        ),
    ];
    for (edit, prefix) in cases {
        let mut broken = config.clone();
        edit(&mut broken);
        let shown = broken.validate().expect_err(prefix).to_string();
        assert!(
            shown.starts_with(prefix),
            "{shown:?} should start with {prefix:?}"
        );
    }
}

#[test]
fn replication_factor_fits_the_cluster() {
    parse(&with_node(THREE_NODES, 3));
    parse(&with_node(THREE_NODES, 2));
    parse(&with_node(THREE_NODES, 1));
    assert_error(
        &with_node(THREE_NODES, 4),
        "test.toml:4:22 (topic[0].replication_factor): ",
        &["replication_factor = 4 is more than the cluster's 3 nodes"],
    );
    assert_error(
        &with_topic("name = \"a\"\nreplication_factor = 2\n"),
        "test.toml:4:22 (topic[0].replication_factor): ",
        &["replication_factor = 2 needs a [node] section with at least 1 peer (one copy per node"],
    );
    // Without [node], 1 is still the default and the only value.
    parse(&with_topic("name = \"a\"\nreplication_factor = 1\n"));
    assert_error(
        &with_node(THREE_NODES, 8),
        "test.toml:4:22 (topic[0].replication_factor): ",
        &["between 1 and 7"],
    );
}

#[test]
fn acks_is_all_or_leader() {
    for bad in ["some", "ALL", "1", ""] {
        assert_error(
            &with_topic(&format!("name = \"a\"\nacks = \"{bad}\"\n")),
            "test.toml:4:8 (topic[0].acks): ",
            &[
                &format!("invalid acks {bad:?}"),
                "expected \"all\" (a majority) or \"leader\"",
            ],
        );
    }
    assert_error(
        &with_topic("name = \"a\"\nacks = 1\n"),
        "test.toml:4:8 (topic[0].acks): ",
        &["invalid type: integer"],
    );
}

/// `[node] listen` may not take the port of `[kafka]` or `[http]`: the
/// same address, or the same port where either listens on every interface.
#[test]
fn the_node_listen_address_is_its_own() {
    let cluster = with_node(THREE_NODES, 3);
    for (section, address) in [
        ("kafka", "127.0.0.1:7001"),
        ("http", "127.0.0.1:7001"),
        ("kafka", "0.0.0.0:7001"),
        ("http", "[::]:7001"),
    ] {
        assert_error(
            &format!("{cluster}[{section}]\nlisten = \"{address}\"\n"),
            "test.toml:7:10 (node.listen): ",
            &[&format!(
                "listen 127.0.0.1:7001 clashes with {section}.listen = {address}: peer traffic needs its own port"
            )],
        );
    }
    let on_every_interface =
        cluster.replace("listen = \"127.0.0.1:7001\"", "listen = \"0.0.0.0:7001\"");
    assert_error(
        &format!("{on_every_interface}[http]\nlisten = \"127.0.0.1:7001\"\n"),
        "test.toml:7:10 (node.listen): ",
        &["clashes with http.listen = 127.0.0.1:7001"],
    );
    // Other ports, other IPs, and port 0 (a free port each) are fine.
    parse(&format!(
        "{cluster}[kafka]\nlisten = \"127.0.0.1:9092\"\n[http]\nlisten = \"127.0.0.2:7001\"\n"
    ));
    parse(
        &with_node("id = 1\nlisten = \"127.0.0.1:0\"\npeers = []\n", 1)
            .replace("[node]", "[kafka]\nlisten = \"127.0.0.1:0\"\n[node]"),
    );
}

#[test]
fn the_example_cluster_configs_parse() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let config = Config::from_file(&directory.join(format!("node{id}.toml")))
            .unwrap_or_else(|error| panic!("node{id}.toml: {error}"));
        assert_eq!(config.data_dir, PathBuf::from(format!("./data/node{id}")));
        let node = config.node.clone().expect("[node]");
        assert_eq!(node.id, id);
        assert_eq!(node.members(), vec![1, 2, 3]);
        assert_eq!(node.listen.port(), 7100 + id as u16);
        let kafka = config.kafka.as_ref().expect("[kafka]");
        assert_eq!(kafka.listen.port(), 9100 + id as u16);
        let events = config.topic("events").expect("topic events");
        assert_eq!(
            (events.partitions, events.replication_factor, events.acks),
            (3, 3, Acks::All)
        );
        assert_eq!(config.topics.len(), 1);
        listeners.push((node.id, node.listen, node.cluster_id));
        listeners.extend(
            node.peers
                .iter()
                .map(|peer| (peer.id, peer.address, String::new())),
        );
    }
    // Each node's peers are the other two nodes' listen addresses.
    for (id, address, cluster_id) in listeners.iter().filter(|l| !l.2.is_empty()) {
        assert_eq!(cluster_id, "example");
        let named = listeners
            .iter()
            .filter(|(other, other_address, _)| other == id && other_address == address)
            .count();
        assert_eq!(
            named, 3,
            "node {id} at {address}: itself and two peers' view of it"
        );
    }
}

/// The example's commented-out `[node]` table and `acks`, uncommented,
/// parse to what the comments claim (so the reference cannot drift).
#[test]
fn the_example_file_commented_node_keys_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml");
    let text = std::fs::read_to_string(&path).expect("read the example");
    let mut uncommented = String::new();
    let mut in_node = false;
    let mut found = Vec::new();
    for line in text.lines() {
        in_node = line == "# [node]" || (in_node && !line.is_empty());
        // A commented key: "# name = value".
        let key = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split_once(" = "))
            .map(|(key, _)| key)
            .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        let wanted = match key {
            Some("acks") => true,
            Some(_) => in_node,
            None => line == "# [node]",
        };
        if wanted {
            uncommented.push_str(&line[2..]);
            found.push(key.unwrap_or("[node]").to_owned());
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    assert_eq!(
        found,
        [
            "acks",
            "[node]",
            "id",
            "listen",
            "peers",
            "cluster_id",
            "tick",
            "election_ticks",
            "heartbeat_ticks",
            "join"
        ],
        "each key appears once, commented, [node]'s in one block"
    );
    let config = Config::from_toml_str(&uncommented, "quickstart (uncommented)")
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.node, Some(node_one_of_three()));
    assert_eq!(
        config.topic("events").expect("topic events").acks,
        Acks::All
    );
}

#[test]
fn replicated_topics_keep_every_entry_until_snapshots_exist() {
    for (line, what) in [
        ("retention = \"7d\"\n", "with retention:"),
        ("retention_bytes = \"1 GiB\"\n", "with retention_bytes:"),
        ("cleanup = \"compact\"\n", "with cleanup = \"compact\":"),
    ] {
        let text = format!(
            "data_dir = \"d\"\n[[topic]]\nname = \"a\"\n{line}replication_factor = 3\n[node]\n{THREE_NODES}"
        );
        assert_error(
            &text,
            "test.toml:5:22 (topic[0].replication_factor): ",
            &[what, "snapshots"],
        );
        // The same topic unreplicated is fine.
        parse(&text.replace("replication_factor = 3", "replication_factor = 1"));
    }
}
