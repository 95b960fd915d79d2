//! `[[pipeline]]` sections through the public API: what parses, to what,
//! and what each broken rule's error says (origin, line:column, the key
//! path `pipeline[NAME].STAGE.KEY`, and the rule).

use std::path::PathBuf;
use std::time::Duration;

use millrace::config::*;
use millrace::pipeline::config::*;
use millrace::pipeline::json::FieldPath;
use serde_json::json;

const ORIGIN: &str = "pipelines.toml";

fn parse(text: &str) -> Config {
    match Config::from_toml_str(text, ORIGIN) {
        Ok(config) => config,
        Err(error) => panic!("expected {text:?} to parse, got: {error}"),
    }
}

/// Parses `text`, expecting an error whose one-line message starts with
/// `prefix` (origin, location and key path) and contains every piece of `rule`.
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

fn path(text: &str) -> FieldPath {
    FieldPath::parse(text).expect("field path")
}

/// Topics `spans`, `errors`, `late`, `p.dlq`, `other.dlq` (lines 1-4), then a pipeline `p` reading
/// `spans` (lines 5-7), then `lines`, which start on line 8.
fn pipeline_with(lines: &str) -> String {
    format!(
        "data_dir = \"d\"\n\
         topic = [{{ name = \"spans\" }}, {{ name = \"errors\" }}, {{ name = \"late\" }}, \
                  {{ name = \"p.dlq\" }}, {{ name = \"other.dlq\" }}]\n\
         \n\
         \n\
         [[pipeline]]\n\
         name = \"p\"\n\
         source = {{ topic = \"spans\" }}\n\
         {lines}"
    )
}

/// [`pipeline_with`] with a stdout sink and one operator made of
/// `operator_lines`, which start on line 10.
fn operator(operator_lines: &str) -> String {
    pipeline_with(&format!(
        "sink = {{ type = \"stdout\" }}\n[[pipeline.operator]]\n{operator_lines}"
    ))
}

/// [`pipeline_with`] with a sink made of `sink_lines`, which start on line 9.
fn sink(sink_lines: &str) -> String {
    pipeline_with(&format!("[pipeline.sink]\n{sink_lines}"))
}

const FULL: &str = r#"
data_dir = "/srv/millrace"

[[topic]]
name = "spans"
partitions = 4

[[topic]]
name = "errors"

[[topic]]
name = "late_spans"

[[topic]]
name = "trace_ingest.dlq"

[[pipeline]]
name = "trace_ingest"
members = 2
commit_interval = "0s"
retries = 5
retry_backoff = "250ms"
fetch_max_bytes = "1 MiB"
in_flight_batches = 8

[pipeline.source]
topic = "spans"
group = "ingest.v2"
auto_offset_reset = "latest"

[[pipeline.operator]]
type = "filter"
field = "span.status"
greater_than = 499

[[pipeline.operator]]
type = "filter"
field = "span.kind"
one_of = ["server", 2, 2.5, true, { a = 1 }]

[[pipeline.operator]]
type = "filter"
field = "env"
not_equals = "test"

[[pipeline.operator]]
type = "filter"
field = "debug"
exists = false

[[pipeline.operator]]
type = "filter"
field = "ratio"
less_than = 0.5

[[pipeline.operator]]
type = "filter"
field = "n"
equals = 5

[[pipeline.operator]]
type = "map"
project = ["span", "trace_id", "attrs.http"]
drop = ["span.secret"]
rename = { "span.name" = "name", "attrs.http" = "http" }
set = { "source" = "ingest", "version" = 2, "tags" = ["a"], "at" = 1979-05-27T07:32:00Z }

[[pipeline.operator]]
type = "extract"
field = "payload"

[[pipeline.operator]]
type = "flat_map"
field = "spans"

[[pipeline.operator]]
type = "key_by"
field = "trace_id"

[[pipeline.operator]]
type = "event_time"
field = "start_time"

[[pipeline.operator]]
type = "window"
kind = "tumbling"
size = "1m"

[[pipeline.operator]]
type = "window"
kind = "hopping"
size = "5m"
hop = "1m"
allowed_lateness = "30s"
aggregate = "percentiles"
field = "duration_ms"
percentiles = [50, 99.9]
time_field = "start_time"
late = "side_output"
side_output = "late_spans"

[[pipeline.operator]]
type = "window"
kind = "session"
gap = "30m"
aggregate = "sum"
field = "bytes"
late = "dlq"

[[pipeline.operator]]
type = "aggregate"
aggregate = "count"

[[pipeline.operator]]
type = "aggregate"
aggregate = "mean"
field = "duration_ms"

[[pipeline.operator]]
type = "reduce"
function = "max"
field = "duration_ms"

[[pipeline.operator]]
type = "reduce"
function = "merge"

[[pipeline.operator]]
type = "custom"
name = "enrich"
params = { url = "http://localhost", retries = 2, nested = { on = true } }

[[pipeline.operator]]
type = "custom"
name = "noop"

[pipeline.sink]
type = "sled"
path = "/srv/traces"

[[pipeline.sink.table]]
name = "spans"
key = ["trace_id", "span_id"]
fields = ["name", "duration_ms"]

[[pipeline.sink.table]]
name = "logs"
each = "logs"

[[pipeline]]
name = "errors_out"
source.topic = "spans"
sink.type = "topic"
sink.topic = "errors"

[[pipeline]]
name = "to_file"
source = { topic = "spans" }
sink = { type = "jsonl", path = "out/spans.jsonl" }

[[pipeline]]
name = "dlq-reader"
source = { topic = "trace_ingest.dlq" }
sink = { type = "custom", name = "webhook", params = { url = "http://x" } }

[[pipeline]]
name = "print"
source = { topic = "spans" }
sink = { type = "stdout" }
"#;

#[test]
fn a_full_config_parses_to_the_expected_values() {
    let config = parse(FULL);
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.pipelines.len(), 5);

    let ingest = &config.pipelines[0];
    assert_eq!(ingest.name, "trace_ingest");
    assert_eq!(ingest.dlq_topic(), "trace_ingest.dlq");
    assert_eq!(ingest.members, 2);
    assert_eq!(ingest.commit_interval, Duration::ZERO);
    assert_eq!(ingest.retries, 5);
    assert_eq!(ingest.retry_backoff, Duration::from_millis(250));
    assert_eq!(ingest.fetch_max_bytes, 1 << 20);
    assert_eq!(ingest.in_flight_batches, 8);
    assert_eq!(
        ingest.source,
        SourceConfig {
            topic: "spans".to_owned(),
            group: "ingest.v2".to_owned(),
            auto_offset_reset: OffsetReset::Latest,
        }
    );

    let expected_operators = vec![
        OperatorConfig::Filter(Predicate {
            field: path("span.status"),
            test: Test::GreaterThan(499.0),
        }),
        OperatorConfig::Filter(Predicate {
            field: path("span.kind"),
            test: Test::OneOf(vec![
                json!("server"),
                json!(2),
                json!(2.5),
                json!(true),
                json!({"a": 1}),
            ]),
        }),
        OperatorConfig::Filter(Predicate {
            field: path("env"),
            test: Test::NotEquals(json!("test")),
        }),
        OperatorConfig::Filter(Predicate {
            field: path("debug"),
            test: Test::Exists(false),
        }),
        OperatorConfig::Filter(Predicate {
            field: path("ratio"),
            test: Test::LessThan(0.5),
        }),
        OperatorConfig::Filter(Predicate {
            field: path("n"),
            test: Test::Equals(json!(5)),
        }),
        OperatorConfig::Map(MapConfig {
            project: Some(vec![path("span"), path("trace_id"), path("attrs.http")]),
            drop: vec![path("span.secret")],
            // File order, not sorted.
            rename: vec![
                (path("span.name"), path("name")),
                (path("attrs.http"), path("http")),
            ],
            set: vec![
                (path("source"), json!("ingest")),
                (path("version"), json!(2)),
                (path("tags"), json!(["a"])),
                (path("at"), json!("1979-05-27T07:32:00Z")),
            ],
        }),
        OperatorConfig::Extract {
            field: path("payload"),
        },
        OperatorConfig::FlatMap {
            field: path("spans"),
        },
        OperatorConfig::KeyBy {
            field: path("trace_id"),
        },
        OperatorConfig::EventTime {
            field: path("start_time"),
        },
        OperatorConfig::Window(WindowConfig {
            kind: WindowKind::Tumbling {
                size: Duration::from_secs(60),
            },
            allowed_lateness: Duration::ZERO,
            function: AggregateFunction::Count,
            field: None,
            time_field: None,
            late: LatePolicy::DeadLetter,
        }),
        OperatorConfig::Window(WindowConfig {
            kind: WindowKind::Hopping {
                size: Duration::from_secs(300),
                hop: Duration::from_secs(60),
            },
            allowed_lateness: Duration::from_secs(30),
            function: AggregateFunction::Percentiles(vec![50.0, 99.9]),
            field: Some(path("duration_ms")),
            time_field: Some(path("start_time")),
            late: LatePolicy::SideOutput("late_spans".to_owned()),
        }),
        OperatorConfig::Window(WindowConfig {
            kind: WindowKind::Session {
                gap: Duration::from_secs(30 * 60),
            },
            allowed_lateness: Duration::ZERO,
            function: AggregateFunction::Sum,
            field: Some(path("bytes")),
            time_field: None,
            late: LatePolicy::DeadLetter,
        }),
        OperatorConfig::Aggregate(AggregateConfig {
            function: AggregateFunction::Count,
            field: None,
        }),
        OperatorConfig::Aggregate(AggregateConfig {
            function: AggregateFunction::Mean,
            field: Some(path("duration_ms")),
        }),
        OperatorConfig::Reduce(ReduceConfig {
            function: ReduceFunction::Max,
            field: Some(path("duration_ms")),
        }),
        OperatorConfig::Reduce(ReduceConfig {
            function: ReduceFunction::Merge,
            field: None,
        }),
        OperatorConfig::Custom {
            name: "enrich".to_owned(),
            params: json!({"url": "http://localhost", "retries": 2, "nested": {"on": true}}),
        },
        OperatorConfig::Custom {
            name: "noop".to_owned(),
            params: json!({}),
        },
    ];
    assert_eq!(ingest.operators.len(), expected_operators.len());
    for (index, (got, expected)) in ingest.operators.iter().zip(&expected_operators).enumerate() {
        assert_eq!(got, expected, "operator[{index}]");
    }
    assert_eq!(
        ingest.sink,
        SinkConfig::Sled(SledSinkConfig {
            path: PathBuf::from("/srv/traces"),
            tables: vec![
                TableConfig {
                    name: "spans".to_owned(),
                    key: vec![path("trace_id"), path("span_id")],
                    each: None,
                    fields: Some(vec![path("name"), path("duration_ms")]),
                },
                TableConfig {
                    name: "logs".to_owned(),
                    key: Vec::new(),
                    each: Some(path("logs")),
                    fields: None,
                },
            ],
        })
    );

    // Dotted keys make tables too; every optional key at its default.
    let errors_out = &config.pipelines[1];
    let mut expected = PipelineConfig::new(
        "errors_out",
        "spans",
        SinkConfig::Topic {
            topic: "errors".to_owned(),
        },
    );
    assert_eq!(errors_out, &expected);
    assert_eq!(errors_out.source.group, "errors_out");
    assert_eq!(errors_out.source.auto_offset_reset, OffsetReset::Earliest);
    assert_eq!(errors_out.members, MEMBERS_DEFAULT);
    assert_eq!(errors_out.commit_interval, COMMIT_INTERVAL_DEFAULT);
    assert_eq!(errors_out.retries, RETRIES_DEFAULT);
    assert_eq!(errors_out.retry_backoff, RETRY_BACKOFF_DEFAULT);
    assert_eq!(errors_out.fetch_max_bytes, FETCH_MAX_BYTES_DEFAULT);
    assert_eq!(errors_out.in_flight_batches, IN_FLIGHT_BATCHES_DEFAULT);

    expected = PipelineConfig::new(
        "to_file",
        "spans",
        SinkConfig::JsonLines {
            path: PathBuf::from("out/spans.jsonl"),
        },
    );
    assert_eq!(config.pipelines[2], expected);
    // Another pipeline's dead-letter topic is a valid source.
    expected = PipelineConfig::new(
        "dlq-reader",
        "trace_ingest.dlq",
        SinkConfig::Custom {
            name: "webhook".to_owned(),
            params: json!({"url": "http://x"}),
        },
    );
    assert_eq!(config.pipelines[3], expected);
    assert_eq!(config.pipelines[4].sink, SinkConfig::Stdout);
}

#[test]
fn no_pipelines_by_default() {
    let config = parse("data_dir = \"d\"\n");
    assert!(config.pipelines.is_empty());
    assert!(Config::new("d").pipelines.is_empty());
}

#[test]
fn another_pipelines_dead_letter_topic_may_be_read_undeclared() {
    let config = parse(
        "data_dir = \"d\"\n[[topic]]\nname = \"spans\"\n\
         [[pipeline]]\nname = \"other\"\nsource.topic = \"spans\"\nsink.type = \"stdout\"\n\
         [[pipeline]]\nname = \"retry\"\nsource.topic = \"other.dlq\"\nsink.type = \"stdout\"\n",
    );
    assert_eq!(config.pipelines[1].source.topic, "other.dlq");
}

// ---------------------------------------------------------------------------
// One test per rule.

#[test]
fn unknown_key_in_pipeline() {
    assert_error(
        &pipeline_with("sink = { type = \"stdout\" }\nmember = 2\n"),
        "pipelines.toml:9:1 (pipeline[p].member): ",
        &["unknown key `member`"],
    );
}

#[test]
fn unknown_key_in_operator() {
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\nexists = true\nbogus = 1\n"),
        "pipelines.toml:13:1 (pipeline[p].operator[0].bogus): ",
        &["unknown key `bogus`"],
    );
}

#[test]
fn unknown_key_in_an_inline_operator() {
    assert_error(
        "data_dir = \"d\"\npipeline = [{ name = \"q\", source = { topic = \"t\" }, \
         sink = { type = \"stdout\" }, operator = [{ type = \"key_by\", field = \"a\", x = 1 }] }]\n\
         [[topic]]\nname = \"t\"\n",
        "pipelines.toml:2:125 (pipeline[q].operator[0].x): ",
        &["unknown key `x`"],
    );
}

#[test]
fn unknown_key_in_sink_table() {
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"t\"\nkeys = [\"a\"]\n"),
        "pipelines.toml:13:1 (pipeline[p].sink.table[0].keys): ",
        &["unknown key `keys`"],
    );
}

#[test]
fn wrong_value_type_names_the_key() {
    assert_error(
        &pipeline_with("members = \"two\"\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:11 (pipeline[p].members): ",
        &["invalid type: string \"two\""],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = 60\n"),
        "pipelines.toml:12:8 (pipeline[p].operator[0].size): ",
        &["invalid type: integer `60`"],
    );
}

#[test]
fn missing_name() {
    assert_error(
        "data_dir = \"d\"\n[[topic]]\nname = \"t\"\n[[pipeline]]\nsource.topic = \"t\"\nsink.type = \"stdout\"\n",
        "pipelines.toml:4:1 (pipeline[0].name): ",
        &["missing required key `name` in [[pipeline]]"],
    );
}

#[test]
fn bad_pipeline_names() {
    for (name, problem) in [
        ("a.b", "'.' is not allowed"),
        ("a b", "' ' is not allowed"),
        ("", "it is empty"),
        (&"x".repeat(201), "it has 201 characters"),
    ] {
        let text = pipeline_with("sink = { type = \"stdout\" }\n")
            .replace("name = \"p\"", &format!("name = \"{name}\""));
        // The name is not a valid one, so the key path uses the index.
        assert_error(
            &text,
            "pipelines.toml:6:8 (pipeline[0].name): ",
            &[
                "invalid pipeline name",
                problem,
                "1 to 200 characters of [A-Za-z0-9_-]",
            ],
        );
    }
    let text = pipeline_with("sink = { type = \"stdout\" }\n")
        .replace("name = \"p\"", &format!("name = \"{}\"", "x".repeat(200)));
    assert_eq!(parse(&text).pipelines[0].name.len(), 200);
}

#[test]
fn duplicate_pipeline_names() {
    let text = format!(
        "{}[[pipeline]]\nname = \"P\"\nsource.topic = \"spans\"\nsink.type = \"stdout\"\n",
        pipeline_with("sink = { type = \"stdout\" }\n")
    );
    assert_error(
        &text,
        "pipelines.toml:10:8 (pipeline[P].name): ",
        &[
            "duplicate pipeline name \"P\": pipeline[0] is already named \"p\"",
            "ignoring letter case",
        ],
    );
}

#[test]
fn members_out_of_range() {
    for members in ["0", "257", "-1", "4294967296"] {
        assert_error(
            &pipeline_with(&format!(
                "members = {members}\nsink = {{ type = \"stdout\" }}\n"
            )),
            "pipelines.toml:8:11 (pipeline[p].members): ",
            &["members must be between 1 and 256", members],
        );
    }
}

#[test]
fn commit_interval_bounds() {
    assert_error(
        &pipeline_with("commit_interval = \"2h\"\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:19 (pipeline[p].commit_interval): ",
        &["commit_interval must be at most 1h, got 2h"],
    );
    assert_error(
        &pipeline_with("commit_interval = \"soon\"\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:19 (pipeline[p].commit_interval): ",
        &["invalid commit_interval \"soon\""],
    );
    let config = parse(&pipeline_with(
        "commit_interval = \"1h\"\nsink = { type = \"stdout\" }\n",
    ));
    assert_eq!(
        config.pipelines[0].commit_interval,
        Duration::from_secs(3600)
    );
}

#[test]
fn retries_out_of_range() {
    assert_error(
        &pipeline_with("retries = 101\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:11 (pipeline[p].retries): ",
        &["retries must be between 0 and 100, got 101"],
    );
    let config = parse(&pipeline_with(
        "retries = 0\nsink = { type = \"stdout\" }\n",
    ));
    assert_eq!(config.pipelines[0].retries, 0);
}

#[test]
fn retry_backoff_bounds() {
    for backoff in ["0s", "61m"] {
        assert_error(
            &pipeline_with(&format!(
                "retry_backoff = \"{backoff}\"\nsink = {{ type = \"stdout\" }}\n"
            )),
            "pipelines.toml:8:17 (pipeline[p].retry_backoff): ",
            &["retry_backoff must be more than 0s and at most 1h"],
        );
    }
}

#[test]
fn fetch_max_bytes_bounds() {
    for size in ["\"1023 B\"", "\"65 MiB\"", "0"] {
        assert_error(
            &pipeline_with(&format!(
                "fetch_max_bytes = {size}\nsink = {{ type = \"stdout\" }}\n"
            )),
            "pipelines.toml:8:19 (pipeline[p].fetch_max_bytes): ",
            &["fetch_max_bytes must be between 1 KiB and 64 MiB"],
        );
    }
    assert_error(
        &pipeline_with("fetch_max_bytes = \"lots\"\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:19 (pipeline[p].fetch_max_bytes): ",
        &["invalid size \"lots\""],
    );
}

#[test]
fn in_flight_batches_out_of_range() {
    assert_error(
        &pipeline_with("in_flight_batches = 65\nsink = { type = \"stdout\" }\n"),
        "pipelines.toml:8:21 (pipeline[p].in_flight_batches): ",
        &["in_flight_batches must be between 1 and 64, got 65"],
    );
}

#[test]
fn missing_source_and_sink() {
    assert_error(
        "data_dir = \"d\"\n[[pipeline]]\nname = \"p\"\nsink.type = \"stdout\"\n",
        "pipelines.toml:2:1 (pipeline[p].source): ",
        &["missing required table [pipeline.source]"],
    );
    assert_error(
        "data_dir = \"d\"\n[[pipeline]]\nname = \"p\"\n[pipeline.source]\ngroup = \"g\"\n",
        "pipelines.toml:4:1 (pipeline[p].source.topic): ",
        &["missing required key `topic` in [pipeline.source]"],
    );
    assert_error(
        &pipeline_with(""),
        "pipelines.toml:5:1 (pipeline[p].sink): ",
        &["missing required table [pipeline.sink]"],
    );
}

#[test]
fn source_topic_must_be_declared() {
    let text = pipeline_with("sink = { type = \"stdout\" }\n").replace(
        "source = { topic = \"spans\" }",
        "source = { topic = \"nope\" }",
    );
    assert_error(
        &text,
        "pipelines.toml:7:20 (pipeline[p].source.topic): ",
        &["source topic \"nope\" is not a [[topic]] of this config"],
    );
}

#[test]
fn source_must_not_be_its_own_dead_letter_queue() {
    let text = pipeline_with("sink = { type = \"stdout\" }\n").replace(
        "source = { topic = \"spans\" }",
        "source = { topic = \"p.dlq\" }",
    );
    assert_error(
        &text,
        "pipelines.toml:7:20 (pipeline[p].source.topic): ",
        &["\"p.dlq\" is this pipeline's own dead-letter queue"],
    );
}

#[test]
fn bad_group() {
    for (group, problem) in [("", "it is empty"), ("a/b", "'/' is not allowed")] {
        let text = pipeline_with("sink = { type = \"stdout\" }\n").replace(
            "source = { topic = \"spans\" }",
            &format!("source = {{ topic = \"spans\", group = \"{group}\" }}"),
        );
        assert_error(
            &text,
            "pipelines.toml:7:37 (pipeline[p].source.group): ",
            &["invalid group", problem, "1 to 255 bytes of [A-Za-z0-9._-]"],
        );
    }
}

#[test]
fn bad_auto_offset_reset() {
    let text = pipeline_with("sink = { type = \"stdout\" }\n").replace(
        "source = { topic = \"spans\" }",
        "source = { topic = \"spans\", auto_offset_reset = \"newest\" }",
    );
    assert_error(
        &text,
        "pipelines.toml:7:49 (pipeline[p].source.auto_offset_reset): ",
        &["invalid auto_offset_reset \"newest\": expected \"earliest\" or \"latest\""],
    );
}

#[test]
fn operator_type_missing_or_unknown() {
    assert_error(
        &operator("field = \"a\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].type): ",
        &[
            "missing required key `type` in [[pipeline.operator]]",
            "\"filter\"",
        ],
    );
    assert_error(
        &operator("type = \"sort\"\n"),
        "pipelines.toml:10:8 (pipeline[p].operator[0].type): ",
        &["unknown operator type \"sort\"", "\"flat_map\""],
    );
}

#[test]
fn keys_that_do_not_apply_to_the_type() {
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\nexists = true\nsize = \"1m\"\n"),
        "pipelines.toml:13:8 (pipeline[p].operator[0].size): ",
        &["key `size` does not apply to type = \"filter\""],
    );
    assert_error(
        &operator("type = \"extract\"\nfield = \"a\"\nproject = [\"b\"]\n"),
        "pipelines.toml:12:11 (pipeline[p].operator[0].project): ",
        &["key `project` does not apply to type = \"extract\""],
    );
    assert_error(
        &operator("type = \"custom\"\nname = \"x\"\nfield = \"a\"\n"),
        "pipelines.toml:12:9 (pipeline[p].operator[0].field): ",
        &["key `field` does not apply to type = \"custom\""],
    );
}

#[test]
fn the_second_operator_is_named_by_its_index() {
    let text = operator(
        "type = \"key_by\"\nfield = \"a\"\n[[pipeline.operator]]\ntype = \"map\"\nfield = \"b\"\n",
    );
    assert_error(
        &text,
        "pipelines.toml:14:9 (pipeline[p].operator[1].field): ",
        &["key `field` does not apply to type = \"map\""],
    );
}

#[test]
fn filter_needs_field_and_exactly_one_test() {
    assert_error(
        &operator("type = \"filter\"\nequals = 1\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].field): ",
        &["missing required key `field` for type = \"filter\""],
    );
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0]): ",
        &["a filter needs exactly one of equals, not_equals, greater_than, less_than, exists, one_of"],
    );
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\ngreater_than = 1\nless_than = 5\n"),
        "pipelines.toml:13:13 (pipeline[p].operator[0].less_than): ",
        &[
            "key `less_than` cannot be combined with `greater_than`",
            "exactly one test",
        ],
    );
}

#[test]
fn filter_values() {
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\ngreater_than = nan\n"),
        "pipelines.toml:12:16 (pipeline[p].operator[0].greater_than): ",
        &["greater_than must be a finite number, got NaN"],
    );
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\nless_than = \"5\"\n"),
        "pipelines.toml:12:13 (pipeline[p].operator[0].less_than): ",
        &["invalid type: string \"5\", expected a number"],
    );
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\none_of = []\n"),
        "pipelines.toml:12:10 (pipeline[p].operator[0].one_of): ",
        &["one_of must list at least one value"],
    );
    assert_error(
        &operator("type = \"filter\"\nfield = \"a\"\nequals = inf\n"),
        "pipelines.toml:12:10 (pipeline[p].operator[0].equals): ",
        &["inf cannot be a JSON value"],
    );
}

#[test]
fn bad_field_paths() {
    assert_error(
        &operator("type = \"extract\"\nfield = \"a..b\"\n"),
        "pipelines.toml:11:9 (pipeline[p].operator[0].field): ",
        &["invalid field path \"a..b\""],
    );
    assert_error(
        &operator("type = \"map\"\nproject = [\"a\", \".b\"]\n"),
        "pipelines.toml:11:17 (pipeline[p].operator[0].project): ",
        &["invalid field path \".b\""],
    );
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"t\"\nkey = [\"a\", \"\"]\n"),
        "pipelines.toml:13:13 (pipeline[p].sink.table[0].key): ",
        &["invalid field path \"\""],
    );
}

#[test]
fn map_rules() {
    assert_error(
        &operator("type = \"map\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0]): ",
        &["a map needs at least one of project, drop, rename or set"],
    );
    assert_error(
        &operator("type = \"map\"\nproject = []\n"),
        "pipelines.toml:11:11 (pipeline[p].operator[0].project): ",
        &["project must list at least one field"],
    );
    assert_error(
        &operator("type = \"map\"\nrename = { \"a\" = \"b.\" }\n"),
        "pipelines.toml:11:18 (pipeline[p].operator[0].rename): ",
        &["invalid field path \"b.\""],
    );
    assert_error(
        &operator("type = \"map\"\nset = { \"x..y\" = 1 }\n"),
        "pipelines.toml:11:18 (pipeline[p].operator[0].set): ",
        &["invalid field path \"x..y\""],
    );
    // Dotted keys under `set` make nested paths' tables: one key, a table value.
    let config = parse(&operator("type = \"map\"\nset.a = 1\n"));
    match &config.pipelines[0].operators[0] {
        OperatorConfig::Map(map) => assert_eq!(map.set, vec![(path("a"), json!(1))]),
        other => panic!("expected a map, got {other:?}"),
    }
}

#[test]
fn window_kind_rules() {
    assert_error(
        &operator("type = \"window\"\nsize = \"1m\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].kind): ",
        &["missing required key `kind` for type = \"window\""],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"sliding\"\n"),
        "pipelines.toml:11:8 (pipeline[p].operator[0].kind): ",
        &["unknown window kind \"sliding\""],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\nhop = \"10s\"\n"),
        "pipelines.toml:13:7 (pipeline[p].operator[0].hop): ",
        &["key `hop` does not apply to a tumbling window"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"session\"\nsize = \"1m\"\ngap = \"10s\"\n"),
        "pipelines.toml:12:8 (pipeline[p].operator[0].size): ",
        &["key `size` does not apply to a session window"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"hopping\"\nsize = \"1m\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].hop): ",
        &["missing required key `hop` for a hopping window"],
    );
}

#[test]
fn window_durations() {
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"0s\"\n"),
        "pipelines.toml:12:8 (pipeline[p].operator[0].size): ",
        &["size must be more than 0s"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"session\"\ngap = \"0ms\"\n"),
        "pipelines.toml:12:7 (pipeline[p].operator[0].gap): ",
        &["gap must be more than 0s"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"hopping\"\nsize = \"1m\"\nhop = \"0s\"\n"),
        "pipelines.toml:13:7 (pipeline[p].operator[0].hop): ",
        &["hop must be more than 0s"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"hopping\"\nsize = \"1m\"\nhop = \"2m\"\n"),
        "pipelines.toml:13:7 (pipeline[p].operator[0].hop): ",
        &["hop must be at most size (1m), got 2m"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"1 minute-ish\"\n"),
        "pipelines.toml:12:8 (pipeline[p].operator[0].size): ",
        &["invalid size \"1 minute-ish\""],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\nallowed_lateness = \"200years\"\n"),
        "pipelines.toml:13:20 (pipeline[p].operator[0].allowed_lateness): ",
        &["allowed_lateness must be at least 0s and at most 36500d"],
    );
}

#[test]
fn aggregate_rules() {
    assert_error(
        &operator(
            "type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\naggregate = \"median\"\n",
        ),
        "pipelines.toml:13:13 (pipeline[p].operator[0].aggregate): ",
        &["unknown aggregate \"median\"", "\"percentiles\""],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\naggregate = \"sum\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].field): ",
        &["missing required key `field`: aggregate = \"sum\" needs the number to aggregate"],
    );
    assert_error(
        &operator("type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\nfield = \"n\"\n"),
        "pipelines.toml:13:9 (pipeline[p].operator[0].field): ",
        &["key `field` does not apply to aggregate = \"count\""],
    );
    assert_error(
        &operator("type = \"aggregate\"\nfield = \"n\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].aggregate): ",
        &["missing required key `aggregate` for type = \"aggregate\""],
    );
    assert_error(
        &operator("type = \"aggregate\"\naggregate = \"max\"\nfield = \"n\"\npercentiles = [50]\n"),
        "pipelines.toml:13:15 (pipeline[p].operator[0].percentiles): ",
        &["key `percentiles` does not apply to aggregate = \"max\""],
    );
    assert_error(
        &operator("type = \"aggregate\"\naggregate = \"percentiles\"\nfield = \"n\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].percentiles): ",
        &["missing required key `percentiles` for aggregate = \"percentiles\""],
    );
}

#[test]
fn percentile_values() {
    for values in ["[0]", "[50, 100.5]", "[-1]", "[nan]", "[]"] {
        assert_error(
            &operator(&format!(
                "type = \"aggregate\"\naggregate = \"percentiles\"\nfield = \"n\"\npercentiles = {values}\n"
            )),
            "pipelines.toml:13:15 (pipeline[p].operator[0].percentiles): ",
            &["percentile"],
        );
    }
    let config = parse(&operator(
        "type = \"aggregate\"\naggregate = \"percentiles\"\nfield = \"n\"\npercentiles = [0.1, 100]\n",
    ));
    assert_eq!(
        config.pipelines[0].operators[0],
        OperatorConfig::Aggregate(AggregateConfig {
            function: AggregateFunction::Percentiles(vec![0.1, 100.0]),
            field: Some(path("n")),
        })
    );
}

#[test]
fn late_and_side_output() {
    let window = "type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\n";
    assert_error(
        &operator(&format!("{window}late = \"drop\"\n")),
        "pipelines.toml:13:8 (pipeline[p].operator[0].late): ",
        &["invalid late \"drop\": expected \"dlq\" or \"side_output\""],
    );
    assert_error(
        &operator(&format!("{window}late = \"side_output\"\n")),
        "pipelines.toml:9:1 (pipeline[p].operator[0].side_output): ",
        &["missing required key `side_output` for late = \"side_output\""],
    );
    assert_error(
        &operator(&format!("{window}side_output = \"late\"\n")),
        "pipelines.toml:13:15 (pipeline[p].operator[0].side_output): ",
        &["key `side_output` does not apply to late = \"dlq\""],
    );
    assert_error(
        &operator(&format!("{window}late = \"dlq\"\nside_output = \"late\"\n")),
        "pipelines.toml:14:15 (pipeline[p].operator[0].side_output): ",
        &["key `side_output` does not apply to late = \"dlq\""],
    );
}

#[test]
fn side_output_topic_must_be_declared_and_not_the_source() {
    let window = "type = \"window\"\nkind = \"tumbling\"\nsize = \"1m\"\nlate = \"side_output\"\n";
    assert_error(
        &operator(&format!("{window}side_output = \"nope\"\n")),
        "pipelines.toml:14:15 (pipeline[p].operator[0].side_output): ",
        &["side_output topic \"nope\" is not a [[topic]] of this config"],
    );
    assert_error(
        &operator(&format!("{window}side_output = \"spans\"\n")),
        "pipelines.toml:14:15 (pipeline[p].operator[0].side_output): ",
        &["side_output topic \"spans\" is the source topic"],
    );
    assert_error(
        &operator(&format!("{window}side_output = \"a/b\"\n")),
        "pipelines.toml:14:15 (pipeline[p].operator[0].side_output): ",
        &["invalid topic name \"a/b\""],
    );
}

#[test]
fn reduce_rules() {
    assert_error(
        &operator("type = \"reduce\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].function): ",
        &["missing required key `function` for type = \"reduce\""],
    );
    assert_error(
        &operator("type = \"reduce\"\nfunction = \"avg\"\n"),
        "pipelines.toml:11:12 (pipeline[p].operator[0].function): ",
        &["unknown function \"avg\""],
    );
    assert_error(
        &operator("type = \"reduce\"\nfunction = \"sum\"\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].field): ",
        &["missing required key `field`: function = \"sum\" needs the number to reduce"],
    );
    assert_error(
        &operator("type = \"reduce\"\nfunction = \"latest\"\nfield = \"n\"\n"),
        "pipelines.toml:12:9 (pipeline[p].operator[0].field): ",
        &["key `field` does not apply to function = \"latest\""],
    );
}

#[test]
fn custom_operator_rules() {
    assert_error(
        &operator("type = \"custom\"\nparams = { a = 1 }\n"),
        "pipelines.toml:9:1 (pipeline[p].operator[0].name): ",
        &["missing required key `name` for type = \"custom\""],
    );
    assert_error(
        &operator("type = \"custom\"\nname = \" \"\n"),
        "pipelines.toml:11:8 (pipeline[p].operator[0].name): ",
        &["name must not be empty"],
    );
    assert_error(
        &operator("type = \"custom\"\nname = \"x\"\nparams = 5\n"),
        "pipelines.toml:12:10 (pipeline[p].operator[0].params): ",
        &["params must be a table, got integer"],
    );
}

#[test]
fn sink_type_missing_or_unknown() {
    assert_error(
        &sink("path = \"x\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.type): ",
        &[
            "missing required key `type` in [pipeline.sink]",
            "\"jsonl\"",
        ],
    );
    assert_error(
        &sink("type = \"kafka\"\n"),
        "pipelines.toml:9:8 (pipeline[p].sink.type): ",
        &["unknown sink type \"kafka\""],
    );
}

#[test]
fn sink_keys_that_do_not_apply() {
    assert_error(
        &sink("type = \"topic\"\ntopic = \"errors\"\npath = \"x\"\n"),
        "pipelines.toml:11:8 (pipeline[p].sink.path): ",
        &["key `path` does not apply to type = \"topic\""],
    );
    assert_error(
        &sink("type = \"stdout\"\nname = \"x\"\n"),
        "pipelines.toml:10:8 (pipeline[p].sink.name): ",
        &["key `name` does not apply to type = \"stdout\""],
    );
    assert_error(
        &sink("type = \"jsonl\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"t\"\n"),
        "pipelines.toml:11:1 (pipeline[p].sink.table): ",
        &["key `table` does not apply to type = \"jsonl\""],
    );
}

#[test]
fn sink_required_keys() {
    assert_error(
        &sink("type = \"topic\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.topic): ",
        &["missing required key `topic` for type = \"topic\""],
    );
    assert_error(
        &sink("type = \"jsonl\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.path): ",
        &["missing required key `path` for type = \"jsonl\""],
    );
    assert_error(
        &sink("type = \"jsonl\"\npath = \"\"\n"),
        "pipelines.toml:10:8 (pipeline[p].sink.path): ",
        &["path must not be empty"],
    );
    assert_error(
        &sink("type = \"custom\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.name): ",
        &["missing required key `name` for type = \"custom\""],
    );
}

#[test]
fn sink_topic_rules() {
    assert_error(
        &sink("type = \"topic\"\ntopic = \"nope\"\n"),
        "pipelines.toml:10:9 (pipeline[p].sink.topic): ",
        &["sink topic \"nope\" is not a [[topic]] of this config"],
    );
    assert_error(
        &sink("type = \"topic\"\ntopic = \"spans\"\n"),
        "pipelines.toml:10:9 (pipeline[p].sink.topic): ",
        &["sink topic \"spans\" is the source topic: a pipeline must not write to the topic it reads"],
    );
    assert_error(
        &sink("type = \"topic\"\ntopic = \"\"\n"),
        "pipelines.toml:10:9 (pipeline[p].sink.topic): ",
        &["invalid topic name \"\""],
    );
}

#[test]
fn sink_must_not_be_a_dead_letter_queue() {
    // Another pipeline's, declared as a topic.
    let text = format!(
        "{}[[pipeline]]\nname = \"other\"\nsource.topic = \"spans\"\nsink.type = \"stdout\"\n",
        sink("type = \"topic\"\ntopic = \"other.dlq\"\n")
    );
    assert_error(
        &text,
        "pipelines.toml:10:9 (pipeline[p].sink.topic): ",
        &["sink topic \"other.dlq\" is the dead-letter queue of pipeline \"other\""],
    );
    // Its own.
    assert_error(
        &sink("type = \"topic\"\ntopic = \"p.dlq\"\n"),
        "pipelines.toml:10:9 (pipeline[p].sink.topic): ",
        &["is the dead-letter queue of pipeline \"p\""],
    );
    // Declared `<name>.dlq` topics are fine as topics, and as sinks when no
    // pipeline has that name.
    assert_eq!(parse(&sink("type = \"stdout\"\n")).topics.len(), 5);
    parse(&sink("type = \"topic\"\ntopic = \"other.dlq\"\n"));
}

#[test]
fn sled_sink_rules() {
    assert_error(
        &sink("type = \"sled\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.path): ",
        &["missing required key `path` for type = \"sled\""],
    );
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\n"),
        "pipelines.toml:8:1 (pipeline[p].sink.table): ",
        &["a sled sink needs at least one [[pipeline.sink.table]]"],
    );
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\ntable = []\n"),
        "pipelines.toml:11:9 (pipeline[p].sink.table): ",
        &["a sled sink needs at least one [[pipeline.sink.table]]"],
    );
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nkey = [\"a\"]\n"),
        "pipelines.toml:11:1 (pipeline[p].sink.table[0].name): ",
        &["missing required key `name` in [[pipeline.sink.table]]"],
    );
    assert_error(
        &sink("type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"\"\n"),
        "pipelines.toml:12:8 (pipeline[p].sink.table[0].name): ",
        &["name must not be empty"],
    );
    assert_error(
        &sink(
            "type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"t\"\n\
             [[pipeline.sink.table]]\nname = \"t\"\n",
        ),
        "pipelines.toml:14:8 (pipeline[p].sink.table[1].name): ",
        &["duplicate table name \"t\": table[0] is already named so"],
    );
    assert_error(
        &sink(
            "type = \"sled\"\npath = \"x\"\n[[pipeline.sink.table]]\nname = \"t\"\n\
             [[pipeline.sink.table]]\nname = \"u\"\nkey = \"a\"\n",
        ),
        "pipelines.toml:15:7 (pipeline[p].sink.table[1].key): ",
        &["invalid type: string \"a\", expected a sequence"],
    );
}

#[test]
fn broken_configs_never_panic() {
    // Every prefix, and the file without each one of its lines: syntax
    // errors, missing keys and tables, keys in the wrong stage.
    let mut texts: Vec<String> = FULL
        .char_indices()
        .map(|(end, _)| FULL[..end].to_owned())
        .collect();
    let lines: Vec<&str> = FULL.lines().collect();
    for skipped in 0..lines.len() {
        let mut text = String::new();
        for (index, line) in lines.iter().enumerate() {
            if index != skipped {
                text.push_str(line);
                text.push('\n');
            }
        }
        texts.push(text);
    }
    for text in &texts {
        if let Err(error) = Config::from_toml_str(text, ORIGIN) {
            let shown = error.to_string();
            assert!(shown.starts_with(ORIGIN), "{shown}");
            assert!(!shown.contains('\n'), "{shown}");
        }
    }
}

// ---------------------------------------------------------------------------
// Configs built in code get the same rules from `validate`.

#[test]
fn validate_checks_pipelines_built_in_code() {
    let mut config = Config::new("d");
    config.topics = vec![
        TopicConfig::with_defaults("spans"),
        TopicConfig::with_defaults("out"),
    ];
    let good = PipelineConfig::new(
        "p",
        "spans",
        SinkConfig::Topic {
            topic: "out".to_owned(),
        },
    );
    config.pipelines = vec![good.clone()];
    assert_eq!(config.validate(), Ok(()));

    let broken = |change: &dyn Fn(&mut PipelineConfig), key_path: &str, rule: &str| {
        let mut config = config.clone();
        change(&mut config.pipelines[0]);
        let error = config.validate().expect_err(key_path);
        assert_eq!(error.origin, "<config>");
        assert_eq!(error.location, format!(" ({key_path})"), "{error}");
        assert!(
            error.message.contains(rule),
            "{error} should contain {rule:?}"
        );
    };
    broken(
        &|p| p.name = "a b".to_owned(),
        "pipeline[0].name",
        "invalid pipeline name",
    );
    broken(
        &|p| p.members = 0,
        "pipeline[p].members",
        "members must be between 1 and 256",
    );
    broken(
        &|p| p.commit_interval = Duration::from_secs(7200),
        "pipeline[p].commit_interval",
        "at most 1h",
    );
    broken(
        &|p| p.retries = 1000,
        "pipeline[p].retries",
        "between 0 and 100",
    );
    broken(
        &|p| p.retry_backoff = Duration::ZERO,
        "pipeline[p].retry_backoff",
        "more than 0s",
    );
    broken(
        &|p| p.fetch_max_bytes = 10,
        "pipeline[p].fetch_max_bytes",
        "1 KiB and 64 MiB",
    );
    broken(
        &|p| p.in_flight_batches = 0,
        "pipeline[p].in_flight_batches",
        "between 1 and 64",
    );
    broken(
        &|p| p.source.group = String::new(),
        "pipeline[p].source.group",
        "invalid group",
    );
    broken(
        &|p| p.source.topic = "missing".to_owned(),
        "pipeline[p].source.topic",
        "is not a [[topic]]",
    );
    broken(
        &|p| {
            p.sink = SinkConfig::Topic {
                topic: "spans".to_owned(),
            }
        },
        "pipeline[p].sink.topic",
        "is the source topic",
    );
    broken(
        &|p| {
            p.operators.push(OperatorConfig::Window(WindowConfig {
                kind: WindowKind::Hopping {
                    size: Duration::from_secs(60),
                    hop: Duration::from_secs(61),
                },
                allowed_lateness: Duration::ZERO,
                function: AggregateFunction::Count,
                field: None,
                time_field: None,
                late: LatePolicy::DeadLetter,
            }))
        },
        "pipeline[p].operator[0].hop",
        "hop must be at most size",
    );
    broken(
        &|p| {
            p.operators
                .push(OperatorConfig::Extract { field: path("a") });
            p.operators.push(OperatorConfig::Aggregate(AggregateConfig {
                function: AggregateFunction::Sum,
                field: None,
            }))
        },
        "pipeline[p].operator[1].field",
        "needs the number to aggregate",
    );
    broken(
        &|p| p.operators.push(OperatorConfig::Map(MapConfig::default())),
        "pipeline[p].operator[0]",
        "a map needs at least one of",
    );
    broken(
        &|p| {
            p.sink = SinkConfig::Sled(SledSinkConfig {
                path: PathBuf::from("x"),
                tables: Vec::new(),
            })
        },
        "pipeline[p].sink.table",
        "at least one [[pipeline.sink.table]]",
    );

    let mut twice = config.clone();
    twice.pipelines.push(good);
    let error = twice.validate().expect_err("duplicate");
    assert_eq!(error.location, " (pipeline[p].name)");
    assert!(error.message.contains("duplicate pipeline name"));
}
